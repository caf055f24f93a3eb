#!/usr/bin/env bash
# Builds llama.cpp's command-line tools (llama-tokenize, llama-perplexity, llama-quantize,
# llama-imatrix, llama-completion) from the llama.cpp that the llama-cpp-python sdist on PyPI vendors,
# into target/llama-cpp/bin. CPU only. On these VMs AMX is advertised but faults, so the build
# is not native: AVX-512 on, AMX off.
# Idempotent: tools already built are kept. Prints the bin directory on stdout.
# Usage: scripts/interop/build-llama-cpp.sh      (env JOBS=N, default 2; LLAMA_CPP_VERSION)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
version=${LLAMA_CPP_VERSION:-0.3.36}
work="$root/target/llama-cpp"
bin="$work/build/bin"
tools=(llama-tokenize llama-perplexity llama-quantize llama-imatrix llama-completion)
jobs=${JOBS:-2}

missing=0
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || missing=1; done
if [ $missing = 0 ]; then echo "$bin"; exit 0; fi

mkdir -p "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -f "$src/CMakeLists.txt" ]; then
  sdist="$work/llama_cpp_python-$version.tar.gz"
  if [ ! -f "$sdist" ]; then
    # The simple index names the sdist's URL; pip itself would try to build it to read metadata.
    url=$(curl -fsS "https://pypi.org/simple/llama-cpp-python/" \
      | grep -o "https://[^\"#]*llama_cpp_python-$version\.tar\.gz" | head -1)
    [ -n "$url" ] || { echo "llama-cpp-python $version: no sdist on PyPI" >&2; exit 1; }
    curl -fsSL -o "$sdist.part" "$url" && mv "$sdist.part" "$sdist"
  fi
  tar -xzf "$sdist" -C "$work"
fi
command -v cmake >/dev/null || python3 -m pip install --quiet cmake >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >"$work/cmake-configure.log" 2>&1 \
  || { tail -30 "$work/cmake-configure.log" >&2; exit 1; }
cmake --build "$work/build" -j "$jobs" --target "${tools[@]}" >"$work/cmake-build.log" 2>&1 \
  || { tail -30 "$work/cmake-build.log" >&2; exit 1; }
echo "$bin"
