#!/bin/bash
# Device call A: stash part A of onnxruntime-gpu, install the wheels, the whole suite (CPU onnxruntime).
cd "$(dirname "$0")/../.." || exit 1
mkdir -p /tmp/ort && cp .ortA/part.a /tmp/ort/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timeout 240 python3 -m pytest tests -v -n 16 -p no:cacheprovider > "$OUT/suite.log" 2>&1; echo "suite rc $?"
grep -E "FAILED|^E  " "$OUT/suite.log" | head -40
grep -E "passed|failed" "$OUT/suite.log" | tail -3
