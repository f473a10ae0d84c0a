"""jaxdiv: how the diversity of LLM-generated training data affects fine-tuned models.

The pipeline, one subpackage a stage: generate -> score -> mix -> train -> report.
`jaxdiv run CONFIG` drives it end to end; `jaxdiv --help` lists every stage's command.
"""

__version__ = "0.1.0"
