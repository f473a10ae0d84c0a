"""The base of every user-facing jaxdiv error: the CLI prints these as one clear line."""


class JaxdivError(Exception):
    """Bad input or an impossible request. The message names the file, key, row or cell."""


class JaxdivWarning(UserWarning):
    """Something the user should know that does not stop the job; the CLI prints it as one line."""
