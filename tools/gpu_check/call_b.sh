#!/bin/bash
# Device call B: stash part B of the GPU libraries (call C carries the last part and runs the checks).
cd "$(dirname "$0")/../.." || exit 1
[ -f /tmp/gpu/part.a ] && [ -d /tmp/site ] || { echo "COLD MACHINE: call A's files are gone"; exit 3; }
cp .gpuB/part /tmp/gpu/part.b && echo "part B stashed"
