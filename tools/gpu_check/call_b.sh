#!/bin/bash
# Device call B: onnxruntime-gpu assembled; the GPU tests with ORT CUDA, the probe (probe.py), make bench-gpu.
cd "$(dirname "$0")/../.." || exit 1
[ -f /tmp/ort/part.a ] && [ -d /tmp/site ] || { echo "COLD MACHINE: call A's files are gone"; exit 3; }
mkdir -p /tmp/ortsite && cat /tmp/ort/part.a .ortB/part.b | xz -d -T4 | tar -x -C /tmp/ortsite || exit 4
export PYTHONPATH=/tmp/ortsite:/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o; print('ort', o.__version__, o.get_available_providers())"
timeout 150 python3 -m pytest tests/onboard/test_cupy_backend.py tests/onboard/test_device_source.py \
    tests/onboard/test_mppi.py tests/onboard/test_cli.py -v -rs -p no:cacheprovider \
    -k "cupy or cuda or ort or gpu or python_q or graph or kernel" > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc $?"
grep -E "FAILED|SKIPPED|passed|failed" "$OUT/gpu_tests.log" | tail -20
grep -A25 "^E  " "$OUT/gpu_tests.log" | head -50
timeout 120 python3 tools/gpu_check/probe.py > "$OUT/probe.log" 2>&1
echo "probe rc $?"
grep -v "Warning\|warn(" "$OUT/probe.log" | head -60
timeout 200 python3 -m offboard.bench_gpu --steps 200 --out "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "bench rc $?"
grep -v '^ *["{}\[\]]' "$OUT/bench.log" | tail -32
