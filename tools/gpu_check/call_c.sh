#!/bin/bash
# Device call C: onnxruntime-gpu and Warp assembled; the GPU tests (ORT CUDA, CuPy, Warp on CUDA: the "warp-" ids
# are test_mppi's swing-ups, which take the first GPU), the probe (probe.py), then make bench-gpu (cupy against
# pytorch-mppi, and the warp rows). The timeouts leave a minute of the call's 600 s for the unpacking.
cd "$(dirname "$0")/../.." || exit 1
[ -f /tmp/gpu/part.a ] && [ -f /tmp/gpu/part.b ] && [ -d /tmp/site ] || { echo "COLD MACHINE: calls A and B's files are gone"; exit 3; }
mkdir -p /tmp/gpusite && cat /tmp/gpu/part.a /tmp/gpu/part.b .gpuC/part | xz -d -T4 | tar -x -C /tmp/gpusite || exit 4
export PYTHONPATH=/tmp/gpusite:/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o; print('ort', o.__version__, o.get_available_providers())"
python3 -c "import warp as wp; wp.init(); print('warp', wp.config.version, wp.get_cuda_device_count(), 'CUDA devices')"
timeout 150 python3 -m pytest tests/onboard/test_cupy_backend.py tests/onboard/test_device_source.py \
    tests/onboard/test_mppi.py tests/onboard/test_cli.py tests/onboard/test_mjcf_backends.py \
    tests/onboard/test_sensor_costs.py -v -rs -p no:cacheprovider \
    -k "cupy or cuda or ort or gpu or python_q or graph or kernel or warp-" > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc $?"
grep -E "FAILED|SKIPPED|passed|failed" "$OUT/gpu_tests.log" | tail -24
grep -A25 "^E  " "$OUT/gpu_tests.log" | head -50
timeout 90 python3 tools/gpu_check/probe.py > "$OUT/probe.log" 2>&1
echo "probe rc $?"
grep -v "Warning\|warn(" "$OUT/probe.log" | head -60
timeout 270 python3 -m offboard.bench_gpu --steps 200 --out "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "bench rc $?"
grep -v '^ *["{}\[\]]' "$OUT/bench.log" | tail -40
