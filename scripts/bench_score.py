"""Benchmark the score stage beside its peers, in one run on one machine.

    python scripts/bench_score.py                      # everything (tens of minutes on 2 cores)
    python scripts/bench_score.py --sections vendi,pairs --sizes 20000

Sections:
  matmul  this machine's f32 matmul rate (jax and numpy, 2048^3), the reference for the floors;
  vendi   Vendi at n = 20k / 100k, d = 384: jaxdiv `vendi_scores` vs vendi-score `score_dual`,
          and the X^T X matmul floor at the measured rate;
  pairs   the blocked n x n pass (chamfer + near duplicates + DCScore in one sweep) at n = 20k:
          its matmul FLOP rate against the measured f32 rate;
  suite   the full embedding-metric kernel at n = 100k, d = 384, in a child process (time and
          peak RSS); peers at the sizes they can run: vendi-score score_K / score_X (n x n)
          and diversity's remote_clique / chamfer_dist bodies (cosine_distances on the n x n);
  embed   sentences/s of jaxdiv's embedder vs sentence-transformers (PyTorch), 64-token texts,
          batch 128, same weights, same CPU.
Every timing is the median of --repeats runs after a warm-up (compilation excluded, and
reported separately where it matters).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's jaxdiv, also in children
from jaxdiv.compare.memory import peak_rss_mb  # noqa: E402

D = 384


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn within every round (after one warm-up
    round), so that load from other processes on a shared machine falls on all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def unit_rows(n: int, seed: int = 0) -> np.ndarray:
    """Anisotropic random embeddings (a decaying spectrum, like real sentence embeddings)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32) * (1.0 / np.sqrt(1 + np.arange(D)))[None, :].astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def table(rows, headers):
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    for k, row in enumerate([headers] + rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def bench_matmul(repeats):
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).normal(size=(2048, 2048)).astype(np.float32)
    aj = jnp.asarray(a)
    f = jax.jit(lambda m: jnp.matmul(m, m, precision=jax.lax.Precision.HIGHEST))
    t = interleaved({"jax": lambda: f(aj).block_until_ready(), "numpy": lambda: a @ a}, repeats)
    return {f"{k}_gflops": 2 * 2048 ** 3 / v / 1e9 for k, v in t.items()}


def bench_vendi(sizes, repeats, rate):
    import jax
    import jax.numpy as jnp
    from vendi_score import vendi

    from jaxdiv.score.diversity import vendi_scores
    from jaxdiv.sharding import make_mesh

    mesh = make_mesh()
    gram = jax.jit(lambda m: jnp.matmul(m.T, m, precision=jax.lax.Precision.HIGHEST))
    rows, results = [], []
    for n in sizes:
        x = unit_rows(n)
        xj = jnp.asarray(x)
        t = interleaved({"ours": lambda: vendi_scores(x, mesh=mesh, check=False),
                         "peer": lambda: vendi.score_dual(x),
                         "xtx": lambda: gram(xj).block_until_ready()}, repeats)
        floor = 2 * n * D * D / (rate * 1e9)
        ours_v = vendi_scores(x, mesh=mesh)["vendi_q1"]
        results.append({"n": n, "jaxdiv_s": t["ours"], "peer_s": t["peer"], "xtx_s": t["xtx"], "floor_s": floor})
        rows.append((n, f"{t['ours'] * 1e3:.1f}", f"{t['peer'] * 1e3:.1f}", f"{t['xtx'] * 1e3:.1f}",
                     f"{floor * 1e3:.1f}", f"{t['peer'] / t['ours']:.2f}x", f"{t['ours'] / t['xtx']:.2f}x",
                     f"{t['ours'] / floor:.2f}x",
                     f"{abs(ours_v - vendi.score_dual(x.astype(np.float64))) / ours_v:.1e}"))
    print("\n## Vendi (jaxdiv computes q = 0.5, 1, 2, inf + log-det + effective rank in the one call)")
    table(rows, ("n", "jaxdiv ms", "score_dual ms", "X^T X matmul ms", "floor at matmul rate ms",
                 "speed-up vs peer", "jaxdiv / X^T X", "jaxdiv / rate floor", "rel diff vs f64"))
    return results


