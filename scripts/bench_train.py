"""Training throughput: jaxdiv beside PyTorch, measured in the same run.

1. The machine's f32 matmul rate (jitted 2048^3 matmul): the arithmetic ceiling.
2. One MiniLM classifier fine-tune step (all-MiniLM-L6-v2 weights, 6 TREC classes, batch 32,
   sequence 64, AdamW, all layers trained): jaxdiv's jitted sharded step vs PyTorch
   `BertForSequenceClassification` with `torch.optim.AdamW` on the same weights and shapes.
   Reports examples/s, achieved GFLOP/s (analytic count) and its share of the matmul rate.
3. The vmapped ablation engine: R small runs (frozen encoder, head plus top layer trained)
   as one program vs the same R runs one after another with `train_classifier`, wall time.
   Section `lora_runs`: the same with rank-8 LoRA adapters on a frozen MiniLM instead.
4. Section `sft`: SmolLM2-135M SFT (`train_sft`, seq 256, batch 8) with every weight trained
   beside LoRA (rank 16 on every linear layer; f32 and bf16 base), each in a fresh process, the
   modes in turn `--sft-repeats` times: median peak process memory (VmHWM) and steps/s (a
   process's peak varies by +-0.3 GB from run to run).

    python scripts/bench_train.py [--steps 8] [--runs 8] [--skip-torch] [--dtypes float32,bfloat16]
    python scripts/bench_train.py --sections sft,lora_runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(size: int = 2048) -> float:
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    seconds = median_time(lambda: matmul(a).block_until_ready(), 10)
    return 2 * size**3 / seconds / 1e9


def jaxdiv_step(task, steps: int, batch: int, length: int, dtype: str = "float32"):
    from jaxdiv.configlib import apply_overrides
    from jaxdiv.models.bert import load_tokenizer
    from jaxdiv.sharding import MeshConfig, make_mesh
    from jaxdiv.train import data as data_lib
    from jaxdiv.train.classifier import build_model, classifier_loss, model_dir
    from jaxdiv.train.config import TrainConfig
    from jaxdiv.train.engine import build_program, init_args
    from jaxdiv.train.metrics import bert_train_flops

    cfg = apply_overrides(TrainConfig(), [f"optim.batch_size={batch}", f"model.max_length={length}",
                                          f"model.compute_dtype={dtype}"])
    spec = build_model(cfg.model, len(task.label_names), seed=0)
    texts, labels, _ = data_lib.read_rows(task.splits["train"], task.label_names)
    rows = data_lib.encode_rows(load_tokenizer(model_dir(cfg.model)), texts, labels, length)
    mesh_cfg = MeshConfig(data=-1)
    mesh = make_mesh(mesh_cfg)
    # the engine's program for one run (R = 1), as train_classifier runs it
    program = build_program(spec, cfg.optim, mesh, mesh_cfg.logical_axis_rules, 1, loss_fn=classifier_loss(spec),
                            batch_ndims={"input_ids": 2, "attention_mask": 2, "labels": 1})
    host = rows.take(data_lib.batch_indices(0, 0, batch, len(rows)))
    host["attention_mask"][:] = 1  # every position real, as in the torch run
    device_batch = data_lib.global_batch({k: v[None] for k, v in host.items()}, program.batch_shardings)
    holder = {"state": program.init(*init_args(spec, [None], [0], [1000], shared_frozen=True))}

    def run():
        holder["state"], metrics = program.train_step(holder["state"], device_batch, None)
        jax.block_until_ready(metrics)

    seconds = median_time(run, steps)
    flops = bert_train_flops(spec.config, spec.num_labels, batch, length)
    return seconds, flops, host


def torch_step(minilm_dir, host, num_labels: int, steps: int, dtype: str = "float32"):
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=num_labels)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    ids = torch.tensor(host["input_ids"], dtype=torch.long)
    mask = torch.tensor(host["attention_mask"], dtype=torch.long)
    labels = torch.tensor(host["labels"], dtype=torch.long)

    def run():
        optimizer.zero_grad()
        # bf16: autocast, torch's mixed precision (bf16 matmuls, f32 params), like jaxdiv's compute_dtype
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return median_time(run, steps)


# what the ablation runs train: the top layer and head, or rank-8 adapters and the head
ABLATIONS = {"runs": ["model.frozen_layers=5"], "lora_runs": ["model.lora.rank=8"]}


def ablation_runs(task, runs: int, rows_per_run: int, trained: list[str]):
    from jaxdiv.configlib import apply_overrides
    from jaxdiv.train.config import TrainConfig
    from jaxdiv.train.classifier import RunSpec, train_classifier, train_classifier_runs

    cfg = apply_overrides(TrainConfig(), trained + [
        "model.max_length=32", "optim.batch_size=16", "optim.epochs=1",
        "optim.learning_rate=1e-3", "log.progress=false", "log.tensorboard=false", "checkpoint.every=0",
        "mesh.data=-1"])
    train = task.splits["train"]
    specs = [RunSpec(train.select(range(i * rows_per_run, (i + 1) * rows_per_run)), seed=i) for i in range(runs)]
    evals = {"validation": task.splits["validation"].select(range(128))}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_classifier_runs(cfg, specs, evals, f"{tmp}/vmapped", label_names=task.label_names)
        vmapped = time.perf_counter() - start
        start = time.perf_counter()
        for index, run in enumerate(specs):
            train_classifier(cfg, run.train_rows, evals, f"{tmp}/seq{index}", seed=run.seed,
                             label_names=task.label_names)
        sequential = time.perf_counter() - start
    return vmapped, sequential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per framework (median reported)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--runs", type=int, default=8, help="R for the ablation engine")
    parser.add_argument("--rows-per-run", type=int, default=160)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes of the step section "
                        "(bfloat16: bf16 matmuls, f32 params, on both sides)")
    parser.add_argument("--sections", default="step,runs", help="comma-separated: step (jaxdiv vs PyTorch), "
                        "runs and lora_runs (vmapped vs sequential), sft (full fine-tuning vs LoRA)")
    parser.add_argument("--sft-steps", type=int, default=5, help="sft: steps per process (the first, "
                        "which compiles, is not timed)")
    parser.add_argument("--sft-remat", action="store_true", help="sft: recompute each layer's activations "
                        "in the backward pass (model.remat), in every mode")
    parser.add_argument("--sft-repeats", type=int, default=3, help="sft: fresh processes per mode, run "
                        "in turn (A B C A B C ...); the table gives each mode's medians")
    parser.add_argument("--sft-child", help=argparse.SUPPRESS)  # one sft measurement, in this process
    args = parser.parse_args()
    if args.sft_child:
        return print(json.dumps(sft_child(args.sft_child, args.sft_steps, args.sft_remat)))

    from jaxdiv.data.tasks import TaskConfig, load_task

    task = load_task(TaskConfig(name="trec"))
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
    peak = matmul_gflops()
    print(f"f32 matmul 2048^3: {peak:.0f} GFLOP/s")

    sections = set(args.sections.split(","))
    if "step" in sections:
        step_table(args, task, peak)
    for section in ABLATIONS:
        if section in sections:
            runs_table(args, task, section)
    if "sft" in sections:
        sft_table(args)


def step_table(args, task, peak: float) -> None:
    from jaxdiv import assets
    from jaxdiv.models.bert import BertConfig
    from jaxdiv.train.metrics import bert_train_flops

    minilm = assets.resolve("minilm-l6-v2")
    # BertForSequenceClassification computes every row of the last layer; jaxdiv only [CLS]'s
    torch_flops = bert_train_flops(BertConfig.from_json(minilm), len(task.label_names), args.batch,
                                   args.length, cls_only=False)
    for dtype in args.dtypes.split(","):
        seconds, flops, host = jaxdiv_step(task, args.steps, args.batch, args.length, dtype)
        rows = [(f"jaxdiv (jit, AdamW), {dtype}", seconds, flops)]
        if not args.skip_torch:
            import torch

            rows.append((f"PyTorch {torch.__version__} BertForSequenceClassification, {dtype}",
                         torch_step(minilm, host, len(task.label_names), args.steps, dtype), torch_flops))
        print(f"\nMiniLM classifier fine-tune step, {dtype}, batch {args.batch}, seq {args.length} "
              f"(jaxdiv {flops / 1e9:.1f} GFLOP a step as executed, analytic)")
        print(f"{'framework':<62} {'s/step':>8} {'examples/s':>11} {'GFLOP/s':>8} {'of f32 matmul':>14}")
        for name, secs, work in rows:
            print(f"{name:<62} {secs:8.3f} {args.batch / secs:11.1f} {work / secs / 1e9:8.1f} "
                  f"{work / secs / 1e9 / peak:14.0%}")
        if len(rows) == 2:
            print(f"jaxdiv / PyTorch examples/s, {dtype}: {rows[1][1] / rows[0][1]:.2f}x")


def runs_table(args, task, section: str) -> None:
    vmapped, sequential = ablation_runs(task, args.runs, args.rows_per_run, ABLATIONS[section])
    trained = {"runs": "top layer + head", "lora_runs": "rank-8 LoRA adapters + head"}[section]
    print(f"\nAblation engine: {args.runs} runs x {args.rows_per_run} rows (frozen encoder, {trained} "
          f"trained, batch 16, seq 32), wall time incl. load, compile, eval")
    print(f"{'vmapped, one program':<40} {vmapped:8.1f} s")
    print(f"{'sequential train_classifier calls':<40} {sequential:8.1f} s")
    print(f"speed-up: {sequential / vmapped:.2f}x")



# what each sft process trains: every weight, or rank-16 adapters on every linear layer
SFT_MODES = {"full fine-tuning": [],
             "LoRA r16, f32 base": ["model.lora.rank=16"],
             "LoRA r16, bf16 base": ["model.lora.rank=16", "model.lora.base_dtype=bfloat16"]}


def sft_child(mode: str, steps: int, remat: bool) -> dict[str, float]:
    """One SmolLM2-135M SFT of `steps` steps (seq 256, batch 8, TREC questions -> their labels):
    this process's peak memory and the median steps/s after the first (compiling) step."""
    from pathlib import Path

    from jaxdiv.configlib import apply_overrides
    from jaxdiv.data.tasks import TaskConfig, load_task
    from jaxdiv.train.config import SFTConfig
    from jaxdiv.train.sft import train_sft

    task = load_task(TaskConfig(name="trec"))
    rows = [{"prompt": row["text"], "response": task.label_names[row["label"]]}
            for row in task.splits["train"].select(range(64))]
    cfg = apply_overrides(SFTConfig(), SFT_MODES[mode] + [
        "model.max_length=256", "optim.batch_size=8", f"optim.steps={steps}", "data.eval_fraction=0",
        "log.every=1", "log.tensorboard=false", "log.progress=false", "checkpoint.every=0",
        f"model.remat={str(remat).lower()}"])
    with tempfile.TemporaryDirectory() as tmp:
        train_sft(cfg, rows, None, tmp, seed=0)
        lines = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates = [line["steps_per_s"] for line in lines if "steps_per_s" in line][1:]
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"peak_bytes": int(status["VmHWM"].split()[0]) * 1024, "steps_per_s": statistics.median(rates)}


