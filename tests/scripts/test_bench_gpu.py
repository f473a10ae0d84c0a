"""scripts/bench_gpu.py --tiny: every section of the GPU benchmark runs at tiny shapes on the CPU and
writes jaxdiv's numbers beside its peer's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.md"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--tiny", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())
    peers = {"sft": ("jaxdiv tok/s", "transformers tok/s"), "classifier": ("jaxdiv ex/s", "torch twin ex/s"),
             "embedder": ("jaxdiv texts/s", "sentence-transformers texts/s"),
             "generation": ("jaxdiv tok/s", "transformers tok/s")}
    for section, (ours, peer) in peers.items():
        rows = results[section]
        assert rows, section
        for row in rows:
            assert row[ours] > 0 and row[peer] > 0, (section, row)
            assert row["ratio"] == pytest.approx(row[ours] / row[peer], rel=1e-6)
    assert [row["batch"] for row in results["generation"]] == [4, 8]
    assert 0 < results["sft"][0]["jaxdiv MFU %"] < 100
    text = out.read_text()
    for title in ("Decoder SFT step", "Classifier fine-tune step", "Embedder forward", "Pool generation",
                  "Launch on the device machine"):
        assert f"## {title}" in text
    assert text.count("| tiny |") == 5  # one table row per measured cell
    assert "--out $OUT/gpu.md" in text
