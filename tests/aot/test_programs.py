"""What `jaxdiv compile` builds on, checked without libtpu: an abstract model describes the same
params as a real one, per-layer remat leaves the SFT loss and gradients unchanged, the analytic
FLOPs follow the stated convention, and a LoRA program trains only the adapters (lowered here for
the CPU devices; tests/aot/test_compile.py compiles it for a TPU topology)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models import llama, lora
from jaxdiv.train.sft import llama_train_flops, lm_loss
from jaxdiv.train.state import spec_of

ARCH = llama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, eos_token_ids=(0,))


def test_abstract_spec_matches_real():
    real = spec_of(llama.Llama(ARCH, rngs=nnx.Rngs(0)), ARCH)
    abstract = spec_of(nnx.eval_shape(lambda: llama.Llama(ARCH, rngs=nnx.Rngs(0))), ARCH)
    assert abstract.initial.keys() == real.initial.keys()
    for key, value in real.initial.items():
        assert isinstance(abstract.initial[key], jax.ShapeDtypeStruct)
        assert (abstract.initial[key].shape, abstract.initial[key].dtype) == (value.shape, value.dtype)
    assert abstract.logical_axes == real.logical_axes and abstract.param_count == real.param_count


@pytest.mark.parametrize("adapters", [False, True])
def test_remat_keeps_loss_and_gradients(adapters):
    """Also with LoRA on a bf16 base, whose frozen kernels the rematerialised layer scan reads in
    place (`lax.switch`) rather than stacked."""
    model = llama.Llama(ARCH, rngs=nnx.Rngs(1))
    if adapters:
        lora.apply_lora(model, lora.LoRAConfig(rank=4), rngs=nnx.Rngs(2))
        for _, layer in lora.adapters(model):  # a nonzero update, so the adapters shape the loss
            layer.lora_b.set_value(jax.random.normal(jax.random.key(3), layer.lora_b.shape) * 0.1)
    spec = spec_of(model, ARCH, lora.trainable(model) if adapters else lambda path: True,
                   frozen_dtype=jnp.bfloat16)
    model.remat = True
    rematted = dataclasses.replace(spec, graphdef=nnx.split(model, nnx.Param)[0])
    rng = np.random.default_rng(0)
    batch = {"input_ids": jnp.asarray(rng.integers(1, 64, (2, 12)), jnp.int32),
             "attention_mask": jnp.ones((2, 12), jnp.int32),
             "loss_mask": jnp.asarray(np.r_[[0] * 4 + [1] * 8, [0] * 6 + [1] * 6].reshape(2, 12), jnp.int32)}
    params = {k: jnp.asarray(v) for k, v in spec.initial.items()}
    value = lambda s: jax.jit(jax.value_and_grad(lambda p: lm_loss(s)(p, batch, None)[0]))(params)
    (loss, grads), (remat_loss, remat_grads) = value(spec), value(rematted)
    assert float(loss) == pytest.approx(float(remat_loss), rel=1e-6) and float(loss) > 3.0  # ~ln 64 at init
    for key in grads:  # those of f32 params (a bf16 kernel's gradient is rounded to bf16)
        if grads[key].dtype == jnp.float32:
            np.testing.assert_allclose(remat_grads[key], grads[key], rtol=1e-5, atol=1e-6, err_msg=key)
    if adapters:
        assert any(float(jnp.abs(grads[k]).max()) > 0 for k in grads if k.endswith("lora_a"))


def test_causal_flops_convention():
    batch, length = 4, 128
    dense = 6 * batch * length * (ARCH.num_params - ARCH.vocab_size * ARCH.hidden_size  # embedding lookup
                                  - (2 * ARCH.num_layers + 1) * ARCH.hidden_size  # norm scales
                                  + ARCH.vocab_size * ARCH.hidden_size)  # the tied LM head's matmul
    attention_once = 6 * batch * length**2 * ARCH.num_heads * ARCH.head_dim * ARCH.num_layers
    assert llama_train_flops(ARCH, batch, length, causal_once=True) == pytest.approx(dense + attention_once)
    assert llama_train_flops(ARCH, batch, length) == pytest.approx(dense + 2 * attention_once)


def test_lora_flops_match_xla_without_the_frozen_weights_gradients():
    """Under LoRA the backward of the frozen weights is their input gradient alone: 4·N·T plus
    attention, as XLA counts the compiled gradient (6·N·T would exceed it; rank-1 adapters: their
    own matmuls are noise)."""
    from jaxdiv.models import lora

    arch = dataclasses.replace(ARCH, vocab_size=256, hidden_size=128, intermediate_size=512, num_layers=2,
                               head_dim=32)
    model = nnx.eval_shape(lambda: lora.apply_lora(llama.Llama(arch, rngs=nnx.Rngs(0)), lora.LoRAConfig(rank=1),
                                                   rngs=nnx.Rngs(1)))
    spec = spec_of(model, arch, lora.trainable(model))
    batch = {k: jnp.ones((4, 32), jnp.int32) for k in ("input_ids", "attention_mask", "loss_mask")}
    grad = jax.jit(jax.grad(lambda trainable, frozen: lm_loss(spec)({**trainable, **frozen}, batch, None)[0]))
    cost = grad.lower(*spec.split(spec.initial)).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    assert 0.95 * xla <= llama_train_flops(arch, 4, 32, lora=True) <= xla  # XLA also counts elementwise work


def test_lora_programs_train_only_the_adapters_over_a_frozen_base():
    from pathlib import Path

    from jaxdiv.aot.compile import _llama_config, classifier_program, sft_program
    from jaxdiv.configlib import load_config
    from jaxdiv.models import lora

    tiny = Path(__file__).parents[2] / "configs/scale/tiny.py"
    cfg = load_config(tiny, ["sft.lora.rank=4", "sft.lora.base_dtype=bfloat16", "classifier.lora.rank=4"])
    step, (state, batch, constants), static, _, _, flops = sft_program(cfg, jax.devices())
    adapters = {k: v for k, v in state["trainable"].items() if lora.is_adapter(k.split("/"))}
    assert len(adapters) == len(state["trainable"]) == 2 * 7 * cfg.decoder.num_layers  # A and B of each projection
    frozen = state["frozen"]
    assert {k for k, v in frozen.items() if v.dtype == jnp.bfloat16} == {k for k in frozen if k.endswith("/kernel")}
    moments = [v for v in jax.tree.leaves(state["opt_state"]) if v.ndim > 1]
    assert sum(v.size for v in moments) == 2 * sum(v.size for v in adapters.values())  # Adam's mu, nu
    step.lower(state, batch, constants, **static)  # traces with the bf16 base
    weights = llama.forward_flops(_llama_config(cfg), cfg.sft.batch_size, cfg.sft.max_length, 0)
    assert flops == pytest.approx(sft_program(load_config(tiny), jax.devices())[5] - weights)

    state = classifier_program(cfg, jax.devices())[1][0]
    assert {k.split("/")[0] for k in state["trainable"] if not lora.is_adapter(k.split("/"))} == {"classifier"}
