#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian machine with Python 3.11:
# Debian packages (redis-server, espeak-ng, a C/C++ toolchain for llama-cpp-python) and a
# virtual environment .venv with the project, its worker set (models and runtimes: this
# machine runs the workers of the demo and the tests) and its dev tools. Idempotent: a second run
# only re-installs when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
"$PY" -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
# llama-cpp-python compiles from source (~7 min). Its wheel is kept in .cache/wheels, so a
# rebuilt .venv and the container image the tests build (docker/Dockerfile) reuse it; the
# stamp says how it was built, and a wheel built otherwise (before AMX was left out) is
# built again and installed over the old one.
llama=$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)
build="$llama native-without-amx"
stamp=.cache/wheels/llama-build
if [ "$(cat "$stamp" 2>/dev/null)" != "$build" ]; then
  rm -f .venv/.installed
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  # torch first, pinned, and the CPU build: PyPI's torch for Linux is the multi-GB CUDA build,
  # and the embedder never runs on CUDA. A wheel pip already finds (a find-links folder, a
  # mirror) wins; else PyTorch's CPU index.
  if ! "${pip[@]}" torch==2.13.0+cpu 2>/dev/null; then
    "${pip[@]}" --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu
  fi
  rebuilt=0
  if [ "$(cat "$stamp" 2>/dev/null)" != "$build" ] \
    || ! ls .cache/wheels/llama_cpp_python-"${llama#*==}"-*.whl >/dev/null 2>&1; then
    echo "setup: compiling $llama into .cache/wheels (~7 min, once)"
    rm -f .cache/wheels/llama_cpp_python-*.whl
    # Built for this CPU, less AMX: a CPU may list AMX while its kernel (a VM's) does not give
    # processes the tile state, and AMX kernels then die on their first instruction (SIGILL,
    # seen here). GCC keeps an explicit -mno-* over -march=native whatever the order. Not
    # from pip's cache, which holds whatever it built before.
    noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CFLAGS="${CFLAGS:-} $noamx" CXXFLAGS="${CXXFLAGS:-} $noamx" \
      CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
      .venv/bin/python -m pip wheel -q --disable-pip-version-check --no-cache-dir --no-deps \
      -w .cache/wheels "$llama"
    echo "$build" > "$stamp"
    rebuilt=1
  fi
  # The full set: a worker host's models and runtimes (the `workers` extra) and the dev tools.
  # A host that only submits workflows needs neither: `pip install .` (see README.md).
  echo "setup: installing the project with its worker set into .venv"
  "${pip[@]}" --find-links .cache/wheels -e ".[workers,dev]"
  if [ "$rebuilt" -eq 1 ]; then  # over a copy built otherwise, of the same version
    "${pip[@]}" --force-reinstall --no-deps .cache/wheels/llama_cpp_python-"${llama#*==}"-*.whl
  fi
  touch .venv/.installed
fi
echo "setup: ready ($(.venv/bin/python -c 'import celery, llama_cpp; print("celery", celery.__version__, "llama-cpp", llama_cpp.__version__)'), redis $(redis-server --version | cut -d' ' -f3 | cut -d= -f2))"
