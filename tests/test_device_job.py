"""The GPU-machine job, checked without a GPU (issue 25, items 1, 2, 7, 9).

- The test folder collects with zero errors when optional dependencies (openai, regex, starlette, ...)
  are missing, as on the GPU machine's image: such modules skip instead.
- kernels/build.py (used by setup.py and gpu_run.sh) keys compiled objects by the nvcc flags and the
  sources, reuses them only then, and compiles the .cu files in parallel (a fake nvcc here).
- `bash benchmarks/gpu_run.sh --dry-run` does every step that needs no GPU -- carry check, sm_90 build,
  offline install from the carried wheels, collection of the GPU tests -- and prints the GPU steps'
  command lines, in the order that keeps time for the benchmark and the baseline (slow: ~1-2 minutes;
  needs nvcc, ../shared and pip's access to the scipy-openblas32 wheel).
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONAL = ["openai", "regex", "starlette", "uvicorn", "openpyxl", "httpx", "torch", "cupy"]


@pytest.mark.slow
def test_tests_collect_without_optional_dependencies():
    code = textwrap.dedent(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # `import name` now raises ImportError
        import pytest
        sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", {os.path.join(ROOT, "tests")!r}]))
    """)
    # outside the checkout, so `python -c` imports the installed tgllava, not the source tree (which has no _C)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                       timeout=300)
    assert r.returncode == 0 and " error" not in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def load_build():
    spec = importlib.util.spec_from_file_location("kbuild", os.path.join(ROOT, "kernels", "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fake_nvcc(tmp_path):
    """An nvcc that sleeps 0.5 s, logs its start and end times and writes the -o file."""
    log = tmp_path / "calls.log"
    nvcc = tmp_path / "nvcc"
    nvcc.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "start $(date +%s.%N)" >> {log}
        sleep 0.5
        while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
        echo obj > "$out"
        echo "end $(date +%s.%N)" >> {log}
        """))
    nvcc.chmod(0o755)
    return str(nvcc), log


def calls(log):
    return [ln.split() for ln in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow
def test_kernel_objects_are_keyed_by_flags_and_compiled_in_parallel(tmp_path, fake_nvcc, monkeypatch):
    kb = load_build()
    nvcc, log = fake_nvcc
    n_cu = len([f for f in os.listdir(os.path.join(ROOT, "kernels")) if f.endswith(".cu")])
    monkeypatch.setenv("TGLLAVA_CUDA_ARCH", "90")
    monkeypatch.delenv("TGLLAVA_FAST_MATH", raising=False)
    out = str(tmp_path / "obj")
    t0 = time.monotonic()
    objs = kb.compile_all(out, nvcc=nvcc, jobs=n_cu, log=lambda s: None)
    assert len(objs) == n_cu and all(os.path.exists(o) for o in objs)
    starts = sorted(float(t) for k, t in calls(log) if k == "start")
    ends = sorted(float(t) for k, t in calls(log) if k == "end")
    assert len(starts) == n_cu
    assert starts[-1] < ends[0], "the .cu files were compiled one after another"
    assert time.monotonic() - t0 < 0.5 * n_cu
    # same flags and sources: reused, nothing compiled
    assert kb.compile_all(out, nvcc=nvcc, log=lambda s: None) == objs and len(calls(log)) == 2 * n_cu
    # another architecture or fast math: new objects, never the stale ones
    monkeypatch.setenv("TGLLAVA_CUDA_ARCH", "80;90")
    objs80 = kb.compile_all(out, nvcc=nvcc, log=lambda s: None)
    monkeypatch.setenv("TGLLAVA_FAST_MATH", "1")
    objs_fast = kb.compile_all(out, nvcc=nvcc, log=lambda s: None)
    assert not set(objs) & set(objs80) and not set(objs80) & set(objs_fast)
    assert len(calls(log)) == 6 * n_cu
    assert "--use_fast_math" in kb.flags() and "arch=compute_80,code=sm_80" in kb.flags()


@pytest.mark.slow
def test_gpu_run_dry_run(tmp_path):
    if not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")):
        pytest.skip("no nvcc on this machine")
    shared = os.path.join(os.path.dirname(ROOT), "shared")
    if not os.path.isdir(os.path.join(shared, "golden")):
        pytest.skip("no ../shared/golden beside the checkout")
    dev = tmp_path / "device"
    # python3 is this interpreter; nvcc is deliberately not on PATH (gpu_run.sh must find /usr/local/cuda/bin)
    env = dict(os.environ, TG_DEVICE_DIR=str(dev), TG_WORK=str(tmp_path / "work"), OUT=str(tmp_path / "out"),
               SHARED=shared, PYTHON=sys.executable,
               PATH=os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"]))
    env.pop("PYTHONPATH", None)
    prep = subprocess.run(["bash", "benchmarks/prepare_device.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    if prep.returncode and "pip download" in prep.stderr:
        pytest.skip(f"cannot fetch the scipy-openblas32 wheel: {prep.stderr[-300:]}")
    assert prep.returncode == 0, prep.stdout + prep.stderr
    r = subprocess.run(["bash", "benchmarks/gpu_run.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=400)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert r.returncode == 0, summary + r.stderr[-2000:]
    lines = [ln.split()[0] for ln in summary.splitlines() if ln[:1].isalpha() and len(ln.split()) > 1]
    order = ["check", "env", "build", "install", "op_check", "collect", "pytest", "bench", "flow", "memcheck"]
    assert [s for s in lines if s in order][:len(order)] == order, summary
    for s in ("op_check", "pytest", "bench", "flow", "memcheck"):
        assert f"{s:<9} would run: " in summary, s
    assert "DRY RUN" in summary and "test_gpu.py" in summary and "--collect-only" not in summary.split("would run")[0]
    collect = (tmp_path / "work" / "logs" / "collect.log").read_text()
    assert "error" not in collect.lower() and "test_gpu.py" in collect
