"""Optimizer, schedule, metrics and FLOP count against their references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiv.configlib import apply_overrides
from jaxdiv.models.bert import BertConfig
from jaxdiv.train.config import OptimConfig
from jaxdiv.train.metrics import bert_train_flops, classification_metrics
from jaxdiv.train.state import learning_rate_schedule, make_optimizer


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_schedule_matches_optax(decay):
    """Our schedule (a traced total, so vmapped runs each follow their own) equals optax's."""
    cfg = apply_overrides(OptimConfig(), [f"decay={decay}", "warmup_fraction=0.2", "learning_rate=3e-3"])
    total, warmup, peak = 50, 10, 3e-3
    after = {"cosine": optax.cosine_decay_schedule(peak, total - warmup),
             "linear": optax.linear_schedule(peak, 0.0, total - warmup),
             "constant": optax.constant_schedule(peak)}[decay]
    reference = optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])
    ours = jax.jit(lambda total, step: learning_rate_schedule(cfg, total)(step))
    for step in range(total + 2):
        assert float(ours(total, step)) == pytest.approx(float(reference(step)), abs=1e-9)


def test_optimizer_is_adamw_with_clipping():
    """Our optimizer equals optax.adamw after global-norm clipping, decay on the masked keys only."""
    cfg = apply_overrides(OptimConfig(), ["weight_decay=0.1", "max_grad_norm=0.5", "decay=constant", "learning_rate=1e-2",
                                          "warmup_fraction=0.0"])
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=3), jnp.float32)}
    ours = make_optimizer(cfg, frozenset({"w"}), total_steps=5)
    reference = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(
        1e-2, cfg.b1, cfg.b2, cfg.eps, weight_decay=0.1, mask={"w": True, "b": False}))
    p_ours, p_ref = params, params
    s_ours, s_ref = ours.init(params), reference.init(params)
    for step in range(5):
        grads = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
        u, s_ours = ours.update(grads, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = reference.update(grads, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    for k in params:
        np.testing.assert_allclose(p_ours[k], p_ref[k], atol=1e-6)


def test_classification_metrics_match_sklearn_and_float64():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    labels, predictions = rng.integers(0, 5, 200), rng.integers(0, 6, 200)
    losses = rng.random(200).astype(np.float32)
    got = classification_metrics(labels, predictions, losses)
    assert got["accuracy"] == pytest.approx(sklearn.accuracy_score(labels, predictions))
    assert got["macro_f1"] == pytest.approx(sklearn.f1_score(labels, predictions, average="macro"))
    assert got["loss"] == pytest.approx(float(np.mean(losses.astype(np.float64))), rel=1e-6)
    # a hand-checked case: class 0 F1 = 2/3, class 1 F1 = 0.8, class 2 never seen nor predicted
    assert classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), np.zeros(4))[
        "macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_flop_count_matches_xla_cost_analysis():
    """The analytic count of the forward pass (frozen_layers = all: no backward) agrees with
    XLA's own count of the compiled forward to within the uncounted elementwise work."""
    from flax import nnx

    from jaxdiv.models.bert import BertClassifier

    cfg = BertConfig(vocab_size=100, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=1024, max_position_embeddings=32)
    model = BertClassifier(cfg, 3, rngs=nnx.Rngs(0))
    ids = jnp.zeros((4, 32), jnp.int32)
    compiled = nnx.jit(lambda m, x: m(x, jnp.ones_like(x))).lower(model, ids).compile()
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    ours = bert_train_flops(cfg, 3, 4, 32, frozen_layers=2) - 2 * 4 * 2 * (256 * 256 + 256 * 3)
    assert 0.9 * xla["flops"] <= ours <= xla["flops"]