def sft_table(args) -> None:
    samples = {mode: [] for mode in SFT_MODES}
    for _ in range(args.sft_repeats):  # modes in turn, so that a drift in the machine's speed hits each alike
        for mode in SFT_MODES:
            out = subprocess.run([sys.executable, __file__, "--sft-child", mode, "--sft-steps", str(args.sft_steps)]
                                 + ["--sft-remat"] * args.sft_remat, check=True, capture_output=True, text=True).stdout
            samples[mode].append(json.loads(out.strip().splitlines()[-1]))
    results = {mode: {key: statistics.median(sample[key] for sample in runs) for key in runs[0]}
               for mode, runs in samples.items()}
    full = results["full fine-tuning"]
    print(f"\nSmolLM2-135M SFT, seq 256, batch 8, f32 compute, remat {'on' if args.sft_remat else 'off'}, "
          f"{args.sft_steps - 1} timed steps, {args.sft_repeats} fresh processes per mode (peak: VmHWM, the "
          f"whole process); medians, and each process's peak")
    print(f"{'mode':<24} {'peak GB':>8} {'of full':>8} {'steps/s':>8} {'vs full':>8}  peaks GB")
    for mode, result in results.items():
        peaks = " ".join(f"{sample['peak_bytes'] / 1e9:.2f}" for sample in samples[mode])
        print(f"{mode:<24} {result['peak_bytes'] / 1e9:8.2f} {result['peak_bytes'] / full['peak_bytes']:8.0%} "
              f"{result['steps_per_s']:8.3f} {result['steps_per_s'] / full['steps_per_s']:7.2f}x  {peaks}")


if __name__ == "__main__":
    main()
