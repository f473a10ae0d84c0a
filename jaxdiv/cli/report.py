"""`jaxdiv report STUDY_DIR`: tables, plots and a written summary of a finished (or running) study."""

from __future__ import annotations


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "report", formatter_class=formatter, help="write the Markdown/HTML report of a study directory",
        description="Reads STUDY_DIR/results.parquet (one row per cell and seed) and, if present, "
                    "STUDY_DIR/pools.parquet, and writes STUDY_DIR/report/report.md, report.html and PNG "
                    "plots: accuracy against diversity level, level x proportion heatmaps, accuracy "
                    "against measured diversity and shift, the best proportion per level and budget, "
                    "and a summary of whether study A's claim is reproduced.")
    parser.add_argument("study_dir", help="a study directory written by `jaxdiv run`")
    parser.add_argument("--metric", default="accuracy", help="the downstream metric column to report")
    parser.set_defaults(func=_report)


def _report(args) -> int:
    from jaxdiv.report.report import write_report

    print(f"report: {write_report(args.study_dir, args.metric)}")
    return 0
