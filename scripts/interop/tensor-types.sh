#!/usr/bin/env bash
# Per-tensor types (`--tensor-type PATTERN=TYPE`, issue 16) against llama-quantize's option of
# the same name: both quantize one F32 GGUF of SmolLM2 to a mix with the same rules, and
# gguf_tensor_diff.py compares the files tensor by tensor. Every tensor's type must agree
# (exits 1 otherwise); byte differences are printed (none since microllm fits Q4_K as current
# llama.cpp does: 272 of 272 tensors identical on the default rules).
# Usage: scripts/interop/tensor-types.sh [MIX] [RULE...]
#   (default: q4_k_m attn_v=q8_0 'blk\.(0|1)\.ffn_down=q6_k' attn_q=q4_1)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$root"
MODEL=${MODEL:-$root/../shared/assets/models/SmolLM2-135M-Instruct.Q4_1.gguf}
mix=${1:-q4_k_m}
shift || true
rules=("$@")
[ ${#rules[@]} -gt 0 ] || rules=(attn_v=q8_0 'blk\.(0|1)\.ffn_down=q6_k' attn_q=q4_1)
work=$root/target/interop/tensor-types
mkdir -p "$work"
llama=$(scripts/interop/build-llama-cpp.sh)
cargo build --release --quiet
m=$root/target/release/microllm

[ -f "$work/f32.gguf" ] || "$m" convert --model "$MODEL" --gguf-type f32 --out "$work/f32.gguf" >/dev/null
theirs=() ours=()
for r in "${rules[@]}"; do theirs+=(--tensor-type "$r"); ours+=(--tensor-type "$r"); done
"$llama/llama-quantize" "${theirs[@]}" "$work/f32.gguf" "$work/llama.gguf" "${mix^^}" 2 \
  > "$work/llama-quantize.log" 2>&1
"$m" convert --model "$work/f32.gguf" --out "$work/microllm.gguf" --gguf-type "$mix" \
  "${ours[@]}" --force > /dev/null
python3 scripts/interop/gguf_tensor_diff.py "$work/llama.gguf" "$work/microllm.gguf" \
  | tee "$work/diff.txt" | tail -1
if grep -q "^type differs" "$work/diff.txt"; then
  grep "^type differs" "$work/diff.txt"
  echo "FAIL: tensor types differ from llama-quantize's"
  exit 1
fi
echo "every tensor's type equals llama-quantize's (${mix}, rules: ${rules[*]})"
