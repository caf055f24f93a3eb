#!/usr/bin/env bash
# Eval throughput benchmark: SmolLM2-135M (GGUF Q4_1, run in its stored type) on
# wiki.eval.txt, ctx 512, a fixed number of windows, repeated; prints tokens/s per run and the
# median. Usage: scripts/bench/eval.sh [WINDOWS=8] [RUNS=3]
# For llama-perplexity side by side on the same files, scripts/bench/vs-llama-perplexity.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
windows=${1:-8}
runs=${2:-3}
assets=$(bash scripts/fetch-assets.sh)
cargo build --release --quiet
out=target/bench
mkdir -p "$out"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "eval: SmolLM2-135M Q4_1 GGUF, wiki.eval.txt, ctx 512, $windows windows, $runs runs"
rates=()
for i in $(seq "$runs"); do
  target/release/microllm eval \
    --model "$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --data "$assets/data/wiki.eval.txt" --ctx 512 --max-windows "$windows" \
    --json "$out/eval-$i.json" >/dev/null 2>&1
  rate=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['result']['tokens_per_second'],1))" "$out/eval-$i.json")
  echo "run $i: $rate tokens/s"
  rates+=("$rate")
done
printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print "median: " a[int((NR+1)/2)] " tokens/s"}'
