"""Exceptions raised by tgllava.

Every failure the library can report is a TgError; the subclasses say which
kind: a checkpoint that cannot be read (CheckpointError, naming the file and
tensor), an argument of the wrong shape or dtype (ShapeError, also a
ValueError so generic handlers catch it), a device failure such as CUDA
out-of-memory (DeviceError), or host memory running out inside the model
(OutOfMemoryError, also a MemoryError).  The C extension raises these same
classes (and KeyboardInterrupt when Ctrl-C stops a generate call).
"""


class TgError(Exception):
    """Base class of every tgllava error."""


class CheckpointError(TgError):
    """A checkpoint file or folder is missing, corrupt, or does not match the model."""


class ShapeError(TgError, ValueError):
    """An input has the wrong rank, size or dtype."""


class DeviceError(TgError):
    """The compute device failed (CUDA error, out of memory, no such device)."""


class OutOfMemoryError(TgError, MemoryError):
    """Host memory ran out inside the model (the C core could not allocate)."""
