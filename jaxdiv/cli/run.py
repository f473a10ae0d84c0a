"""`jaxdiv run CONFIG`: a whole experiment, chosen by the config's type.

- a `StudyConfig` (configs/demo.py): the study, generate -> score -> mix -> train -> report;
- a `SelfConsumeConfig` (configs/self_consume_cpu.py): the self-consumption rounds.
"""

from __future__ import annotations

import textwrap

from jaxdiv.cli.common import add_override_argument

DESCRIPTION = (
    "Runs the experiment the config file's get_config() returns.",
    "StudyConfig (configs/demo.py, configs/study_full.py): generates one synthetic pool per diversity "
    "level, label budget, real subset and generation seed (extended until the levels compared hold "
    "equal rows per class), or selects subsets of one large pool at set diversities (grid.mechanisms="
    "select), scores every pool and every training set, mixes synthetic with real labelled rows at "
    "each proportion, budget and protocol, fine-tunes a classifier per cell (vmapped in groups), and "
    "writes results.parquet/.csv, pools.parquet/.csv, accepted_rows.parquet and report/ in the study "
    "directory.",
    "SelfConsumeConfig (configs/self_consume_cpu.py, configs/self_consume_gpu.py): per chain (replace: "
    "the generator trains on its own output only; mix_real: plus real rows) and round t, generates a "
    "pool with G_t, scores it, trains classifiers on it, and fine-tunes G_t on it into G_(t+1); writes "
    "generators/ (each G_t as an HF checkpoint), results.parquet/.csv (one row per chain x round x "
    "seed) and report/ with every metric across rounds.",
    "LoRA instead of full fine-tuning: --set train.model.lora.rank=8 (the classifiers), --set "
    "sft.model.lora.rank=16 (the generator's SFT; each G_(t+1) is saved with its adapters merged).",
    "Everything is cached by content hash, LoRA settings included: a re-run only re-reports, new "
    "grid values or rounds compute only what is new, and a killed run resumes.",
)


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "run", formatter_class=formatter,
        help="run a whole experiment: the diversity study, or the self-consumption rounds",
        description="\n\n".join(textwrap.fill(paragraph, 88) for paragraph in DESCRIPTION))
    parser.add_argument("config", nargs="?", default="configs/demo.py",
                        help="a config file exposing get_config() (a StudyConfig or a SelfConsumeConfig)")
    add_override_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    import time

    from jaxdiv.configlib import ConfigError, load_config
    from jaxdiv.study.config import SelfConsumeConfig, StudyConfig

    cfg = load_config(args.config, args.overrides)
    if isinstance(cfg, StudyConfig):
        from jaxdiv.study.runner import run_study as run
    elif isinstance(cfg, SelfConsumeConfig):
        from jaxdiv.study.self_consume import run_self_consumption as run
    else:
        raise ConfigError(f"{args.config}: get_config() returned a {type(cfg).__name__}; `jaxdiv run` takes "
                          f"a StudyConfig or a SelfConsumeConfig")
    started = time.perf_counter()
    report = run(cfg, progress=not args.quiet)
    print(f"report: {report}  ({time.perf_counter() - started:.0f} s)")
    return 0
