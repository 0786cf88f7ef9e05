#!/usr/bin/env bash
# gpu_run.sh -- the whole GPU-machine job in one device command of at most 10 minutes: check the
# carried folder, build the CUDA objects once (op_check and the extension share them), install tgllava
# with the CUDA backend, run the CUDA op checks and exactly the GPU tests, then (only if those passed)
# tgllava's benchmark and the PyTorch baseline, each with time held back for it, and last an optional
# compute-sanitizer pass with the time that is left.
#
# How to prepare (on the development machine, whenever ../shared or the wheels change):
#   bash benchmarks/prepare_device.sh      # fills the git-ignored device/: golden sets, pytorch_flow.py,
#                                          # the scipy-openblas32 wheel; checks the 64 MiB carry limit
# How to run (the device tool, from the session whose checkout this is):
#   run(command="bash benchmarks/gpu_run.sh", carry=["device"], timeout_s=600)
# Dry run, on any machine with nvcc and no GPU (CI runs it through tests/test_device_job.py):
#   bash benchmarks/gpu_run.sh --dry-run
# does every step that needs no GPU exactly as on the device -- carry check, build for sm_90, offline
# install from the carried wheels (of a copy of what travels: tracked + untracked-not-ignored files),
# `pytest --collect-only` of the GPU test files (zero errors, some tests) -- and prints the command line
# of every GPU step instead of running it.  Exit status 0 when all of that passed.
#
# Steps, each under `timeout`, clamped to what is left of TG_BUDGET seconds minus the time held back for
# the later steps (a step with less than its minimum left is skipped):
#   check     device/ is complete (else: exit 3 at once, saying what is missing and how to make it)
#   env       nvidia-smi, nvcc, torch, the cuBLAS libraries, compute-sanitizer (PATH gets
#             /usr/local/cuda/bin when nvcc is not on it)
#   build     kernels/*.cu + kernels/tests/op_check.cu via kernels/build.py (sm_90, in parallel) into
#             $TG_WORK/obj, link op_check
#   install   carried wheels + this tree (TGLLAVA_CUDA=1 TGLLAVA_CUDA_ARCH=90, the objects of `build`
#             reused through TGLLAVA_CUDA_OBJ_DIR) into the fresh folder $TG_WORK/site, no index
#   op_check  op_check quick (every op against a host reference)
#   pytest    python3 -m pytest -m gpu $GPU_TESTS (only those files; golden sets from device/golden);
#             fails unless some test passed
#   bench     benchmarks/bench_gpu.py                       } only when op_check and pytest passed
#   flow      device/pytorch_flow.py (the PyTorch baseline) } (TG_BENCH_ANYWAY=1: regardless)
#   memcheck  compute-sanitizer --tool memcheck op_check quick with the time left (TG_SKIP_MEMCHECK=1:
#             never); only reported errors fail it: a sanitizer that refuses the device is "not run"
# What comes back under $OUT (4 files; the device tool returns at most 8):
#   summary.txt         one line per step (status, seconds, limit), op_check's failing cases and totals,
#                       pytest's result lines, the benchmark table, the baseline's JSON lines, memcheck's summary
#   logs.tar.gz         every full log (logs/<step>.log, pip's build output, the JSON results)
#   bench_gpu.json, pytorch_flow.jsonl   the raw numbers (when those steps ran)
# Exit status: 0 when every step that ran passed, 1 when one failed or was skipped, 3 when device/ is incomplete.
# Knobs: TG_BUDGET (default 540 s), TG_BENCH_ANYWAY, TG_SKIP_MEMCHECK, TG_WORK (default /tmp/tgllava),
# TG_DEVICE_DIR (default <repo>/device).
set -u -o pipefail

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 3
OUT=${OUT:-/tmp/tgllava-out}
WORK=${TG_WORK:-/tmp/tgllava}
DEV=${TG_DEVICE_DIR:-$ROOT/device}
LOGS=$WORK/logs
BUDGET=${TG_BUDGET:-540}
RESERVE=15 # seconds kept for packaging the logs
HOLD=0     # seconds held back for later steps (see step)
SUMMARY=$OUT/summary.txt
GPU_TESTS="test_gpu.py test_ops.py test_op_backends.py test_siglip.py" # the files with `gpu` tests
export ROOT WORK DEV LOGS GPU_TESTS DRY PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
command -v nvcc >/dev/null 2>&1 || export PATH="$PATH:/usr/local/cuda/bin"

mkdir -p "$OUT"
rm -rf "$WORK"
mkdir -p "$LOGS" "$WORK/obj" "$WORK/site"
: >"$SUMMARY"