def bench_pairs(n, repeats, rate, block):
    import jax

    from jaxdiv.score import diversity
    from jaxdiv.sharding import make_mesh

    mesh = make_mesh(devices=jax.devices()[:1])
    x = jax.numpy.asarray(unit_rows(n))
    n_pad = -(-n // block) * block
    x = jax.numpy.pad(x, ((0, n_pad - n), (0, 0)))
    fn = jax.jit(jax.shard_map(
        lambda rows: diversity.symmetric_pair_terms(rows, rows, 0, n, block, 1.0, ("data",)),
        mesh=mesh, in_specs=jax.P(), out_specs=jax.P(), check_vma=False))
    a = jax.numpy.asarray(np.random.default_rng(0).normal(size=(2048, 2048)).astype(np.float32))
    mm = jax.jit(lambda m: jax.numpy.matmul(m, m, precision=jax.lax.Precision.HIGHEST))
    t = interleaved({"pairs": lambda: jax.block_until_ready(fn(x)),
                     "matmul": lambda: mm(a).block_until_ready()}, repeats)
    rate = 2 * 2048 ** 3 / t["matmul"] / 1e9  # measured in the same rounds
    blocks = n_pad // block
    executed = 2 * block * block * D * blocks * (blocks // 2 + 1)  # tiles actually multiplied
    full = 2 * n * n * D  # the n x n product a non-symmetric pass would multiply
    s = t["pairs"]
    print(f"\n## Blocked n x n pass (chamfer + near duplicates + DCScore), n = {n}, block = {block}")
    table([(n, f"{s:.2f}", f"{executed / s / 1e9:.0f}", f"{full / s / 1e9:.0f}", f"{rate:.0f}",
            f"{executed / s / 1e9 / rate:.0%}", f"{full / s / 1e9 / rate:.0%}")],
          ("n", "s", "GFLOP/s executed", "GFLOP/s n x n-equivalent", "matmul GFLOP/s (same rounds)",
           "executed / matmul", "equivalent / matmul"))
    return {"seconds": s, "executed_of_matmul": executed / s / 1e9 / rate, "matmul_gflops": rate}


def child_suite(n: int) -> None:
    """Run in a child process: the full kernel once cold, once warm; print JSON."""
    from jaxdiv.score.diversity import embedding_diversity

    x = unit_rows(n)
    start = time.perf_counter()
    embedding_diversity(x)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    out = embedding_diversity(x)
    warm = time.perf_counter() - start
    print(json.dumps({"n": n, "cold_s": cold, "warm_s": warm, "metrics": out, "peak_rss_mb": peak_rss_mb()}))


def bench_suite(n, peer_sizes, timeout):
    proc = subprocess.run([sys.executable, __file__, "--child-suite", str(n)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    ours = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n## Full embedding-metric kernel, n = {n}, d = {D} (child process)")
    table([(n, f"{ours['warm_s']:.1f}", f"{ours['cold_s']:.1f}", f"{ours['peak_rss_mb']:.0f}")],
          ("n", "warm s", "cold s (with compile)", "peak RSS MB"))
    print("metrics:", json.dumps({k: round(v, 4) for k, v in ours["metrics"].items()}))

    rows, peers = [], []
    for m in peer_sizes:
        code = ("import sys,time,json,numpy as np\n"
                f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                "from bench_score import unit_rows\n"
                "from jaxdiv.compare.memory import peak_rss_mb\n"
                "from vendi_score import vendi\n"
                "from sklearn.metrics.pairwise import cosine_distances\n"
                f"x = unit_rows({m}); out = {{}}\n"
                "t = time.perf_counter(); vendi.score_X(x); out['score_X'] = time.perf_counter() - t\n"
                "t = time.perf_counter(); vendi.score_K(x @ x.T); out['score_K'] = time.perf_counter() - t\n"
                "t = time.perf_counter(); d = cosine_distances(x); np.mean(np.mean(d, axis=1))\n"
                "out['remote_clique'] = time.perf_counter() - t\n"
                "t = time.perf_counter(); d = cosine_distances(x); np.min(d + np.eye(len(d)) * 1e9, axis=1).mean()\n"
                "out['chamfer_dist'] = time.perf_counter() - t\n"
                "out['peak_rss_mb'] = peak_rss_mb()\n"
                "print(json.dumps(out))\n")
        try:
            peer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
            result = json.loads(peer.stdout.strip().splitlines()[-1]) if peer.returncode == 0 else None
        except subprocess.TimeoutExpired:
            result = None
        peers.append({"n": m, **(result or {"did_not_finish": True})})
        if result is None:
            rows.append((m, "did not finish", f"(> {timeout} s or out of memory)", "", "", ""))
            break
        rows.append((m, f"{result['score_X']:.1f}", f"{result['score_K']:.1f}", f"{result['remote_clique']:.1f}",
                     f"{result['chamfer_dist']:.1f}", f"{result['peak_rss_mb']:.0f}"))
    print("\n## Peers' n x n routes on the same kind of matrix (each in a child process)")
    table(rows, ("n", "vendi score_X s", "vendi score_K s", "diversity remote_clique s",
                 "diversity chamfer_dist s", "peak RSS MB"))
    n_bytes = n * n * 8
    print(f"At n = {n} their n x n float64 matrix alone is {n_bytes / 2**30:.0f} GiB: they cannot run here.")
    return {"jaxdiv": ours, "peers": peers}


def embed_texts(texts_n, minilm) -> list[str]:
    """64-token texts: real TREC questions concatenated, cut to 62 word pieces (+ [CLS], [SEP])."""
    from jaxdiv.data.tasks import TaskConfig, load_task
    from jaxdiv.models.bert import load_tokenizer

    tokenizer = load_tokenizer(minilm)
    questions = list(load_task(TaskConfig(name="trec")).splits["train"]["text"])
    texts, i = [], 0
    while len(texts) < texts_n:
        pieces = []
        while len(pieces) < 62:
            pieces += tokenizer.encode(questions[i % len(questions)], add_special_tokens=False).tokens
            i += 1
        texts.append(tokenizer.decoder.decode(pieces[:62]) if tokenizer.decoder else " ".join(pieces[:62]))
    return texts


def bench_embed(texts_n, repeats, minilm, dtypes=("float32",)):
    import torch
    from sentence_transformers import SentenceTransformer

    from jaxdiv.models.bert import load_tokenizer
    from jaxdiv.score.config import EmbedderConfig
    from jaxdiv.score.embed import Embedder
    from jaxdiv.sharding import MeshConfig

    texts = embed_texts(texts_n, minilm)
    lengths = [len(e.ids) for e in load_tokenizer(minilm).encode_batch(texts)]
    import jax

    results = {}
    for dtype in dtypes:
        embedder = Embedder(EmbedderConfig(batch_size=128, max_length=64, length_buckets=(64,), dtype=dtype),
                            MeshConfig(), devices=jax.devices()[:1])
        # the peer at the same precision: bf16 weights and matmuls in torch
        model = SentenceTransformer(str(minilm), device="cpu", model_kwargs={"torch_dtype": getattr(torch, dtype)})
        model.max_seq_length = 64
        t = interleaved({"ours": lambda: embedder.embed(texts, progress=False, use_cache=False),
                         "peer": lambda: model.encode(texts, batch_size=128)}, repeats)
        ours, peer = t["ours"], t["peer"]
        x_ours = embedder.embed(texts[:64], progress=False, use_cache=False)
        x_peer = np.asarray(model.encode(texts[:64], batch_size=128, normalize_embeddings=True,
                                         convert_to_tensor=True).float())
        print(f"\n## Embedder ({dtype}), {texts_n} texts of {min(lengths)}-{max(lengths)} tokens, batch 128")
        table([(f"{texts_n / ours:.0f}", f"{texts_n / peer:.0f}", f"{peer / ours:.2f}x",
                f"{np.abs(x_ours - x_peer).max():.1e}", torch.get_num_threads())],
              ("jaxdiv sent/s", "sentence-transformers sent/s", "speed-up", "max abs diff", "torch threads"))
        results[dtype] = {"jaxdiv_sent_s": texts_n / ours, "peer_sent_s": texts_n / peer,
                          "max_abs_diff": float(np.abs(x_ours - x_peer).max()),
                          "torch_threads": torch.get_num_threads()}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="matmul,vendi,pairs,suite,embed")
    parser.add_argument("--sizes", default="20000,100000", help="n for the Vendi section")
    parser.add_argument("--pairs-n", type=int, default=20000)
    parser.add_argument("--suite-n", type=int, default=100000)
    parser.add_argument("--peer-sizes", default="2000,5000,10000,20000")
    parser.add_argument("--peer-timeout", type=int, default=400)
    parser.add_argument("--embed-texts", type=int, default=512)
    parser.add_argument("--embed-dtypes", default="float32,bfloat16", help="embedder compute dtypes (the peer runs at each)")
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child-suite", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_suite:
        return child_suite(args.child_suite)
    sections = args.sections.split(",")
    import jax

    print(f"# bench_score  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  jax {jax.__version__}  "
          f"devices {jax.devices()}")
    rate = bench_matmul(args.repeats)
    print(f"\n## f32 matmul 2048^3: jax {rate['jax_gflops']:.0f} GFLOP/s, numpy {rate['numpy_gflops']:.0f} GFLOP/s")
    if "vendi" in sections:
        bench_vendi([int(s) for s in args.sizes.split(",")], args.repeats, rate["jax_gflops"])
    if "pairs" in sections:
        bench_pairs(args.pairs_n, args.repeats, rate["jax_gflops"], args.block)
    if "suite" in sections:
        bench_suite(args.suite_n, [int(s) for s in args.peer_sizes.split(",")], args.peer_timeout)
    if "embed" in sections:
        from jaxdiv import assets

        bench_embed(args.embed_texts, args.repeats, assets.resolve("minilm-l6-v2"), args.embed_dtypes.split(","))


if __name__ == "__main__":
    main()
