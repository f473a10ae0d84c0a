"""Ahead-of-time compilation of jaxdiv's programs for a TPU topology, on a CPU-only host.

As MaxText's `train_compile.py`: `jax.experimental.topologies` describes the pod's devices
(libtpu, the `tpu` extra), the config's mesh is laid over them, and each program is lowered
from `ShapeDtypeStruct`s carrying `NamedSharding`s and compiled by the TPU compiler. Nothing
is allocated: the model is built with `nnx.eval_shape`. The programs are the ones jaxdiv runs,
from the same builders: the classifier train step (`train.engine.build_program`), the
decoder's SFT step (the same, with `train.sft.lm_loss`), each full fine-tuning or LoRA (the
program's `lora` section), and the generator's prefill and decode
(`generate.sampler.JaxGenerator`).

    results = compile_programs(cfg)   # one ProgramResult per program
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiv.aot.config import PROGRAMS, ClassifierProgram, CompileConfig, SFTProgram
from jaxdiv.errors import JaxdivError
from jaxdiv.io import atomic_write_text

GiB = 1024**3
# HBM per chip by JAX device kind (Google Cloud TPU documentation).
HBM_BYTES = {"TPU v4": 32 * GiB, "TPU v5 lite": 16 * GiB, "TPU v5": 95 * GiB, "TPU v5p": 95 * GiB,
             "TPU v6 lite": 32 * GiB}
FLOPS_CONVENTION = ("Analytic FLOPs are matmul FLOPs, MaxText's convention: 6·N·T for the weights "
                    "(N the matmul weights, LM head included; T the tokens; 4·N·T under LoRA, whose "
                    "frozen weights get no gradient) plus the attention term with causal masking "
                    "counted once (forward 2·2·T·T/2·H·D per layer and row, x3 in training); decode "
                    "attends every cache slot. XLA's FLOPs (`cost_analysis()`) are "
                    "per device, of the program as compiled: every op, elementwise ones included, the "
                    "recomputed forward of a rematerialised train step, and masked attention in full; "
                    "a while loop's body is counted once, so the decode figure is one step of the chunk, "
                    "and a rematerialised train step (its layers one scan) may count fewer than its "
                    "layers.")


class AOTError(JaxdivError, RuntimeError):
    """The topology cannot be described (no libtpu, unknown name) or a program cannot be lowered."""


@dataclasses.dataclass(frozen=True)
class ProgramResult:
    name: str
    batch: str  # what one call processes, e.g. "64 x 4096 tokens"
    mesh: str  # data x fsdp x tensor
    hbm_bytes: int
    analytic_flops: float  # whole program, all devices
    devices: int
    compile_seconds: float
    # from the compiled program; all 0 when the compiler refused it (`refused` says why)
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    xla_flops: float = float("nan")  # per device
    refused: str = ""  # the TPU compiler's out-of-memory message

    @property
    def peak_bytes(self) -> int:
        """Per-device footprint: arguments + outputs not aliased to a donated argument + temporaries
        + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return not self.refused and self.peak_bytes <= self.hbm_bytes


# ---------------------------------------------------------------------------
# The topology.

