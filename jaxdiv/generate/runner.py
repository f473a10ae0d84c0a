"""`jaxdiv generate`: plan rows, generate them in chunks, parse, append to the pool; resumable."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from jaxdiv import configlib
from jaxdiv.data.pool import Pool
from jaxdiv.data.tasks import TaskConfig, load_task
from jaxdiv.generate.config import GenerateConfig, GenerateJob
from jaxdiv.generate.gates import Gates
from jaxdiv.generate.recipes import label_leak, make_recipe, recipe_meta, save_topics
from jaxdiv.io import atomic_write_text


def pool_meta(cfg: GenerateConfig, task_cfg: TaskConfig, task, backend, *, n: int, seed: int, real_budget: int,
              real_subset: int, gates: Gates | None = None) -> dict:
    """What a pool is; a resumed run must match it exactly (the pool's identity). Row r's plan does
    not depend on n except in the paraphrase recipe, so elsewhere n stays out of the identity and
    a larger n extends a pool, keeping its rows."""
    size_free = cfg.recipe.name != "paraphrase"
    identity = {k: v for k, v in configlib.to_dict(cfg).items() if k not in ("chunk_rows", "mesh")}
    identity.update(task=configlib.to_dict(task_cfg), seed=seed, real_budget=real_budget, real_subset=real_subset,
                    **({} if size_free else {"n": n}))
    identity["jax"] = {"model": cfg.jax.model, "dtype": cfg.jax.dtype} if cfg.backend == "jax" else None
    identity["openai"] = ({"base_url": cfg.openai.base_url, "model": cfg.openai.model}
                          if cfg.backend == "openai" else None)
    return {"task": task.name, "label_names": list(task.label_names), "recipe": cfg.recipe.name,
            "level": cfg.recipe.level, **({} if size_free else {"n": n}), "generator": backend.generator_id,
            "weights_hash": backend.weights_hash, "label_leak": label_leak(cfg.recipe, real_budget),
            "identity_hash": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16],
            **({"gates": gates.meta()} if gates is not None else {})}


def run_generate_job(job: GenerateJob, backend=None, progress: bool = True) -> Pool:
    """`run_generate` of a `jaxdiv generate` job config."""
    return run_generate(configlib.stage_part(job, GenerateConfig), task=job.task, n=job.n, workdir=job.workdir,
                        seed=job.seed, real_budget=job.real_budget, real_subset=job.real_subset, backend=backend,
                        progress=progress)


def run_generate(cfg: GenerateConfig, *, task: TaskConfig, n: int, workdir: str | Path, seed: int,
                 real_budget: int = 0, real_subset: int = 0, backend=None, progress: bool = True) -> Pool:
    """Generate `n` rows of `task` into `workdir` (resuming what is there); returns the pool.
    `seed` derives prompts, topics, few-shot draws and sampling; the generator sees only
    `real_budget` real rows per class (0: all) of real subset `real_subset`."""
    from tqdm.auto import tqdm

    from jaxdiv.generate.backends import JaxBackend, make_backend

    task_cfg, task = task, load_task(task)
    if backend is None:
        mesh = None
        if cfg.backend == "jax":
            from jaxdiv.sharding import make_mesh

            mesh = make_mesh(cfg.mesh)
        backend = make_backend(cfg, mesh=mesh)
    workdir = Path(workdir)
    recipe = make_recipe(cfg.recipe, cfg.sampling, task, backend, seed, n, progress=progress,
                         real_budget=real_budget, real_subset=real_subset)
    gates = Gates(cfg, task, recipe.brief.must_end_with, real_budget=real_budget, real_subset=real_subset)
    pool = Pool.create(workdir, pool_meta(cfg, task_cfg, task, backend, n=n, seed=seed, real_budget=real_budget,
                                          real_subset=real_subset, gates=gates))
    configlib.save_config(cfg, workdir, shared={"task": task_cfg, "n": n, "workdir": str(workdir), "seed": seed,
                                                "real_budget": real_budget, "real_subset": real_subset})
    atomic_write_text(workdir / "recipe.json", json.dumps(recipe_meta(recipe), indent=2))
    save_topics(recipe, workdir)
    if isinstance(backend, JaxBackend):
        backend.generator.take_buckets_used()  # from here on: the shapes of this pool's rows
    done = pool.done_rows()
    todo = [row for row in range(n) if row not in done]
    counts = pool.counts()
    bar = tqdm(total=n, initial=len(done), desc=f"generate {task.name} {cfg.recipe.name} "
               f"D{cfg.recipe.level}", unit="row", disable=not progress)
    tokens, started = 0, time.perf_counter()
    for begin in range(0, len(todo), cfg.chunk_rows):
        plans = [recipe.plan(row) for row in todo[begin:begin + cfg.chunk_rows]]
        completions = backend.complete([plan.request for plan in plans])
        rows = gates.apply(pool, plans, [recipe.parse(plan, c) for plan, c in zip(plans, completions)])
        stored = pool.append(rows, dedup=cfg.dedup)
        tokens += sum(c.completion_tokens for c in completions)
        counts = pool.counts()
        elapsed = max(time.perf_counter() - started, 1e-9)
        bar.update(len(stored))
        bar.set_postfix(tok_s=f"{tokens / elapsed:.0f}",
                        accept=f"{counts['accepted'] / max(counts['rows'], 1):.0%}")
    bar.close()
    if isinstance(backend, JaxBackend):
        record_buckets(workdir / "buckets.json", backend.generator)
    return pool


def record_buckets(path: Path, generator) -> None:
    """buckets.json: the batch and prompt buckets the JAX generator ran this pool's rows in (with
    those of earlier, resumed runs), and whether they were sized from the prompts."""
    used = {kind: set(sizes) for kind, sizes in generator.take_buckets_used().items()}
    if path.is_file():
        for kind, sizes in json.loads(path.read_text())["used"].items():
            used[kind] |= set(sizes)
    record = {"used": {kind: sorted(sizes) for kind, sizes in used.items()},
              "batch_buckets": list(generator.batch_buckets), "prompt_buckets": list(generator.prompt_buckets)
              or "automatic (auto_prompt_width of each batch's longest prompt)"}
    atomic_write_text(path, json.dumps(record, indent=2))
