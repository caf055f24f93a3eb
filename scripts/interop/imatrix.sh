#!/usr/bin/env bash
# llama.cpp's importance matrices in microllm, and microllm's in llama.cpp (issue 20):
#   1. llama-imatrix measures SmolLM2 on the calibration text, written as GGUF and as .dat;
#   2. microllm quantizes to Q4_K_M with each (`--imatrix`), llama-quantize with the GGUF one;
#   3. microllm measures its own (`--save-imatrix`) and llama-quantize quantizes with it;
#   4. llama-perplexity scores every file on the same text, and every file must load: the
#      .dat and GGUF forms of one matrix must give the same file (0.1%), microllm and
#      llama-quantize with the same matrix must agree within 0.5%, and their Q4_K_M files
#      (without a matrix, and with llama-imatrix's) must be byte-identical tensor by tensor;
#   5. the legacy types with a matrix (Q4_0, Q4_1, Q5_1), microllm vs llama-quantize with the
#      same llama-imatrix file, compared tensor by tensor (printed; byte identity expected).
# Prints one RESULT line per file and exits non-zero if a check fails.
# Usage: scripts/interop/imatrix.sh   (env CHUNKS=16 CTX=256 calibration; WINDOWS=8 eval)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$root"
MODEL=${MODEL:-$root/../shared/assets/models/SmolLM2-135M-Instruct.Q4_1.gguf}
CALIB=${CALIB:-$root/../shared/assets/data/c4.calib.txt}
TEXT=${TEXT:-$root/../shared/assets/data/wiki.eval.txt}
CHUNKS=${CHUNKS:-16}
CTX=${CTX:-256}
WINDOWS=${WINDOWS:-8}
work=$root/target/interop/imatrix
mkdir -p "$work"
llama=$(scripts/interop/build-llama-cpp.sh)
cargo build --release --quiet
m=$root/target/release/microllm

# An F32 source both quantizers start from (llama-quantize refuses to requantize Q4_1).
[ -f "$work/f32.gguf" ] || "$m" convert --model "$MODEL" --gguf-type f32 --out "$work/f32.gguf" >/dev/null
head -c 400000 "$CALIB" > "$work/calib.txt"

"$llama/llama-imatrix" -m "$work/f32.gguf" -f "$work/calib.txt" -c "$CTX" --chunks "$CHUNKS" \
    -t 2 -o "$work/llama.imatrix.gguf" >"$work/imatrix-gguf.log" 2>&1
"$llama/llama-imatrix" -m "$work/f32.gguf" -f "$work/calib.txt" -c "$CTX" --chunks "$CHUNKS" \
    -t 2 --output-format dat -o "$work/llama.imatrix.dat" >"$work/imatrix-dat.log" 2>&1

q() { "$m" quantize --model "$work/f32.gguf" --gguf-type q4_k_m --force --out "$@" >/dev/null; }
q "$work/ours-plain.gguf"
q "$work/ours-llama-gguf.gguf" --imatrix "$work/llama.imatrix.gguf"
q "$work/ours-llama-dat.gguf" --imatrix "$work/llama.imatrix.dat"
q "$work/ours-measured.gguf" --calib "$work/calib.txt" --samples "$CHUNKS" --seqlen "$CTX" \
    --save-imatrix "$work/ours.imatrix.gguf"
"$llama/llama-quantize" "$work/f32.gguf" "$work/llama-plain.gguf" Q4_K_M 2 \
    >"$work/quantize-plain.log" 2>&1
"$llama/llama-quantize" --imatrix "$work/llama.imatrix.gguf" "$work/f32.gguf" \
    "$work/llama-llama-gguf.gguf" Q4_K_M 2 >"$work/quantize-llama.log" 2>&1
"$llama/llama-quantize" --imatrix "$work/ours.imatrix.gguf" "$work/f32.gguf" \
    "$work/llama-ours.gguf" Q4_K_M 2 >"$work/quantize-ours.log" 2>&1

ppl() {
    "$llama/llama-perplexity" -m "$1" -f "$TEXT" -c 512 --chunks "$WINDOWS" -t 2 2>&1 \
        | grep -o "Final estimate: PPL = [0-9.]*" | grep -o "[0-9.]*$"
}
declare -A p
for f in ours-plain llama-plain ours-llama-gguf ours-llama-dat llama-llama-gguf ours-measured llama-ours; do
    p[$f]=$(ppl "$work/$f.gguf")
    echo "RESULT $f.gguf llama-perplexity ${p[$f]}"
done
status=0
within() { # A B TOL: |A/B - 1| <= TOL
    python3 -c "import sys; a,b,t=map(float,sys.argv[1:4]); sys.exit(0 if abs(a/b-1)<=t else 1)" "$1" "$2" "$3"
}
for pair in "ours-plain llama-plain 0.005" "ours-llama-dat ours-llama-gguf 0.001" "ours-llama-gguf llama-llama-gguf 0.005" \
    "ours-measured llama-ours 0.005"; do
    set -- $pair
    if within "${p[$1]}" "${p[$2]}" "$3"; then echo "CHECK ok   $1 vs $2 (within $3)"
    else echo "CHECK FAIL $1 vs $2 (beyond $3)"; status=1; fi
done
for pair in "no-imatrix ours-plain llama-plain" "same-imatrix ours-llama-gguf llama-llama-gguf"; do
    set -- $pair
    diff=$(python3 scripts/interop/gguf_tensor_diff.py "$work/$2.gguf" "$work/$3.gguf" | tail -1)
    echo "bytes: microllm vs llama-quantize, q4_k_m, $1: $diff"
    if [[ $diff =~ differ\ 0$ ]]; then echo "CHECK ok   $2 vs $3 (byte-identical)"
    else echo "CHECK FAIL $2 vs $3 (bytes differ)"; status=1; fi
done
for t in q4_0 q4_1 q5_1; do
    "$m" quantize --model "$work/f32.gguf" --gguf-type "$t" --imatrix "$work/llama.imatrix.gguf" \
        --force --out "$work/ours-$t.gguf" >/dev/null
    "$llama/llama-quantize" --imatrix "$work/llama.imatrix.gguf" "$work/f32.gguf" \
        "$work/llama-$t.gguf" "${t^^}" 2 >"$work/quantize-$t.log" 2>&1
    echo "bytes: microllm vs llama-quantize, $t, same imatrix: $(python3 \
        scripts/interop/gguf_tensor_diff.py "$work/ours-$t.gguf" "$work/llama-$t.gguf" | tail -1)"
done
exit $status
