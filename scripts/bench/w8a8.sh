#!/usr/bin/env bash
# W8A8 int8 and FP8 on SmolLM2-135M (issue 16): 8-bit per-channel weights with every linear's
# input quantized to 8 bits per token as the model runs (compressed-tensors int-quantized /
# float-quantized, read back from disk for the evaluation), against weight-only 8-bit (int8;
# FP8 E4M3 as naive-quantized), with and without SmoothQuant.
# Calibration SAMPLES x 512 tokens of c4.calib.txt, evaluation WINDOWS x 512 of wiki.eval.txt
# against the original (perplexity, KL, top-1), wall time and peak RSS per run.
# Usage: scripts/bench/w8a8.sh     env: SAMPLES (16), WINDOWS (16), ONLY (int8 | fp8: one half),
#   ROWS (run names to run, e.g. "w8a8-gptq-sq fp8-gptq"; default all), MODEL (a name
#   scripts/fetch-model.sh knows, default smollm2, e.g. qwen2.5-0.5b; or a file)
set -euo pipefail
cd "$(dirname "$0")/../.."
assets=$(bash scripts/fetch-assets.sh)
cargo build --release --quiet
bin=target/release/microllm
out=target/bench/w8a8
SAMPLES=${SAMPLES:-16}
WINDOWS=${WINDOWS:-16}
model=$(bash scripts/fetch-model.sh "${MODEL:-smollm2}")
[ "${MODEL:-smollm2}" = smollm2 ] || out=$out/$(basename "$model" .gguf)
mkdir -p "$out"
calib=(--calib "$assets/data/c4.calib.txt" --samples "$SAMPLES" --seqlen 512)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$(basename "$model"); calibration $SAMPLES x 512 (c4), eval $WINDOWS x 512 (wiki)"
echo
echo "| weights | activations | method | SmoothQuant | perplexity | KL (nats/token) | top-1 | wall s | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|"
run() {
  local name=$1 label=$2; shift 2
  [ -z "${ROWS:-}" ] || [[ " $ROWS " == *" $name "* ]] || return 0
  /usr/bin/time -f '%e %M' -o "$out/$name.time" \
    "$bin" quantize --model "$model" --format compressed-tensors \
    --eval "$assets/data/wiki.eval.txt" --eval-windows "$WINDOWS" \
    --out "$out/$name" --force "$@" >"$out/$name.log" 2>&1
  read -r secs kb <"$out/$name.time"
  python3 - "$out/$name.report.json" "$label" "$secs" "$kb" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e = r["eval"]
print(f"| {sys.argv[2]} | {e['original']['perplexity']:.4f} -> {e['compressed']['perplexity']:.4f} "
      f"| {e['kl_divergence']:.4f} | {100 * e['top1_agreement']:.2f}% | {float(sys.argv[3]):.0f} "
      f"| {int(sys.argv[4]) // 1024} |")
PY
}
ONLY=${ONLY:-all}
if [ "$ONLY" != fp8 ]; then
run w8-rtn "int8 per channel | f32 | rtn | -" --method rtn --bits 8 --group-size channel --sym
run w8a8-rtn "int8 per channel | int8 per token | rtn | -" --method rtn --scheme w8a8-int8
run w8a8-rtn-sq "int8 per channel | int8 per token | rtn | 0.5" --method rtn --scheme w8a8-int8 --smoothquant 0.5 "${calib[@]}"
run w8a8-gptq "int8 per channel | int8 per token | gptq | -" --scheme w8a8-int8 "${calib[@]}"
run w8a8-gptq-sq "int8 per channel | int8 per token | gptq | 0.5" --scheme w8a8-int8 --smoothquant 0.5 "${calib[@]}"
run w8a8-gptq-sq8 "int8 per channel | int8 per token | gptq | 0.8" --scheme w8a8-int8 --smoothquant 0.8 "${calib[@]}"
fi
if [ "$ONLY" != int8 ]; then
run fp8w-rtn "FP8 per channel | f32 | rtn | -" --method rtn --scheme w8a16-fp8
run fp8w-gptq "FP8 per channel | f32 | gptq | -" --scheme w8a16-fp8 "${calib[@]}"
run fp8-rtn "FP8 per channel | FP8 per token | rtn | -" --method rtn --scheme w8a8-fp8
run fp8-rtn-sq "FP8 per channel | FP8 per token | rtn | 0.5" --method rtn --scheme w8a8-fp8 --smoothquant 0.5 "${calib[@]}"
run fp8-gptq "FP8 per channel | FP8 per token | gptq | -" --scheme w8a8-fp8 "${calib[@]}"
run fp8-gptq-sq "FP8 per channel | FP8 per token | gptq | 0.5" --scheme w8a8-fp8 --smoothquant 0.5 "${calib[@]}"
fi
