"""Exceptions raised by tgllava.eval.

All of them are tgllava.errors.TgError subclasses, so one `except TgError`
catches every library failure.  DatasetError is also a ValueError (a bad
file or argument); JudgeError says the optional judge could not be reached
or kept answering nonsense; ShardError says shard parts cannot be merged
(missing rows, mixed settings).
"""

from tgllava.errors import TgError


class EvalError(TgError):
    """Base class of the evaluation package's errors."""


class DatasetError(EvalError, ValueError):
    """A dataset or predictions file is missing, malformed or does not match."""


class JudgeError(EvalError):
    """The judge (a callable or an HTTP endpoint) failed."""


class ShardError(EvalError):
    """Shard parts are incomplete or were made with different settings."""
