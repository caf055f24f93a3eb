#!/usr/bin/env bash
# Round-to-nearest GGUF export speed and memory: SmolLM2-135M from an F32 GGUF (made once
# from the shipped Q4_1 file) to Q8_0, Q4_0 and Q4_K_M, microllm `convert` and llama.cpp's
# `llama-quantize` (2 threads) alternating, RUNS runs each; prints median wall times and
# peak RSS (of the last run).
# Usage: scripts/bench/rtn-gguf.sh [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
assets=$(bash scripts/fetch-assets.sh)
cargo build --release --quiet
out=target/bench
mkdir -p "$out"
bin=target/release/microllm
src="$out/smollm2-f32.gguf"
[ -f "$src" ] || $bin convert --model "$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --out "$src" --gguf-type f32 >/dev/null
llama=$(bash scripts/interop/build-llama-cpp.sh)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# One run: "<seconds> <peak MB>".
measure() {
  /usr/bin/time -f '%e %M' -o "$out/time.txt" "$@" >/dev/null 2>&1
  read -r secs kb < "$out/time.txt"
  echo "$secs $((kb / 1024))"
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for type in q8_0 q4_0 q4_k_m; do
  ours=() theirs=()
  for i in $(seq "$runs"); do
    read -r secs ours_mb < <(measure $bin convert --model "$src" --out "$out/smollm2-$type.gguf" \
      --gguf-type "$type" --force)
    ours+=("$secs")
    read -r secs llama_mb < <(measure "$llama/llama-quantize" "$src" "$out/smollm2-$type-llama.gguf" \
      "${type^^}" 2)
    theirs+=("$secs")
  done
  echo "$type: microllm convert median $(median "${ours[@]}") s (${ours[*]}), peak ${ours_mb} MB;" \
    "llama-quantize median $(median "${theirs[@]}") s (${theirs[*]}), peak ${llama_mb} MB"
done
