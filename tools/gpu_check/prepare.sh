#!/bin/bash
# Wheels for the device machine (Python 3.12, x86-64) and onnxruntime-gpu cut to fit two 64 MiB calls.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
pip_download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "$@"
}
rm -rf .whl .ortA .ortB && mkdir -p .whl .ortA .ortB
pip_download -d .whl mujoco mujoco-core mujoco-studio glfw pyopengl websockets pymavlink==2.4.50 fastcrc \
    pyserial mcap lz4 zstandard cffi pycparser pytorch-mppi==0.9.1 arm-pytorch-utilities pytorch-seed tomli-w
work=$(mktemp -d)
pip_download -d "$work" "onnxruntime-gpu==1.31.1"
(cd "$work" && unzip -q onnxruntime_gpu-*.whl && rm onnxruntime_gpu-*.whl)
python3 tools/gpu_check/prune_fatbin.py "$work/onnxruntime/capi/libonnxruntime_providers_cuda.so" 90
(cd "$work" && tar -cf - onnxruntime onnxruntime_gpu-*.dist-info | xz -9e -T2 > ort.tar.xz)
budget=$(( 64 * 1024 * 1024 - $(du -sb .whl | cut -f1) - 2 * 1024 * 1024 ))  # the rest of call A's 64 MiB
head -c "$budget" "$work/ort.tar.xz" > .ortA/part.a
tail -c +"$((budget + 1))" "$work/ort.tar.xz" > .ortB/part.b
rm -rf "$work"
du -sh .whl .ortA .ortB
