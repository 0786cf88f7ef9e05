#!/usr/bin/env bash
# One device-machine job: build, GPU tests, op_check, our benchmark and the PyTorch baseline, all logs to $OUT.
# Needs device/ (git-ignored, carried), prepared on the dev machine with:
#   cp -r ../shared/golden device/golden && cp ../shared/bench/pytorch_flow.py device/
#   pip download --python-version 3.12 --platform manylinux_2_28_x86_64 --only-binary=:all: pillow scipy-openblas32 tqdm -d device/wheels
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
pip install --no-index --find-links device/wheels scipy-openblas32 pillow tqdm > "$OUT/pip.log" 2>&1
pip install --no-build-isolation --no-deps . >> "$OUT/pip.log" 2>&1 || { tail -50 "$OUT/pip.log"; exit 1; }
nvcc -O3 -std=c++17 -Icsrc -Ikernels -DTG_WITH_CUDA -o "$OUT/op_check" kernels/tests/op_check.cu kernels/*.cu -lcublas -lcublasLt > "$OUT/op_check_build.log" 2>&1 \
  && "$OUT/op_check" quick > "$OUT/op_check.log" 2>&1
(cd tests && TGLLAVA_GOLDEN=$PWD/../device/golden timeout 300 python -m pytest -q -m gpu -p no:cacheprovider . > "$OUT/pytest_gpu.log" 2>&1)
timeout 240 python benchmarks/bench_gpu.py --out "$OUT/bench_gpu.json" > "$OUT/bench_gpu.log" 2>&1
timeout 240 python device/pytorch_flow.py > "$OUT/pytorch_flow.jsonl" 2>&1
tail -5 "$OUT"/pytest_gpu.log "$OUT"/op_check.log; cat "$OUT/bench_gpu.log" "$OUT/pytorch_flow.jsonl"
