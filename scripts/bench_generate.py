"""Decode throughput of the JAX generator vs transformers' PyTorch `generate`, same weights, same run.

    python scripts/bench_generate.py [--batches 1,8,32] [--new-tokens 128] [--repeats 2]
                                     [--pool-rows 600] [--skip-peer] [--dtypes float32,bfloat16]

Both sides load SmolLM2-135M-Instruct from the packaged GGUF, dequantised to float32
(the same weights), cast to each --dtypes entry on both sides, and generate exactly --new-tokens tokens per row (EOS ignored) from
the same chat prompts, greedy and sampling (temperature 0.8, top-p 0.95). Reported:
median tokens/s over --repeats timed runs after one warm-up (JAX compiles in the warm-up;
its compile time is printed separately), the ratio jaxdiv / transformers, and the
machine's f32 matmul rate. Then the wall time of a --pool-rows TREC pool (`jaxdiv
generate --config configs/generate_trec.py`): a first run (generating the topics,
compiling), then the same job again with both done.
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
    from jaxdiv.models.checkpoints import load_pretrained

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


def pool_time(rows: int) -> tuple[float, float, float, dict]:
    """(load s, first run s, repeat s, counts) for the TREC pool of configs/generate_trec.py.

    The first run generates and caches the 100 topics and compiles (JAX's persistent cache
    is off here: a fresh user's first run); the repeat is the same job into a new pool
    directory, as a second `jaxdiv generate` with the caches warm would run it."""
    from jaxdiv.configlib import apply_overrides, load_config
    from jaxdiv.generate.backends import make_backend
    from jaxdiv.generate.runner import run_generate_job

    config = Path(__file__).resolve().parents[1] / "configs" / "generate_trec.py"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [f"n={rows}", f"recipe.topics_cache={tmp}/topics"])
        start = time.perf_counter()
        backend = make_backend(cfg)
        load_s = time.perf_counter() - start
        times = []
        for attempt in ("first", "repeat"):
            start = time.perf_counter()
            pool = run_generate_job(apply_overrides(cfg, [f"workdir={tmp}/{attempt}"]), backend=backend)
            times.append(time.perf_counter() - start)
        return load_s, times[0], times[1], pool.counts()


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
        load_s, first_s, repeat_s, counts = pool_time(args.pool_rows)
        print(f"TREC pool (configs/generate_trec.py): {args.pool_rows} rows in {repeat_s:.0f} s "
              f"({counts}); model load {load_s:.0f} s; first run incl. 100 LLM topics and compiles "
              f"{first_s:.0f} s", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
