#!/usr/bin/env bash
# Download FlashAttention-4 (CuTe DSL) and everything it needs that a stock PyTorch image lacks,
# as wheels for an offline x86-64 Linux GPU host with Python 3.12 and a CUDA 13 build of torch,
# so that `attention backend "flex-flash"` (docs/attention.md) can be installed there.
#
#   bash bench/flash_attn_wheels.sh DIR          # here, with PyPI
#   pip install --no-index --no-deps --target SITE DIR/*.whl                 # there
#   export PYTHONPATH=SITE/nvidia_cutlass_dsl/dsl_packages:SITE:$PYTHONPATH  # --target skips .pth files
#
# The versions are the ones that ran with torch 2.11 on an H100 (docs/BENCHMARKS.md, issue 5,
# session 5). nvidia-cutlass-dsl-libs-core holds the `cutlass` Python package; without it
# `import cutlass.cute` fails. The cu13 libs wheel alone is about 92 MB.
set -euo pipefail
dir=${1:?usage: bash bench/flash_attn_wheels.sh DIR}
mkdir -p "$dir"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for spec in flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
            nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5 \
            apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" "$spec"
done
ls -la "$dir"
