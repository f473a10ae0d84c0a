"""`jaxdiv train`: fine-tune an encoder classifier on a task or on (text, label) rows from a file."""

from __future__ import annotations

from jaxdiv.cli.common import add_config_arguments


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "train", formatter_class=formatter,
        help="fine-tune an encoder classifier or a causal LM (sharded, resumable)",
        description="With a classifier config (TrainJobConfig, e.g. configs/train_trec.py): fine-tune "
                    "a BERT-family classifier (default all-MiniLM-L6-v2) with AdamW on a device mesh, "
                    "on the task's train split or on --train-rows, and report loss, accuracy and "
                    "macro-F1 on the task's validation and test splits. With an SFT config "
                    "(SFTJobConfig, e.g. configs/sft_smollm2.py): fine-tune a Llama-family LM on "
                    "(prompt, response) rows (--train-rows or data.path), loss on response tokens. "
                    "Writes config.json, metrics.jsonl, tb/, checkpoints/ and results.json to the "
                    "workdir (SFT also model/, the fine-tuned HF checkpoint with any LoRA adapters "
                    "merged in, and with LoRA adapter/, the HF PEFT adapter); rerunning in the same workdir resumes from the latest good checkpoint "
                    "(a damaged one is skipped with a warning and replaced). A resume refuses a "
                    "changed config, naming the keys, except the bookkeeping keys listed under "
                    "checkpoint.resume, which it applies and records in config.json.",
        epilog="Multi-host: set distributed.mode=explicit with distributed.coordinator=HOST:PORT, "
               "distributed.num_processes and distributed.process_id (or the JAXDIV_COORDINATOR, "
               "JAXDIV_NUM_PROCESSES, JAXDIV_PROCESS_ID variables); TPU pods are detected.")
    add_config_arguments(parser, "configs/train_trec.py")
    parser.add_argument("--train-rows", metavar="FILE",
                        help="classifier: train on these rows instead of the task's train split "
                             "(CSV / JSONL / parquet with 'text' and 'label' columns; labels are the "
                             "task's names). SFT: the (prompt, response) rows")
    parser.add_argument("--workdir", help="override the config's workdir")
    parser.set_defaults(func=_train)


def _train(args) -> int:
    from jaxdiv.configlib import load_config, stage_part
    from jaxdiv.train.config import SFTConfig, SFTJobConfig, TrainConfig
    from jaxdiv.train.distributed import initialize

    cfg = load_config(args.config, args.overrides)
    initialize(cfg.distributed)  # before anything touches the backend
    if isinstance(cfg, SFTJobConfig):
        import jax

        from jaxdiv.train.sft import export_model, train_sft

        result = train_sft(stage_part(cfg, SFTConfig), args.train_rows, None, args.workdir or cfg.workdir,
                           seed=cfg.seed)
        print("heldout: " + "  ".join(f"{k}={v:.4f}" for k, v in result.get("eval", {}).items()))
        print(f"results: {result['workdir']}/results.json")
        if jax.process_index() == 0:
            for path in export_model(result, result["workdir"], cfg.model.checkpoint):
                print(f"saved: {path}")
        return 0

    from jaxdiv.data.tasks import load_task
    from jaxdiv.train.classifier import train_classifier

    task = load_task(cfg.task)
    train_rows = args.train_rows or task.splits["train"]
    evals = {"validation": task.splits["validation"], "test": task.splits["test"]}
    result = train_classifier(stage_part(cfg, TrainConfig), train_rows, evals, args.workdir or cfg.workdir,
                              seed=cfg.seed, task=cfg.task, label_names=task.label_names)
    for split, values in result["eval"].items():
        print(f"{split}: " + "  ".join(f"{k}={v:.4f}" for k, v in values.items()))
    print(f"results: {result['workdir']}/results.json")
    return 0
