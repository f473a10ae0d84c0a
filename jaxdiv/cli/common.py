"""Arguments and helpers shared by config-driven subcommands."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str | None) -> None:
    parser.add_argument("--config", default=default_config, metavar="FILE.py",
                        help="a Python config file exposing get_config()")
    add_override_argument(parser)


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.learning_rate=3e-4 "
                             "(repeatable; unknown keys, wrong types and out-of-range values are errors)")


def print_table(rows: list[tuple], headers: tuple[str, ...]) -> None:
    """A plain, aligned text table (readable in logs and terminals alike)."""
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
