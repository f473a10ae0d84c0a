"""`jaxdiv report STUDY_DIR`: tables, plots and a written summary of a finished (or running) study."""

from __future__ import annotations


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "report", formatter_class=formatter, help="write the Markdown/HTML report of a study directory",
        description="Reads STUDY_DIR/results.parquet (one row per trained cell), pools.parquet, "
                    "accepted_rows.parquet and the `report` section of config.json, and writes "
                    "STUDY_DIR/report/report.md, report.html and PNG plots: levels ranked by measured "
                    "diversity among the minimal-shift pools, study A's verdict per arm with paired "
                    "bootstrap CIs (\"not testable\" below 3 pairs) and the budget interaction, accuracy "
                    "against level, diversity, label fidelity and shift within each budget x proportion, "
                    "ID/OOD accuracy (study B) when the study has test domains, gate counts, fallbacks, "
                    "and a seeded sample of accepted rows per level.")
    parser.add_argument("study_dir", help="a study directory written by `jaxdiv run`")
    parser.add_argument("--metric", default="accuracy", help="the downstream metric column to report")
    parser.set_defaults(func=_report)


def _report(args) -> int:
    from jaxdiv.report.report import write_report

    print(f"report: {write_report(args.study_dir, args.metric)}")
    return 0