@contextlib.contextmanager
def _stderr_to(file) -> Iterator[None]:
    """Redirect the process's stderr (file descriptor 2, which libtpu's C++ logging writes to)."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@functools.cache
def topology_devices(name: str) -> tuple[jax.Device, ...]:
    """The compile-only devices of a TPU topology, e.g. "v5e:16x16" (works without a TPU, and with
    JAX_PLATFORMS=cpu). libtpu's start-up warnings (no TPU environment variables on this host:
    irrelevant to compiling) are kept off stderr unless the description fails."""
    if importlib.util.find_spec("libtpu") is None:
        raise AOTError("libtpu is not installed: install the tpu extra (pip install -e '.[tpu]') to "
                       "compile for TPU topologies")
    from jax.experimental import topologies

    # compile-only devices touch no chip: several processes (parallel runs, tests) may load
    # libtpu at once, which its lock file (/tmp/libtpu_lockfile) would otherwise refuse
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    with tempfile.TemporaryFile("w+") as log:
        try:
            with _stderr_to(log):
                return tuple(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
        except Exception as err:  # libtpu's own error types; one line is enough
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.seek(0)
            sys.stderr.write(log.read())
            raise AOTError(f"topology {name!r}: {first}") from None


def hbm_bytes(device: jax.Device) -> int:
    if device.device_kind not in HBM_BYTES:
        raise AOTError(f"no HBM size known for device kind {device.device_kind!r}")
    return HBM_BYTES[device.device_kind]


# ---------------------------------------------------------------------------
# Abstract inputs.

def _abstract(shape: tuple[int, ...], dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _batch_inputs(mesh, rules, shapes: dict[str, tuple[tuple[int, ...], Any]]):
    from jaxdiv.sharding import batch_sharding

    inputs = {k: _abstract(shape, dtype, batch_sharding(mesh, len(shape), rules))
              for k, (shape, dtype) in shapes.items()}
    return inputs, {k: v.sharding for k, v in inputs.items()}


def _check_batch(what: str, batch: int, mesh, rules) -> None:
    from jaxdiv.sharding import shard_count

    shards = shard_count(mesh, rules, "batch")
    if batch % shards:
        raise AOTError(f"{what}.batch_size={batch} must divide by the {shards} batch shards of mesh "
                       f"data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} x tensor={mesh.shape['tensor']}")


def _mesh(mesh_cfg, devices, what: str):
    from jaxdiv.configlib import ConfigError
    from jaxdiv.sharding import make_mesh

    try:
        return make_mesh(mesh_cfg, devices)
    except ConfigError as err:
        raise ConfigError(f"{what}.{err}") from None


def _dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def _llama_config(cfg: CompileConfig):
    from jaxdiv.models.llama import LlamaConfig

    d = cfg.decoder
    return LlamaConfig(vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
                       num_layers=d.num_layers, num_heads=d.num_heads, num_kv_heads=d.num_kv_heads,
                       head_dim=d.head_dim, rope_theta=d.rope_theta, tie_embeddings=d.tie_embeddings,
                       eos_token_ids=(0,), pad_token_id=0)


# ---------------------------------------------------------------------------
# The programs: each returns (jitted function, abstract args, static kwargs, mesh, batch, analytic FLOPs).

def _train_program(what: str, program: ClassifierProgram | SFTProgram, devices, optim,
                   build_model: Callable[[], nnx.Module], batch_shapes: dict[str, tuple[tuple[int, ...], Any]],
                   loss: Callable, flops: float, num_labels: int = 0):
    """The engine's train step for one run (R = 1), as `jaxdiv train` runs it, of the model
    `build_model` makes (abstract), with `program`'s mesh and batch: every weight trains, or with
    `program.lora` the adapters (and a classifier's head) over a frozen base in lora.base_dtype.
    `loss(spec)` is the step's loss; `flops` its analytic count."""
    from jaxdiv.models import lora
    from jaxdiv.train.engine import build_program
    from jaxdiv.train.state import spec_of

    mesh, rules = _mesh(program.mesh, devices, f"{what}.mesh"), program.mesh.logical_axis_rules
    _check_batch(what, program.batch_size, mesh, rules)

    def model_with_adapters():
        model = build_model()
        # abstract: the adapters' init seed fixes nothing compiled
        return lora.apply_lora(model, program.lora, rngs=nnx.Rngs(0)) if program.lora.rank else model

    model = nnx.eval_shape(model_with_adapters)
    spec = spec_of(model, model.cfg, lora.trainable(model) if program.lora.rank else lambda path: True, num_labels,
                   frozen_dtype=jnp.dtype(program.lora.base_dtype))
    train = build_program(spec, optim, mesh, rules, 1, loss_fn=loss(spec),
                          batch_ndims={k: len(shape) for k, (shape, _) in batch_shapes.items()})
    batch = {k: _abstract((1,) + shape, dtype, train.batch_shardings[k]) for k, (shape, dtype) in batch_shapes.items()}
    return (train.train_step, (train.abstract_state(), batch, None), {}, mesh,
            f"{program.batch_size} x {program.max_length} tokens", flops)


def classifier_program(cfg: CompileConfig, devices):
    from jaxdiv.models import bert
    from jaxdiv.train.classifier import classifier_loss
    from jaxdiv.train.config import OptimConfig
    from jaxdiv.train.metrics import bert_train_flops

    c = cfg.classifier
    arch = bert.BertConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
                           num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size)
    shape = (c.batch_size, c.max_length)
    return _train_program(
        "classifier", c, devices, OptimConfig(batch_size=c.batch_size),
        lambda: bert.BertClassifier(arch, c.num_labels, dtype=_dtype(c.compute_dtype), rngs=nnx.Rngs(cfg.seed)),
        {"input_ids": (shape, jnp.int32), "attention_mask": (shape, jnp.int32), "labels": (shape[:1], jnp.int32)},
        classifier_loss, bert_train_flops(arch, c.num_labels, c.batch_size, c.max_length, lora=bool(c.lora.rank)),
        num_labels=c.num_labels)


