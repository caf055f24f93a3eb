#!/usr/bin/env bash
# Creates target/interop-venv and installs, from PyPI only, the real consumers of microllm's
# outputs: torch (CPU use; the PyPI Linux wheel also pulls the CUDA runtime packages, ~3 GB),
# transformers + compressed-tensors (HF safetensors outputs), gguf, safetensors, numpy, and
# llama-cpp-python (builds llama.cpp from source, CPU only).
# Idempotent: a package already importable is not reinstalled.
# Usage: scripts/interop/setup.sh        (env JOBS=N to change the build parallelism, default 2)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
venv="$root/target/interop-venv"
py="$venv/bin/python"
jobs=${JOBS:-2}

# Versions measured in docs/interop-results.md.
TORCH=${TORCH:-torch==2.15.0}
TRANSFORMERS=${TRANSFORMERS:-transformers==5.24.0}
COMPRESSED=${COMPRESSED:-compressed-tensors==0.20.0}
LLAMA_CPP=${LLAMA_CPP:-llama-cpp-python==0.3.36}
BASE="numpy safetensors gguf==0.19.0 cmake ninja jinja2 typing-extensions diskcache"

[ -x "$py" ] || python3 -m venv "$venv"
pip() { "$py" -m pip "$@"; }
have() { "$py" -c "import $1" 2>/dev/null; }

have numpy && have safetensors && have gguf && have cmake || pip install --quiet $BASE

# llama-cpp-python: CPU-only build; no BLAS, no CUDA, no examples/tools/server/multimodal.
llama_log="$root/target/interop-llama-build.log"
llama_pid=
if ! have llama_cpp; then
  echo "building llama-cpp-python (llama.cpp from source, -j$jobs; log: $llama_log)" >&2
  (
    export PATH="$venv/bin:$PATH"
    export CMAKE_BUILD_PARALLEL_LEVEL=$jobs MAKEFLAGS=-j$jobs
    export CMAKE_ARGS="-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF \
-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
    pip install --no-cache-dir --verbose "$LLAMA_CPP" >"$llama_log" 2>&1
  ) &
  llama_pid=$!
fi

# torch + transformers + compressed-tensors (downloads; runs while llama.cpp compiles).
if ! have torch || ! have transformers || ! have compressed_tensors; then
  echo "installing $TORCH $TRANSFORMERS $COMPRESSED" >&2
  pip install --quiet "$TORCH" "$TRANSFORMERS" "$COMPRESSED"
fi

# A GPTQ backend for transformers: gptqmodel (pure Python wheel; its CPU kernel is torch)
# and optimum, which transformers requires for GPTQ. Optional: the GPTQ layout is also proven
# without them (check_gptq_layout.py).
GPTQ_BACKEND=${GPTQ_BACKEND:-gptqmodel==7.7.0 optimum==2.3.0}
gptq_log="$root/target/interop-gptqmodel-install.log"
if [ "$GPTQ_BACKEND" != none ] && ! { have gptqmodel && have optimum; }; then
  echo "installing $GPTQ_BACKEND (optional; log: $gptq_log)" >&2
  pip install $GPTQ_BACKEND >"$gptq_log" 2>&1 \
    || { echo "optional GPTQ backend did not install; last lines of $gptq_log:" >&2; grep -i -E 'error|fail' "$gptq_log" | tail -8 >&2; }
fi

status=0
if [ -n "$llama_pid" ]; then
  wait "$llama_pid" || { echo "llama-cpp-python build failed; see $llama_log" >&2; tail -30 "$llama_log" >&2; status=1; }
fi
"$py" - <<'PY'
import importlib.metadata as md
for p in ["torch", "transformers", "compressed-tensors", "llama_cpp_python", "gptqmodel", "optimum", "accelerate", "tokenizers", "gguf", "safetensors", "numpy"]:
    try:
        print(f"{p}=={md.version(p)}")
    except md.PackageNotFoundError:
        print(f"{p}: not installed")
PY
exit $status
