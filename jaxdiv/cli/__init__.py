"""The `jaxdiv` command line. One module a subcommand; each defines `register(subparsers)`.

Config-driven subcommands take `--config FILE.py` (a file exposing `get_config()`) and
any number of `--set key=value` overrides, e.g. `--set train.learning_rate=3e-4`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jaxdiv import __version__

# Subcommands in pipeline order; each module is imported to build its parser. Heavy
# imports (jax, datasets) happen inside the handlers, so `--help` stays fast.
COMMANDS = (
    "jaxdiv.cli.assets",
    "jaxdiv.cli.tasks",
    "jaxdiv.cli.generate",
    "jaxdiv.cli.score",
    "jaxdiv.cli.select",
    "jaxdiv.cli.train",
    "jaxdiv.cli.report",
    "jaxdiv.cli.run",
    "jaxdiv.cli.compare",
)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxdiv", formatter_class=_Formatter,
        description="Study how the diversity of LLM-generated training data affects fine-tuned "
                    "models: generate -> score -> mix -> train -> report.",
        epilog="Run `jaxdiv COMMAND --help` for a command's arguments.")
    parser.add_argument("--version", action="version", version=f"jaxdiv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jaxdiv.errors import JaxdivError

    args = build_parser().parse_args(argv)
    import jax

    # Random bits that do not depend on how an array is sharded (the default in recent jax;
    # set so every jaxdiv run draws the same numbers on any mesh).
    jax.config.update("jax_threefry_partitionable", True)
    # JAX's persistent compilation cache, unless the user points it elsewhere
    # (JAX_COMPILATION_CACHE_DIR): a repeated job loads its XLA programs instead of compiling them.
    if not jax.config.jax_compilation_cache_dir:
        from jaxdiv.assets import cache_dir

        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    try:
        return int(args.func(args) or 0)
    except JaxdivError as err:
        print(f"jaxdiv {args.command}: error: {err}", file=sys.stderr)
        return 2
