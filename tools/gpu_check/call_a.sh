#!/bin/bash
# Device call A: stash part A of the GPU libraries, install the wheels, the whole suite (CPU onnxruntime).
# --install-only: no suite (a rerun of call C after a fix, on a fresh machine: seconds, not minutes).
cd "$(dirname "$0")/../.." || exit 1
mkdir -p /tmp/gpu && cp .gpuA/part /tmp/gpu/part.a
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
[ "$1" = "--install-only" ] && { echo "installed; no suite"; exit 0; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timeout 240 python3 -m pytest tests -v -n 16 -p no:cacheprovider > "$OUT/suite.log" 2>&1; echo "suite rc $?"
grep -E "FAILED|^E  " "$OUT/suite.log" | head -40
grep -E "passed|failed" "$OUT/suite.log" | tail -3
