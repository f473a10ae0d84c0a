"""docs/reliability.md: every fault case jaxdiv is tested against, and how it came out.

    python scripts/reliability_table.py                   # run tests/faults (the default suite's part)
    python scripts/reliability_table.py --slow            # ... with its slow cases too
    python scripts/reliability_table.py --elsewhere       # ... and the kill/resume and HTTP-fault
                                                          # tests that live beside their stage
    python scripts/reliability_table.py --junit r.xml     # read a finished run (pytest --junitxml)

A case is a test of tests/faults/ (or one of ELSEWHERE); its description is the test's docstring,
so the table cannot drift from what is asserted. The outcome is pytest's, with the time taken.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Long-job faults tested beside their stage (they load the real SmolLM2 or run a study, so they
# are not repeated in tests/faults/).
ELSEWHERE = {
    "tests/generate/test_runner.py::test_killed_generate_resumes_without_duplicates_or_gaps":
        "`jaxdiv generate` SIGKILLed mid-run, then rerun: 0 duplicated and 0 lost rows, identical "
        "to an uninterrupted run",
    "tests/generate/test_runner.py::test_openai_backend_retries_faults_and_matches_the_generator":
        "OpenAI backend against the real SmolLM2 behind a local server: HTTP 429, 500, 503, a "
        "malformed and an empty reply are retried; a slow reply times out and is retried; out of "
        "retries is a failed completion; HTTP 404 is an error",
    "tests/train/test_checkpoint.py::test_sigkill_then_resume_is_bitwise_identical":
        "`jaxdiv train` SIGKILLed mid-run, then rerun: resumes from its checkpoint, bitwise "
        "identical to an uninterrupted run",
    "tests/study/test_study.py::test_killed_study_resumes_to_the_same_results":
        "`jaxdiv run` killed mid-study, then rerun: recomputes only the missing cells, same results",
}


def run_pytest(targets: list[str], slow: bool) -> Path:
    report = Path(tempfile.mkdtemp(prefix="jaxdiv-reliability-")) / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
               *(["-m", "slow or not slow"] if slow else []), *targets]
    print("running:", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=False)
    return report


def read_junit(path: Path) -> list[dict]:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
        module = case.get("classname", "")
        cases.append({"module": module, "name": case.get("name", ""), "seconds": float(case.get("time", 0)),
                      "outcome": outcome})
    return cases


def describe(module: str, name: str) -> str:
    """The test's docstring on one line (the case and the expected outcome)."""
    function_name = re.sub(r"\[.*\]$", "", name)
    nodeid = f"{module.replace('.', '/')}.py::{function_name}"
    if nodeid in ELSEWHERE:
        return ELSEWHERE[nodeid]
    function = getattr(importlib.import_module(module), function_name, None)
    doc = " ".join((function.__doc__ or "").split()) if function else ""
    return doc or name


def table(cases: list[dict]) -> list[str]:
    lines = ["| case | test | outcome | s |", "| --- | --- | --- | ---: |"]
    for case in cases:
        param = re.search(r"\[(.*)\]$", case["name"])
        text = describe(case["module"], case["name"]) + (f" *({param.group(1)})*" if param else "")
        test = f"`{case['module'].replace('.', '/')}.py::{case['name']}`"
        lines.append(f"| {text.replace('|', '/')} | {test} | {case['outcome']} | {case['seconds']:.1f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", action="store_true", help="include the slow fault cases")
    parser.add_argument("--elsewhere", action="store_true", help="also run the stage tests in ELSEWHERE")
    parser.add_argument("--junit", type=Path, help="read this junit XML instead of running pytest")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/reliability.md")
    args = parser.parse_args()
    targets = ["tests/faults"] + (list(ELSEWHERE) if args.elsewhere else [])
    cases = read_junit(args.junit or run_pytest(targets, args.slow))
    faults = [c for c in cases if c["module"].startswith("tests.faults.")]
    stage = [c for c in cases if not c["module"].startswith("tests.faults.")]
    passed = sum(c["outcome"] == "passed" for c in cases)
    lines = [
        "# Reliability: the fault cases and their outcomes",
        "",
        f"Generated by `python scripts/reliability_table.py{' --slow' if args.slow else ''}"
        f"{' --elsewhere' if args.elsewhere else ''}` (do not edit by hand) on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node() or 'this machine'}, "
        f"Python {platform.python_version()}: {passed} of {len(cases)} passed in "
        f"{sum(c['seconds'] for c in cases):.0f} s.",
        "",
        "Every error case checks exit status 2, exactly one `jaxdiv ...: error:` line on stderr naming "
        "the file, key or row, and no traceback (`tests/faults/conftest.py::assert_one_line_error`). "
        "Each case is the test's own docstring.",
        "",
        "## tests/faults/ (in the default suite)",
        "",
        *table(faults),
        "",
        "## Long-job faults tested beside their stage",
        "",
    ]
    if stage:
        lines += table(stage)
    else:
        lines += ["Not run for this table (`--elsewhere` runs them; they load SmolLM2 or run a study):", ""]
        lines += [f"- `{nodeid}`: {text}" for nodeid, text in ELSEWHERE.items()]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {passed} of {len(cases)} passed")
    return 0 if passed == sum(c["outcome"] != "skipped" for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
