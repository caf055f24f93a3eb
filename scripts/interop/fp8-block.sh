#!/usr/bin/env bash
# llm-compressor's FP8_BLOCK checkpoints in microllm (issue 20): FP8 E4M3 weights with one
# scale per 128 x 128 block, FP8 activations per token and group of 128 columns. The model is
# Qwen2.5-Coder-0.5B (scripts/fetch-model.sh qwen2.5-0.5b, converted to an f32 Hugging Face
# directory): its widths (896, 4864, 128) are multiples of 128, which compressed-tensors 0.20
# needs to run grouped activations (on SmolLM2's 576-wide inputs transformers stops with
# "unflatten: Provided sizes [5, 128] don't multiply up to ... 576"). llm-compressor 0.14 makes
# the file on the CPU; transformers (with the compressed-tensors library's activation
# quantization) and microllm measure perplexity on the same token ids, which must agree
# within 0.1%.
# Usage: scripts/interop/fp8-block.sh     (env WINDOWS=8; needs scripts/interop/setup.sh's venv)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$root"
WINDOWS=${WINDOWS:-8}
py=target/lmeval-venv/bin/python
out=target/interop/qwen05
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/microllm
gguf=$(bash scripts/fetch-model.sh qwen2.5-0.5b)
[ -e "$out/f32/config.json" ] || "$bin" convert --model "$gguf" --dtype f32 --out "$out/f32" >/dev/null
ids=$out/eval-ids-$WINDOWS.safetensors
[ -e "$ids" ] || "$py" scripts/interop/make_ids.py "$out/f32" ../shared/assets/data/wiki.eval.txt \
  "$ids" --rows 1 --len $((WINDOWS * 512)) >/dev/null
dir=$out/llmc-fp8-block
[ -e "$dir/config.json" ] || "$py" scripts/interop/make_llmc.py "$out/f32" \
  ../shared/assets/data/c4.calib.txt "$dir" --scheme fp8-block >"$out/llmc-fp8-block.log" 2>&1
theirs=$("$py" scripts/interop/ppl_transformers.py "$dir" "$ids" --windows "$WINDOWS" 2>/dev/null \
  | awk '/^PPL/ {print $2}')
ours=$("$bin" eval --model "$dir" --data "$ids" --ctx 512 --max-windows "$WINDOWS" 2>&1 \
  | awk '/^perplexity/ {print $2}')
python3 - "$theirs" "$ours" <<'PY'
import sys
t, o = map(float, sys.argv[1:])
apart = abs(o - t) / t * 100
print(f"FP8_BLOCK (Qwen2.5-Coder-0.5B): transformers {t:.4f}, microllm {o:.4f}, apart {apart:.3f}%")
sys.exit(0 if apart <= 0.1 else 1)
PY
