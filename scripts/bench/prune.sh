#!/usr/bin/env bash
# Unstructured and 2:4 pruning of SmolLM2-135M, the issue's setting: calibrated on 128 x 512
# tokens of c4.calib.txt, evaluated on 24 x 512 tokens of wiki.eval.txt. For each method
# prints wall time and peak RSS of the prune command (the evaluation runs apart, after it)
# and perplexity; then one joint SparseGPT 2:4 + 4-bit GPTQ run to GGUF, and OWL's schedule
# against the uniform one at 50% and 70%.
# Usage: scripts/bench/prune.sh [SAMPLES=128]; ONLY=REGEX runs only the runs whose names match
# (e.g. ONLY='owl|-70' for the schedule comparison).
set -euo pipefail
cd "$(dirname "$0")/../.."
samples=${1:-128}
assets=$(bash scripts/fetch-assets.sh)
cargo build --release --quiet
out=target/bench/prune
mkdir -p "$out"
bin=target/release/microllm
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
run() {
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return; fi
  /usr/bin/time -f '%e %M' -o "$out/time.txt" \
    $bin prune --model "$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --calib "$assets/data/c4.calib.txt" --samples "$samples" --seqlen 512 \
    --out "$out/$name" --force "$@" > "$out/$name.log"
  read -r secs kb < "$out/time.txt"
  # Perplexity of the output, measured apart so that time and memory are the pruning's.
  $bin eval --model "$out/$name" --data "$assets/data/wiki.eval.txt" --ctx 512 \
    --max-windows 24 --json "$out/$name.eval.json" > /dev/null
  local stem=${name%.gguf}
  python3 - "$out/$stem.report.json" "$out/$name.eval.json" "$name" "$secs" "$((kb / 1024))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e = json.load(open(sys.argv[2]))
print(f"{sys.argv[3]:<28} {float(sys.argv[4]):7.1f} s  {sys.argv[5]:>5} MB  "
      f"perplexity {e['result']['perplexity']:.4f}  sparsity {r['output']['linear_sparsity']:.3f}")
PY
  rm -rf "${out:?}/$name"
}
for method in magnitude wanda sparsegpt; do
  run "$method-50" --method "$method" --sparsity 0.5
  run "$method-2of4" --method "$method" --pattern 2:4
done
run "sparsegpt-2of4-q4.gguf" --method sparsegpt --pattern 2:4 --bits 4
# OWL's outlier-weighted block sparsities against the uniform runs above, and at 70%.
for method in wanda sparsegpt; do
  run "$method-50-owl" --method "$method" --sparsity 0.5 --schedule owl
  run "$method-70" --method "$method" --sparsity 0.7
  run "$method-70-owl" --method "$method" --sparsity 0.7 --schedule owl
done
