"""Host memory and time of loading a 0.5B-class HF checkpoint onto an 8-device host mesh.

    python scripts/bench_load.py [--layers 24] [--stored-dtype float32] [--mesh fsdp=8]
                                 [--loaders jaxdiv,whole-copy,transformers] [--dir DIR]

Saves a randomly initialised Qwen2 of Qwen2-0.5B's shape (vocab 151936, hidden 896, MLP 4864,
14 heads, 2 KV heads, tied embeddings; 24 layers unless --layers says fewer) with transformers,
then loads it in one fresh process per loader, with XLA_FLAGS forcing eight host CPU devices:

- jaxdiv: `read_safetensors_weights` + `from_hf_weights` on the mesh (lazy, block by block);
- whole-copy: every tensor read into host memory first (`read_safetensors`, as the loader read
  before it read lazily), then the same `from_hf_weights` on the mesh;
- transformers: `AutoModelForCausalLM.from_pretrained` of the same dir (float32, CPU).

Each process measures its resident memory after its imports (and, for jaxdiv, after the CPU
backend and mesh are up): the baseline. It then resets the kernel's peak (VmHWM, through
/proc/self/clear_refs), loads, and reads the peak back. On host CPU devices the loaded arrays
live in host memory too (each device its own copy of a replicated param), so the transient
overhead is the most the process holds beyond the baseline and the arrays placed so far (read
after each param); the issue's bound is 1.5x the largest single tensor. transformers keeps
params of the stored dtype memory-mapped from the file (resident only once touched), so then
only its peak - baseline is given. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
LOADERS = ("jaxdiv", "whole-copy", "transformers")
MiB = 2 ** 20


def rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def save(directory: Path, layers: int, stored_dtype: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(**{**QWEN2_05B, "num_hidden_layers": layers})
    model = transformers.Qwen2ForCausalLM(config).to(getattr(torch, stored_dtype))
    model.save_pretrained(directory)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current VmRSS


def measure(loader: str, directory: Path, mesh_spec: str) -> dict:
    """Load `directory` with `loader` in this process; memory in MiB, time in s.

    For the jaxdiv loaders, the peak is read back (and reset) after each param is placed, and
    compared with the bytes of the arrays placed by then: `transient` is the most the process
    ever held beyond its baseline and those arrays (peak - baseline - loaded at the end would
    miss the largest tensor's overhead, placed first while little else is loaded)."""
    peaks = []  # (peak since the previous reading, bytes of arrays placed by then)
    if loader == "transformers":
        import torch
        import transformers

        def load():
            return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)

        def loaded_bytes(model):  # a tied LM head shares the embedding's storage: counted once
            storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                        for p in model.state_dict().values()}
            return sum(storages.values())
    else:
        import jax
        from flax import nnx

        from jaxdiv.models import checkpoints
        from jaxdiv.sharding import MeshConfig, make_mesh

        mesh_cfg = MeshConfig(**{k: int(v) for k, v in (kv.split("=") for kv in mesh_spec.split(","))})
        mesh = make_mesh(mesh_cfg)
        place = checkpoints._place_blockwise

        def array_bytes(array):  # every device's own shard (a replicated param counts once a device)
            return sum(shard.data.nbytes for shard in array.addressable_shards)

        def place_and_read_peak(tensor, sharding, dtype):
            array = jax.block_until_ready(place(tensor, sharding, dtype))
            peaks.append((rss_kib("VmHWM") * 1024, (peaks[-1][1] if peaks else 0) + array_bytes(array)))
            reset_peak()
            return array

        checkpoints._place_blockwise = place_and_read_peak

        def load():
            cfg, weights = checkpoints.read_safetensors_weights(directory)
            if loader == "whole-copy":
                weights = {}
                for file in sorted(directory.glob("*.safetensors")):
                    weights.update(checkpoints.read_safetensors(file))
            model = checkpoints.from_hf_weights(cfg, weights, mesh=mesh, rules=mesh_cfg.logical_axis_rules)
            return jax.block_until_ready(model)

        def loaded_bytes(model):
            return sum(array_bytes(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))

    baseline = rss_kib("VmRSS") * 1024
    reset_peak()
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    loaded = loaded_bytes(model)
    peaks.append((rss_kib("VmHWM") * 1024, loaded))
    return {"loader": loader, "baseline": baseline / MiB, "peak": max(p for p, _ in peaks) / MiB,
            "transient": max(p - baseline - placed for p, placed in peaks) / MiB,
            "final": rss_kib("VmRSS") / 1024, "loaded": loaded / MiB, "seconds": seconds}


