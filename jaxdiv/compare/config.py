"""Config of `jaxdiv compare`: one fine-tune, run by the JAX engine and by its PyTorch twin."""

from __future__ import annotations

import dataclasses

from jaxdiv.configlib import ConfigError, param, section
from jaxdiv.train.config import TrainJobConfig


@dataclasses.dataclass(frozen=True)
class ParityConfig:
    """What rows both frameworks see, and the agreement they must reach."""

    train_rows: int = param(0, ge=0, help="use the first N training rows (0: all)")
    test_rows: int = param(0, ge=0, help="evaluate on the first N test rows (0: all)")
    logits_tolerance: float = param(1e-4, gt=0.0, help="max |logit difference| of the two initial models")
    loss_tolerance: float = param(
        1e-3, gt=0.0, help="max |loss difference| over the per-step curves. f32 kernels differ in "
                           "summation order (~1e-7 in the loss); Adam's normalisation turns such gradient "
                           "noise into parameter noise, so the gap grows slowly with the steps (measured: "
                           "7e-6 after 96 steps of configs/compare_trec.py); 1e-3 leaves a wide margin "
                           "yet catches any real difference (a wrong decay mask, schedule or clip)")
    torch_threads: int = param(0, ge=0, help="torch intra-op threads (0: torch's default)")


@dataclasses.dataclass(frozen=True)
class CompareJobConfig:
    """Fine-tune one classifier twice, JAX engine and PyTorch twin, and compare."""

    train: TrainJobConfig = section(TrainJobConfig)
    parity: ParityConfig = section(ParityConfig)
    workdir: str = param("runs/compare", help="outputs: config, compare.json, loss_curves.png, jax/")

    def check(self) -> None:
        if self.train.model.dropout:
            raise ConfigError("train.model.dropout: must be false for a parity comparison "
                              "(the frameworks draw different dropout masks)")
        if self.train.model.compute_dtype != "float32":
            raise ConfigError("train.model.compute_dtype: the comparison runs in float32")
        if not self.train.model.pretrained:
            raise ConfigError("train.model.pretrained: the twin loads the checkpoint's weights")
