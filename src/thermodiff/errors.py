"""Errors that describe a user's mistake.

Every error raised for bad input (a missing or malformed file, NaN in the data, an
unknown config key, a checkpoint that does not match its config) is a
``ThermodiffError``; the command line prints its message on one line and exits
with status 2. Anything else is a bug and keeps its traceback.
"""


class ThermodiffError(Exception):
    """A user-facing error: the message names the problem in one line."""


class DataError(ThermodiffError):
    """The data could not be read, or are not what the model needs."""


class ConfigError(ThermodiffError):
    """A config file or override is malformed or names an unknown key."""


class CheckpointError(ThermodiffError):
    """A checkpoint is missing, corrupted, or does not match its config."""


def one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line (numpy's and pickle's can span
    several), for the one-line errors of the command line. Shapes: none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
