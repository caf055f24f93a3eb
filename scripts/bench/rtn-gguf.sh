#!/usr/bin/env bash
# Round-to-nearest GGUF export speed: SmolLM2-135M from an F32 GGUF (made once from the
# shipped Q4_1 file) to Q8_0, Q4_0 and Q4_K (which falls back as llama.cpp does), RUNS runs
# each; prints wall time (median) and peak RSS. llama.cpp's llama-quantize on the same model
# and machine kind (shared/assets/README.md): Q8_0 1.3 s, Q4_0 0.6 s, Q4_K_M 2.0 s, 162 MB.
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
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for type in q8_0 q4_0 q4_k; do
  times=()
  for i in $(seq "$runs"); do
    /usr/bin/time -f '%e %M' -o "$out/time.txt" \
      $bin convert --model "$src" --out "$out/smollm2-$type.gguf" --gguf-type "$type" --force >/dev/null
    read -r secs kb < "$out/time.txt"
    times+=("$secs")
    rss=$((kb / 1024))
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "$type: median ${median} s over $runs runs (${times[*]}), peak RSS ${rss} MB"
done
