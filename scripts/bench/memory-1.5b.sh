#!/usr/bin/env bash
# Memory stays bounded as models grow: writes a random-weight llama model of about 1.5B
# parameters (f16 shards, ~3 GB, not committed), borrows SmolLM2's tokenizer (same vocabulary
# size), and runs GPTQ on it with peak RSS measured; fails if it reaches 1.5 GiB.
# Usage: scripts/bench/memory-1.5b.sh [SAMPLES=16]
set -euo pipefail
cd "$(dirname "$0")/../.."
samples=${1:-16}
assets=$(bash scripts/fetch-assets.sh)
cargo build --release --quiet
bin=target/release/microllm
dir=target/bench/random-1.5b
if [ ! -f "$dir/config.json" ]; then
  python3 scripts/bench/make_random_llama.py "$dir"
fi
if [ ! -f "$dir/tokenizer.json" ]; then
  tok=target/bench/smollm2-tokenizer
  [ -f "$tok/tokenizer.json" ] || $bin convert --model "$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --out "$tok" --dtype f16 --force >/dev/null
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$dir/"
fi
$bin inspect --model "$dir" > target/bench/inspect-1.5b.txt && head -7 target/bench/inspect-1.5b.txt
/usr/bin/time -f '%e %M' -o target/bench/time-1.5b.txt \
  $bin quantize --model "$dir" --bits 4 --calib "$assets/data/c4.calib.txt" \
  --samples "$samples" --seqlen 512 --out target/bench/random-1.5b-q4.gguf --force
read -r secs kb < target/bench/time-1.5b.txt
mb=$((kb / 1024))
echo "random 1.5B, GPTQ 4-bit, $samples x 512 calibration tokens: ${secs} s wall, peak RSS ${mb} MB"
[ "$mb" -lt 1536 ] || { echo "peak RSS ${mb} MB is not under 1.5 GiB" >&2; exit 1; }
