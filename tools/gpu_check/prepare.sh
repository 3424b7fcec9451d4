#!/bin/bash
# Wheels for the device machine (Python 3.12, x86-64), and onnxruntime-gpu and Warp cut to fit three 64 MiB calls.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
pip_download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "$@"
}
rm -rf .whl .gpuA .gpuB .gpuC && mkdir -p .whl .gpuA .gpuB .gpuC
pip_download -d .whl mujoco mujoco-core mujoco-studio glfw pyopengl websockets pymavlink==2.4.50 fastcrc \
    pyserial mcap lz4 zstandard cffi pycparser pytorch-mppi==0.9.1 arm-pytorch-utilities pytorch-seed tomli-w \
    mujoco-warp==4.0.0
work=$(mktemp -d)
pip_download -d "$work" "onnxruntime-gpu==1.31.1" "warp-lang==1.19.0"
(cd "$work" && unzip -q onnxruntime_gpu-*.whl && unzip -q warp_lang-*.whl && rm ./*.whl)
python3 tools/gpu_check/prune_fatbin.py "$work/onnxruntime/capi/libonnxruntime_providers_cuda.so" 90
python3 tools/gpu_check/prune_fatbin.py "$work/warp/bin/warp.so" 90
rm "$work/warp/bin/warp-clang.so"  # Warp's CPU compiler: the device runs Warp on the GPU only
(cd "$work" && tar -cf - onnxruntime onnxruntime_gpu-*.dist-info warp warp_lang-*.dist-info | xz -9e -T2 > gpu.tar.xz)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)  # the working tree travels with every call
part=$(( 64 * 1024 * 1024 - tree - 512 * 1024 ))  # a call's 64 MiB, less the tree and a margin
first=$(( part - $(du -sb .whl | cut -f1) ))  # call A also carries the wheels
cut_out() {  # bytes [$2, $2 + $3) of the archive into $1 (dd: no pipe for pipefail to end early)
    dd if="$work/gpu.tar.xz" of="$1" bs=1M iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none
}
size=$(stat -c %s "$work/gpu.tar.xz")
cut_out .gpuA/part 0 "$first"
cut_out .gpuB/part "$first" "$part"  # dd stops at the end: a smaller archive leaves B short and C empty
cut_out .gpuC/part "$((first + part))" "$(( size > first + part ? size - first - part : 0 ))"
rest=$(stat -c %s .gpuC/part)
rm -rf "$work"
[ "$rest" -le "$part" ] || { echo "the GPU libraries need a fourth call: .gpuC is $rest bytes" >&2; exit 1; }
du -sh .whl .gpuA .gpuB .gpuC
