#!/usr/bin/env bash
# prepare_device.sh -- fills the git-ignored folder device/ that benchmarks/gpu_run.sh needs on the
# GPU machine, which has no network and does not get ../shared (only the checkout travels, plus the
# paths named in the device tool's `carry`).  Run it here, on the development machine, from anywhere:
#
#   bash benchmarks/prepare_device.sh            # SHARED defaults to <repo>/../shared
#   TG_DEVICE_DIR=/tmp/dev bash benchmarks/prepare_device.sh   # elsewhere (the dry-run test does this)
#
# It writes
#   device/golden/            copy of $SHARED/golden (the golden sets; tests import weights.py from it)
#   device/pytorch_flow.py    copy of $SHARED/bench/pytorch_flow.py (the PyTorch baseline)
#   device/wheels/            wheels of what tgllava needs and the GPU image lacks: scipy-openblas32, and setuptools + wheel
#                             (build and run time: OpenBLAS for the CPU backend).  The image already has
#                             python 3.12, numpy, torch, pytest, pillow, tqdm, tokenizers, sentencepiece,
#                             regex (see the device tool's KINDS.md), so nothing else is carried.
#   device/MANIFEST.txt       what is in it, with sizes, for gpu_run.sh's start check
# and checks that everything that travels (tracked + untracked-not-ignored files + device/) stays
# under the device tool's 64 MiB.  Exit status 0 when device/ is complete, 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
DEV=${TG_DEVICE_DIR:-$ROOT/device}
LIMIT=$((64 * 1024 * 1024))
PY=${PYTHON:-python3}

die() { echo "prepare_device: $*" >&2; exit 1; }

[ -f "$SHARED/golden/weights.py" ] || die "no golden sets at $SHARED/golden (set SHARED=...)"
[ -f "$SHARED/bench/pytorch_flow.py" ] || die "no $SHARED/bench/pytorch_flow.py"
[ "$DEV" != "$ROOT/device" ] || git -C "$ROOT" check-ignore -q device/ || die "device/ is not git-ignored in $ROOT (add /device/ to .gitignore)"

mkdir -p "$DEV"
[ -d "$DEV/golden" ] && chmod -R u+w "$DEV/golden"
rm -rf "$DEV/golden" "$DEV/wheels" "$DEV/pytorch_flow.py"
# the golden sets, without caches
(cd "$SHARED" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - golden) | (cd "$DEV" && tar -xf -)
cp "$SHARED/bench/pytorch_flow.py" "$DEV/pytorch_flow.py"
chmod -R u+w "$DEV/golden" "$DEV/pytorch_flow.py" # ../shared is read-only; keep the copy replaceable

# scipy-openblas32 for CPython 3.12 on x86-64 Linux, pinned to the version used here when there is one
ver=$("$PY" -m pip show scipy-openblas32 2>/dev/null | sed -n 's/^Version: //p' || true)
spec=scipy-openblas32${ver:+==$ver}
mkdir -p "$DEV/wheels"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEV/wheels" "$spec" \
    || die "pip download $spec failed"
# setuptools and wheel (pure Python): the install builds without isolation, and the GPU image's Python may
# have neither (a 3.12 venv has no setuptools; setuptools before 70.1 needs wheel for bdist_wheel)
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEV/wheels" setuptools wheel \
    || die "pip download setuptools wheel failed"
n=$(ls "$DEV"/wheels/scipy_openblas32-*.whl 2>/dev/null | wc -l)
[ "$n" -eq 1 ] || die "expected one scipy_openblas32 wheel in device/wheels, found $n"
# its own requirements (none expected): each would have to be carried too
req=$(unzip -p "$DEV"/wheels/scipy_openblas32-*.whl '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true)
[ -z "$req" ] || die "scipy-openblas32 now requires: $req (download those wheels too)"

# the complete-set check gpu_run.sh repeats on the device
for f in golden/weights.py golden/materialize.py golden/tg-vicuna-tiny/io.npz golden/tg-qwen2-tiny/io.npz \
         golden/llava15-tiny/io.npz pytorch_flow.py; do
    [ -f "$DEV/$f" ] || die "device/$f is missing after the copy"
done
(cd "$DEV" && find . -type f ! -name MANIFEST.txt -printf '%s %p\n' | sort -k2) > "$DEV/MANIFEST.txt"

# what travels: tracked and untracked-not-ignored files, plus the carried device/
tree=$(cd "$ROOT" && git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s+=$1} END {print s+0}')
carried=$(du -sb "$DEV" | cut -f1)
total=$((tree + carried))
printf 'prepare_device: device/ %.1f MiB (golden %s, wheels %s), working tree %.1f MiB, total %.1f MiB of 64 MiB\n' \
    "$(echo "$carried / 1048576" | bc -l)" "$(du -sh "$DEV/golden" | cut -f1)" "$(du -sh "$DEV/wheels" | cut -f1)" \
    "$(echo "$tree / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
[ "$total" -lt "$LIMIT" ] || die "what travels is $total bytes, over the device tool's 64 MiB"
echo "prepare_device: ready; run on the device with carry [\"device\"]: bash benchmarks/gpu_run.sh"
