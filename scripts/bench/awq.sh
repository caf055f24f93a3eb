#!/usr/bin/env bash
# AWQ against RTN and GPTQ on SmolLM2-135M (issue 16): 4-bit and 3-bit, groups of 64,
# asymmetric grids (AWQ's usual zero-point setting), calibrated on SAMPLES x 512 tokens of
# c4.calib.txt, measured on WINDOWS x 512 tokens of wiki.eval.txt against the original
# (perplexity, KL, top-1), with each run's wall time and peak RSS. Writes GGUF (the codes in
# Q4_1 blocks, exactly; 3-bit codes in 4-bit slots).
# Usage: scripts/bench/awq.sh            env: SAMPLES (64), WINDOWS (16), BITS ("4 3"), GROUP (64),
#   MODEL (a name scripts/fetch-model.sh knows, default smollm2, e.g. qwen2.5-0.5b; or a file)
set -euo pipefail
cd "$(dirname "$0")/../.."
assets=$(bash scripts/fetch-assets.sh)
cargo build --release --quiet
bin=target/release/microllm
out=target/bench/awq
SAMPLES=${SAMPLES:-64}
WINDOWS=${WINDOWS:-16}
GROUP=${GROUP:-64}
model=$(bash scripts/fetch-model.sh "${MODEL:-smollm2}")
[ "${MODEL:-smollm2}" = smollm2 ] || out=$out/$(basename "$model" .gguf)
mkdir -p "$out"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$(basename "$model"), groups of $GROUP, asymmetric; calibration $SAMPLES x 512 (c4), eval $WINDOWS x 512 (wiki)"
echo
echo "| bits | method | perplexity | KL (nats/token) | top-1 | wall s | peak RSS MB | block phases (s) |"
echo "|---|---|---|---|---|---|---|---|"
for bits in ${BITS:-4 3}; do
  for method in rtn awq gptq awq+gptq; do
    name="b$bits-${method/+/-}"
    calib=(--calib "$assets/data/c4.calib.txt" --samples "$SAMPLES" --seqlen 512)
    [ "$method" = rtn ] && calib=()
    /usr/bin/time -f '%e %M' -o "$out/$name.time" \
      "$bin" quantize --model "$model" --method "$method" --bits "$bits" --group-size "$GROUP" --asym \
      "${calib[@]}" --eval "$assets/data/wiki.eval.txt" --eval-windows "$WINDOWS" \
      --out "$out/$name.gguf" --force >"$out/$name.log" 2>&1
    read -r secs kb <"$out/$name.time"
    python3 - "$out/$name.report.json" "$bits" "$method" "$secs" "$kb" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
bits, method, secs, kb = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
e = r["eval"]
p = r.get("block_phase_seconds") or {}
phases = ", ".join(f"{k} {v:.0f}" for k, v in p.items() if v)
print(f"| {bits} | {method} | {e['original']['perplexity']:.2f} -> {e['compressed']['perplexity']:.2f} "
      f"| {e['kl_divergence']:.4f} | {100 * e['top1_agreement']:.2f}% | {secs:.0f} | {kb // 1024} | {phases} |")
PY
  done
done
