#!/usr/bin/env bash
# The GPU parts of a worker host, after scripts/setup.sh (which installs the CPU builds):
#   - llama-cpp-python compiled with CUDA for this host's GPU architecture (the driver's
#     compute capability), with only the parts the fleet uses (~5 min on 16 cores);
#   - cuBLAS for CUDA 12, which CTranslate2 (Whisper) opens by name, from PyPI
#     (nvidia-cublas-cu12) when the host's libraries lack it (a CUDA 13 host has only .so.13).
# torch stays the CPU build: the embedder runs on npu-lite, never on CUDA.
# Exits 2 naming what to install when the driver or the CUDA compiler is missing.
# FLEET_GPU_SETUP_DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."

run() {
  if [ "${FLEET_GPU_SETUP_DRY_RUN:-}" = 1 ]; then echo "+ $*"; else "$@"; fi
}
die() { echo "setup-gpu: $*" >&2; exit 2; }

[ -x .venv/bin/python ] || die "no .venv here: run bash scripts/setup.sh first"
command -v nvidia-smi >/dev/null 2>&1 ||
  die "no NVIDIA driver (nvidia-smi is not on PATH): install the driver for this GPU first"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
[[ "$arch" =~ ^[0-9]+$ ]] || die "the driver reports no GPU (nvidia-smi --query-gpu=compute_cap)"
nvcc=$(command -v nvcc || true)
cuda_home="${CUDA_HOME:-/usr/local/cuda}"  # where NVIDIA's toolkit packages put it
[ -n "$nvcc" ] || [ ! -x "$cuda_home/bin/nvcc" ] || nvcc="$cuda_home/bin/nvcc"
[ -n "$nvcc" ] || die "no CUDA compiler (nvcc): install the CUDA toolkit (Debian: apt-get install \
nvidia-cuda-toolkit; or NVIDIA's cuda-toolkit package for your driver) and put its bin/ on PATH"
cuda=$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
llama=$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)

echo "setup-gpu: compiling $llama with CUDA $cuda for compute capability $arch (~5 min)"
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DLLAVA_BUILD=OFF"
export CUDACXX="$nvcc" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
echo "setup-gpu: CMAKE_ARGS=$CMAKE_ARGS"
run .venv/bin/python -m pip install -q --force-reinstall --no-cache-dir --no-deps "$llama"

if ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.12 '; then
  echo "setup-gpu: cuBLAS 12 is on the loader path"
else
  echo "setup-gpu: installing cuBLAS 12 for CTranslate2 (nvidia-cublas-cu12)"
  run .venv/bin/python -m pip install -q nvidia-cublas-cu12
fi
if [ "${FLEET_GPU_SETUP_DRY_RUN:-}" != 1 ]; then
  .venv/bin/python -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())" ||
    die "the build does not offload to the GPU: see the pip output above"
fi
echo "setup-gpu: done; check with: .venv/bin/fleet doctor"