def sft_program(cfg: CompileConfig, devices):
    from jaxdiv.models import llama
    from jaxdiv.train.config import OptimConfig
    from jaxdiv.train.sft import llama_train_flops, lm_loss

    s = cfg.sft
    arch = _llama_config(cfg)
    shape = (s.batch_size, s.max_length)
    return _train_program(
        "sft", s, devices, OptimConfig(batch_size=s.batch_size, grad_accum=s.grad_accum),
        lambda: llama.Llama(arch, rngs=nnx.Rngs(cfg.seed), dtype=_dtype(s.compute_dtype), remat=s.remat),
        {k: (shape, jnp.int32) for k in ("input_ids", "attention_mask", "loss_mask")}, lm_loss,
        llama_train_flops(arch, s.batch_size, s.max_length, causal_once=True, lora=bool(s.lora.rank)))


def _generator(cfg: CompileConfig, devices):
    """A JaxGenerator over the abstract decoder, its abstract sharded params, the mesh and its rules."""
    from tokenizers import Tokenizer, models

    from jaxdiv.generate.sampler import JaxGenerator
    from jaxdiv.models import llama
    from jaxdiv.models.tokenizer import ChatTokenizer
    from jaxdiv.train.state import _path, param_shardings, spec_of

    g = cfg.generate
    mesh, rules = _mesh(g.mesh, devices, "generate.mesh"), g.mesh.logical_axis_rules
    _check_batch("generate", g.batch_size, mesh, rules)
    arch = _llama_config(cfg)
    dtype = _dtype(g.dtype)
    model = nnx.eval_shape(lambda: llama.Llama(arch, rngs=nnx.Rngs(cfg.seed), dtype=dtype, param_dtype=dtype))
    spec = spec_of(model, arch)
    shardings = param_shardings(spec, mesh, rules)
    params = nnx.from_flat_state([(_path(k), _abstract(v.shape, dtype, shardings[k]))
                                  for k, v in spec.initial.items()])
    # the device programs take token ids; the tokenizer (host side) contributes only EOS/pad ids
    tokenizer = ChatTokenizer(Tokenizer(models.BPE()), "", eos_token_ids=(0,), pad_token_id=0)
    generator = JaxGenerator(model, tokenizer, mesh=mesh, rules=rules, batch_buckets=(g.batch_size,),
                             prompt_buckets=(g.prompt_length,), decode_chunk=g.decode_chunk)
    return generator, params, mesh, rules, arch


def _row_inputs(mesh, rules, batch: int):
    names = (("seeds", jnp.uint32), ("row_ids", jnp.uint32), ("temperature", jnp.float32),
             ("top_p", jnp.float32), ("min_p", jnp.float32))
    return _batch_inputs(mesh, rules, {k: ((batch,), dtype) for k, dtype in names})[0]


def prefill_program(cfg: CompileConfig, devices):
    from jaxdiv.models.llama import forward_flops

    g = cfg.generate
    generator, params, mesh, rules, arch = _generator(cfg, devices)
    shape = (g.batch_size, g.prompt_length)
    prompt, _ = _batch_inputs(mesh, rules, {"tokens": (shape, jnp.int32), "mask": (shape, jnp.bool_)})
    rows = _row_inputs(mesh, rules, g.batch_size)
    args = (params, prompt["tokens"], prompt["mask"], rows["seeds"], rows["row_ids"], rows["temperature"],
            rows["top_p"], rows["min_p"])
    static = dict(slots=g.prompt_length + g.new_tokens, top_k=g.top_k, use_top_p=g.top_p)
    flops = forward_flops(arch, g.batch_size, g.prompt_length, g.prompt_length / 2)
    return generator._prefill, args, static, mesh, f"{g.batch_size} x {g.prompt_length} prompt tokens", flops


