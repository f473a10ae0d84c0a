"""`jaxdiv score POOL [--real TASK]`: the diversity / quality / complexity / shift suite on one pool."""

from __future__ import annotations

import json
from pathlib import Path

from jaxdiv.cli.common import add_config_arguments, print_table


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "score", formatter_class=formatter,
        help="score a pool: embedding + lexical diversity, quality, complexity, shift, with CIs",
        description="Score a pool of texts: a generated-pool directory (`jaxdiv generate`), or a "
                    ".parquet / .jsonl / .json / .csv file or a `datasets` directory with a text "
                    "column, optionally a label column.\n\n"
                    "Families: embedding diversity (Vendi q=0.5/1/2/inf, mean cosine distance, chamfer, "
                    "DCScore, k-means, log-det, effective rank), lexical (distinct-n, n-gram entropy, "
                    "self-BLEU, gzip ratio, self-repetition), quality (exact / near duplicates, label "
                    "fidelity, parse failures, and a generated pool's rows rejected per reason: parse "
                    "failures and the quality gates), complexity proxies, and with --real the shift against the "
                    "real task's training split (MMD^2, Frechet; overall and per label).\n"
                    "Every set metric gets a seeded half-sample confidence interval and its subsample bias.\n\n"
                    "Writes WORKDIR/score_report.json and WORKDIR/config.json (WORKDIR defaults to "
                    "runs/score/<pool name>), and prints a table.",
        epilog="Example: jaxdiv score pool.jsonl --real trec --set bootstrap.samples=50 "
               "--set diversity.dcscore_temperature=0.5")
    parser.add_argument("pool", help="the pool to score (pool directory, table file or `datasets` directory)")
    parser.add_argument("--real", default=None, metavar="TASK",
                        help="a real task (see `jaxdiv tasks list`) to measure shift and label fidelity against")
    parser.add_argument("--workdir", default=None, help="where to write the report (overrides workdir)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, default_config=None)
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from jaxdiv import configlib
    from jaxdiv.data.tasks import load_task
    from jaxdiv.io import atomic_write_text
    from jaxdiv.score.config import ScoreConfig, ScoreJob
    from jaxdiv.score.pool_reader import read_pool
    from jaxdiv.score.suite import score_pool

    overrides = list(args.overrides)
    if args.real is not None:
        overrides.append(f"real={args.real}")
    if args.workdir is not None:
        overrides.append(f"workdir={args.workdir}")
    cfg = (configlib.load_config(args.config, overrides) if args.config
           else configlib.apply_overrides(ScoreJob(), overrides))
    if cfg.real:
        cfg = configlib.validate(configlib.apply_override(cfg, "task.name", cfg.real))
    pool = read_pool(args.pool, cfg.text_column, cfg.label_column, cfg.parse_error_column)
    real = load_task(cfg.task) if cfg.real else None
    report = score_pool(pool.texts, pool.labels, real=real, cfg=configlib.stage_part(cfg, ScoreConfig),
                        parse_failures=pool.parse_failures, rejected=pool.rejected, rejections=pool.rejections,
                        progress=not args.no_progress)
    report["pool"] = pool.source
    workdir = Path(cfg.workdir or Path("runs/score") / Path(args.pool).resolve().stem)
    configlib.save_config(cfg, workdir)
    path = atomic_write_text(workdir / "score_report.json", json.dumps(report, indent=2))
    rows = []
    for entry in report["metrics"]:
        ci = (f"[{entry['ci_low']:.4g}, {entry['ci_high']:.4g}]" if entry["ci_low"] is not None else "")
        bias = f"{entry['subsample_bias']:+.3g}" if entry["subsample_bias"] is not None else ""
        rows.append((entry["family"], entry["metric"], f"{entry['value']:.4g}", ci, bias))
    print(f"pool {pool.source}: {report['n']} texts scored of {report['n_rows']} rows; embedder "
          f"{report['embedder']['model']} ({report['embedder']['weights_hash']})")
    print_table(rows, ("family", "metric", "value", f"{cfg.bootstrap.level:.0%} CI", "half-sample bias"))
    for key, value in report["info"].items():
        print(f"  {key}: {value}")
    for reason, entry in report["rejections"].items():
        print(f"  rejected ({reason}): {entry['rows']} rows, {entry['share']:.1%}")
    print(f"report: {path}")
    return 0
