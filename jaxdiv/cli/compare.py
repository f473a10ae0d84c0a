"""`jaxdiv compare`: the JAX fine-tune beside its PyTorch twin (parity, accuracy, speed, memory)."""

from __future__ import annotations

from jaxdiv.cli.common import add_config_arguments, print_table


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "compare", formatter_class=formatter,
        help="fine-tune with jaxdiv and with a PyTorch twin on the same rows, and compare them",
        description="Fine-tune the encoder classifier twice on the same rows: with jaxdiv's JAX "
                    "engine and with transformers' BertForSequenceClassification (the PyTorch twin: "
                    "same weights and head initialisation, tokenisation, batch order, AdamW with the "
                    "same decay mask, schedule and clipping; dropout off). Reports the initial "
                    "logits' agreement, the per-step loss curves and their gap, test accuracy and "
                    "macro-F1, step time, examples/s and peak memory. Writes config.json, "
                    "compare.json and loss_curves.png to the workdir. Exits 1 when the initial "
                    "logits or the loss gap exceed their tolerances. Needs the torch extra "
                    "(pip install 'jaxdiv[torch]'; CPU-only torch: "
                    "pip install torch --index-url https://download.pytorch.org/whl/cpu).")
    add_config_arguments(parser, "configs/compare_trec.py")
    parser.add_argument("--train-rows", metavar="FILE",
                        help="train on these rows (CSV / JSONL / parquet with 'text' and 'label', e.g. a "
                             "mixture) instead of the task's train split")
    parser.add_argument("--workdir", help="override the config's workdir")
    parser.set_defaults(func=_compare)


def _compare(args) -> int:
    import dataclasses
    import importlib.util
    import sys

    if importlib.util.find_spec("torch") is None:
        print("jaxdiv compare: error: needs PyTorch, from the torch extra: pip install 'jaxdiv[torch]' "
              "(CPU-only: pip install torch --index-url https://download.pytorch.org/whl/cpu first)",
              file=sys.stderr)
        return 2

    from jaxdiv.compare.runner import run_compare
    from jaxdiv.configlib import load_config

    cfg = load_config(args.config, args.overrides)
    if args.workdir:
        cfg = dataclasses.replace(cfg, workdir=args.workdir)
    report = run_compare(cfg, args.train_rows)
    logits, curves = report["initial_logits"], report["loss_curves"]
    print(f"\n{report['train_rows']} train rows, {report['steps']} steps of batch {report['batch_size']}, "
          f"{report['test_rows']} test rows")
    print(f"initial logits: max |diff| {logits['max_abs_diff']:.2e} (tolerance {logits['tolerance']:.0e}) "
          f"{'ok' if logits['ok'] else 'FAILED'}")
    print(f"loss curves: max |gap| {curves['max_abs_gap']:.2e}, final {curves['final_gap']:.2e}, "
          f"correlation {curves['correlation']:.4f} (tolerance {curves['tolerance']:.0e}) "
          f"{'ok' if curves['ok'] else 'FAILED'}\n")
    rows = []
    for name, key in (("jaxdiv (JAX)", "jax"), ("PyTorch twin", "torch")):
        test, speed = report["test"][key], report["speed"][key]
        rows.append((name, f"{test['accuracy']:.4f}", f"{test['macro_f1']:.4f}", f"{speed['step_s']:.3f}",
                     f"{speed['examples_per_s']:.1f}", f"{speed['peak_rss_mb']:.0f}"))
    print_table(rows, ("framework", "test accuracy", "test macro-F1", "s/step (median)", "examples/s",
                       "peak RSS MiB"))
    print(f"jaxdiv / torch examples/s: {report['speed']['jax_over_torch_examples_per_s']:.2f}x")
    print(f"outputs: {cfg.workdir}/compare.json, {cfg.workdir}/loss_curves.png")
    return 0 if report["ok"] else 1
