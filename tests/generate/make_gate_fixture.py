"""Make tests/generate/fixtures/gate_cases.json: real SmolLM2 completions for the quality gates.

    PYTHONPATH=. python tests/generate/make_gate_fixture.py [--out FILE]

Runs the jaxdiv generator (the packaged SmolLM2-135M-Instruct GGUF, bf16, the demo's sampling)
on TREC (topics recipe at D0 and D3, temperature recipe at D6) and on movie_sentiment (topics
D3), some of it at a small max_new_tokens so that truncations occur. Each case keeps what the
gates read: the task, the prompt, the few-shot texts, the raw output, the parsed text, the finish
reason, the parse verdict. The `hand_label` of each case (echo | chatter | truncated | good) was
then written BY HAND after reading the case; this script leaves it empty ("") for new cases and
keeps the hand labels of cases it already finds in the output file (matched by `case`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from jaxdiv.configlib import apply_overrides
from jaxdiv.data.pool import Pool
from jaxdiv.data.tasks import TaskConfig, load_task
from jaxdiv.generate.backends import make_backend
from jaxdiv.generate.config import GenerateJob
from jaxdiv.generate.runner import run_generate_job

HAND_LABELS = ("Read and labelled by hand: truncated = cut off at the token limit mid-sentence; echo = "
               "restates the prompt's instruction or (nearly) copies a few-shot example; chatter = talks "
               "as an assistant about the task or to the user; good = none of the three (it may still "
               "fail the parser or the label probe)")
OUT = Path(__file__).resolve().parent / "fixtures" / "gate_cases.json"
# (task, recipe, level, rows, max_new_tokens): the demo's settings, plus short limits for truncations
RUNS = (("trec", "topics", 0, 24, 32), ("trec", "topics", 3, 24, 32), ("trec", "temperature", 6, 20, 32),
        ("trec", "topics", 3, 8, 10), ("movie_sentiment", "topics", 3, 24, 32),
        ("movie_sentiment", "topics", 3, 12, 16))
COMMON = ("jax.dtype=bfloat16", "jax.batch_buckets=(8,)", "jax.prompt_buckets=(160,256)",
          "sampling.temperature=0.8", "sampling.top_p=0.95", "chunk_rows=24",
          # every gate off: the fixture holds the raw material the gates are tested on
          "gates.truncation=false", "gates.echo=false", "gates.chatter=false",
          "gates.near_duplicate=false", "gates.labels.label_probe=off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    labelled = {}
    if args.out.is_file():
        labelled = {c["case"]: c["hand_label"] for c in json.loads(args.out.read_text())["cases"]}
    cases, backend = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for task_name, recipe, level, rows, max_new in RUNS:
            cfg = apply_overrides(GenerateJob(), list(COMMON) + [
                f"task.name={task_name}", f"recipe.name={recipe}", f"recipe.level={level}", f"n={rows}",
                f"sampling.max_new_tokens={max_new}", f"recipe.topics_cache={scratch}/topics",
                f"workdir={scratch}/{task_name}-{recipe}-{level}-{max_new}", "seed=7"])
            backend = backend or make_backend(cfg)  # one loaded model for every run
            pool: Pool = run_generate_job(cfg, backend=backend, progress=True)
            train = load_task(TaskConfig(name=task_name)).splits["train"]
            text_of = dict(zip(train["id"], train["text"]))
            for row in pool.rows():
                case = f"{task_name}-{recipe}-d{level}-t{max_new}-{row['row']:03d}"
                cases.append({
                    "case": case, "hand_label": labelled.get(case, ""), "task": task_name,
                    "intended_label": row["intended_label"], "prompt": row["prompt"],
                    "few_shot_texts": [text_of[i] for i in row["few_shot_ids"]],
                    "raw_output": row["raw_output"], "text": row["text"],
                    "finish_reason": row["finish_reason"], "completion_tokens": row["completion_tokens"],
                    "max_new_tokens": max_new, "parse_reason": row["reason"]})
    args.out.write_text(json.dumps({"generator": "smollm2-135m-instruct (packaged GGUF, bf16)",
                                    "hand_labels": HAND_LABELS, "cases": cases}, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases -> {args.out}")


if __name__ == "__main__":
    main()
