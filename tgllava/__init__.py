"""tgllava: TG-LLaVA and LLaVA-1.5 inference on a C core with CPU and CUDA backends.

    import tgllava
    m = tgllava.load("path/to/llm", clip_dir="path/to/clip")   # device="cpu" or "cuda"
    tokens = m.visual_tokens(pixels, text_ids)

See README.md for the command line (`tgllava demo`, `generate`, `eval`).
"""
import os as _os

# OpenMP threads that spin after a parallel region starve OpenBLAS's own
# threads (measured: 16x slower vision tower on 2 cores); let them sleep.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Likewise OpenBLAS workers spin after each product while our OpenMP loops want the cores; a short
# spin measured 25% instead of 32% of the visual branch outside matrix products, 3% faster overall.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _preload_openblas():
    """Load OpenBLAS from the installed scipy-openblas32 wheel before the extension: the build-time
    rpath may point into a pip build environment that no longer exists."""
    import ctypes
    try:
        import scipy_openblas32
    except ImportError:
        return
    path = _os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
    if _os.path.exists(path):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


_preload_openblas()

from .errors import CheckpointError, DeviceError, ShapeError, TgError
from . import _C
from .api import Model, load, tile
from .checkpoint import read_tensors
from .chat import Answer, AnswerStream

__all__ = ["load", "Model", "tile", "read_tensors", "Answer", "AnswerStream",
           "TgError", "CheckpointError", "ShapeError", "DeviceError"]
__version__ = "0.1.0"
