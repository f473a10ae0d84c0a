"""Config sections of the score stage (frozen dataclasses; see `jaxdiv.configlib`)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxdiv.configlib import ConfigError, param, section
from jaxdiv.data.tasks import TaskConfig
from jaxdiv.sharding import MeshConfig


@dataclasses.dataclass(frozen=True)
class DiversityConfig:
    """The embedding-diversity kernel: block sizes, DCScore temperature, k-means, spectrum."""

    block_size: int = param(1024, ge=8, help="rows/columns per tile of the blocked n x n terms "
                                             "(memory is O(n*block + d^2))")
    vendi_route: Literal["auto", "dual", "gram"] = param(
        "auto", help="eigenvalues from the d x d dual X^T X/n ('dual'), the n x n Gram XX^T/n "
                     "('gram'), or whichever is smaller ('auto'); the value does not depend on it")
    dcscore_temperature: float = param(1.0, gt=0.0, help="DCScore temperature tau in softmax(XX^T/tau)")
    near_duplicate_threshold: float = param(0.95, ge=-1.0, le=1.0,
                                            help="a row is a near duplicate when its nearest other "
                                                 "row has cosine >= this")
    kmeans_clusters: int = param(50, ge=1, help="k of k-means (capped at the number of rows)")
    kmeans_iterations: int = param(25, ge=0, help="Lloyd iterations after k-means++ seeding")
    logdet_ridge: float = param(1e-3, gt=0.0, help="eps in log det(I + K/(n eps)) = sum log(1 + lambda/eps)")
    seed: int = param(0, help="seed of k-means++ seeding")


@dataclasses.dataclass(frozen=True)
class LexicalConfig:
    """Lexical diversity: n-gram statistics, self-BLEU, compression, self-repetition."""

    max_n: int = param(4, ge=1, help="distinct-n and n-gram entropy are reported for n = 1..max_n")
    self_bleu_max_exact: int = param(2000, ge=2, help="self-BLEU uses every other text as a reference "
                                                      "up to this many texts; above it a seeded sample "
                                                      "of this many texts (said so in the output)")
    self_repetition_n: int = param(4, ge=1, help="n-gram size of self-repetition")
    seed: int = param(0, help="seed of the self-BLEU sample")


@dataclasses.dataclass(frozen=True)
class ShiftConfig:
    """Distribution shift against the real training split (MMD^2, Frechet)."""

    median_sample: int = param(2000, ge=2, help="rows (seeded sample of both sets) used for the "
                                                "median-heuristic RBF bandwidth")
    min_rows_per_label: int = param(2, ge=2, help="per-label shift is reported where both sets have "
                                                  "at least this many rows of the label")
    frechet_pca_dims: int = param(16, ge=1, help="per-label Frechet where either set has no more rows of the "
                                                 "label than embedding dims (a covariance it cannot fit): "
                                                 "computed on the top min(rows - 1, this) principal "
                                                 "components of the real rows of the label, reported as "
                                                 "frechet_pca/<label> with frechet_pca_dims/<label>; "
                                                 "frechet_distance/<label> where rows exceed the dims")
    seed: int = param(0, help="seed of the bandwidth sample")


@dataclasses.dataclass(frozen=True)
class BootstrapConfig:
    """Confidence intervals by half-sampling (subsamples of n/2 rows drawn without replacement)."""

    samples: int = param(20, ge=0, help="number of half-samples (0: no confidence intervals)")
    level: float = param(0.95, gt=0.0, lt=1.0, help="confidence level of the interval")
    seed: int = param(0, help="seed of the subsamples")


@dataclasses.dataclass(frozen=True)
class EmbedderConfig:
    """The sentence embedder (a BERT-family safetensors checkpoint, mean pooled, L2 normalised)."""

    model: str = param("minilm-l6-v2", help="a registered asset name or a local checkpoint folder")
    batch_size: int = param(128, ge=1, help="texts per embedding batch (rounded up to the device count)")
    max_length: int = param(256, ge=8, help="tokens per text; longer texts are truncated")
    length_buckets: tuple[int, ...] = param((32, 64, 128, 256), help="padded sequence lengths; "
                                             "each batch is padded to the smallest bucket that fits")
    cache_dir: str = param("", help="embedding cache folder (empty: ~/.cache/jaxdiv/embeddings)")
    dtype: str = param("float32", help="compute dtype: float32 (matches sentence-transformers to 1e-5) or "
                       "bfloat16 (bf16 matmuls with f32 accumulation: faster on AMX/AVX512-BF16 CPUs and "
                       "accelerators, embeddings within ~1e-2)")

    def check(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype: {self.dtype!r} is not float32 or bfloat16")


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """Quality: duplicates, label fidelity, parse failures."""

    classifier_steps: int = param(300, ge=1, help="full-batch steps of the label-fidelity classifier")
    classifier_learning_rate: float = param(0.1, gt=0.0, help="Adam learning rate of that classifier")
    classifier_l2: float = param(1e-4, ge=0.0, help="L2 penalty of that classifier")
    seed: int = param(0, help="seed of the classifier initialisation")


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """The score stage's own settings: how a pool's columns are read and every section of the
    metric suite. The real task to compare against is passed to `score_pool` beside it."""

    text_column: str = param("text", help="pool column holding the text")
    label_column: str = param("label", help="pool column holding the intended label ('' for none)")
    parse_error_column: str = param("parse_error", help="pool column whose non-empty value marks a row "
                                                        "that failed to parse (absent: only blank texts do)")
    mesh: MeshConfig = section(MeshConfig)
    diversity: DiversityConfig = section(DiversityConfig)
    lexical: LexicalConfig = section(LexicalConfig)
    quality: QualityConfig = section(QualityConfig)
    shift: ShiftConfig = section(ShiftConfig)
    bootstrap: BootstrapConfig = section(BootstrapConfig)
    embedder: EmbedderConfig = section(EmbedderConfig)

    def check(self) -> None:
        if not self.text_column:
            raise ConfigError("text_column: must name a column")


@dataclasses.dataclass(frozen=True)
class ScoreJob(ScoreConfig):
    """`jaxdiv score`: the stage's settings plus the real task and where the report goes."""

    real: str = param("", help="a real task to measure shift and label fidelity against ('' for none)")
    task: TaskConfig = section(TaskConfig)
    workdir: str = param("", help="where the JSON report and the resolved config are written; empty: "
                         "runs/score/<pool name> (the pool folder's or file's name), so scoring a "
                         "second pool never overwrites the first")
