#!/usr/bin/env bash
# llama.cpp's k-quant mixes on SmolLM2-135M by round-to-nearest, without and with an importance
# matrix measured on c4.calib.txt: size, bits/weight, perplexity on 24 x 512 tokens of
# wiki.eval.txt, wall time and peak RSS of each run (the eval included).
# Usage: scripts/bench/kquants.sh [SAMPLES=32] [MIXES="q4_k_m q3_k_m q5_k_m"]
set -euo pipefail
cd "$(dirname "$0")/../.."
samples=${1:-32}
mixes=${2:-q4_k_m q3_k_m q5_k_m}
assets=$(bash scripts/fetch-assets.sh)
cargo build --release --quiet
out=target/bench/kquants
mkdir -p "$out"
bin=target/release/microllm
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for mix in $mixes; do
  for imatrix in no yes; do
    name="$mix-imatrix-$imatrix"
    calib=()
    [ "$imatrix" = yes ] && calib=(--calib "$assets/data/c4.calib.txt" --samples "$samples" --seqlen 512)
    /usr/bin/time -f '%e %M' -o "$out/time.txt" \
      $bin quantize --model "$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf" --gguf-type "$mix" \
      "${calib[@]}" --eval "$assets/data/wiki.eval.txt" --out "$out/$name.gguf" --force \
      > "$out/$name.log"
    read -r secs kb < "$out/time.txt"
    python3 - "$out/$name.report.json" "$name" "$secs" "$((kb / 1024))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
o, e = r["output"], r["eval"]
print(f"{sys.argv[2]:<22} {o['bytes'] / 1e6:6.1f} MB  {o['bits_per_weight']:.2f} bits/weight  "
      f"perplexity {e['compressed']['perplexity']:.4f} (+{e['increase']:.4f})  "
      f"{float(sys.argv[3]):6.1f} s  {sys.argv[4]:>4} MB")
PY
  done
done
