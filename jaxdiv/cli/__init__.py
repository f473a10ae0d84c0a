"""The `jaxdiv` command line. One module a subcommand; each defines `register(subparsers)`.

Config-driven subcommands take `--config FILE.py` (a file exposing `get_config()`) and
any number of `--set key=value` overrides, e.g. `--set train.learning_rate=3e-4`.
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    "jaxdiv.cli.compile",
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


def _one_line_warnings(command: str) -> None:
    """Print jaxdiv's own warnings as `jaxdiv COMMAND: warning: ...` (one line, no source line);
    others keep Python's format."""
    import warnings

    from jaxdiv.errors import JaxdivWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, JaxdivWarning):
            return default(message, category, filename, lineno, file, line)
        print(f"jaxdiv {command}: warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    from jaxdiv.errors import JaxdivError

    args = build_parser().parse_args(argv)
    _one_line_warnings(args.command)
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
        print(f"jaxdiv {args.command}: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every long job resumes from what it stored (pool chunks, checkpoints, study cells), all
        # written atomically, as after a kill. So exit now: waiting for worker threads (HTTP
        # requests in flight, a background checkpoint write) could hold Ctrl-C for minutes.
        print(f"jaxdiv {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
