"""Every jaxdiv component beside its peer, in one script run, written to docs/benchmarks.md.

    python scripts/bench_all.py                  # the reference run (about an hour on 2 CPU cores)
    python scripts/bench_all.py --skip-demo      # without the demo study (~15 min less)
    python scripts/bench_all.py --quick          # smaller sizes and a shrunk demo: a smoke test
                                                 # (15 min on the loaded 2-core VM, 8 with
                                                 # --skip-demo); writes runs/bench_quick/benchmarks.md

Rows (each measured here, peer and jaxdiv in the same process run; the per-stage scripts'
functions do the measuring: scripts/bench_score.py, bench_generate.py, bench_train.py):
  embedding-diversity suite  vs vendi-score (score_dual; score_K / score_X) and diversity's
                             n x n routes: time and peak memory at n = 20k and 100k
  embedder                   vs sentence-transformers: sentences/s
  generator                  vs transformers `generate`: tokens/s at batch 1 / 8 / 32
  encoder fine-tune          vs the PyTorch twin (`jaxdiv compare`): examples/s, peak memory
  vmapped ablation           vs the same runs one after another: wall time
  demo study                 `jaxdiv run configs/demo.py`: first run and cached re-run
Each row gives the ratio against the peer (> 1: jaxdiv is faster), the share of the machine's
f32 matmul rate (2048^3, measured at the start of the run; again at the end, for the record)
where the work is matmul-bound, and the issue's target with met / missed. The machine, date
and versions head the document. Figures also go to <out>.json. `--sections S --merge` re-measures
only the sections S and keeps the other rows of the existing document, each with its run's date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path[:0] = [str(ROOT), str(SCRIPTS)]
# Child processes (bench_score's suite and peers, the demo study) import jaxdiv from this tree.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import bench_generate  # noqa: E402
import bench_score  # noqa: E402
import bench_train  # noqa: E402

COMMAND = "python scripts/bench_all.py"

SIZES = {
    "full": dict(vendi_sizes=(20000, 100000), suite_sizes=(5000, 20000, 100000),
                 peer_sizes=(2000, 5000, 10000, 20000), peer_timeout=400, pairs_n=20000, embed_texts=512,
                 gen_batches=(1, 8, 32), gen_dtypes=("float32", "bfloat16"), gen_tokens=128, gen_repeats=2,
                 pool_rows=600,
                 ft_rows=1024, ft_steps=24,
                 runs=8, rows_per_run=160, repeats=3, demo_overrides=()),
    "quick": dict(vendi_sizes=(5000,), suite_sizes=(2000,), peer_sizes=(2000,), peer_timeout=120,
                  pairs_n=4096, embed_texts=128, gen_batches=(1, 8), gen_dtypes=("float32",), gen_tokens=16,
                  gen_repeats=1, pool_rows=32,
                  ft_rows=128, ft_steps=6, runs=2, rows_per_run=32, repeats=1,
                  demo_overrides=("grid.levels=(0,)", "grid.proportions=(0.0, 1.0)", "grid.budgets=(8,)",
                                  "grid.seeds=(0,)", "grid.pool_rows=32", "train.optim.steps=4")),
}


@dataclasses.dataclass
class Row:
    """One line of the figures table."""

    component: str
    setting: str
    peer: str
    jaxdiv: str  # the measured figure, with its unit
    peer_figure: str
    ratio: float | None = None  # jaxdiv speed / peer speed
    matmul_share: float | None = None  # achieved FLOP/s / measured f32 matmul rate
    target: str = ""
    met: bool | None = None
    section: str = ""  # the bench_all section that measured it
    measured: str = ""  # that run's date (rows carried over by --merge keep their own)


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def machine() -> dict[str, str]:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration):
        memory = float("nan")
    packages = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "sentence-transformers",
                "vendi-score", "numpy")
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    devices = jax.devices()
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu, "cores": str(os.cpu_count()), "memory_gib": f"{memory:.0f}",
            "devices": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
            "python": platform.python_version(), "load_average_start": f"{os.getloadavg()[0]:.1f}",
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items())}


# ---------------------------------------------------------------------------
# Sections: each returns rows (and prints the per-stage script's own table as it goes).

def suite_rows(sizes: dict, rate: float) -> list[Row]:
    rows = []
    for result in bench_score.bench_vendi(list(sizes["vendi_sizes"]), sizes["repeats"], rate):
        n, d = result["n"], bench_score.D
        rows.append(Row("Vendi score (q = 0.5, 1, 2, ∞ + log-det in one call)", f"n = {n:,}, d = {d}",
                        "vendi-score `score_dual` (q = 1 only)", f"{result['jaxdiv_s'] * 1e3:.0f} ms",
                        f"{result['peer_s'] * 1e3:.0f} ms", result["peer_s"] / result["jaxdiv_s"],
                        2 * n * d * d / result["jaxdiv_s"] / 1e9 / rate, "≥ 1.0× score_dual",
                        result["peer_s"] >= result["jaxdiv_s"]))
    pairs = bench_score.bench_pairs(sizes["pairs_n"], sizes["repeats"], rate, 1024)
    rows.append(Row("blocked n × n pass (chamfer, near duplicates, DCScore)", f"n = {sizes['pairs_n']:,}",
                    "— (matmul rate, same rounds)", f"{pairs['seconds']:.2f} s", "–", None,
                    pairs["executed_of_matmul"], "≥ 50% of the f32 matmul rate",
                    pairs["executed_of_matmul"] >= 0.5))
    peer_sizes = list(sizes["peer_sizes"])
    for index, n in enumerate(sizes["suite_sizes"]):
        suite = bench_score.bench_suite(n, peer_sizes if index == 0 else [], sizes["peer_timeout"])
        ours = suite["jaxdiv"]
        if index == 0:
            peers = {p["n"]: p for p in suite["peers"]}
        peer = peers.get(n)
        if peer is None:
            done = [p for p in peers.values() if "did_not_finish" not in p]
            stopped = [p["n"] for p in peers.values() if "did_not_finish" in p]
            peer_text = ("cannot run: its n × n float64 matrix needs "
                         f"{n * n * 8 / 2**30:.0f} GiB" + (f"; stops at n = {stopped[0]:,}" if stopped else "")
                         + (f"; largest finished n = {done[-1]['n']:,}" if done else ""))
            ratio = None
        elif "did_not_finish" in peer:
            peer_text, ratio = f"did not finish in {sizes['peer_timeout']} s", None
        else:
            peer_s = peer["score_K"] + peer["remote_clique"] + peer["chamfer_dist"]
            peer_text = (f"{peer_s:.1f} s, {peer['peak_rss_mb']:.0f} MB (score_K + remote_clique + "
                         f"chamfer_dist)")
            ratio = peer_s / ours["warm_s"]
        big = n >= 100000
        rows.append(Row("embedding-diversity suite (all metrics, one kernel)", f"n = {n:,}, d = 384",
                        "vendi-score `score_K` + diversity n × n", f"{ours['warm_s']:.1f} s, "
                        f"{ours['peak_rss_mb']:.0f} MB peak", peer_text, ratio, None,
                        "< 60 s and < 2 GB at n = 100k" if big else "",
                        (ours["warm_s"] < 60 and ours["peak_rss_mb"] < 2048) if big else None))
    return rows


def embed_rows(sizes: dict, rate: float) -> list[Row]:
    from jaxdiv import assets
    from jaxdiv.models.bert import BertConfig
    from jaxdiv.train.metrics import bert_layers_flops

    minilm = assets.resolve("minilm-l6-v2")
    results = bench_score.bench_embed(sizes["embed_texts"], sizes["repeats"], minilm, ("float32", "bfloat16"))
    config = BertConfig.from_json(minilm)
    flops = bert_layers_flops(config, 64, config.num_hidden_layers)  # one 64-token text
    return [Row(f"embedder (MiniLM, mean pool + L2, {dtype})", f"{sizes['embed_texts']} texts × 64 tokens, batch 128",
                f"sentence-transformers ({dtype}, {result['torch_threads']} torch threads)",
                f"{result['jaxdiv_sent_s']:.0f} sent/s", f"{result['peer_sent_s']:.0f} sent/s",
                result["jaxdiv_sent_s"] / result["peer_sent_s"],
                result["jaxdiv_sent_s"] * flops / 1e9 / rate if dtype == "float32" else None,
                "≥ 1.2×", result["jaxdiv_sent_s"] >= 1.2 * result["peer_sent_s"])
            for dtype, result in results.items()]


def generate_rows(sizes: dict, rate: float) -> list[Row]:
    import jax
    from flax import nnx

    from jaxdiv import assets

    gguf = assets.resolve("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    rows = []
    targets = {(1, True): 2.0, (1, False): 2.0, (32, True): 2.0, (32, False): 1.5}
    for dtype in sizes["gen_dtypes"]:
        for batch in sizes["gen_batches"]:
            for sampling in (False, True):
                compile_s, ours = bench_generate.timed(
                    bench_generate.jax_runner(gguf, batch, sizes["gen_tokens"], sampling, dtype), sizes["gen_repeats"])
                _, peer = bench_generate.timed(
                    bench_generate.torch_runner(gguf, batch, sizes["gen_tokens"], sampling, dtype),
                    sizes["gen_repeats"], warm_up=False)
                model = bench_generate.jax_runner.models[dtype][0]
                params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
                target = targets.get((batch, sampling))
                mode = "sampling" if sampling else "greedy"
                print(f"generate {dtype} batch {batch} {mode}: jaxdiv {ours:.1f} tok/s, transformers {peer:.1f} "
                      f"tok/s (jax compile + first run {compile_s:.0f} s)", flush=True)
                rows.append(Row(f"generator (SmolLM2-135M, {dtype}, KV cache)",
                                f"batch {batch}, {mode}, {sizes['gen_tokens']} new tokens",
                                f"transformers `generate` (torch, {dtype})", f"{ours:.0f} tok/s", f"{peer:.0f} tok/s",
                                ours / peer,
                                # decode at batch 1 streams the weights once a token: memory-bound
                                2 * params * ours / 1e9 / rate if batch >= 8 and dtype == "float32" else None,
                                f"≥ {target}×" if target else "", ours >= target * peer if target else None))
    load_s, first_s, repeat_s, counts = bench_generate.pool_time(sizes["pool_rows"])
    print(f"TREC pool: {sizes['pool_rows']} rows in {repeat_s:.0f} s; first run {first_s:.0f} s, load {load_s:.0f} s",
          flush=True)
    setting = (f"`configs/generate_trec.py`, {sizes['pool_rows']} rows ({counts['accepted']} accepted), "
               f"bf16; model load {load_s:.0f} s apart")
    rows.append(Row("TREC pool (topics D3), topics cached and programs compiled", setting, "—",
                    f"{repeat_s:.0f} s", "–", None, None, "< 3 min for 600 rows",
                    repeat_s < 180 if sizes["pool_rows"] == 600 else None))
    rows.append(Row("TREC pool (topics D3), first run", setting + "; generates the 100 topics, compiles",
                    "—", f"{first_s:.0f} s", "–", None, None))
    return rows


def finetune_rows(sizes: dict, rate: float, torch_threads: int, workdir: Path) -> list[Row]:
    from jaxdiv import assets
    from jaxdiv.compare.runner import run_compare
    from jaxdiv.configlib import load_config
    from jaxdiv.models.bert import BertConfig
    from jaxdiv.train.metrics import bert_train_flops

    cfg = load_config(ROOT / "configs" / "compare_trec.py", [
        f"parity.train_rows={sizes['ft_rows']}", f"train.optim.steps={sizes['ft_steps']}",
        f"parity.torch_threads={torch_threads}", f"workdir={workdir / 'compare'}"])
    report = run_compare(cfg, progress=False)
    batch, length = report["batch_size"], report["max_length"]
    flops = bert_train_flops(BertConfig.from_json(assets.resolve("minilm-l6-v2")), 6, batch, length)
    ours, twin = report["speed"]["jax"], report["speed"]["torch"]
    print(f"fine-tune: jaxdiv {ours['examples_per_s']:.1f} ex/s, twin {twin['examples_per_s']:.1f} ex/s; "
          f"initial logits {report['initial_logits']['max_abs_diff']:.1e}, "
          f"loss gap {report['loss_curves']['max_abs_gap']:.1e}", flush=True)
    setting = f"batch {batch}, seq {length}, {report['steps']} steps, all layers, AdamW"
    share = flops / ours["step_s"] / 1e9 / rate
    return [
        Row("encoder fine-tune (MiniLM classifier)", setting,
            f"PyTorch twin ({report['torch_threads']} torch threads)", f"{ours['examples_per_s']:.1f} ex/s",
            f"{twin['examples_per_s']:.1f} ex/s", ours["examples_per_s"] / twin["examples_per_s"], share,
            "≥ 1.2× and ≥ 40% of matmul rate",
            ours["examples_per_s"] >= 1.2 * twin["examples_per_s"] and share >= 0.4),
        Row("encoder fine-tune: peak memory", setting, "PyTorch twin (same process, peak reset)",
            f"{ours['peak_rss_mb']:.0f} MB", f"{twin['peak_rss_mb']:.0f} MB",
            twin["peak_rss_mb"] / ours["peak_rss_mb"]),
        Row("encoder fine-tune: parity", setting, "PyTorch twin",
            f"initial logits Δ {report['initial_logits']['max_abs_diff']:.1e}; loss gap ≤ "
            f"{report['loss_curves']['max_abs_gap']:.1e}; test acc {report['test']['jax']['accuracy']:.3f}",
            f"test acc {report['test']['torch']['accuracy']:.3f}", None, None,
            f"logits ≤ 1e-4, loss gap ≤ {report['loss_curves']['tolerance']:.0e}", report["ok"]),
    ]


def ablation_rows(sizes: dict) -> list[Row]:
    from jaxdiv.data.tasks import TaskConfig, load_task

    task = load_task(TaskConfig(name="trec"))
    rows = []
    for section, (name, trained) in {"runs": ("vmapped ablation engine", "top layer"),
                                     "lora_runs": ("vmapped LoRA ablation", "rank-8 LoRA adapters")}.items():
        vmapped, sequential = bench_train.ablation_runs(task, sizes["runs"], sizes["rows_per_run"],
                                                        bench_train.ABLATIONS[section])
        print(f"{name}: vmapped {vmapped:.1f} s, sequential {sequential:.1f} s", flush=True)
        rows.append(Row(name, f"R = {sizes['runs']} runs × {sizes['rows_per_run']} rows, frozen encoder + "
                        f"{trained}, incl. load/compile/eval", "the same runs one after another",
                        f"{vmapped:.1f} s", f"{sequential:.1f} s", sequential / vmapped, None,
                        *(("≥ 3× at R = 8", sequential >= 3 * vmapped) if sizes["runs"] == 8 else ())))
    return rows


def demo_rows(sizes: dict, workdir: Path) -> list[Row]:
    command = [sys.executable, "-m", "jaxdiv", "run", str(ROOT / "configs" / "demo.py"), "--quiet",
               "--set", f"workdir={workdir / 'demo'}"]
    for override in sizes["demo_overrides"]:
        command += ["--set", override]
    from jaxdiv import assets

    # A fresh cache that holds only the fetched assets: the first run generates its topics and
    # embeds everything itself, as on a fresh machine after `jaxdiv assets fetch`.
    cache = workdir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "assets").symlink_to(assets.cache_dir() / "assets")
    env = {**os.environ, "JAXDIV_CACHE": str(cache)}
    times = []
    for attempt in ("first", "cached"):
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode:
            raise RuntimeError(f"demo {attempt} run failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
        print(f"demo {attempt} run: {times[-1]:.0f} s", flush=True)
    shrunk = " (shrunk: " + ", ".join(sizes["demo_overrides"]) + ")" if sizes["demo_overrides"] else ""
    return [Row("demo study, first run", f"`jaxdiv run configs/demo.py`{shrunk}; assets fetched, "
                "nothing else cached (topics, embeddings, pools)",
                "—", f"{times[0] / 60:.1f} min", "–", None, None, "< 15 min", times[0] < 900),
            Row("demo study, cached re-run", "same workdir", "—", f"{times[1]:.0f} s", "–", None, None,
                "< 1 min", times[1] < 60)]


# ---------------------------------------------------------------------------
# The document.

def render(info: dict, rows: list[Row], failures: dict[str, str], args, rates: list[float]) -> str:
    mode = "quick (reduced sizes: a smoke test, not reference figures)" if args.quick else "full"
    lines = [
        "# Benchmarks",
        "",
        f"*Generated by `{COMMAND}{' --quick' if args.quick else ''}"
        f"{' --skip-demo' if args.skip_demo else ''}"
        f"{f' --sections {args.sections} --merge' if args.merge else ''}` on {info['date']}; do not edit by hand.* "
        f"Reproduce every figure with the one command `{COMMAND}` (mode: {mode}).",
        "",
        "## Machine",
        "",
        f"- {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; JAX devices: {info['devices']}",
        "- measured f32 matmul rate (2048³, jax, `precision=HIGHEST`): "
        + ", ".join(f"{r:.0f}" for r in rates) + " GFLOP/s (start, end); the shares below use the start figure",
        f"- load average at the start {info['load_average_start']}, at the end {os.getloadavg()[0]:.1f}"
        " (the machine is shared; ratios from the same run are the meaningful figures)",
        f"- Python {info['python']}; {info['versions']}",
        "",
        "## Figures",
        "",
        "Ratio: jaxdiv's speed over the peer's (> 1: jaxdiv faster; for memory, the peer's peak over "
        "jaxdiv's). Matmul share: achieved matmul FLOP/s (analytic count) over the measured f32 rate, "
        "where the work is matmul-bound.",
        "",
        "| component | setting | peer | jaxdiv | peer | ratio | matmul share | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        share = "–" if row.matmul_share is None else f"{row.matmul_share:.0%}"
        met = {True: "yes", False: "**no**", None: "–"}[row.met]
        lines.append(f"| {row.component} | {row.setting} | {row.peer} | {row.jaxdiv} | {row.peer_figure} | "
                     f"{fmt_ratio(row.ratio)} | {share} | {row.target or '–'} | {met} |")
    lines += ["", "## Targets missed in this run", ""]
    missed = [row for row in rows if row.met is False]
    lines += [f"- {row.component} ({row.setting}): target {row.target}; measured {row.jaxdiv} against "
              f"{row.peer_figure} ({fmt_ratio(row.ratio)})"
              + ("" if row.matmul_share is None else f", {row.matmul_share:.0%} of the matmul rate")
              for row in missed] or ["- none"]
    if failures:
        lines += ["", "## Sections that failed or were not measured", ""]
        lines += [f"- {name}: `{error}`" for name, error in failures.items()]
    skipped = [name for name, on in (("demo", not args.skip_demo),) if not on]
    if skipped:
        lines += ["", f"Skipped in this run: {', '.join(skipped)}."]
    notes = sorted(glob.glob(str(ROOT / "docs" / "benchmarks" / "*.md")))
    lines += ["", "## Notes", "",
              "- Peers and jaxdiv run in the same process run, timed in turn (medians after a warm-up). "
              "Compilation is excluded except where a row says otherwise.",
              "- The fine-tune rows come from `jaxdiv compare` (the PyTorch twin: same weights, head "
              "initialisation, batches, AdamW decay mask, schedule and clipping, dropout off); its loss "
              "curves are in the run's workdir (`loss_curves.png`). Peak memory is the process's peak "
              "resident set during each framework's run (reset in between), so both include the shared "
              "interpreter and libraries.",
              "- The per-stage notes explain each figure, its method and its shortfalls: "
              + ", ".join(f"[{Path(p).stem}](benchmarks/{Path(p).name})" for p in notes) + "."]
    carried = sorted({(r.measured, r.section) for r in rows if r.measured and r.measured != info["date"]})
    if carried:
        lines += ["- Carried over by `--merge` from earlier runs of this script (same machine type): "
                  + "; ".join(f"section `{section}` from the run of {date}" for date, section in carried)
                  + ". Every other row comes from this run."]
    if not any(d in info["devices"].lower() for d in ("gpu", "cuda", "tpu")):
        lines += ["- No GPU was available to this run, so there is no GPU section."]
    else:
        lines += [f"- This run was on {info['devices']}: the table above is the GPU section."]
    return "\n".join(lines) + "\n"


SECTIONS = ("suite", "embed", "generate", "finetune", "ablation", "demo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (a smoke test, ~15 min on 2 cores)")
    parser.add_argument("--skip-demo", action="store_true", help="leave out the demo study (the longest row)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of the sections")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch threads for the fine-tune twin (0: torch's default)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the existing document's rows of the sections not run now (each row "
                             "keeps its run's date, named in the notes)")
    parser.add_argument("--out", help="the document (default: docs/benchmarks.md; with --quick: "
                                      "runs/bench_quick/benchmarks.md)")
    args = parser.parse_args()
    out = Path(args.out or (ROOT / ("runs/bench_quick/benchmarks.md" if args.quick else "docs/benchmarks.md")))
    sizes = SIZES["quick" if args.quick else "full"]
    sections = args.sections.split(",")
    if args.skip_demo and "demo" in sections:
        sections.remove("demo")

    info = machine()
    rates = [bench_score.bench_matmul(max(3, sizes["repeats"]))["jax_gflops"]]
    print(f"f32 matmul: {rates[0]:.0f} GFLOP/s", flush=True)
    rows: list[Row] = []
    failures: dict[str, str] = {}
    previous: list[Row] = []
    if args.merge and out.with_suffix(".json").is_file():
        previous = [Row(**r) for r in json.loads(out.with_suffix(".json").read_text())["rows"]]

    def write(pending: list[str]) -> None:
        """The document so far: rewritten after every section, so an interrupted run keeps its rows."""
        # --merge: a section's earlier rows stay until this run has measured it
        kept = [r for r in previous if r.section not in sections or r.section in pending]
        notes = {**failures, **{name: "not measured: the run stopped before this section"
                                for name in pending if not any(r.section == name for r in kept)}}
        out.parent.mkdir(parents=True, exist_ok=True)
        order = {name: i for i, name in enumerate(SECTIONS)}
        ordered = sorted(kept + rows, key=lambda r: order.get(r.section, len(order)))
        out.write_text(render(info, ordered, notes, args, rates))
        out.with_suffix(".json").write_text(json.dumps(
            {"machine": info, "matmul_gflops": rates, "rows": [dataclasses.asdict(r) for r in ordered],
             "failures": notes, "quick": args.quick}, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        runners = {"suite": lambda: suite_rows(sizes, rates[0]), "embed": lambda: embed_rows(sizes, rates[0]),
                   "generate": lambda: generate_rows(sizes, rates[0]),
                   "finetune": lambda: finetune_rows(sizes, rates[0], args.torch_threads, Path(tmp)),
                   "ablation": lambda: ablation_rows(sizes), "demo": lambda: demo_rows(sizes, Path(tmp))}
        for index, name in enumerate(sections):
            print(f"\n=== {name} ===", flush=True)
            try:
                rows += [dataclasses.replace(r, section=name, measured=info["date"]) for r in runners[name]()]
            except (Exception, SystemExit) as err:  # a failing section must not lose the other rows
                traceback.print_exc()
                failures[name] = f"{type(err).__name__}: {str(err)[:300]}"
            write(sections[index + 1:])
    rates.append(bench_score.bench_matmul(max(3, sizes["repeats"]))["jax_gflops"])
    write([])
    print(f"\nwrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
