"""XLA compiler options for the programs that run the models (`jax.jit(..., compiler_options=...)`).

Per program, not process-wide `XLA_FLAGS`: a user's own flags and jaxdiv's other programs
(the diversity kernel's f32 matmuls) are left alone.

On CPU, XLA hands matmuls to YNNPACK, which by default also absorbs their elementwise
neighbours (bias, erf GELU, LayerNorm) into its own fused kernels. On the 2-core Xeon of
docs/benchmarks.md those epilogues ran slower than XLA's own fused loops: running each dot
alone (`individual_dot`) made the MiniLM forward 27% faster in bf16 and 10% in f32.
On GPU and TPU the option does not apply, and nothing is set.

Used by the embedder's forward pass only, where it was measured. The vmapped ablation
engine's program ran 2.5x slower with it (50 s against 20 s, compile included), and the
generator's decode measured neutral to slower, so those compile with XLA's defaults.
"""

from __future__ import annotations

import jax

_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def model_compiler_options(backend: str | None = None) -> dict[str, str] | None:
    """Options for jitting a model's forward pass on `backend` (default: JAX's)."""
    return dict(_CPU_OPTIONS) if (backend or jax.default_backend()) == "cpu" else None
