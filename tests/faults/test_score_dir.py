"""`jaxdiv score` without --workdir writes to runs/score/<pool name>: a second pool never
overwrites the first's report."""

import json

from jaxdiv.cli import main


def test_each_pool_gets_its_own_report_folder(tmp_path, monkeypatch, capfd, trec_task):
    """Two pools scored with the default workdir: two reports, each naming its own pool."""
    monkeypatch.chdir(tmp_path)
    names = trec_task.label_names
    rows = [{"text": r["text"], "label": names[r["label"]]} for r in trec_task.splits["validation"].select(range(16))]
    for name, part in (("first", rows[:8]), ("second", rows[8:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        code = main(["score", str(tmp_path / f"{name}.jsonl"), "--no-progress", "--set", "bootstrap.samples=0",
                     "--set", "diversity.kmeans_clusters=2", "--set", f"embedder.cache_dir={tmp_path / 'cache'}"])
        assert code == 0, capfd.readouterr().err[-2000:]
    reports = {name: json.loads((tmp_path / "runs/score" / name / "score_report.json").read_text())
               for name in ("first", "second")}
    assert reports["first"]["pool"].endswith("first.jsonl") and reports["second"]["pool"].endswith("second.jsonl")
    assert reports["first"]["n"] == reports["second"]["n"] == 8
    shares = {m["metric"]: m["value"] for m in reports["first"]["metrics"]}
    assert shares["rejected_share"] == 0.0 and shares["parse_failure_share"] == 0.0
