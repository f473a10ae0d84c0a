"""Plain JAX against the CPU fast paths (`JAXDIV_CPU_FAST_PATHS=1`), timed in turn in one process.

    python scripts/bench_fast_paths.py [--sections decode,embed,pool] [--batches 1,8,32]
                                       [--dtypes float32,bfloat16] [--new-tokens 64] [--repeats 2]
                                       [--pool-rows 600] [--pool-repeats 1] [--embed-texts 512]

The cells are those of `bench_generate.py` (decode tok/s: SmolLM2-135M, greedy and sampling at
temperature 0.8 / top-p 0.95, EOS ignored), `bench_score.py --sections embed` (MiniLM sent/s,
64-token texts, batch 128) and the TREC pool of `configs/generate_trec.py` (seconds for the rows,
topics cached and programs compiled). Each setting gets its own generator / embedder / backend,
whose programs are traced and compiled under that setting at a warm-up (the switch is read at
trace time); the timed calls then alternate the two settings within every round, so load from
other processes on a shared machine falls on both alike. Prints medians and plain / fast ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import jax_runner  # noqa: E402

from jaxdiv.models import fast_paths  # noqa: E402

SETTINGS = {"fast paths": "1", "plain": "0"}


def under(setting: str, fn):
    """fn() with the switch set as `setting` says."""
    os.environ[fast_paths.SWITCH] = SETTINGS[setting]
    return fn()


def alternate(runs: dict, repeats: int) -> dict[str, tuple[float, list[float]]]:
    """{setting: (warm-up s, timed values)}: each run once under its setting (the warm-up:
    tracing and compiling), then `repeats` rounds timing every setting in turn. A run returns
    the amount of work it did (tokens, texts) or None for seconds."""
    warm = {}
    for setting, run in runs.items():
        start = time.perf_counter()
        under(setting, run)
        warm[setting] = time.perf_counter() - start
    values = {setting: [] for setting in runs}
    for _ in range(repeats):
        for setting, run in runs.items():
            start = time.perf_counter()
            work = under(setting, run)
            elapsed = time.perf_counter() - start
            values[setting].append(elapsed if work is None else work / elapsed)
    return {setting: (warm[setting], values[setting]) for setting in runs}


def report(name: str, unit: str, result: dict, higher_is_better: bool = True) -> None:
    fast, plain = (statistics.median(result[s][1]) for s in ("fast paths", "plain"))
    cost = (fast / plain if higher_is_better else plain / fast) - 1  # > 0: plain is slower
    print(f"| {name} | {fast:.1f} {unit} | {plain:.1f} {unit} | {plain / fast:.2f} | {100 * cost:+.0f}% | "
          f"{' '.join(f'{v:.1f}' for v in result['fast paths'][1])} / "
          f"{' '.join(f'{v:.1f}' for v in result['plain'][1])} | load {os.getloadavg()[0]:.1f} |", flush=True)


def decode_cells(args, gguf) -> None:
    for dtype in args.dtypes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for sampling in (False, True):
                runs = {s: under(s, lambda: jax_runner(gguf, batch, args.new_tokens, sampling, dtype))
                        for s in SETTINGS}
                report(f"decode {dtype}, batch {batch}, {'sampling' if sampling else 'greedy'}", "tok/s",
                       alternate(runs, args.repeats))


def embed_cells(args) -> None:
    import jax

    from bench_score import embed_texts
    from jaxdiv import assets
    from jaxdiv.score.config import EmbedderConfig
    from jaxdiv.score.embed import Embedder
    from jaxdiv.sharding import MeshConfig

    minilm = assets.resolve("minilm-l6-v2")
    texts = embed_texts(args.embed_texts, minilm)
    for dtype in args.dtypes.split(","):
        def run(embedder):
            return lambda: (embedder.embed(texts, progress=False, use_cache=False), len(texts))[1]

        cfg = EmbedderConfig(batch_size=128, max_length=64, length_buckets=(64,), dtype=dtype)
        runs = {s: run(under(s, lambda: Embedder(cfg, MeshConfig(), devices=jax.devices()[:1])))
                for s in SETTINGS}
        report(f"embedder {dtype}, {len(texts)} texts x 64 tokens, batch 128", "sent/s",
               alternate(runs, args.repeats))


def pool_cells(args) -> None:
    from jaxdiv.configlib import apply_overrides, load_config
    from jaxdiv.generate.backends import make_backend
    from jaxdiv.generate.runner import run_generate_job

    config = Path(__file__).resolve().parents[1] / "configs" / "generate_trec.py"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [f"n={args.pool_rows}", f"recipe.topics_cache={tmp}/topics"])
        def pool_run(setting):
            backend = under(setting, lambda: make_backend(cfg))
            workdirs = (f"{tmp}/{setting}-{attempt}" for attempt in range(10**6))

            def run():
                run_generate_job(apply_overrides(cfg, [f"workdir={next(workdirs)}"]), backend=backend)
            return run

        runs = {setting: pool_run(setting) for setting in SETTINGS}
        result = alternate(runs, args.pool_repeats)
        print(f"(pool first runs, compiling; the first also generates the topics: "
              f"{', '.join(f'{s} {w:.0f} s' for s, (w, _) in result.items())})")
        report(f"TREC pool, {args.pool_rows} rows, topics cached, programs compiled", "s", result,
               higher_is_better=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="decode,embed,pool", help="which, in this order")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per decode / embed cell")
    parser.add_argument("--pool-rows", type=int, default=600)
    parser.add_argument("--pool-repeats", type=int, default=1, help="timed rounds of the pool")
    parser.add_argument("--embed-texts", type=int, default=512)
    args = parser.parse_args()
    from jaxdiv import assets

    gguf = assets.resolve("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    print("| cell | fast paths | plain | plain / fast | plain's cost | timed values (fast / plain) | |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- |", flush=True)
    cells = {"decode": lambda: decode_cells(args, gguf), "embed": lambda: embed_cells(args),
             "pool": lambda: pool_cells(args)}
    for section in args.sections.split(","):  # in the order given
        cells[section]()


if __name__ == "__main__":
    main()
