"""Exceptions raised by tgllava: every failure the library reports is a TgError, and its subclass says
which kind.  The C extension raises these same classes (and KeyboardInterrupt when Ctrl-C stops a
generate call)."""


class TgError(Exception):
    """Base class of every tgllava error."""


class CheckpointError(TgError):
    """A checkpoint file or folder is missing, corrupt, or does not match the model (the message names the
    file and tensor)."""


class ShapeError(TgError, ValueError):
    """An input has the wrong rank, size or dtype."""


class DeviceError(TgError):
    """The compute device failed (CUDA error, out of memory, no such device)."""


class OutOfMemoryError(TgError, MemoryError):
    """Host memory ran out inside the model (the C core could not allocate)."""
