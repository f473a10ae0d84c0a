"""Shared pieces of the fault-injection suite: the one-line-error check every error case makes."""

from __future__ import annotations

# The training tests' session compilation cache (autouse): the tiny programs recur across tests.
from tests.train.conftest import compilation_cache  # noqa: F401


def assert_one_line_error(code: int, err: str, *names: str) -> str:
    """Exit status 2, no traceback, and exactly one jaxdiv line on stderr naming each of `names`.

    JAX or absl may print platform lines of their own; only the jaxdiv line is asserted on."""
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-4000:]
    lines = [line for line in err.splitlines() if line.startswith("jaxdiv ")]
    assert len(lines) == 1, err[-4000:]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]
