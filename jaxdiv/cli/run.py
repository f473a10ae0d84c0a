"""`jaxdiv run CONFIG`: the whole study (generate -> score -> mix -> train -> report)."""

from __future__ import annotations

from jaxdiv.cli.common import add_override_argument


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "run", formatter_class=formatter, help="run a whole study: generate, score, mix, train, report",
        description="Generates one synthetic pool per diversity level, scores every pool and every "
                    "training set, mixes synthetic with real labelled rows at each proportion and "
                    "label budget, fine-tunes a classifier per cell (vmapped in groups), and writes "
                    "results.parquet/.csv, pools.parquet/.csv and report/ in the study directory. "
                    "Everything is cached by content hash: a re-run only re-reports, new grid values "
                    "compute only new cells, and a killed run resumes.")
    parser.add_argument("config", nargs="?", default="configs/demo.py",
                        help="a study config file exposing get_config()")
    add_override_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    import time

    from jaxdiv.configlib import load_config
    from jaxdiv.study.runner import run_study

    cfg = load_config(args.config, args.overrides)
    started = time.perf_counter()
    report = run_study(cfg, progress=not args.quiet)
    print(f"report: {report}  ({time.perf_counter() - started:.0f} s)")
    return 0
