"""The base of every user-facing jaxdiv error: the CLI prints these as one clear line."""


class JaxdivError(Exception):
    """Bad input or an impossible request. The message names the file, key, row or cell."""
