"""Quality: exact duplicates, label fidelity (a probe on frozen embeddings), parse failures.

- exact_duplicate_rate: share of rows whose text (stripped of surrounding whitespace) already
  appeared in an earlier row; (n - distinct) / n.
- near_duplicate_rate comes from the embedding kernel (nearest other row at cosine >= threshold).
- label_fidelity: a multinomial logistic-regression probe is trained (full batch, Adam, L2) on the
  frozen embeddings of the real task's training split; the share of generated rows whose
  predicted label equals the intended label. The probe's accuracy on the real test split is
  reported beside it, as the ceiling that fidelity should be read against.
- rejected_share: rows left out of scoring for any reason (a generated pool's rejections:
  duplicates, copies, length, label mismatch, failed requests) / total rows;
  parse_failure_share: rows whose output could not be parsed at all (no text, or a label outside
  the task's) / total rows (both counted by the pool loader).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiv.score.config import QualityConfig
from jaxdiv.score.diversity import HIGHEST


def exact_duplicate_rate(texts: Sequence[str]) -> float:
    if not texts:
        return 0.0
    return 1.0 - len({t.strip() for t in texts}) / len(texts)


@functools.partial(jax.jit, static_argnames=("num_labels", "steps", "learning_rate", "l2"))
def _train_probe(x, y, key, *, num_labels, steps, learning_rate, l2):
    params = {"w": 0.01 * jax.random.normal(key, (x.shape[1], num_labels)), "b": jnp.zeros(num_labels)}
    optimizer = optax.adam(learning_rate)

    def loss(params):
        logits = jnp.matmul(x, params["w"], precision=HIGHEST) + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + l2 * jnp.sum(params["w"] ** 2)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return params


def train_probe(x: np.ndarray, y: Sequence[int], num_labels: int,
                cfg: QualityConfig = QualityConfig()) -> dict[str, jax.Array]:
    """A logistic-regression probe on frozen embeddings (the label-fidelity classifier)."""
    return _train_probe(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jax.random.key(cfg.seed),
                        num_labels=num_labels, steps=cfg.classifier_steps,
                        learning_rate=cfg.classifier_learning_rate, l2=cfg.classifier_l2)


def _logits(params: dict[str, jax.Array], x: np.ndarray) -> jax.Array:
    return jnp.matmul(jnp.asarray(x, jnp.float32), params["w"], precision=HIGHEST) + params["b"]


def predict(params: dict[str, jax.Array], x: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.argmax(_logits(params, x), axis=1))


def probabilities(params: dict[str, jax.Array], x: np.ndarray) -> np.ndarray:
    """(rows, labels) probe probabilities (the generate stage's label-fidelity gate reads them)."""
    return np.asarray(jax.nn.softmax(_logits(params, x), axis=1))


def label_fidelity(params: dict[str, jax.Array], x: np.ndarray, intended: Sequence[int]) -> float:
    return float(np.mean(predict(params, x) == np.asarray(intended)))
