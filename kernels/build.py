"""Compile CUDA sources with nvcc, in parallel, into a folder of objects keyed by flags and contents.

One way to build the kernels, used by setup.py (the extension) and benchmarks/gpu_run.sh (op_check, and
then the install reuses the same objects).  An object is named `<file>.<key>.o`, where the key hashes the
nvcc command line but its -I paths (so TGLLAVA_CUDA_ARCH and TGLLAVA_FAST_MATH are part of it) and the
contents of the source and of every header it may include (kernels/*.cuh, csrc/*.h): an existing object is reused
only when all of those are unchanged, and a change of flags never reuses a stale object.

  python3 kernels/build.py OUT_DIR [EXTRA.cu ...]    # kernels/*.cu (+ extras); prints the object paths
Environment: TGLLAVA_CUDA_ARCH ("80;90" by default: SASS for each, PTX for the last), TGLLAVA_FAST_MATH
(non-empty: --use_fast_math instead of -lineinfo), NVCC (else nvcc on PATH, else /usr/local/cuda/bin/nvcc).
"""
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), os.path.join(cuda_home, "bin", "nvcc")):
        if cand and os.path.exists(cand):
            return cand
    return None


def flags():
    """nvcc flags (everything but the source and output paths), from the environment."""
    arch = [a for a in os.environ.get("TGLLAVA_CUDA_ARCH", "80;90").replace(",", ";").split(";") if a.strip()]
    gencode = []
    for a in arch:
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    gencode += ["-gencode", f"arch=compute_{arch[-1]},code=compute_{arch[-1]}"]
    fast = ["--use_fast_math"] if os.environ.get("TGLLAVA_FAST_MATH") else ["-lineinfo"]
    return ["-O3", "-std=c++17", *fast, "-Xcompiler", "-fPIC", "-I" + os.path.join(ROOT, "csrc"),
            "-I" + os.path.join(ROOT, "kernels"), "-DTG_WITH_CUDA", *gencode]


def object_path(nvcc, src, out_dir, fl):
    # include paths are left out: the headers' contents are hashed, so a copy of the tree elsewhere reuses
    h = hashlib.sha256("\0".join([nvcc, *[f for f in fl if not f.startswith("-I")]]).encode())
    headers = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cuh")) + glob.glob(os.path.join(ROOT, "csrc", "*.h")))
    for p in [src, *headers]:
        with open(p, "rb") as f:
            h.update(os.path.basename(p).encode() + b"\0" + f.read())
    return os.path.join(out_dir, f"{os.path.basename(src)}.{h.hexdigest()[:16]}.o")


def compile_all(out_dir, extra=(), nvcc=None, jobs=None, log=print):
    """Objects for kernels/*.cu + extra, compiled (in parallel) only when missing; returns their paths."""
    nvcc = nvcc or find_nvcc()
    if not nvcc:
        raise RuntimeError("nvcc not found (put it on PATH, or set NVCC or CUDA_HOME)")
    os.makedirs(out_dir, exist_ok=True)
    fl = flags()
    srcs = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu"))) + [os.path.abspath(p) for p in extra]
    objs = [object_path(nvcc, s, out_dir, fl) for s in srcs]

    def build(pair):
        src, obj = pair
        cmd = [nvcc, "-c", src, "-o", obj + ".tmp", *fl]
        log(" ".join(cmd))
        subprocess.check_call(cmd)
        os.replace(obj + ".tmp", obj)  # never a half-written object under the final name

    todo = [(s, o) for s, o in zip(srcs, objs) if not os.path.exists(o)]
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        list(pool.map(build, todo))  # re-raises the first failure
    return objs


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for o in compile_all(sys.argv[1], sys.argv[2:], log=lambda s: print(s, file=sys.stderr)):
        print(o)
