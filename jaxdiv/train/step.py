"""The pure train and eval steps (jitted with explicit shardings by the loop and the run engine)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxdiv.train.config import OptimConfig
from jaxdiv.train.state import ModelSpec, lr_multiplier

Batch = dict[str, jax.Array]
State = dict[str, Any]


def _logits(spec: ModelSpec, params: dict[str, jax.Array], batch: Batch, dropout_key=None) -> jax.Array:
    # a batch carries token ids, or the frozen layers' precomputed output (see train.runs)
    return spec.apply(params)(batch.get("input_ids"), batch["attention_mask"], dropout_key=dropout_key,
                              features=batch.get("features"))


def _microbatches(batch: Batch, accum: int, constrain: Callable[[jax.Array], jax.Array]) -> Batch:
    """(B, ...) -> (accum, B/accum, ...), micro-batch j = rows j, j+accum, ...: every device keeps
    its own rows (a plain reshape would move the sharded axis to `accum`)."""
    def split(x):
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        return constrain(x)
    return jax.tree.map(split, batch)


LossFn = Callable[[dict[str, jax.Array], Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def classifier_loss(spec: ModelSpec) -> LossFn:
    """Mean cross-entropy of the classifier over a (micro-)batch, and its accuracy."""

    def loss_fn(params, batch, dropout_key):
        logits = _logits(spec, params, batch, dropout_key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"])}

    return loss_fn


def make_train_step(spec: ModelSpec, tx: optax.GradientTransformation, optim: OptimConfig,
                    loss_fn: LossFn | None = None,
                    constrain_micro: Callable[[jax.Array], jax.Array] = lambda x: x
                    ) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
    """`step(state, batch) -> (state, metrics)`: the loss (default: the classifier's) averaged
    over `optim.grad_accum` micro-batches, then clipped AdamW on the trainable params with the
    warmup/decay schedule. Dropout keys are fold_in(rng, step) (and the micro-batch index)."""
    loss_fn = loss_fn or classifier_loss(spec)
    grad_fn = jax.value_and_grad(
        lambda trainable, frozen, batch, key: loss_fn({**trainable, **frozen}, batch, key), has_aux=True)

    def step(state: State, batch: Batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        trainable, frozen = state["trainable"], state["frozen"]
        if optim.grad_accum == 1:
            (loss, aux), grads = grad_fn(trainable, frozen, batch, key)
        else:
            def body(carry, inputs):
                micro, index = inputs
                out = grad_fn(trainable, frozen, micro, jax.random.fold_in(key, index))
                return jax.tree.map(jnp.add, carry, out), None

            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, trainable, frozen, batch, key))
            micro = _microbatches(batch, optim.grad_accum, constrain_micro)
            ((loss, aux), grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(optim.grad_accum)))
            loss, aux, grads = jax.tree.map(lambda x: x / optim.grad_accum, (loss, aux, grads))
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        learning_rate = state["learning_rate"] * lr_multiplier(optim, state["step"], state["total_steps"])
        trainable = jax.tree.map(lambda p, u: p - learning_rate * u, trainable, updates)
        new_state = {**state, "trainable": trainable, "opt_state": opt_state, "step": state["step"] + 1}
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "learning_rate": learning_rate}
        return new_state, metrics

    return step


def make_eval_step(spec: ModelSpec) -> Callable[[State, Batch], dict[str, jax.Array]]:
    """`eval_step(state, batch) -> {loss, prediction}` per example (the host masks padding)."""

    def eval_step(state: State, batch: Batch):
        logits = _logits(spec, {**state["trainable"], **state["frozen"]}, batch)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        return {"loss": loss, "prediction": jnp.argmax(logits, -1).astype(jnp.int32)}

    return eval_step
