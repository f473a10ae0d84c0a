"""The JAX fine-tune against its PyTorch twin on MiniLM's real weights (tiny budget: 6 steps).

Tolerances: initial logits <= 1e-4 (the issue's bound; measured ~1e-7, the two f32 encoders
differ only in summation order). Per-step losses <= 1e-4: over 6 steps at lr 5e-4 the
frameworks' f32 rounding differences (~1e-7 in the loss, ~1e-6 relative in the gradients)
move the params by far less than that; measured gaps are ~4e-7. Longer runs drift more
(Adam divides by sqrt(v), so gradient rounding noise becomes parameter noise), which is why
`jaxdiv compare`'s default tolerance is looser (1e-3; measured 7e-6 after 96 steps at batch 32).
"""

import json

import numpy as np
import pytest

from tests.compare.parity import STEPS, tiny_config

FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "twin_reference.npz"


@pytest.mark.torch
def test_twin_matches_jax_engine(tmp_path):
    pytest.importorskip("torch")
    from jaxdiv.compare.runner import run_compare

    report = run_compare(tiny_config(tmp_path), progress=False)
    assert report["initial_logits"]["max_abs_diff"] <= 1e-4
    jax_loss, torch_loss = (np.asarray(report["loss_curves"][k]) for k in ("jax", "torch"))
    assert len(jax_loss) == len(torch_loss) == STEPS
    np.testing.assert_allclose(jax_loss, torch_loss, rtol=0, atol=1e-4)
    assert jax_loss[-1] < jax_loss[0] - 0.01  # the runs really train: the curves are not flat
    assert report["test"]["jax"]["accuracy"] == pytest.approx(report["test"]["torch"]["accuracy"], abs=0.02)
    assert report["ok"]
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["loss_curves"]["torch"] == report["loss_curves"]["torch"]
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "config.json").read_text())["config_class"] == "CompareJobConfig"


def test_jax_engine_matches_stored_torch_reference(tmp_path):
    """Without torch: the JAX side against the twin's stored numbers (tests/compare/make_reference.py)."""
    from jaxdiv.compare.runner import run_jax_side

    reference = np.load(FIXTURE)
    ours = run_jax_side(tiny_config(tmp_path), progress=False)
    np.testing.assert_allclose(ours.initial_logits, reference["initial_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours.loss, reference["loss"], rtol=0, atol=1e-4)
    assert ours.test["accuracy"] == pytest.approx(float(reference["test_accuracy"]), abs=0.02)
