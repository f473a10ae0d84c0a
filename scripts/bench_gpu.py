"""The standing GPU benchmark: jaxdiv beside its peers on one accelerator, one command, one run.

    python scripts/bench_gpu.py                 # real shapes (one H200: < 8 min) -> docs/benchmarks/gpu.md
    python scripts/bench_gpu.py --tiny --out /tmp/gpu.md   # every section at tiny shapes, on a CPU

Sections, all models randomly initialised at the real shapes (speed does not depend on the
weight values; correctness is tested on the CPU against the real weights), bf16 compute on
both sides:
1. decoder SFT step (`jaxdiv.train.engine.build_program` with `sft.lm_loss`, AdamW, per-layer
   remat) at seq 2048 on the Llama-3.2-1B and SmolLM2-1.7B shapes: tokens/s and MFU
   (6·N·T + causal attention counted once, against 788 TFLOP/s, the H200's measured bf16
   dense rate; on a CPU against this machine's measured bf16 matmul rate), beside
   transformers' `LlamaForCausalLM` (sdpa attention, gradient checkpointing, fused AdamW);
2. classifier fine-tune step (MiniLM shape, seq 128) beside the PyTorch twin
   (`jaxdiv.compare.torch_twin.train_twin`, autocast bf16), examples/s;
3. the embedder's forward (`models.bert.sentence_embeddings`, MiniLM shape) beside
   sentence-transformers (Transformer + mean Pooling + Normalize) on the same weights, texts/s;
4. pool generation (`generate.sampler.JaxGenerator`, SmolLM2-135M shape, sampling at
   temperature 0.8 / top-p 0.95, a fixed number of new tokens) at batch 64 and 256 beside
   transformers' `generate`, tokens/s.

Imports stay within what the GPU machine has (jax, flax, optax, orbax, transformers, torch,
sentence-transformers) plus the wheels gpu.md's launch command carries (datasets, dill,
multiprocess: `jaxdiv.train` imports `datasets`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# JAX and PyTorch share the GPU in one process: JAX takes half (not its default 75%, preallocated)
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H200_BF16_FLOPS = 788e12  # measured bf16 dense matmul rate of one H200 (the figure)

# HF LlamaConfig fields of the decoder shapes
DECODERS = {
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                         tie_word_embeddings=True),
    "smollm2-1.7b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, head_dim=64, rope_theta=130000.0,
                         tie_word_embeddings=True),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                         tie_word_embeddings=True),
}
TINY_DECODER = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                    tie_word_embeddings=True)
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536)
TINY_ENCODER = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128)


@dataclasses.dataclass(frozen=True)
class Sizes:
    sft_shapes: tuple[str, ...]
    sft_batch: int
    sft_length: int
    sft_steps: int
    classifier_batch: int
    classifier_length: int
    classifier_steps: int
    embed_batch: int
    embed_length: int
    embed_repeats: int
    gen_shape: str
    gen_batches: tuple[int, ...]
    gen_prompt: int
    gen_new: int


FULL = Sizes(("llama-3.2-1b", "smollm2-1.7b"), 8, 2048, 6, 256, 128, 12, 1024, 128, 10,
             "smollm2-135m", (64, 256), 128, 256)
TINY = Sizes(("tiny",), 8, 64, 2, 8, 32, 2, 16, 32, 2, "tiny", (4, 8), 16, 16)


def decoder_fields(name: str) -> dict:
    return TINY_DECODER if name == "tiny" else DECODERS[name]


def median_seconds(run, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_flops() -> tuple[float, str]:
    """The MFU denominator: the H200's measured rate on a GPU, else this machine's bf16 matmul rate."""
    if jax.default_backend() == "gpu":
        return H200_BF16_FLOPS, "788 TFLOP/s (H200 bf16 dense, measured)"
    n = 1024
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    seconds = median_seconds(lambda: matmul(a).block_until_ready(), 5)
    rate = 2 * n**3 / seconds
    return rate, f"{rate / 1e9:.0f} GFLOP/s (this machine's jitted bf16 matmul)"


def llama_arch(fields: dict):
    from jaxdiv.models.llama import LlamaConfig

    return LlamaConfig(vocab_size=fields["vocab_size"], hidden_size=fields["hidden_size"],
                       intermediate_size=fields["intermediate_size"], num_layers=fields["num_hidden_layers"],
                       num_heads=fields["num_attention_heads"], num_kv_heads=fields["num_key_value_heads"],
                       head_dim=fields["head_dim"], rope_theta=fields["rope_theta"],
                       tie_embeddings=fields["tie_word_embeddings"], eos_token_ids=(2,), pad_token_id=2)


def train_step_runner(spec, batch: dict[str, np.ndarray], loss_fn):
    """A run() of one jitted, sharded train step of `spec` on a fixed batch (the training loop's step)."""
    from jaxdiv.sharding import MeshConfig, make_mesh
    from jaxdiv.train import data as data_lib
    from jaxdiv.train.config import OptimConfig
    from jaxdiv.train.engine import build_program, init_args

    optim = OptimConfig(batch_size=len(batch["input_ids"]))
    mesh_cfg = MeshConfig(data=-1)
    program = build_program(spec, optim, make_mesh(mesh_cfg), mesh_cfg.logical_axis_rules, 1, loss_fn=loss_fn,
                            batch_ndims={k: v.ndim for k, v in batch.items()})
    device_batch = data_lib.global_batch({k: v[None] for k, v in batch.items()}, program.batch_shardings)
    holder = {"state": program.init(*init_args(spec, [None], [0], [1000], shared_frozen=True))}

    def run():
        holder["state"], metrics = program.train_step(holder["state"], device_batch, None)
        jax.block_until_ready(metrics)

    return run


# ---------------------------------------------------------------------------
# 1. Decoder SFT step.

def sft_section(sizes: Sizes, peak: float) -> list[dict]:
    import torch
    from flax import nnx
    from transformers import LlamaConfig as HFLlamaConfig, LlamaForCausalLM

    from jaxdiv.models import llama
    from jaxdiv.train.sft import llama_train_flops, lm_loss
    from jaxdiv.train.state import spec_of

    rows = []
    rng = np.random.default_rng(0)
    for name in sizes.sft_shapes:
        fields = decoder_fields(name)
        arch = llama_arch(fields)
        shape = (sizes.sft_batch, sizes.sft_length)
        ids = rng.integers(3, arch.vocab_size, shape).astype(np.int32)
        batch = {"input_ids": ids, "attention_mask": np.ones(shape, np.int32), "loss_mask": np.ones(shape, np.int32)}
        model = llama.Llama(arch, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, remat=True)
        spec = spec_of(model, arch)
        del model
        ours = median_seconds(train_step_runner(spec, batch, lm_loss(spec)), sizes.sft_steps)
        del spec
        flops = llama_train_flops(arch, *shape, causal_once=True)

        device = torch_device()
        torch.manual_seed(0)
        peer_model = LlamaForCausalLM(HFLlamaConfig(**fields, attn_implementation="sdpa")).to(device)
        (getattr(peer_model, "activation_checkpointing_enable", None) or peer_model.gradient_checkpointing_enable)()
        peer_model.train()
        optimizer = torch.optim.AdamW(peer_model.parameters(), lr=1e-5, fused=device.type == "cuda")
        tokens = torch.from_numpy(ids.astype(np.int64)).to(device)

        def peer_step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = peer_model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(peer_model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize()

        peer = median_seconds(peer_step, sizes.sft_steps)
        del peer_model, optimizer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        n_tokens = shape[0] * shape[1]
        rows.append({"shape": name, "batch": f"{shape[0]} x {shape[1]}", "jaxdiv tok/s": n_tokens / ours,
                     "jaxdiv MFU %": 100 * flops / ours / peak, "transformers tok/s": n_tokens / peer,
                     "transformers MFU %": 100 * flops / peer / peak, "ratio": peer / ours})
        print(f"sft {name}: jaxdiv {n_tokens / ours:.0f} tok/s, transformers {n_tokens / peer:.0f} tok/s", flush=True)
    return rows


# ---------------------------------------------------------------------------
# 2. Classifier fine-tune vs the PyTorch twin, 3. embedder vs sentence-transformers.

def bert_checkpoint(directory: Path, fields: dict) -> Path:
    """A randomly initialised BERT of this shape saved as transformers would (weights, config,
    WordPiece vocab), the one checkpoint both sides of sections 2 and 3 load."""
    import torch
    from transformers import BertConfig as HFBertConfig, BertModel

    torch.manual_seed(0)
    BertModel(HFBertConfig(**fields)).save_pretrained(directory)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = specials + [f"w{i}" for i in range(fields["vocab_size"] - len(specials))]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return directory


def classifier_section(sizes: Sizes, directory: Path) -> list[dict]:
    from jaxdiv.compare.torch_twin import build_twin, train_twin
    from jaxdiv.models.bert import load_bert_classifier
    from jaxdiv.train.config import OptimConfig
    from jaxdiv.train.data import EncodedRows
    from jaxdiv.train.classifier import classifier_loss
    from jaxdiv.train.state import spec_of

    num_labels, batch, length = 6, sizes.classifier_batch, sizes.classifier_length
    model = load_bert_classifier(directory, num_labels, dtype=jnp.bfloat16, dropout=False)
    spec = spec_of(model, model.cfg, model.trainable, num_labels)
    rng = np.random.default_rng(0)
    rows = EncodedRows(rng.integers(5, model.cfg.vocab_size, (batch, length)).astype(np.int32),
                       np.ones((batch, length), np.int32), rng.integers(0, num_labels, batch).astype(np.int32))
    ours = median_seconds(train_step_runner(spec, rows.take(np.arange(batch)), classifier_loss(spec)), sizes.classifier_steps)
    twin = build_twin(directory, spec).to(torch_device())
    timed = train_twin(twin, OptimConfig(batch_size=batch), rows, sizes.classifier_steps + 1, 0, progress=False,
                       compute_dtype="bfloat16")
    peer = statistics.median(timed["step_seconds"][1:])  # the first step warms up
    print(f"classifier: jaxdiv {batch / ours:.0f} ex/s, torch twin {batch / peer:.0f} ex/s", flush=True)
    return [{"shape": "MiniLM" if model.cfg.hidden_size == 384 else "tiny", "batch": f"{batch} x {length}",
             "jaxdiv ex/s": batch / ours, "torch twin ex/s": batch / peer, "ratio": peer / ours}]


def embedder_section(sizes: Sizes, directory: Path) -> list[dict]:
    import torch
    from flax import nnx
    from sentence_transformers import SentenceTransformer, models

    from jaxdiv.models.bert import load_bert_encoder, sentence_embeddings
    from jaxdiv.models.compiler import model_compiler_options

    batch, length = sizes.embed_batch, sizes.embed_length
    encoder = load_bert_encoder(directory, dtype=jnp.bfloat16)
    graphdef, state = nnx.split(encoder)
    forward = jax.jit(lambda state, ids, mask: sentence_embeddings(nnx.merge(graphdef, state), ids, mask),
                      compiler_options=model_compiler_options())
    rng = np.random.default_rng(0)
    ids = rng.integers(5, encoder.cfg.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    ids_device, mask_device = jnp.asarray(ids), jnp.asarray(mask)
    ours = median_seconds(lambda: forward(state, ids_device, mask_device).block_until_ready(), sizes.embed_repeats)

    device = torch_device()
    peer_model = SentenceTransformer(modules=[models.Transformer(str(directory), max_seq_length=length),
                                              models.Pooling(encoder.cfg.hidden_size, "mean"), models.Normalize()],
                                     device=str(device)).to(torch.bfloat16).eval()
    features = {"input_ids": torch.from_numpy(ids.astype(np.int64)).to(device),
                "attention_mask": torch.from_numpy(mask.astype(np.int64)).to(device)}

    def peer_forward():
        with torch.inference_mode():
            peer_model(dict(features))["sentence_embedding"]
        synchronize()

    peer = median_seconds(peer_forward, sizes.embed_repeats)
    print(f"embedder: jaxdiv {batch / ours:.0f} texts/s, sentence-transformers {batch / peer:.0f} texts/s", flush=True)
    return [{"shape": "MiniLM" if encoder.cfg.hidden_size == 384 else "tiny", "batch": f"{batch} x {length}",
             "jaxdiv texts/s": batch / ours, "sentence-transformers texts/s": batch / peer, "ratio": peer / ours}]


# ---------------------------------------------------------------------------
# 4. Pool generation vs transformers generate.

def generation_section(sizes: Sizes) -> list[dict]:
    import torch
    from flax import nnx
    from tokenizers import Tokenizer, models as tokenizer_models
    from transformers import LlamaConfig as HFLlamaConfig, LlamaForCausalLM

    from jaxdiv.generate.sampler import JaxGenerator, Request, SamplingParams
    from jaxdiv.models import llama
    from jaxdiv.models.tokenizer import ChatTokenizer

    fields = decoder_fields(sizes.gen_shape)
    arch = llama_arch(fields)
    model = llama.Llama(arch, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    # token ids in, token ids out: a word-level vocabulary of the model's size decodes them
    vocab = {f"t{i}": i for i in range(arch.vocab_size)}
    tokenizer = ChatTokenizer(Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="t0")), "",
                              eos_token_ids=(2,), pad_token_id=2)
    device = torch_device()
    torch.manual_seed(0)
    peer_model = LlamaForCausalLM(HFLlamaConfig(**fields, attn_implementation="sdpa")).to(device, torch.bfloat16).eval()
    sampling = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=sizes.gen_new)
    rng = np.random.default_rng(0)
    rows = []
    for batch in sizes.gen_batches:
        generator = JaxGenerator(model, tokenizer, batch_buckets=(batch,), prompt_buckets=(sizes.gen_prompt,),
                                 decode_chunk=16, stop_at_eos=False)
        prompts = [rng.integers(3, arch.vocab_size, sizes.gen_prompt).tolist() for _ in range(batch)]
        items = [(i, Request(i, ({"role": "user", "content": ""},), sampling, seed=i), ids)
                 for i, ids in enumerate(prompts)]

        def ours_run():  # the batch as `generate` runs it, from its token ids
            generator._run_batch(items, top_k=0, use_top_p=True)

        ours = median_seconds(ours_run, 2)
        ids = torch.tensor(prompts, device=device)

        def peer_run():
            with torch.no_grad():
                peer_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8,
                                    top_p=0.95, top_k=0, max_new_tokens=sizes.gen_new,
                                    min_new_tokens=sizes.gen_new, pad_token_id=2)
            synchronize()

        peer = median_seconds(peer_run, 2)
        new = batch * sizes.gen_new
        rows.append({"shape": sizes.gen_shape, "batch": batch, "prompt + new": f"{sizes.gen_prompt} + {sizes.gen_new}",
                     "jaxdiv tok/s": new / ours, "transformers tok/s": new / peer, "ratio": peer / ours})
        print(f"generation batch {batch}: jaxdiv {new / ours:.0f} tok/s, transformers {new / peer:.0f} tok/s",
              flush=True)
    return rows