def decode_program(cfg: CompileConfig, devices):
    from jaxdiv.models.llama import KVCache, forward_flops
    from jaxdiv.sharding import named_sharding
    from jaxdiv.train.state import replicated

    g = cfg.generate
    generator, params, mesh, rules, arch = _generator(cfg, devices)
    slots = g.prompt_length + g.new_tokens
    cache_shape = KVCache.layer_shape(arch, g.batch_size, slots)
    cache_sharding = named_sharding(mesh, KVCache.LOGICAL_AXES, rules)
    cache = KVCache(*([_abstract(cache_shape, _dtype(g.dtype), cache_sharding)] * arch.num_layers
                      for _ in range(2)))
    inputs, _ = _batch_inputs(mesh, rules, {"out": ((g.batch_size, g.new_tokens + 1), jnp.int32),
                                            "done": ((g.batch_size,), jnp.bool_),
                                            "key_mask": ((g.batch_size, slots), jnp.bool_),
                                            "lengths": ((g.batch_size,), jnp.int32),
                                            "max_new": ((g.batch_size,), jnp.int32)})
    rows = _row_inputs(mesh, rules, g.batch_size)
    start = _abstract((), jnp.int32, replicated(mesh))
    args = (params, cache, inputs["out"], inputs["done"], inputs["key_mask"], inputs["lengths"], inputs["max_new"],
            rows["seeds"], rows["row_ids"], rows["temperature"], rows["top_p"], rows["min_p"], start)
    static = dict(prompt_bucket=g.prompt_length, num_steps=g.decode_chunk, top_k=g.top_k, use_top_p=g.top_p)
    flops = forward_flops(arch, g.batch_size, g.decode_chunk, slots)
    return (generator._decode, args, static, mesh,
            f"{g.batch_size} rows x {g.decode_chunk} steps, {slots} slots", flops)


PROGRAM_BUILDERS: dict[str, Callable] = {"classifier": classifier_program, "sft": sft_program,
                                         "prefill": prefill_program, "decode": decode_program}


# ---------------------------------------------------------------------------
# Compile and measure.

def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def compile_program(name: str, cfg: CompileConfig, devices) -> ProgramResult:
    function, args, static, mesh, batch, analytic = PROGRAM_BUILDERS[name](cfg, devices)
    start = time.perf_counter()
    common = dict(name=name, batch=batch, mesh="x".join(str(mesh.shape[a]) for a in mesh.axis_names),
                  hbm_bytes=hbm_bytes(devices[0]), analytic_flops=analytic, devices=len(devices))
    try:
        compiled = function.lower(*args, **static).compile()
    except (ValueError, TypeError) as err:  # e.g. a dimension that does not divide by its mesh axis
        first = str(err).strip().splitlines()[0]
        raise AOTError(f"{name}: cannot lower for {cfg.topology}: {first}") from None
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        # the TPU compiler refuses a program that cannot fit its HBM: that is the verdict
        return ProgramResult(**common, compile_seconds=time.perf_counter() - start,
                             refused=str(err).strip().splitlines()[0])
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return ProgramResult(
        **common, compile_seconds=seconds,
        argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes), xla_flops=_flops(compiled))


def compile_programs(cfg: CompileConfig, progress: Callable[[str], None] = lambda _: None) -> list[ProgramResult]:
    devices = topology_devices(cfg.topology)
    results = []
    for name in cfg.programs:
        progress(f"compiling {name} for {cfg.topology} ({len(devices)} x {devices[0].device_kind}) ...")
        results.append(compile_program(name, cfg, devices))
    return results


# ---------------------------------------------------------------------------
# Output.

HEADERS = ("program", "per call", "mesh d x f x t", "args GiB", "out GiB", "temp GiB", "peak GiB",
           "HBM GiB", "fits", "XLA TFLOP/dev", "analytic TFLOP/dev", "compile s")


