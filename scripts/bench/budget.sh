#!/usr/bin/env bash
# Size budgets (`--target-size`, issue 16) against uniform types and llama.cpp's mixes at the
# same size, on SmolLM2-135M: for each TYPE, the uniform (or mix) file is written, then a
# budget file with at most its tensor bytes; both without ("none") and with ("calibrated") an
# importance matrix (microllm's, measured once on 32 x 512 tokens of c4.calib.txt and reused
# through --imatrix). Perplexity by microllm
# (llama.cpp's protocol, 8 x 512 tokens of wiki.eval.txt) and by llama-perplexity on the same
# files, so the budget files are shown to load in llama.cpp.
# Usage: scripts/bench/budget.sh [TYPE...]   (default: q4_0 q3_k_m q4_k_m)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$root"
assets=$(bash scripts/fetch-assets.sh)
MODEL=$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
TEXT=$assets/data/wiki.eval.txt
CALIB=$assets/data/c4.calib.txt
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(q4_0 q3_k_m q4_k_m)
work=$root/target/bench/budget
mkdir -p "$work"
cargo build --release --quiet
m=$root/target/release/microllm
llama=$(scripts/interop/build-llama-cpp.sh)

tensor_bytes() { # a GGUF file's tensor data: bytes and parameters
  python3 - "$1" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read(); at = 8
def u32():
    global at; v = struct.unpack_from("<I", b, at)[0]; at += 4; return v
def u64():
    global at; v = struct.unpack_from("<Q", b, at)[0]; at += 8; return v
def skip(t):
    global at
    if t == 8: n = u64(); at += n
    elif t == 9:
        it = u32(); n = u64()
        for _ in range(n): skip(it)
    else: at += {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}[t]
nt = u64(); nkv = u64()
for _ in range(nkv):
    n = u64(); at += n; skip(u32())
blocks = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
          10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
          20: (32, 18), 23: (256, 136), 30: (1, 2)}
total = params = 0
for _ in range(nt):
    n = u64(); at += n; nd = u32(); n = 1
    for _ in range(nd): n *= u64()
    ty = u32(); at += 8
    blk, size = blocks[ty]; total += n // blk * size; params += n
print(total, params)
PY
}
ppl_microllm() { "$m" eval --model "$1" --data "$TEXT" --ctx 512 --max-windows 8 --protocol llama-cpp \
  | awk '/^perplexity/ {print $2}'; }
ppl_llama() { "$llama/llama-perplexity" -m "$1" -f "$TEXT" -c 512 --chunks 8 -t "$(nproc)" 2>&1 \
  | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'; }

[ -f "$work/f32.gguf" ] || "$m" convert --model "$MODEL" --gguf-type f32 --out "$work/f32.gguf" >/dev/null
[ -f "$work/imatrix.gguf" ] || "$m" quantize --model "$work/f32.gguf" --gguf-type q8_0 \
  --calib "$CALIB" --samples 32 --seqlen 512 --save-imatrix "$work/imatrix.gguf" \
  --out "$work/imatrix-run.gguf" --force >/dev/null

echo "| type | importance matrix | file | tensor MB | bits/weight | PPL microllm | PPL llama-perplexity | budget's choice |"
echo "|---|---|---|---|---|---|---|---|"
for t in "${types[@]}"; do
  for im in none calibrated; do
    extra=(); [ "$im" = none ] || extra=(--imatrix "$work/imatrix.gguf")
    u=$work/$t-$im-uniform.gguf
    b=$work/$t-$im-budget.gguf
    "$m" quantize --model "$work/f32.gguf" --gguf-type "$t" "${extra[@]}" --out "$u" --force >/dev/null
    read -r bytes _ < <(tensor_bytes "$u")
    choice=$("$m" quantize --model "$work/f32.gguf" --gguf-type "$t" "${extra[@]}" \
      --target-size "$bytes" --out "$b" --force | sed -n 's/^note: size budget: //p')
    for f in "$u" "$b"; do
      kind=$([ "$f" = "$u" ] && echo "uniform / mix" || echo "budget")
      read -r tb params < <(tensor_bytes "$f")
      bpw=$(python3 -c "print(f'{$tb * 8 / $params:.3f}')")
      c=$([ "$f" = "$b" ] && echo "${choice#*; block linears }" || echo "-")
      echo "| $t | $im | $kind | $(python3 -c "print(f'{$tb/1e6:.2f}')") | $bpw | $(ppl_microllm "$f") | $(ppl_llama "$f") | $c |"
    done
  done
done
