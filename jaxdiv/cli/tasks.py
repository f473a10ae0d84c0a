"""`jaxdiv tasks list | show NAME`: the real labelled tasks."""

from __future__ import annotations

import textwrap

from jaxdiv.cli.common import print_table


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "tasks", formatter_class=formatter, help="list the real labelled tasks or show one's statistics",
        description="Real labelled text-classification tasks, loaded through `datasets` into one "
                    "schema (id, text, label) with stable, seeded, stratified splits.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the registered tasks").set_defaults(func=_list)
    show = actions.add_parser("show", help="split sizes, label distribution and example rows")
    show.add_argument("name", help="a registered task, 'file' (with --set task.path=...), or a hub id")
    show.add_argument("--examples", type=int, default=3, help="example rows to print per split")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a task setting, e.g. --set task.split_seed=1")
    show.set_defaults(func=_show)


def _list(args) -> int:
    from jaxdiv.data.tasks import TASKS

    print_table([(name, spec.description) for name, spec in TASKS.items()], ("task", "what"))
    print("\nAlso: 'file' (a local CSV / JSONL / parquet; set task.path, task.text_column, "
          "task.label_column) or a hub dataset id where the hub is reachable.")
    return 0


def _show(args) -> int:
    from jaxdiv.configlib import ConfigError, apply_overrides
    from jaxdiv.data.tasks import TaskConfig, label_counts, load_task

    overrides = []
    for item in args.overrides:
        if not item.startswith("task."):
            raise ConfigError(f"override {item!r}: `tasks show` takes task.* keys only")
        overrides.append(item[len("task."):])
    cfg = apply_overrides(TaskConfig(name=args.name), overrides)
    task = load_task(cfg)
    print(f"task {task.name}: {task.num_labels} labels {list(task.label_names)}")
    for line in task.report.lines():
        print(f"  {line}")
    counts = label_counts(task)
    splits = list(task.splits)
    rows = [(label,) + tuple(counts[s].get(label, 0) for s in splits) for label in task.label_names]
    rows.append(("total",) + tuple(task.splits[s].num_rows for s in splits))
    print()
    print_table(rows, ("label",) + tuple(splits))
    for split in splits:
        print(f"\n{split} examples:")
        for row in task.splits[split].select(range(min(args.examples, task.splits[split].num_rows))):
            text = textwrap.shorten(row["text"], 90)
            print(f"  [{task.label_names[row['label']]}] {text}")
    return 0