def table_rows(results: list[ProgramResult]) -> list[tuple]:
    gib = lambda b, r: "-" if r.refused else f"{b / GiB:.2f}"
    return [(r.name, r.batch, r.mesh, gib(r.argument_bytes, r), gib(r.output_bytes - r.alias_bytes, r),
             gib(r.temp_bytes, r), gib(r.peak_bytes, r), f"{r.hbm_bytes / GiB:.2f}",
             "yes" if r.fits else "NO", "-" if r.refused else f"{r.xla_flops / 1e12:.4g}",
             f"{r.analytic_flops / r.devices / 1e12:.4g}", f"{r.compile_seconds:.1f}")
            for r in results]


def verdict(result: ProgramResult) -> str:
    """Why a program does not fit, in one line."""
    if result.refused:
        return f"the TPU compiler refused it: {result.refused}"
    return f"{result.peak_bytes / GiB:.2f} GiB per device > {result.hbm_bytes / GiB:.2f} GiB HBM"


def _variant(cfg: CompileConfig) -> tuple[list[str], list[str]]:
    """What sets a run apart from the default one of its decoder and topology: the programs when
    only some ran, and the LoRA settings when set."""
    programs = [] if tuple(cfg.programs) == PROGRAMS else list(cfg.programs)
    settings = []
    for name, program in (("classifier", cfg.classifier), ("sft", cfg.sft)):
        if program.lora.rank:
            settings.append(f"{name}.lora.rank={program.lora.rank}")
        if program.lora.rank and program.lora.base_dtype != "float32":
            settings.append(f"{name}.lora.base_dtype={program.lora.base_dtype}")
    return programs, settings


def report_key(cfg: CompileConfig) -> str:
    """The report section a run (re)writes: decoder and topology, plus what sets the run apart (so
    a partial or LoRA run never drops the rows of another)."""
    programs, settings = _variant(cfg)
    return " ".join([cfg.decoder.name, cfg.topology] + [",".join(programs)] * bool(programs) + settings)


def _fine_tuning(lora_cfg) -> str:
    if not lora_cfg.rank:
        return "full fine-tuning"
    targets = ", ".join(lora_cfg.target_modules) or "every projection"
    return f"LoRA rank {lora_cfg.rank} on {targets} over a {lora_cfg.base_dtype} frozen base"


def markdown_section(cfg: CompileConfig, results: list[ProgramResult], device_kind: str) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    programs, settings = _variant(cfg)
    variant = ": " + ", ".join(programs + settings) if programs or settings else ""
    lines = [f"## {cfg.decoder.name} on {cfg.topology} ({results[0].devices} x {device_kind}){variant}", "",
             f"Compiled {when} by `jaxdiv compile` (jax {jax.__version__}). SFT: {_fine_tuning(cfg.sft.lora)}"
             f", batch {cfg.sft.batch_size} x {cfg.sft.max_length} tokens, remat={cfg.sft.remat}; "
             f"classifier: {_fine_tuning(cfg.classifier.lora)}. Out = outputs not aliased to donated inputs; "
             f"peak = args + out + temp + code.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    lines += [f"\n{r.name} does not fit: {verdict(r)}" for r in results if not r.fits]
    return "\n".join(lines) + "\n"


def write_report(path: str | Path, key: str, section: str) -> None:
    """(Re)write this key's section of the Markdown report, keeping every other section."""
    path = Path(path)
    header = ("# TPU programs compiled ahead of time\n\n"
              "Written by `jaxdiv compile` (configs/scale/): each of jaxdiv's device programs lowered "
              "with its mesh and logical-axis rules for a TPU topology and compiled by libtpu on a "
              "CPU-only host. Per-device bytes come from `memory_analysis()`; a program the TPU "
              "compiler refuses for want of HBM is marked NO with its message. Compile seconds are "
              f"wall time on the host that ran it.\n\n{FLOPS_CONVENTION}\n")
    blocks = re.findall(r"<!-- aot (.*?) -->\n(.*?)<!-- /aot \1 -->\n", path.read_text() if path.exists() else "",
                        re.S)
    sections = dict(blocks)
    sections[key] = section
    # the header is rewritten each time (it states the current conventions); sections keep their order
    text = header + "".join(f"\n<!-- aot {k} -->\n{v}<!-- /aot {k} -->\n" for k, v in sections.items())
    atomic_write_text(path, text)