# ---------------------------------------------------------------------------

LAUNCH = """```
# here, once: the wheels the GPU machine lacks (jaxdiv.train imports datasets)
echo /.whl/ >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
  -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# the device tool's run, carry [".whl"], timeout_s 600:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \\
  && PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 scripts/bench_gpu.py --out $OUT/gpu.md
```"""


def markdown_table(rows: list[dict]) -> str:
    headers = list(rows[0])
    cell = lambda v: f"{v:,.2f}" if isinstance(v, float) and v < 100 else (f"{v:,.0f}" if isinstance(v, float) else str(v))
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] +
                     ["| " + " | ".join(cell(r[h]) for h in headers) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="every section at tiny shapes (a CPU check)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "gpu.md"), help="the Markdown written")
    parser.add_argument("--sections", default="sft,classifier,embedder,generation", help="comma-separated subset")
    args = parser.parse_args()
    jax.config.update("jax_threefry_partitionable", True)
    sizes = TINY if args.tiny else FULL
    sections = args.sections.split(",")
    start = time.perf_counter()
    device = jax.devices()[0]
    peak, peak_text = peak_flops()
    import torch

    if args.tiny:
        # a CPU check: one torch thread each, as oversubscribed eager PyTorch stalls at every barrier
        torch.set_num_threads(1)
    results = {}
    if "sft" in sections:
        results["sft"] = sft_section(sizes, peak)
    with tempfile.TemporaryDirectory() as tmp:
        directory = bert_checkpoint(Path(tmp), TINY_ENCODER if args.tiny else MINILM)
        if "classifier" in sections:
            results["classifier"] = classifier_section(sizes, directory)
        if "embedder" in sections:
            results["embedder"] = embedder_section(sizes, directory)
    if "generation" in sections:
        results["generation"] = generation_section(sizes)
    total = time.perf_counter() - start

    titles = {"sft": f"Decoder SFT step (bf16, remat, AdamW; MFU against {peak_text}; 6·N·T + causal "
                     "attention counted once)",
              "classifier": "Classifier fine-tune step (MiniLM shape, AdamW, bf16 compute) vs the PyTorch twin",
              "embedder": "Embedder forward (MiniLM shape, bf16, mean-pooled and normalised) vs sentence-transformers",
              "generation": "Pool generation (SmolLM2-135M shape, bf16, top-p 0.95 sampling, fixed length) vs "
                            "transformers generate"}
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [f"# GPU benchmark{' (--tiny: CPU check, not a measurement)' if args.tiny else ''}", "",
            f"Written by `scripts/bench_gpu.py{' --tiny' if args.tiny else ''}` on {when}: {device.device_kind} "
            f"({jax.default_backend()}), jax {jax.__version__}, torch {torch.__version__}, Python "
            f"{platform.python_version()}; all sections from this one run of {total:.0f} s. Random-initialised "
            "models of the real shapes; ratio = jaxdiv's rate / the peer's.", ""]
    for key, rows in results.items():
        text += [f"## {titles[key]}", "", markdown_table(rows), ""]
    text += ["## Launch on the device machine", "", LAUNCH, ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    out.with_suffix(".json").write_text(json.dumps({"seconds": total, **results}, indent=1))
    print(f"wrote {out} in {total:.0f} s")


if __name__ == "__main__":
    main()
