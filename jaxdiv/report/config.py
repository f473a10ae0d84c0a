"""How a study's report turns measurements into verdicts (the study config's `report` section)."""

from __future__ import annotations

import dataclasses

from jaxdiv.configlib import ConfigError, param


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Verdicts from measurements: which pool metrics rank the levels and gate the shift, and the
    paired bootstrap behind every interval."""

    diversity_metric: str = param("vendi_q1", help="headline diversity metric, a pools.parquet column: levels "
                                                   "are ranked by its mean over their pool replicates "
                                                   "(low = lowest, high = highest, moderate = the median rank)")
    shift_metric: str = param("mmd2", help="shift-to-real metric, a pools.parquet column: only levels whose "
                                           "mean lies within shift_tolerance of the lowest enter the verdict")
    shift_tolerance: float = param(0.02, ge=0.0, help="absolute tolerance over the lowest level's mean "
                                                      "shift_metric for a level to count as minimal shift")
    quality_metric: str = param("label_fidelity", help="quality metric, a pools.parquet column: plotted beside "
                                                       "diversity and used for the ID/OOD (quality vs "
                                                       "diversity) verdict")
    resamples: int = param(2000, ge=100, help="paired bootstrap resamples per interval")
    confidence: float = param(0.95, gt=0.0, lt=1.0, help="confidence of every interval (percentile bootstrap)")
    seed: int = param(0, help="seed of the bootstrap resampling and of the appendix's row sample")
    sample_rows: int = param(10, ge=0, help="accepted rows per level shown in the appendix (seeded draw)")

    def check(self) -> None:
        if self.diversity_metric == self.shift_metric:
            raise ConfigError(f"diversity_metric and shift_metric are both {self.diversity_metric!r}")