say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
section() { # section TITLE FILE [FILTER-COMMAND...]: append part of a log to the summary
    local title=$1 file=$2
    shift 2
    [ -s "$file" ] || return 0
    say ""
    say "== $title"
    if [ $# -gt 0 ]; then "$@" <"$file"; else cat "$file"; fi | head -c 6000 | tee -a "$SUMMARY"
}

finish() {
    local rc=$?
    trap - EXIT
    [ -f "$LOGS/bench_gpu.json" ] && cp "$LOGS/bench_gpu.json" "$OUT/"
    [ -f "$LOGS/pytorch_flow.jsonl" ] && cp "$LOGS/pytorch_flow.jsonl" "$OUT/"
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null || say "could not pack the logs"
    say ""
    say "gpu_run: exit $rc after ${SECONDS}s; files in \$OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
    exit "$rc"
}
trap finish EXIT

declare -A RC
FAILED=0
# step NAME MAX_S MIN_S COMMAND...: run COMMAND with output in $LOGS/NAME.log under a time limit of
# min(MAX_S, budget left - HOLD); skipped when less than MIN_S is left.  RC[NAME] = exit status or "skipped".
# In a dry run a GPU step (gpu_step) prints its command line instead.
step() {
    local name=$1 max=$2 min=$3
    shift 3
    local left=$((BUDGET - RESERVE - HOLD - SECONDS))
    if [ "$left" -lt "$min" ]; then
        say "$(printf '%-9s SKIPPED: %ds of the budget left, needs %ds' "$name" "$left" "$min")"
        RC[$name]=skipped
        FAILED=1
        return 1
    fi
    local lim=$((max < left ? max : left)) t0=$SECONDS rc
    timeout --kill-after=5 "$lim" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    local note=""
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note=" TIMED OUT"
    say "$(printf '%-9s rc=%-3s %4ds (limit %ds)%s' "$name" "$rc" $((SECONDS - t0)) "$lim" "$note")"
    RC[$name]=$rc
    [ "$rc" -eq 0 ] || FAILED=1
    return "$rc"
}
gpu_step() {
    if [ "$DRY" = 1 ]; then
        say "$(printf '%-9s would run: %s' "$1" "${*:4}")"
        RC[$1]=0
        return 0
    fi
    step "$@"
}

# ---- check: the carried folder -------------------------------------------------------------------
missing=()
for f in golden/weights.py golden/materialize.py golden/tg-vicuna-tiny/io.npz golden/tg-qwen2-tiny/io.npz \
    golden/llava15-tiny/io.npz pytorch_flow.py; do
    [ -f "$DEV/$f" ] || missing+=("device/$f")
done
ls "$DEV"/wheels/scipy_openblas32-*.whl >/dev/null 2>&1 || missing+=("device/wheels/scipy_openblas32-*.whl")
for tool in nvcc python3 timeout tar; do command -v "$tool" >/dev/null 2>&1 || missing+=("command $tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "check     FAILED: missing ${missing[*]}"
    say "  device/ is git-ignored and travels only when carried: run 'bash benchmarks/prepare_device.sh' on the"
    say "  development machine, then call the device tool with carry=[\"device\"]. Nothing else was run."
    exit 3
fi
say "check     ok: device/ complete ($(du -sh "$DEV" | cut -f1)), $(ls "$DEV"/wheels | wc -l) wheel(s)$([ "$DRY" = 1 ] && echo ', DRY RUN')"

# ---- the steps (each a function run by `timeout bash -c`) ----------------------------------------
env_info() {
    [ "$DRY" = 1 ] || { nvidia-smi; nvidia-smi -L; }
    nvcc --version
    python3 -c "import sys, numpy; print(sys.version); print('numpy', numpy.__version__)"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || true
    echo "cuBLAS libraries:"
    ls -l "$(dirname "$(dirname "$(command -v nvcc)")")"/lib64/libcublas* 2>/dev/null || true
    ldconfig -p 2>/dev/null | grep -E 'libcublas(Lt)?\.so' || true
    echo "compute-sanitizer: $(command -v compute-sanitizer || echo 'not found')"
    return 0
}

build_op_check() { # the objects in parallel (shared with the install), then one link
    local objs
    objs=$(TGLLAVA_CUDA_ARCH=90 python3 kernels/build.py "$WORK/obj" kernels/tests/op_check.cu) || return 1
    # shellcheck disable=SC2086
    nvcc -arch=sm_90 -o "$WORK/op_check" $objs -lcublas -lcublasLt
}

install_pkg() {
    set -e
    local src=$ROOT
    if [ "$DRY" = 1 ]; then # what travels, without the build/ folder of this checkout
        src=$WORK/src
        mkdir -p "$src"
        (cd "$ROOT" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$src"
    fi
    python3 -m pip install --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$DEV"/wheels/*.whl
    TGLLAVA_CUDA=1 TGLLAVA_CUDA_ARCH=90 TGLLAVA_CUDA_OBJ_DIR="$WORK/obj" python3 -m pip install -v --no-index \
        --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$WORK/site" "$src"
    cd /tmp
    python3 -c "import tgllava, tgllava._C as C; print('tgllava from', tgllava.__file__); assert C.built_with_cuda(), 'the extension was built without the CUDA backend'"
}

run_pytest() { # exactly the GPU tests; a collection error fails the step
    cd "$ROOT/tests" || return 1
    # shellcheck disable=SC2086
    TGLLAVA_GOLDEN="$DEV/golden" python3 -m pytest -q -m gpu -rfEs -p no:cacheprovider $GPU_TESTS
    local rc=$?
    # all skipped (no usable device) or nothing collected is not a pass
    grep -Eq '[0-9]+ passed' "$LOGS/pytest.log" || { echo "gpu_run: no GPU test passed"; [ "$rc" -ne 0 ] || rc=1; }
    return "$rc"
}

collect_gpu_tests() { # dry run: what the pytest step would run must collect with zero errors
    cd "$ROOT/tests" || return 1
    # shellcheck disable=SC2086
    TGLLAVA_GOLDEN="$DEV/golden" python3 -m pytest -q --collect-only -m gpu -p no:cacheprovider $GPU_TESTS || return 1
    grep -Eq '^[0-9]+(/[0-9]+)? tests? (collected|selected)' "$LOGS/collect.log" || { echo "gpu_run: no GPU test collected"; return 1; }
    grep -Eq '[0-9]+ errors?' "$LOGS/collect.log" && return 1
    return 0
}

run_flow() { # JSON lines on stdout, warnings apart
    python3 "$DEV/pytorch_flow.py" >"$LOGS/pytorch_flow.jsonl"
}

run_memcheck() { # exit 9: the sanitizer found errors; any other failure: it did not run (e.g. refused the device)
    compute-sanitizer --tool memcheck --error-exitcode 9 "$WORK/op_check" quick
    local rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 9 ] || { echo "gpu_run: compute-sanitizer did not run (exit $rc)"; return 10; }
    return "$rc"
}

export -f env_info build_op_check install_pkg run_pytest collect_gpu_tests run_flow run_memcheck
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"

BENCH_MIN=60 FLOW_MIN=60
HOLD=$((BENCH_MIN + FLOW_MIN)) # benchmark and baseline always keep their minimum
step env 30 5 bash -c env_info
step build 150 30 bash -c build_op_check
step install 180 30 bash -c install_pkg
if [ "${RC[build]}" = 0 ]; then
    gpu_step op_check 60 10 "$WORK/op_check" quick
else
    say "op_check  SKIPPED: the build failed"
    RC[op_check]=skipped
fi
if [ "${RC[install]}" != 0 ]; then
    say "pytest    SKIPPED: the install failed"
    RC[pytest]=skipped
    FAILED=1
elif [ "$DRY" = 1 ]; then
    step collect 60 10 bash -c collect_gpu_tests
    gpu_step pytest 150 30 bash -c "cd tests && TGLLAVA_GOLDEN=$DEV/golden python3 -m pytest -q -m gpu -rfEs -p no:cacheprovider $GPU_TESTS"
else
    gpu_step pytest 150 30 bash -c run_pytest
fi

if [ "${RC[op_check]}" = 0 ] && [ "${RC[pytest]}" = 0 ] || [ -n "${TG_BENCH_ANYWAY:-}" ]; then
    HOLD=$FLOW_MIN
    [ "${RC[install]}" = 0 ] && gpu_step bench 160 "$BENCH_MIN" python3 benchmarks/bench_gpu.py --out "$LOGS/bench_gpu.json"
    HOLD=0
    gpu_step flow 200 "$FLOW_MIN" bash -c run_flow
else
    say "bench     SKIPPED: op_check=${RC[op_check]} pytest=${RC[pytest]} (numbers from failing kernels are useless;"
    say "flow      SKIPPED   fix and rerun, or set TG_BENCH_ANYWAY=1)"
fi

HOLD=0
if [ -z "${TG_SKIP_MEMCHECK:-}" ] && [ "${RC[build]}" = 0 ]; then
    if [ "$DRY" = 0 ] && ! command -v compute-sanitizer >/dev/null 2>&1; then
        say "memcheck  NOT RUN: compute-sanitizer is not installed"
    else
        failed_before=$FAILED
        gpu_step memcheck 400 45 bash -c run_memcheck
        if [ "${RC[memcheck]}" = 10 ]; then
            say "memcheck  NOT RUN: compute-sanitizer refused (see logs/memcheck.log); not a failure"
            FAILED=$failed_before
        fi
    fi
fi

# ---- summary ---------------------------------------------------------------------------------------
section "machine" "$LOGS/env.log" grep -E 'NVIDIA H|GPU 0|release|torch|Driver Version|libcublas|sanitizer'
section "build (errors)" "$LOGS/build.log" grep -E 'error|warning'
section "op_check: failing cases and totals" "$LOGS/op_check.log" grep -E 'FAIL|ERROR|SKIPPED|passed,|cuBLASLt|tg_cuda_backend_create|later cases'
section "install (last lines)" "$LOGS/install.log" tail -n 15
section "collect (dry run)" "$LOGS/collect.log" tail -n 15
section "pytest" "$LOGS/pytest.log" tail -n 40
section "bench_gpu" "$LOGS/bench.log" tail -n 40
section "pytorch_flow (JSON lines)" "$LOGS/pytorch_flow.jsonl"
section "pytorch_flow (stderr, last lines)" "$LOGS/flow.log" tail -n 10
section "memcheck" "$LOGS/memcheck.log" grep -E -A3 'ERROR SUMMARY|Invalid|Program hit|========= Error|did not run'
exit "$FAILED"
