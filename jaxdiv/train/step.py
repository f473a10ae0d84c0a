"""The pure train step of one run (the engine vmaps it over runs and jits it with shardings)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxdiv.train.config import OptimConfig
from jaxdiv.train.state import ModelSpec, decayed_keys, learning_rate_schedule, make_optimizer

Batch = dict[str, jax.Array]
State = dict[str, Any]
# loss_fn(params, batch, dropout_key) -> (mean loss, {metric: value})
LossFn = Callable[[dict[str, jax.Array], Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def _microbatches(batch: Batch, accum: int, constrain: Callable[[jax.Array], jax.Array]) -> Batch:
    """(B, ...) -> (accum, B/accum, ...), micro-batch j = rows j, j+accum, ...: every device keeps
    its own rows (a plain reshape would move the sharded axis to `accum`)."""
    def split(x):
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        return constrain(x)
    return jax.tree.map(split, batch)


def apply_gradients(spec: ModelSpec, optim: OptimConfig, state: State, grads: dict[str, jax.Array]) -> State:
    """One AdamW update of the trainable params on the run's own schedule (its `total_steps`)."""
    tx = make_optimizer(optim, decayed_keys(spec), state["total_steps"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
    return {**state, "trainable": optax.apply_updates(state["trainable"], updates), "opt_state": opt_state,
            "step": state["step"] + 1}


def make_train_step(spec: ModelSpec, optim: OptimConfig, loss_fn: LossFn,
                    constrain_micro: Callable[[jax.Array], jax.Array] = lambda x: x
                    ) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
    """`step(state, batch) -> (state, metrics)`: the loss averaged over `optim.grad_accum`
    micro-batches, then `apply_gradients`. Dropout keys are fold_in(rng, step) (and the
    micro-batch index)."""
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
        learning_rate = learning_rate_schedule(optim, state["total_steps"])(state["step"])
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "learning_rate": learning_rate}
        return apply_gradients(spec, optim, state, grads), metrics

    return step
