"""Errors of the score stage (light to import: the CLI catches them before jax loads)."""

from jaxdiv.errors import JaxdivError


class ScoreError(JaxdivError, ValueError):
    """Something to be scored is malformed; the message names the file, column or row."""


class EmbeddingError(ScoreError):
    """An embedding matrix cannot be scored; the message names the row."""
