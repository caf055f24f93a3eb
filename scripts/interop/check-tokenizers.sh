#!/usr/bin/env bash
# llama.cpp's own tokenizer (llama-tokenize) on microllm's GGUF exports of real tokenizers:
# a LLaMA-style 32000-piece vocabulary and Gemma 3 (SentencePiece), Llama-3 and Qwen2.5 (byte-level BPE). See
# check_tokenizers.py for what is compared. Builds what it needs: the release binary,
# llama.cpp's tools (build-llama-cpp.sh), a venv with tokenizers + safetensors + numpy.
# Usage: scripts/interop/check-tokenizers.sh        (env OUT_DIR, TEXT)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$root"
out=${OUT_DIR:-$root/target/interop/tokenizers}
text=${TEXT:-$(bash scripts/fetch-assets.sh)/data/wiki.eval.txt}
venv="$root/target/tokenizer-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import tokenizers, safetensors, numpy" 2>/dev/null \
  || "$venv/bin/python" -m pip install --quiet tokenizers==0.23.3 safetensors numpy
bin=$(bash scripts/interop/build-llama-cpp.sh)
cargo build --release --quiet
toks=$(bash scripts/fetch-tokenizers.sh)
exec "$venv/bin/python" scripts/interop/check_tokenizers.py "$root/target/release/microllm" \
  "$bin/llama-tokenize" "$toks" "$root/../shared/fixtures" "$text" "$out"
