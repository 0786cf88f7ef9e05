"""tgllava: TG-LLaVA and LLaVA-1.5 inference on a C core with CPU and CUDA backends.

    import tgllava
    m = tgllava.load("path/to/llm", clip_dir="path/to/clip")   # device="cpu" or "cuda"
    answer = m.chat("photo.jpg", "What is in the picture?")     # m.chat(None, question): text only
    req = m.prepare("photo.jpg", "What is in the picture?")     # input_ids, pixels, text_ids, ...
    tokens = m.generate(**req)

See README.md for the command line (`tgllava demo`, `generate`, `eval`).
"""
import os as _os

# OpenMP threads that spin after a parallel region starve OpenBLAS's own
# threads (measured: 16x slower vision tower on 2 cores); let them sleep.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Likewise OpenBLAS workers spin after each product while our OpenMP loops want the cores; a short
# spin measured 25% instead of 32% of the visual branch outside matrix products, 3% faster overall.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# The extension finds libscipy_openblas.so through its own run-time path (relative to
# itself, see setup.py): no preloading is needed.

from .errors import CheckpointError, DeviceError, OutOfMemoryError, ShapeError, TgError
from . import _C
from .loader import load
from .model import Model, tile
from .checkpoint import read_tensors
from .chat import Answer, AnswerStream
from .image import ImageError

__all__ = ["load", "Model", "tile", "read_tensors", "Answer", "AnswerStream",
           "TgError", "CheckpointError", "ShapeError", "DeviceError", "ImageError",
           "OutOfMemoryError"]
__version__ = "0.1.0"
