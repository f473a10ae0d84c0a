"""The quality gates on real SmolLM2 TREC pools, before and after: writes the "Quality gates"
section of docs/benchmarks/generate.md.

    PYTHONPATH=. python scripts/gate_report.py --rows 600 --levels 0,3,6 --workdir runs/gate_report

Per level, one pool is generated with the demo's generate section (configs/demo.py) and every
gate off: that is "before" (today's prompts, no gates). "After" replays the same completions through the
gates, chunk by chunk in row order, exactly as `run_generate` applies them (the gates never change
what is generated: the prompts, seeds and sampling are the same), once per label-probe arm:
- budget: the probe trained on the 16 real rows per class of real subset 0 (the demo's larger
  budget), the rows a cell of that budget may see;
- oracle: the probe trained on every real training label (ORACLE: labels no cell has).
Label fidelity is measured as `jaxdiv score` does (its probe on all real training labels), so after
the oracle filter it is partly circular: read it as what is left once label noise is gone.
Generation time per accepted row: before = generation time / accepted rows; after = (generation
time + gate time) / accepted rows. Pools resume (the script may be killed and rerun).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from jaxdiv.configlib import apply_overrides, load_config, stage_part
from jaxdiv.data.pool import ACCEPTED, Pool, PoolRow
from jaxdiv.data.tasks import load_task
from jaxdiv.generate.config import GatesConfig, GenerateConfig, GenerateJob
from jaxdiv.generate.gates import (CHATTER, ECHO, GATE_REASONS, LABEL_PROBE, LABEL_PROBE_ORACLE,
                                   NEAR_DUPLICATE, TRUNCATED, Gates, rule_reason)
from jaxdiv.generate.recipes import make_recipe
from jaxdiv.generate.runner import pool_meta, run_generate_job
from jaxdiv.io import atomic_write_text
from jaxdiv.score.embed import Embedder
from jaxdiv.score.quality import predict, train_probe

ROOT = Path(__file__).resolve().parents[1]
GATES_OFF = ("gates.truncation=false", "gates.echo=false", "gates.chatter=false",
             "gates.near_duplicate=false", "gates.labels.label_probe=off")
ARMS = {"budget": ("gates.labels.label_probe=budget", "real_budget=16", "real_subset=0"),
        "oracle": ("gates.labels.label_probe=oracle",)}
SECTION = "## Quality gates"


def before_pool(args, level: int, backend_box: list):
    cfg = apply_overrides(GenerateJob(**vars(load_config(ROOT / "configs" / "demo.py").generate)), list(GATES_OFF) + [
        f"n={args.rows}", f"recipe.level={level}", f"workdir={args.workdir}/before-d{level}"])
    timing = Path(cfg.workdir) / "timing.json"
    if Pool.is_complete(cfg.workdir, cfg.n) and timing.is_file():
        return cfg, Pool.open(cfg.workdir), json.loads(timing.read_text())["generate_s"]
    if not backend_box:
        from jaxdiv.generate.backends import make_backend

        backend_box.append(make_backend(cfg))
    spent = json.loads(timing.read_text())["generate_s"] if timing.is_file() else 0.0
    started = time.perf_counter()
    pool = run_generate_job(cfg, backend=backend_box[0], progress=True)
    spent += time.perf_counter() - started
    atomic_write_text(timing, json.dumps({"generate_s": spent}))
    return cfg, pool, spent


class _Backend:  # what pool_meta and Recipe read of a backend, for the replay (nothing is generated)
    def __init__(self, meta: dict):
        self.generator_id, self.weights_hash = meta["generator"], meta["weights_hash"]


def parse_verdict(row: dict) -> PoolRow:
    """The row as the parser left it (the pool's dedup undone: the replay's pool dedups again)."""
    if row["reason"].startswith("duplicate of"):
        row = {**row, "status": ACCEPTED, "reason": ""}
    return PoolRow(**row)


def replay(args, before_cfg, before: Pool, arm: str, task) -> tuple[Pool, float]:
    cfg = apply_overrides(before_cfg, list(ARMS[arm]) + [
        "gates.truncation=true", "gates.echo=true", "gates.chatter=true", "gates.near_duplicate=true",
        f"workdir={args.workdir}/after-{arm}-d{before_cfg.recipe.level}"] + (
        [f"gates.labels.min_probability={args.min_probability}"] if args.min_probability is not None else []))
    backend = _Backend(before.meta)
    recipe = make_recipe(cfg.recipe, cfg.sampling, task, backend, cfg.seed, cfg.n, progress=False,
                         real_budget=cfg.real_budget, real_subset=cfg.real_subset)
    started = time.perf_counter()
    stage = stage_part(cfg, GenerateConfig)
    gates = Gates(stage, task, recipe.brief.must_end_with, real_budget=cfg.real_budget,
                  real_subset=cfg.real_subset)
    directory = Path(cfg.workdir)
    shutil.rmtree(directory, ignore_errors=True)  # a replay is cheap: redone whole, never resumed
    after = Pool.create(directory, pool_meta(stage, cfg.task, task, backend, n=cfg.n, seed=cfg.seed,
                                             real_budget=cfg.real_budget, real_subset=cfg.real_subset, gates=gates))
    rows = before.rows()
    for begin in range(0, len(rows), cfg.chunk_rows):
        chunk = [parse_verdict(r) for r in rows[begin:begin + cfg.chunk_rows]]
        after.append(gates.apply(after, [recipe.plan(r.row) for r in chunk], chunk), dedup=cfg.dedup)
    return after, time.perf_counter() - started


def detector_shares(rows: list[dict], task) -> dict[str, float]:
    """Share of the accepted rows that the rules call truncated / echo / chatter."""
    from jaxdiv.generate.recipes import BRIEFS

    train = task.splits["train"]
    text_of = dict(zip(train["id"], train["text"]))
    accepted = [r for r in rows if r["status"] == ACCEPTED]
    found = [rule_reason(r["raw_output"], r["text"], r["finish_reason"], r["prompt"],
                         [text_of[i] for i in r["few_shot_ids"]], BRIEFS[task.name].must_end_with,
                         GatesConfig()) for r in accepted]
    return {reason: sum(f == reason for f in found) / max(len(accepted), 1)
            for reason in (TRUNCATED, ECHO, CHATTER)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--levels", default="0,3,6")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "gate_report")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "generate.md")
    parser.add_argument("--sample", type=int, default=30)
    parser.add_argument("--min-probability", type=float, default=None,
                        help="the probe's keep threshold in the replays (default: the config's)")
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    task, backend_box = None, []
    embedder, fidelity_probe = None, None
    table, samples, timings = [], {}, []
    for level in levels:
        before_cfg, before, generate_s = before_pool(args, level, backend_box)
        if task is None:
            task = load_task(before_cfg.task)
            embedder = Embedder(before_cfg.gates.embedder)
            train = task.splits["train"]
            fidelity_probe = train_probe(embedder.embed(train["text"], progress=False), train["label"],
                                         task.num_labels)

        def fidelity(pool: Pool) -> float:
            accepted = [r for r in pool.rows() if r["status"] == ACCEPTED]
            x = embedder.embed([r["text"] for r in accepted], progress=False)
            intended = [task.label_names.index(r["intended_label"]) for r in accepted]
            return float(np.mean(predict(fidelity_probe, x) == np.asarray(intended)))

        pools = {"before (gates off)": (before, 0.0)}
        for arm in ARMS:
            pools[f"after, {arm} probe" + (" (ORACLE)" if arm == "oracle" else "")] = replay(
                args, before_cfg, before, arm, task)
        for name, (pool, gate_s) in pools.items():
            counts = pool.counts()
            reasons = counts["reasons"]
            detected = detector_shares(pool.rows(), task)
            table.append({"level": f"D{level}", "pool": name, "rows": counts["rows"],
                          "accepted": counts["accepted"],
                          **{reason: reasons.get(reason, 0) / counts["rows"] for reason in GATE_REASONS},
                          "duplicate": reasons.get("duplicate", 0) / counts["rows"],
                          "parse": sum(n for r, n in reasons.items()
                                       if r not in GATE_REASONS and r != "duplicate") / counts["rows"],
                          "fidelity": fidelity(pool), "echo_or_chatter": detected[ECHO] + detected[CHATTER],
                          "truncated_share": detected[TRUNCATED],
                          "s_per_accepted": (generate_s + gate_s) / max(counts["accepted"], 1),
                          "gate_s": gate_s})
        timings.append((level, generate_s))
        after = pools["after, budget probe"][0]
        accepted = [r for r in after.rows() if r["status"] == ACCEPTED]
        rng = np.random.default_rng(level)
        picks = sorted(rng.choice(len(accepted), size=min(args.sample, len(accepted)), replace=False))
        samples[level] = [accepted[i] for i in picks]
    write_section(args, table, samples, timings)


# The pipeline the issue measured when it was filed (few-shot rows shown as a list, every gate off):
# accepted per planned row at each level, from this script's run of 2026-12-05 08:12 UTC (commit
# 4510e02, same 600-row pools). Its time per accepted row, at the same time per planned row, is the
# baseline of the "at most double" target.
FILED_ACCEPTED_SHARE = {"D0": 253 / 600, "D3": 260 / 600, "D6": 272 / 600}


def write_section(args, table, samples, timings) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    threshold = "" if args.min_probability is None else f" --min-probability {args.min_probability}"
    lines = [f"{SECTION} (issue 14; measured {stamp} by `scripts/gate_report.py --rows {args.rows} "
             f"--levels {args.levels}{threshold}`)", "",
             "Real SmolLM2-135M-Instruct (packaged GGUF, bf16) on TREC with the demo's generate section "
             f"(`configs/demo.py`: topics recipe, 32 new tokens), {args.rows} planned rows per level. "
             "*Before*: every gate off, with today's prompts (few-shot rows as chat turns). *After*: the same completions through the gates "
             "(`jaxdiv/generate/gates.py`), in row order as `jaxdiv generate` applies them, once with the "
             "budget probe (16 real rows per class, real subset 0) and once with the ORACLE probe (every "
             "real training label; no cell has these labels). Columns: the share of planned rows each gate "
             "rejected; `parse`: the parser's own rejections; `dup`: exact duplicates; fidelity: label "
             "fidelity of the accepted rows by `jaxdiv score`'s probe (all real training labels); "
             "echo/chatter and truncated: the share of accepted rows the rules flag; s/acc: generation "
             "(+ gate) seconds per accepted row, on the shared 2-core CPU.", "",
             "| level | pool | accepted / planned | truncated | echo | chatter | label_probe | near_dup | parse | dup "
             "| fidelity | echo/chatter | truncated (acc.) | s/acc |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        probe = r[LABEL_PROBE] + r[LABEL_PROBE_ORACLE]
        lines.append(f"| {r['level']} | {r['pool']} | {r['accepted']} / {r['rows']} ({r['accepted'] / r['rows']:.0%}) "
                     f"| {r[TRUNCATED]:.1%} | {r[ECHO]:.1%} | {r[CHATTER]:.1%} | {probe:.1%} | "
                     f"{r[NEAR_DUPLICATE]:.1%} | {r['parse']:.1%} | {r['duplicate']:.1%} | {r['fidelity']:.2f} | "
                     f"{r['echo_or_chatter']:.1%} | {r['truncated_share']:.1%} | {r['s_per_accepted']:.2f} |")
    lines += ["", "Against the issue's targets (budget probe; every level):"]
    for level in sorted({r["level"] for r in table}):
        before = next(r for r in table if r["level"] == level and r["pool"].startswith("before"))
        budget = next(r for r in table if r["level"] == level and "budget" in r["pool"])
        oracle = next(r for r in table if r["level"] == level and "ORACLE" in r["pool"])
        ratio = budget["s_per_accepted"] / before["s_per_accepted"]
        filed = FILED_ACCEPTED_SHARE.get(level)
        against = filed / (budget["accepted"] / budget["rows"]) if filed else None
        against_filed = (f"; against the pipeline the issue measured ({filed:.0%} of planned rows accepted, "
                         f"gates off, few-shot rows as a list) x{against:.1f} at equal time per planned row "
                         f"(target <= x2: {'met' if against <= 2 else 'NOT met'})" if filed else "")
        lines.append(
            f"- {level}: fidelity {before['fidelity']:.2f} -> {budget['fidelity']:.2f} (target >= 0.75: "
            f"{'met' if budget['fidelity'] >= 0.75 else 'NOT met'}; ORACLE arm {oracle['fidelity']:.2f}, "
            f"{oracle['accepted']} rows); echo/chatter by the detector {before['echo_or_chatter']:.1%} -> "
            f"{budget['echo_or_chatter']:.1%}; truncated {budget['truncated_share']:.1%}; accepted per planned "
            f"row {before['accepted'] / before['rows']:.0%} -> {budget['accepted'] / budget['rows']:.0%}; "
            f"time per accepted row against the same prompts with the gates off x{ratio:.1f}{against_filed}")
    lines += ["", "The ORACLE arm's fidelity is measured by a probe on the same labels it filtered with, so "
              "it is 1.00 by construction at min_probability >= 0.5; what it shows is how many rows survive "
              "once label noise is gone.", "", "Generation time per level (before; the gates add the `gate_s` below): " + ", ".join(
        f"D{level} {seconds:.0f} s" for level, seconds in timings) + ". Gate time: " + ", ".join(
        f"{r['level']} {r['pool']} {r['gate_s']:.1f} s" for r in table if r["gate_s"]) + ".", ""]
    for level, rows in samples.items():
        lines += [f"### D{level}: a random sample of {len(rows)} accepted rows (after, budget probe)", ""]
        lines += [f"- `{r['intended_label']}` {r['text']}" for r in rows] + [""]
    section = "\n".join(lines)
    text = args.out.read_text()
    start = text.find(SECTION)
    text = (text.rstrip() + "\n\n" + section) if start < 0 else text[:start] + section
    atomic_write_text(args.out, text.rstrip() + "\n")
    print(section)


if __name__ == "__main__":
    main()
