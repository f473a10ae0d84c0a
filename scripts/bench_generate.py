"""Decode throughput of the JAX generator vs transformers' PyTorch `generate`, same weights, same run.

    python scripts/bench_generate.py [--batches 1,8,32] [--new-tokens 128] [--repeats 2]
                                     [--pool-rows 600] [--skip-peer] [--dtypes float32,bfloat16]

Both sides load SmolLM2-135M-Instruct from the packaged GGUF, dequantised to float32
(the same weights), cast to each --dtypes entry on both sides, and generate exactly --new-tokens tokens per row (EOS ignored) from
the same chat prompts, greedy and sampling (temperature 0.8, top-p 0.95). Reported:
median tokens/s over --repeats timed runs after one warm-up (JAX compiles in the warm-up;
its compile time is printed separately), the ratio jaxdiv / transformers, and the
machine's f32 matmul rate. Then the wall time of a --pool-rows TREC pool (`jaxdiv
generate --recipe topics --level 3`, topics pre-generated and cached, timed apart).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the peer's reference loader lives in tests/

QUESTIONS = ["Tell me about the history of the bicycle.", "Explain how rainbows form.",
             "Describe a day in the life of a lighthouse keeper.", "Why do cats purr?",
             "What makes a good cup of coffee?", "How do volcanoes erupt?",
             "Write a short story about a lost key.", "What is the water cycle?"]


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def jax_runner(gguf, batch: int, new_tokens: int, sampling: bool, dtype: str = "float32"):
    import jax.numpy as jnp

    from jaxdiv.generate.sampler import JaxGenerator, Request, SamplingParams
    from jaxdiv.models.llama import load_pretrained

    if dtype not in jax_runner.models:
        jax_runner.models[dtype] = load_pretrained(gguf, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype))
    model, tokenizer = jax_runner.models[dtype]
    generator = JaxGenerator(model, tokenizer, batch_buckets=(batch,), prompt_buckets=(64,),
                             decode_chunk=16, stop_at_eos=False)
    params = SamplingParams(temperature=0.8 if sampling else 0.0, top_p=0.95 if sampling else 1.0,
                            max_new_tokens=new_tokens)
    requests = [Request(i, ({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},), params, seed=i)
                for i in range(batch)]

    def run() -> int:
        return sum(c.completion_tokens for c in generator.generate(requests))

    return run


def torch_runner(gguf, batch: int, new_tokens: int, sampling: bool, dtype: str = "float32"):
    import torch

    from tests.models.make_reference import chat_ids, reference_model

    if dtype not in torch_runner.models:
        model, tokenizer = reference_model(gguf)
        torch_runner.models[dtype] = model.to(getattr(torch, dtype)), tokenizer
    model, tokenizer = torch_runner.models[dtype]
    prompts = [chat_ids(tokenizer, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
               for i in range(batch)]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[2] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=2)
    kwargs.update(do_sample=True, temperature=0.8, top_p=0.95, top_k=0) if sampling else \
        kwargs.update(do_sample=False)

    def run() -> int:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, **kwargs)
        return int((out.shape[1] - width) * batch)

    return run


# loaded models, per dtype (several benchmark cells share them)
jax_runner.models, torch_runner.models = {}, {}


def timed(run, repeats: int, warm_up: bool = True) -> tuple[float, float]:
    """(warm-up seconds, median tokens/s over the timed repeats)."""
    start = time.perf_counter()
    if warm_up:
        run()
    warmup = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = run()
        rates.append(tokens / (time.perf_counter() - start))
    return warmup, statistics.median(rates)


def pool_time(rows: int, dtype: str = "float32") -> tuple[float, float, dict]:
    """(topic generation s, pool generation s, counts) for a TREC topics D3 pool."""
    from jaxdiv.configlib import apply_overrides
    from jaxdiv.generate.config import GenerateConfig
    from jaxdiv.generate.runner import run_generate

    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["recipe.name=topics", "recipe.level=3", f"recipe.topics_cache={tmp}/topics",
                     f"n={rows}", "chunk_rows=64", f"workdir={tmp}/pool", "jax.batch_buckets=(64,)",
                     f"jax.dtype={dtype}", "jax.prompt_buckets=(160, 192, 256)"]
        warm = apply_overrides(GenerateConfig(), overrides[:-2] + ["n=1", f"workdir={tmp}/warm"])
        start = time.perf_counter()
        run_generate(warm, progress=False)  # loads, generates + caches the 100 topics, compiles
        topics_s = time.perf_counter() - start
        start = time.perf_counter()
        pool = run_generate(apply_overrides(GenerateConfig(), overrides), progress=True)
        return topics_s, time.perf_counter() - start, pool.counts()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per cell (median)")
    parser.add_argument("--pool-rows", type=int, default=600, help="0 skips the pool timing")
    parser.add_argument("--skip-peer", action="store_true", help="no transformers comparison")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="weights and compute dtype of both "
                        "sides (bfloat16: bf16 matmuls with f32 accumulation in jaxdiv, torch's bf16 on the peer)")
    parser.add_argument("--threads", type=int, default=0, help="1: both sides single-threaded "
                        "(steadier on a shared machine); 0: library defaults")
    args = parser.parse_args()
    if args.threads == 1:
        # one thread each: on a shared, oversubscribed machine multi-threaded eager PyTorch
        # stalls at every barrier, which measures the neighbours, not the library
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false")
        import torch

        torch.set_num_threads(1)

    from jaxdiv import assets

    gguf = assets.resolve("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; threads: {args.threads or 'default'}; "
          f"jax f32 matmul {matmul_gflops():.0f} GFLOP/s", flush=True)
    print(f"{'dtype':>9} {'batch':>5} {'mode':>8} {'jaxdiv tok/s':>13} {'transformers':>13} {'ratio':>6} "
          f"{'jax compile+1st s':>18}", flush=True)
    dtypes = args.dtypes.split(",")
    for dtype in dtypes:
        for batch in (int(b) for b in args.batches.split(",")):
            for sampling in (False, True):
                warmup, ours = timed(jax_runner(gguf, batch, args.new_tokens, sampling, dtype), args.repeats)
                peer = float("nan")
                if not args.skip_peer:
                    # eager PyTorch compiles nothing: its first run is already a timed one
                    _, peer = timed(torch_runner(gguf, batch, args.new_tokens, sampling, dtype), args.repeats,
                                    warm_up=False)
                print(f"{dtype:>9} {batch:>5} {'sample' if sampling else 'greedy':>8} {ours:>13.1f} "
                      f"{peer:>13.1f} {ours / peer:>6.2f} {warmup:>18.1f}", flush=True)
    if args.pool_rows:
        topics_s, pool_s, counts = pool_time(args.pool_rows, dtypes[-1])
        print(f"TREC topics D3 pool ({dtypes[-1]}): {args.pool_rows} rows in {pool_s:.0f} s ({counts}); "
              f"first run incl. load, 100 LLM topics, compile: {topics_s:.0f} s", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
