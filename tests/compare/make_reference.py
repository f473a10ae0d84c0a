"""Regenerate tests/compare/fixtures/twin_reference.npz: the PyTorch twin's numbers on the tiny
comparison of `parity.py` (needs torch), so the default test run checks the JAX engine against
fixed PyTorch numbers without torch.

    python tests/compare/make_reference.py
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

FIXTURE = Path(__file__).parent / "fixtures" / "twin_reference.npz"


def main() -> None:
    from jaxdiv.compare.runner import run_compare
    from tests.compare.parity import tiny_config

    with tempfile.TemporaryDirectory() as tmp:
        report = run_compare(tiny_config(tmp), progress=False)
    assert report["ok"], report
    np.savez(FIXTURE, initial_logits=np.asarray(report["initial_logits"]["torch"], np.float32),
             loss=np.asarray(report["loss_curves"]["torch"], np.float64),
             test_accuracy=report["test"]["torch"]["accuracy"], test_macro_f1=report["test"]["torch"]["macro_f1"],
             versions=json.dumps(report["versions"]))
    print(f"wrote {FIXTURE}: losses {report['loss_curves']['torch']}")


if __name__ == "__main__":
    main()
