"""`jaxdiv select POOL --targets ... --n N --out DIR`: subsets of one pool at set diversities."""

from __future__ import annotations

import textwrap

from jaxdiv.cli.common import add_config_arguments, print_table

DESCRIPTION = textwrap.dedent("""\
    Selection as a diversity mechanism: from one generated pool (one generator, one prompt
    distribution), build subsets with exactly N accepted rows per class whose embedding diversity
    (vendi_q1 on the score section's embedder, MiniLM by default) is set by selection alone.

    Each target is a position in [0, 1] of what a class's N-row subsets can reach: 0 its tightest
    cluster, 1 its farthest-point spread, 0.5 halfway (jaxdiv.generate.selection.select_to_target).
    The subsets are then measured on all their rows and named S0, S1, ... from least to most
    diverse. The study does the same with grid.mechanisms=select.

    POOL: a generated-pool directory (its accepted rows), or a .parquet / .jsonl / .json / .csv
    file or a `datasets` directory with text and label columns (as `jaxdiv score` reads them).

    Writes OUT/S<k>.parquet (text, label and index in the pool's rows of each selected row) and
    OUT/selection.json
    (per subset: target position, measured diversity, and per class the target, the value
    reached and the reachable range).""")


def register(sub, formatter) -> None:
    parser = sub.add_parser("select", formatter_class=formatter, description=DESCRIPTION,
                            help="select subsets of a pool at set diversities, at equal rows per class")
    parser.add_argument("pool", help="a generated-pool directory, or a table with text and label columns")
    parser.add_argument("--targets", required=True, metavar="P,P,...",
                        help="positions in [0, 1] of each class's reachable diversity, one subset each")
    parser.add_argument("--n", type=int, required=True, help="accepted rows per class in every subset")
    parser.add_argument("--out", required=True, help="folder for the subsets and selection.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser, default_config=None)
    parser.epilog = ("--config/--set take a score config (e.g. --set embedder.model=... or "
                     "--set diversity.block_size=...). Example: jaxdiv select runs/demo/pools/D6-... "
                     "--targets 0,0.5,1 --n 16 --out selections/d6")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from jaxdiv import configlib
    from jaxdiv.generate.selection import SelectionError
    from jaxdiv.io import atomic_path, atomic_write_text
    from jaxdiv.mix.select import SELECT_METRIC, select_subsets
    from jaxdiv.score.config import ScoreConfig
    from jaxdiv.score.embed import Embedder
    from jaxdiv.score.pool_reader import read_pool

    try:
        positions = [float(value) for value in args.targets.split(",")]
    except ValueError:
        raise SelectionError(f"--targets {args.targets!r}: expected comma-separated numbers in [0, 1]") from None
    if args.n < 1:
        raise SelectionError(f"--n {args.n}: needs at least one row per class")
    cfg = (configlib.load_config(args.config, args.overrides) if args.config
           else configlib.apply_overrides(ScoreConfig(), args.overrides))
    pool = read_pool(args.pool, cfg.text_column, cfg.label_column, cfg.parse_error_column)
    if pool.labels is None:
        raise SelectionError(f"{args.pool}: no label column {cfg.label_column!r}; selection is per class")
    names = tuple(sorted(set(pool.labels)))
    labels = [names.index(label) for label in pool.labels]
    embeddings = Embedder(cfg.embedder, cfg.mesh).embed(pool.texts, progress=not args.no_progress)
    subsets = select_subsets(embeddings, labels, names, [args.n] * len(names), positions, SELECT_METRIC,
                             cfg.diversity)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for subset in subsets:
        table = pa.table({"text": [pool.texts[i] for i in subset.indices],
                          "label": [pool.labels[i] for i in subset.indices], "index": subset.indices})
        with atomic_path(out / f"{subset.name}.parquet") as tmp:
            pq.write_table(table, tmp)
    summary = {"pool": str(args.pool), "metric": SELECT_METRIC, "rows_per_class": args.n,
               "subsets": [{"name": s.name, "position": s.position, SELECT_METRIC: s.measured,
                            "rows": int(s.indices.size), "per_class": s.per_class} for s in subsets]}
    atomic_write_text(out / "selection.json", json.dumps(summary, indent=1))
    print_table([(s.name, f"{s.position:g}", s.indices.size, f"{s.measured:.4g}") for s in subsets],
                ("subset", "target position", "rows", SELECT_METRIC))
    print(f"wrote {len(subsets)} subsets to {out}")
    return 0
