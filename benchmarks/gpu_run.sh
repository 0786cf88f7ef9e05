#!/usr/bin/env bash
# gpu_run.sh -- the whole GPU-machine job in one device command of at most 10 minutes: check the
# carried folder, build and run the CUDA op checks, install tgllava with the CUDA backend, run the
# GPU tests, then (only if the checks and tests passed) tgllava's benchmark and the PyTorch baseline
# in the same run, and an optional compute-sanitizer pass with the time that is left.
#
# How to prepare (on the development machine, whenever ../shared or the wheels change):
#   bash benchmarks/prepare_device.sh      # fills the git-ignored device/: golden sets, pytorch_flow.py,
#                                          # the scipy-openblas32 wheel; checks the 64 MiB carry limit
# How to run (the device tool, from the session whose checkout this is):
#   run(command="bash benchmarks/gpu_run.sh", carry=["device"], timeout_s=600)
# Locally (no GPU) the same command exercises everything but the device: the start check, the op_check
# build, the install, pytest's collection; op_check and pytest then fail and the benchmarks are skipped.
#
# Steps, each under `timeout`, clamped to what is left of TG_BUDGET seconds ($SECONDS guard; a step with
# less than its minimum left is skipped):
#   check     device/ is complete (else: exit 3 at once, saying what is missing and how to make it)
#   env       nvidia-smi, nvcc and torch versions
#   build     kernels/*.cu + kernels/tests/op_check.cu with nvcc -arch=sm_90, in parallel, into $TG_WORK
#   op_check  op_check quick (every op against a host reference)
#   install   carried wheels + this tree (TGLLAVA_CUDA=1 TGLLAVA_CUDA_ARCH=90) into $TG_WORK/site, no index
#   pytest    python3 -m pytest -m gpu (golden sets from device/golden); fails unless some test passed
#   bench     benchmarks/bench_gpu.py                       } only when op_check and pytest passed
#   flow      device/pytorch_flow.py (the PyTorch baseline) } (TG_BENCH_ANYWAY=1: regardless)
#   memcheck  compute-sanitizer --tool memcheck op_check quick, if enough time is left (TG_SKIP_MEMCHECK=1: never)
# What comes back under $OUT (4 files; the device tool returns at most 8):
#   summary.txt         one line per step (status, seconds, limit), op_check's failing cases and totals,
#                       pytest's result lines, the benchmark table, the baseline's JSON lines, memcheck's summary
#   logs.tar.gz         every full log (logs/<step>.log, pip's build output, the JSON results)
#   bench_gpu.json, pytorch_flow.jsonl   the raw numbers (when those steps ran)
# Exit status: 0 when every step that ran passed, 1 when one failed or was skipped, 3 when device/ is incomplete.
# Knobs: TG_BUDGET (default 540 s), TG_BENCH_ANYWAY, TG_SKIP_MEMCHECK, TG_WORK (default /tmp/tgllava).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 3
OUT=${OUT:-/tmp/tgllava-out}
WORK=${TG_WORK:-/tmp/tgllava}
LOGS=$WORK/logs
BUDGET=${TG_BUDGET:-540}
RESERVE=15 # seconds kept for packaging the logs
SUMMARY=$OUT/summary.txt
export ROOT WORK LOGS PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

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
# min(MAX_S, budget left); skipped when less than MIN_S is left.  RC[NAME] = exit status or "skipped".
step() {
    local name=$1 max=$2 min=$3
    shift 3
    local left=$((BUDGET - RESERVE - SECONDS))
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

# ---- check: the carried folder -------------------------------------------------------------------
missing=()
for f in device/golden/weights.py device/golden/materialize.py device/golden/tg-vicuna-tiny/io.npz \
    device/golden/tg-qwen2-tiny/io.npz device/golden/llava15-tiny/io.npz device/pytorch_flow.py; do
    [ -f "$f" ] || missing+=("$f")
done
ls device/wheels/scipy_openblas32-*.whl >/dev/null 2>&1 || missing+=("device/wheels/scipy_openblas32-*.whl")
for tool in nvcc python3 timeout tar; do command -v "$tool" >/dev/null 2>&1 || missing+=("command $tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "check     FAILED: missing ${missing[*]}"
    say "  device/ is git-ignored and travels only when carried: run 'bash benchmarks/prepare_device.sh' on the"
    say "  development machine, then call the device tool with carry=[\"device\"]. Nothing else was run."
    exit 3
fi
say "check     ok: device/ complete ($(du -sh device | cut -f1)), $(ls device/wheels | wc -l) wheel(s)"

# ---- the steps (each a function run by `timeout bash -c`) ----------------------------------------
env_info() {
    nvidia-smi
    nvidia-smi -L
    nvcc --version
    python3 -c "import sys, numpy, torch; print(sys.version); print('numpy', numpy.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    command -v compute-sanitizer
    return 0
}

build_op_check() { # all objects in parallel (16 cores), then one link
    local flags=(-O2 -std=c++17 -lineinfo -Icsrc -Ikernels -DTG_WITH_CUDA -arch=sm_90)
    local pids=() f bad=0
    for f in kernels/*.cu kernels/tests/op_check.cu; do
        echo "nvcc ${flags[*]} -c $f"
        nvcc "${flags[@]}" -c "$f" -o "$WORK/obj/$(basename "$f" .cu).o" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || bad=1; done
    [ "$bad" -eq 0 ] || { echo "compilation failed"; return 1; }
    nvcc -arch=sm_90 -o "$WORK/op_check" "$WORK"/obj/*.o -lcublas -lcublasLt
}

install_pkg() {
    set -e
    python3 -m pip install --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" device/wheels/*.whl
    TGLLAVA_CUDA=1 TGLLAVA_CUDA_ARCH=90 python3 -m pip install -v --no-index --no-deps --no-build-isolation \
        --no-compile --no-cache-dir --target "$WORK/site" "$ROOT"
    cd /tmp
    python3 -c "import tgllava, tgllava._C as C; print('tgllava from', tgllava.__file__); assert C.built_with_cuda(), 'the extension was built without the CUDA backend'"
}

run_pytest() {
    cd "$ROOT/tests" || return 1
    TGLLAVA_GOLDEN="$ROOT/device/golden" python3 -m pytest -q -m gpu -rfEs -p no:cacheprovider \
        --continue-on-collection-errors .
    local rc=$?
    # all skipped (no usable device) or nothing collected is not a pass
    grep -Eq '[0-9]+ passed' "$LOGS/pytest.log" || { echo "gpu_run: no GPU test passed"; [ "$rc" -ne 0 ] || rc=1; }
    return "$rc"
}

run_flow() { # JSON lines on stdout, warnings apart
    python3 device/pytorch_flow.py >"$LOGS/pytorch_flow.jsonl"
}

export -f env_info build_op_check install_pkg run_pytest run_flow
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"

step env 30 10 bash -c env_info
step build 150 30 bash -c build_op_check
if [ "${RC[build]}" = 0 ]; then
    step op_check 100 20 "$WORK/op_check" quick
else
    say "op_check  SKIPPED: the build failed"
    RC[op_check]=skipped
fi
step install 210 60 bash -c install_pkg
if [ "${RC[install]}" = 0 ]; then
    step pytest 200 30 bash -c run_pytest
else
    say "pytest    SKIPPED: the install failed"
    RC[pytest]=skipped
    FAILED=1
fi

if [ "${RC[op_check]}" = 0 ] && [ "${RC[pytest]}" = 0 ] || [ -n "${TG_BENCH_ANYWAY:-}" ]; then
    [ "${RC[install]}" = 0 ] && step bench 160 60 python3 benchmarks/bench_gpu.py --out "$LOGS/bench_gpu.json"
    step flow 170 60 bash -c run_flow
else
    say "bench     SKIPPED: op_check=${RC[op_check]} pytest=${RC[pytest]} (numbers from failing kernels are useless;"
    say "flow      SKIPPED   fix and rerun, or set TG_BENCH_ANYWAY=1)"
fi

if [ -z "${TG_SKIP_MEMCHECK:-}" ] && [ "${RC[build]}" = 0 ] && command -v compute-sanitizer >/dev/null 2>&1; then
    step memcheck 400 45 compute-sanitizer --tool memcheck --error-exitcode 9 "$WORK/op_check" quick
fi

# ---- summary ---------------------------------------------------------------------------------------
section "machine" "$LOGS/env.log" grep -E 'NVIDIA H|GPU 0|release|torch|Driver Version'
section "build (errors)" "$LOGS/build.log" grep -E 'error|warning'
section "op_check: failing cases and totals" "$LOGS/op_check.log" grep -E 'FAIL|ERROR|SKIPPED|passed,|cuBLASLt|tg_cuda_backend_create|later cases'
section "install (last lines)" "$LOGS/install.log" tail -n 15
section "pytest" "$LOGS/pytest.log" tail -n 40
section "bench_gpu" "$LOGS/bench.log" tail -n 40
section "pytorch_flow (JSON lines)" "$LOGS/pytorch_flow.jsonl"
section "pytorch_flow (stderr, last lines)" "$LOGS/flow.log" tail -n 10
section "memcheck" "$LOGS/memcheck.log" grep -E -A3 'ERROR SUMMARY|Invalid|Program hit|========= Error'
exit "$FAILED"
