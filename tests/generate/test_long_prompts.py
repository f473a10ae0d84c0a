"""A task with long prompts runs by config alone: no bucket settings, the buckets are sized
from the prompts and recorded with the pool (the real SmolLM2, a few rows)."""

import json

from jaxdiv.configlib import apply_overrides
from jaxdiv.data.pool import Pool
from jaxdiv.data.tasks import budget_rows, load_task
from jaxdiv.generate.backends import JaxBackend
from jaxdiv.generate.config import GenerateJob, JaxBackendConfig
from jaxdiv.generate.runner import run_generate_job
from jaxdiv.generate.sampler import JaxGenerator, auto_prompt_width


def test_long_few_shot_prompts_run_with_automatic_buckets(smollm2, tmp_path):
    topics = tmp_path / "topics.txt"
    topics.write_text("car chases\nold westerns\n")
    cfg = apply_overrides(GenerateJob(), [
        "task.name=movie_sentiment", "recipe.name=topics", "recipe.level=0", "recipe.few_shot=8",
        f"recipe.topics_file={topics}", "real_budget=8", "real_subset=2", "n=4", "chunk_rows=4",
        "sampling.max_new_tokens=12", "jax.max_batch=4", "jax.decode_chunk=4", f"workdir={tmp_path / 'pool'}"])
    assert (cfg.jax.batch_buckets, cfg.jax.prompt_buckets) == ((), ())  # the defaults: automatic
    assert JaxBackendConfig().prompt_buckets == ()
    model, tokenizer = smollm2
    generator = JaxGenerator(model, tokenizer, batch_buckets=cfg.jax.batch_buckets,
                             max_batch=cfg.jax.max_batch, prompt_buckets=cfg.jax.prompt_buckets,
                             decode_chunk=cfg.jax.decode_chunk)
    pool = run_generate_job(cfg, backend=JaxBackend(generator, "jax:smollm2-135m-instruct", "test"),
                        progress=False)
    rows = pool.rows()
    assert len(rows) == 4 and all(r["completion_tokens"] > 0 and r["raw_output"] for r in rows)
    longest = max(r["prompt_tokens"] for r in rows)
    assert longest > 256  # eight movie review snippets
    recorded = json.loads((tmp_path / "pool" / "buckets.json").read_text())
    assert recorded["used"]["prompt"] == [auto_prompt_width(longest)]
    assert recorded["batch_buckets"] == [2, 4] and 4 in recorded["used"]["batch"]
    assert recorded["prompt_buckets"].startswith("automatic")
    # the rows saw only the cell's 8 real rows per class, and the pool says it does not leak
    train = load_task(cfg.task).splits["train"]
    allowed = {train["id"][i] for indices in budget_rows(train, 2, 8, 2).values() for i in indices}
    assert all(len(r["few_shot_ids"]) == 8 and set(r["few_shot_ids"]) <= allowed for r in rows)
    assert Pool.open(tmp_path / "pool").meta["label_leak"] is False
    assert json.loads((tmp_path / "pool" / "topics.json").read_text())["topics"] == ["car chases"]
