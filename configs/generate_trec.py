"""`jaxdiv generate --config configs/generate_trec.py [--level L] [--set key=value ...]`:
a 600-row TREC pool from SmolLM2-135M-Instruct with the topic recipe (D3 by default).

bf16 weights and KV cache; each 192-row chunk is sorted by prompt length into three
64-row batches, so most batches fit the 128-token prompt bucket."""

from jaxdiv.data.tasks import TaskConfig
from jaxdiv.generate.config import GenerateJob, JaxBackendConfig, RecipeConfig, SamplingConfig


def get_config() -> GenerateJob:
    return GenerateJob(
        task=TaskConfig(name="trec"),
        recipe=RecipeConfig(name="topics", level=3, few_shot=3),
        sampling=SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=64),
        backend="jax",
        jax=JaxBackendConfig(model="smollm2-135m-instruct", batch_buckets=(8, 32, 64),
                             prompt_buckets=(128, 160, 192, 256), dtype="bfloat16"),
        n=600,
        chunk_rows=192,
        workdir="pools/trec-topics-d3",
        seed=0,
    )
