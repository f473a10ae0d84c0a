"""`jaxdiv compile`: compile jaxdiv's programs for a TPU topology on this host, and check they fit."""

from __future__ import annotations

import sys

from jaxdiv.cli.common import add_config_arguments, print_table


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "compile", formatter_class=formatter,
        help="compile the train, SFT and generation programs for a TPU topology ahead of time",
        description="Lower and compile, for a TPU topology described by libtpu (no TPU needed: the "
                    "tpu extra), the classifier train step, the decoder's SFT step (full fine-tuning, "
                    "or LoRA: --set sft.lora.rank=16, optionally over a bfloat16 frozen base: --set "
                    "sft.lora.base_dtype=bfloat16; classifier.lora likewise) and the generator's "
                    "prefill and decode, each with its config's mesh and logical-axis rules, from "
                    "abstract sharded inputs. Prints per program the per-device argument, output "
                    "and temporary bytes against the chip's HBM, "
                    "XLA's FLOPs beside the analytic count, and the compile time; writes the table "
                    "to the config's report (docs/benchmarks/tpu_aot.md). Exits 1 when a program "
                    "does not fit.",
        epilog="e.g. jaxdiv compile --config configs/scale/llama3_8b.py --set topology=v5e:16x16")
    add_config_arguments(parser, "configs/scale/llama3_2_1b.py")
    parser.set_defaults(func=_compile)


def _compile(args) -> int:
    from jaxdiv.aot.compile import (FLOPS_CONVENTION, HEADERS, compile_programs, markdown_section,
                                    report_key, table_rows, topology_devices, verdict, write_report)
    from jaxdiv.configlib import load_config

    import jax

    cfg = load_config(args.config, args.overrides)
    # compile times are part of the report: never a load from the persistent cache
    jax.config.update("jax_enable_compilation_cache", False)
    results = compile_programs(cfg, progress=lambda line: print(line, flush=True))
    print_table(table_rows(results), HEADERS)
    print(FLOPS_CONVENTION)
    if cfg.report:
        kind = topology_devices(cfg.topology)[0].device_kind
        write_report(cfg.report, report_key(cfg), markdown_section(cfg, results, kind))
        print(f"report: {cfg.report}")
    too_big = [r for r in results if not r.fits]
    for r in too_big:
        print(f"jaxdiv compile: {r.name} does not fit {cfg.topology}: {verdict(r)}", file=sys.stderr)
    return 1 if too_big else 0
