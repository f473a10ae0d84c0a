"""`jaxdiv generate`: write a labelled synthetic pool at a controlled diversity level."""

from __future__ import annotations

import textwrap

from jaxdiv.cli.common import add_config_arguments

DESCRIPTION = textwrap.dedent("""\
    Turn (task, recipe, level D0-D6, n, seed) into a pool directory of labelled synthetic rows
    with full provenance, readable by `datasets` (rows/*.jsonl) and by jaxdiv.data.pool.Pool.

    Recipes (defaults; change them with --set recipe.KEY=VALUE):
      topics       each row draws a topic from the first 1/5/20/100/1000/5000/10000 topics of
                   the task's LLM-generated, cached, versioned topic list (D0..D6), a balanced
                   target label and 3 real few-shot examples of it (recipe.topics_file: your own)
      paraphrase   95/80/60/40/20/10/0 % of rows (D0..D6) are paraphrases of 8 fixed real rows;
                   the rest are topic rows at recipe.paraphrase_base_level
      temperature  few-shot prompts without topics, temperature 0.1/0.3/.../1.3 (D0..D6)

    Backends: jax (the JAX-native sampler on --set jax.model=..., default the packaged
    SmolLM2-135M-Instruct) or openai (any chat-completions server: --set openai.base_url=...
    --set openai.model=...; the key is read from $OPENAI_API_KEY, never written).

    Quality gates (each on by default; jaxdiv/generate/gates.py documents the rules): a row is
    stored rejected, its reason the gate's name, when it is truncated (hit max_new_tokens with no
    natural end), an echo of its prompt or few-shot examples, assistant chatter, a near duplicate
    of an earlier accepted row (MiniLM cosine >= 0.95), or when the label probe gives its intended
    label less than 0.5 (gates.labels.label_probe=budget: trained on the real_budget rows per
    class only; oracle: on every real label, named an oracle). Switch one off with e.g.
    --set gates.chatter=false; the summary line counts every rejection reason.

    Resume: rows are stored in chunks of chunk_rows rows (default 32; --set chunk_rows=N), each
    written atomically, so a killed run started again with the same settings and --workdir
    resumes after its last complete chunk (it redoes at most the chunk in progress; a run of
    chunk_rows rows or fewer starts over). One process writes a pool folder at a time: a second
    `jaxdiv generate` on it fails at once. openai backend: a request still failing after
    openai.retry_deadline_s is stored as a rejected row (reason request_failed) with the rest
    of its chunk, and the next run on the workdir asks for it again.""")


def register(sub, formatter) -> None:
    parser = sub.add_parser("generate", formatter_class=formatter, description=DESCRIPTION,
                            help="generate a labelled synthetic pool at a diversity level")
    add_config_arguments(parser, default_config=None)
    parser.add_argument("--task", help="task name (task.name)")
    parser.add_argument("--recipe", choices=("topics", "paraphrase", "temperature"), help="recipe.name")
    parser.add_argument("--level", type=int, help="diversity level 0..6 (recipe.level)")
    parser.add_argument("--n", type=int, help="rows to generate")
    parser.add_argument("--backend", choices=("jax", "openai"), help="generation backend")
    parser.add_argument("--workdir", help="the pool directory (resumed if it exists)")
    parser.add_argument("--seed", type=int, help="global seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from jaxdiv import configlib
    from jaxdiv.generate.config import GenerateJob

    cfg = configlib.load_config(args.config, args.overrides) if args.config else \
        configlib.apply_overrides(GenerateJob(), args.overrides)
    flags = {"task.name": args.task, "recipe.name": args.recipe, "recipe.level": args.level,
             "n": args.n, "backend": args.backend, "workdir": args.workdir, "seed": args.seed}
    cfg = configlib.apply_overrides(cfg, [f"{k}={v}" for k, v in flags.items() if v is not None])

    from jaxdiv.generate.runner import run_generate_job

    pool = run_generate_job(cfg, progress=not args.no_progress)
    counts = pool.counts()
    print(f"pool {cfg.workdir}: {counts['rows']} rows, {counts['accepted']} accepted, "
          f"{counts['rejected']} rejected {pool.reasons() or ''}")
    failed = pool.failed_rows()
    if failed:
        import sys

        more = " ..." if len(failed) > 5 else ""
        print(f"jaxdiv generate: warning: the requests of {len(failed)} rows failed (rows "
              f"{failed[:5]}{more}); rerun the same command to retry them", file=sys.stderr)
    return 0
