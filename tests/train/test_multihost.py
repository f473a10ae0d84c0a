"""Real multi-process training: 2 processes on localhost (gloo CPU collectives), 2 host devices
each, against 1 process with 4 devices. Same global batches, same losses (<= 1e-5)."""

import json
import socket
import subprocess
import sys

import numpy as np

from tests.train.conftest import ROOT, TINY, subprocess_env

OVERRIDES = TINY + ["optim.steps=6", "log.every=1", "task.name=trec", "mesh.data=4", "mesh.fsdp=1"]


def _command(workdir, *extra):
    args = [sys.executable, "-m", "jaxdiv", "train", "--config", str(ROOT / "configs/train_trec.py"),
            "--workdir", str(workdir)]
    for item in OVERRIDES + list(extra):
        args += ["--set", item]
    return args


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path, compilation_cache):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workers = [subprocess.Popen(
        _command(tmp_path / "multi", "distributed.mode=explicit", f"distributed.coordinator=127.0.0.1:{port}",
                 "distributed.num_processes=2", f"distributed.process_id={pid}"),
        cwd=ROOT, env=subprocess_env(compilation_cache, devices=2), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for pid in range(2)]
    single = subprocess.run(_command(tmp_path / "single"), cwd=ROOT, env=subprocess_env(compilation_cache, devices=4),
                            capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    for worker in workers:
        output = worker.communicate(timeout=400)[0]
        assert worker.returncode == 0, output[-3000:]

    multi, one = _records(tmp_path / "multi"), _records(tmp_path / "single")
    train = lambda records: [r["loss"] for r in records if r["split"] == "train"]
    assert len(train(multi)) == 6  # process 0 alone wrote the metrics
    np.testing.assert_allclose(train(multi), train(one), atol=1e-5)
    evals = lambda records: {r["split"]: r for r in records if r["split"].startswith("eval/")}
    for split, record in evals(one).items():
        assert abs(evals(multi)[split]["loss"] - record["loss"]) <= 1e-5
        assert evals(multi)[split]["accuracy"] == record["accuracy"]
    assert json.loads((tmp_path / "multi" / "results.json").read_text())["steps"] == 6
