"""The HF PEFT adapter layout, both ways, for LoRA models of both families (`jaxdiv.models.lora`).

    save_peft_adapter("out/adapter", model)          # adapter_config.json + adapter_model.safetensors
    peft.PeftModel.from_pretrained(transformers_model, "out/adapter")   # in PyTorch
    model = load_peft_adapter("out/adapter", base_model)                 # and back (also peft's own)

Tensors are named as `peft` saves them: "base_model.model.<module>.lora_A.weight" (rank, in) and
"...lora_B.weight" (out, rank), torch's (out, in) layout, and "base_model.model.<module>.weight"
/ ".bias" for modules trained whole (a classifier's head: PEFT's `modules_to_save`). The
config lists the wrapped modules by their full names, so peft wraps exactly those.

A merged checkpoint needs no adapter: `lora.merge_lora(model)`, then
`checkpoints.save_hf_checkpoint` for a decoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiv.models import bert, lora
from jaxdiv.models.checkpoints import CheckpointError, read_safetensors
from jaxdiv.models.llama import Llama

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
TASK_TYPES = {Llama: "CAUSAL_LM", bert.BertClassifier: "SEQ_CLS", bert.BertEncoder: "FEATURE_EXTRACTION"}
# adapter_config.json options that change what the tensors mean; only their defaults are read
_UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "rank_pattern": {},
                "alpha_pattern": {}, "layers_to_transform": None, "lora_bias": False}


def _whole_modules(model: nnx.Module) -> dict[str, nnx.Module]:
    """{transformers name: module} of the modules trained whole beside the adapters."""
    return {lora.hf_module_name(model, (name,)): getattr(model, name)
            for name in lora.FULLY_TRAINED.get(type(model), ())}


def save_peft_adapter(directory: str | Path, model: nnx.Module, *, base_model_name_or_path: str | None = None
                      ) -> Path:
    """Write the model's adapters (and whole-trained modules) as a PEFT LoRA adapter folder, atomically."""
    from safetensors.numpy import save_file

    from jaxdiv.io import atomic_path

    layers = list(lora.adapters(model))
    if not layers:
        raise ValueError("save_peft_adapter: the model has no LoRA adapters")
    ranks = {layer.lora_a.shape[1] for _, layer in layers}
    scalings = {layer.scaling for _, layer in layers}
    rates = {layer.dropout_rate for _, layer in layers}
    if len(ranks) > 1 or len(scalings) > 1 or len(rates) > 1:  # PEFT's rank/alpha_pattern: not written
        raise ValueError(f"save_peft_adapter: adapters differ in rank {ranks}, scaling {scalings} or dropout {rates}")
    (rank,), (scaling,), (rate,) = ranks, scalings, rates
    tensors, names = {}, []
    for path, layer in layers:
        name = lora.hf_module_name(model, path)
        names.append(name)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = np.asarray(layer.lora_a[...], np.float32).T
        tensors[f"{PREFIX}{name}.lora_B.weight"] = np.asarray(layer.lora_b[...], np.float32).T
    whole = _whole_modules(model)
    for name, module in whole.items():
        tensors[f"{PREFIX}{name}.weight"] = np.asarray(module.kernel[...], np.float32).T
        if module.bias is not None:
            tensors[f"{PREFIX}{name}.bias"] = np.asarray(module.bias[...], np.float32)
    config = {
        "peft_type": "LORA", "task_type": TASK_TYPES[type(model)], "r": rank, "lora_alpha": scaling * rank,
        "lora_dropout": rate, "target_modules": sorted(names), "modules_to_save": sorted(whole) or None,
        "base_model_name_or_path": base_model_name_or_path, "inference_mode": True, "init_lora_weights": True,
        "use_rslora": False, **_UNSUPPORTED,
    }
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return directory


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}")
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
    unsupported = {k: config[k] for k, default in _UNSUPPORTED.items() if config.get(k, default) not in (default, None)}
    if unsupported:
        raise CheckpointError(f"{path}: unsupported LoRA options {unsupported}")
    return config


def load_peft_adapter(directory: str | Path, model: nnx.Module, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The model (a `Llama`, `BertClassifier` or `BertEncoder` without adapters) with the PEFT
    adapter of `directory` on it, in place; returns it. Each module with lora_A/lora_B tensors
    is wrapped; whole-trained modules (`modules_to_save`) get their saved weights. A tensor for a
    module the model lacks, or of the wrong shape, raises `CheckpointError`."""
    directory = Path(directory)
    config = _read_config(directory)
    tensors = read_safetensors(directory / WEIGHTS_FILE)
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scaling = alpha / np.sqrt(rank) if config.get("use_rslora") else alpha / rank
    linears = {lora.hf_module_name(model, path): path for path, _ in lora.linear_layers(model)}
    rngs = rngs or nnx.Rngs(0)  # A and B are overwritten: the draw does not matter
    used = set()
    for name, path in linears.items():
        keys = (f"{PREFIX}{name}.lora_A.weight", f"{PREFIX}{name}.lora_B.weight")
        if keys[0] not in tensors:
            continue
        layer = lora.wrap(model, path, rank, scaling, float(config.get("lora_dropout", 0.0)), rngs)
        for key, variable in zip(keys, (layer.lora_a, layer.lora_b)):
            _set(variable, tensors, key, transposed=True, source=directory)
        used.update(keys)
    for name, module in _whole_modules(model).items():
        for leaf, variable in (("weight", module.kernel), ("bias", module.bias)):
            if variable is not None and f"{PREFIX}{name}.{leaf}" in tensors:
                _set(variable, tensors, f"{PREFIX}{name}.{leaf}", transposed=leaf == "weight", source=directory)
                used.add(f"{PREFIX}{name}.{leaf}")
    unused = sorted(set(tensors) - used)
    if unused:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: tensors that match no module of the "
                              f"{type(model).__name__}: {unused[:4]}")
    return model


def _set(variable: nnx.Variable, tensors: dict[str, np.ndarray], key: str, *, transposed: bool, source: Path) -> None:
    if key not in tensors:
        raise CheckpointError(f"{source / WEIGHTS_FILE}: missing tensor {key!r}")
    array = np.asarray(tensors[key], np.float32)
    array = array.T if transposed else array
    expected = variable.get_value().shape
    if array.shape != expected:
        raise CheckpointError(f"{source / WEIGHTS_FILE}: tensor {key!r} has shape {tensors[key].shape}, the "
                              f"model expects {expected[::-1] if transposed else expected}")
    variable.set_value(jnp.asarray(array, variable.get_value().dtype))
