"""Build of tgllava: the C core + CPython extension `tgllava._C`, plus the CUDA backend.

The C sources under csrc/ compile with the platform C compiler (C11, -O3, OpenMP).
CPU matrix products use OpenBLAS from the `scipy-openblas32` wheel, so no system
BLAS package is needed.  Its headers and library are found at build time (under
pip's build isolation that is a temporary copy), and the extension's run-time
search path points at the copy installed beside tgllava, relative to the
extension itself: `$ORIGIN/../scipy_openblas32/lib` for a regular install
(both packages in one site-packages folder), plus, for an editable / in-place
build, `$ORIGIN/<relative path>` from the source tree's tgllava/ to the
scipy_openblas32 of the environment that runs the build.
When nvcc is found (or TGLLAVA_CUDA=1) kernels/*.cu are compiled by kernels/build.py
(in parallel; for TGLLAVA_CUDA_ARCH, default sm_80 and sm_90 + PTX; objects reused only
when the nvcc flags and the sources are unchanged, in the build folder or in
TGLLAVA_CUDA_OBJ_DIR) and the extension links cudart, cuBLAS and cuBLASLt;
TGLLAVA_CUDA=0 builds the CPU backend only.
"""
import glob
import importlib.util
import os
import sysconfig

import numpy
import scipy_openblas32
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("tgllava_kernels_build", os.path.join(HERE, "kernels", "build.py"))
kernels_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernels_build)


def find_nvcc():
    want = os.environ.get("TGLLAVA_CUDA", "").strip()
    if want == "0":
        return None
    nvcc = kernels_build.find_nvcc()
    if want == "1" and nvcc is None:
        raise RuntimeError("TGLLAVA_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
    return nvcc


NVCC = find_nvcc()
CUDA_HOME = os.path.dirname(os.path.dirname(os.path.realpath(NVCC))) if NVCC else None


def openblas_rpaths(inplace):
    """Run-time search paths for libscipy_openblas.so, relative to the extension's folder ($ORIGIN).

    A wheel puts tgllava/ and scipy_openblas32/ side by side in site-packages.  An in-place
    (editable) build leaves the extension in the source tree, so it also gets the path from
    there to scipy_openblas32 in the site-packages of the interpreter running the build (the
    target environment: pip's build isolation only prepends its own folders to sys.path)."""
    paths = ["$ORIGIN/../scipy_openblas32/lib"]
    if inplace:
        target = os.path.join(sysconfig.get_path("platlib"), "scipy_openblas32", "lib")
        rel = os.path.relpath(target, os.path.join(HERE, "tgllava"))
        paths.append("$ORIGIN/" + rel)
    return paths


class BuildWithCuda(build_ext):
    """Compiles kernels/*.cu with nvcc into objects linked into the extension; sets the rpaths."""

    def run(self):
        # build_ext.run builds with inplace cleared and copies afterwards: remember the final place
        self._final_inplace = bool(self.inplace or getattr(self, "editable_mode", False))
        super().run()

    def build_extension(self, ext):
        ext.runtime_library_dirs = openblas_rpaths(getattr(self, "_final_inplace", bool(self.inplace))) + rpaths
        if NVCC:
            out_dir = os.environ.get("TGLLAVA_CUDA_OBJ_DIR") or os.path.join(self.build_temp, "kernels")
            objs = kernels_build.compile_all(out_dir, nvcc=NVCC)
            ext.extra_objects = list(ext.extra_objects or []) + objs
        super().build_extension(ext)


blas_inc = scipy_openblas32.get_include_dir()
blas_lib = scipy_openblas32.get_lib_dir()
macros = [("BLAS_SYMBOL_PREFIX", "scipy_"), ("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION")]
libs = ["scipy_openblas", "m"]
lib_dirs = [blas_lib]
rpaths = []  # besides the OpenBLAS paths of openblas_rpaths(), which BuildWithCuda adds per build
if NVCC:
    macros.append(("TG_WITH_CUDA", "1"))
    cuda_lib = os.path.join(CUDA_HOME, "lib64")
    if not os.path.isdir(cuda_lib):
        cuda_lib = os.path.join(CUDA_HOME, "lib")
    libs += ["cudart", "cublas", "cublasLt", "stdc++"]
    lib_dirs.append(cuda_lib)
    rpaths.append(cuda_lib)

sources = sorted(glob.glob("csrc/*.c") + glob.glob("csrc/cpu/*.c") + glob.glob("csrc/model/*.c") + glob.glob("csrc/python/*.c"))

ext = Extension(
    "tgllava._C",
    sources=sources,
    include_dirs=["csrc", numpy.get_include(), blas_inc] + ([os.path.join(CUDA_HOME, "include")] if NVCC else []),
    define_macros=macros,
    libraries=libs,
    library_dirs=lib_dirs,
    runtime_library_dirs=rpaths,
    extra_compile_args=["-std=c11", "-O3", "-fopenmp", "-Wall", "-Wno-unused-function", "-fno-strict-aliasing"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildWithCuda})