def child(args: list[str]) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, __file__, *args], env=env, check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def largest_tensor(directory: Path) -> tuple[str, float]:
    from jaxdiv.models import checkpoints

    _, weights = checkpoints.read_safetensors_weights(directory)
    size = {"F32": 4, "BF16": 2, "F16": 2}
    nbytes = {key: size[tensor.dtype] * math.prod(tensor.shape) for key, tensor in weights.items()}
    key = max(nbytes, key=nbytes.get)
    return key, nbytes[key] / MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (Qwen2-0.5B has 24)")
    parser.add_argument("--stored-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype the checkpoint is saved in (params load as float32)")
    parser.add_argument("--mesh", default="fsdp=8", help="mesh axes, e.g. fsdp=8 or fsdp=4,tensor=2")
    parser.add_argument("--loaders", default=",".join(LOADERS), help=f"comma-separated, of {LOADERS}")
    parser.add_argument("--dir", type=Path, help="checkpoint dir to write (default: a temporary one)")
    parser.add_argument("--child", nargs=2, metavar=("ROLE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, directory = args.child
        if role == "save":
            save(Path(directory), args.layers, args.stored_dtype)
        else:
            print(json.dumps(measure(role, Path(directory), args.mesh)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        directory = args.dir or Path(tmp) / "qwen2-0.5b-random"
        start = time.perf_counter()
        child(["--child", "save", str(directory), "--layers", str(args.layers),
               "--stored-dtype", args.stored_dtype])
        print(f"saved {directory} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        key, largest = largest_tensor(directory)
        on_disk = sum(f.stat().st_size for f in directory.glob("*.safetensors")) / MiB
        rows = [child(["--child", loader, str(directory), "--mesh", args.mesh])
                for loader in args.loaders.split(",")]

    print(f"Qwen2-0.5B shape, {args.layers} layers, stored {args.stored_dtype} ({on_disk:.0f} MiB of "
          f"safetensors), params float32, mesh {args.mesh} over 8 host CPU devices (jaxdiv). Largest "
          f"tensor: {key} ({largest:.0f} MiB); bound 1.5x = {1.5 * largest:.0f} MiB.\n")
    print("| loader | baseline MiB | peak - baseline MiB | loaded arrays MiB | transient MiB | "
          "transient / largest tensor | within 1.5x | final - baseline MiB | load s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    mapped = False  # whether transformers left its params mapped to the file
    for r in rows:
        transient = r.get("transient", r["peak"] - r["baseline"] - r["loaded"])
        if r["loader"] == "transformers" and r["final"] - r["baseline"] < r["loaded"]:
            mapped, cells = True, "n/a | n/a | n/a"
        else:
            cells = f"{transient:.0f} | {transient / largest:.2f}x | {'yes' if transient <= 1.5 * largest else 'no'}"
        print(f"| {r['loader']} | {r['baseline']:.0f} | {r['peak'] - r['baseline']:.0f} | {r['loaded']:.0f} | "
              f"{cells} | {r['final'] - r['baseline']:.0f} | {r['seconds']:.1f} |")
    print("\ntransient: the most resident memory held, at any point of the load, beyond the baseline "
          "and the arrays placed by then (transformers: peak - baseline - loaded).")
    if mapped:
        print("transformers keeps params of the stored dtype memory-mapped from the safetensors file, so "
              "they are resident only once touched and its peak - baseline leaves them out.")


if __name__ == "__main__":
    main()
