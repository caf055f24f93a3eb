#!/usr/bin/env bash
# GGUF i-quants and k-quant mixes, microllm against llama-quantize (issue 16):
#   for each type (IQ4_XS, IQ4_NL, Q4_K_M, Q5_K_M, Q6_K), without and with the same
#   llama-imatrix file, both tools quantize the same F32 model (SmolLM2 unless MODEL names
#   another: anything scripts/fetch-model.sh takes, e.g. qwen2.5-0.5b); the files must be
#   byte-identical tensor by tensor, and llama-perplexity on microllm's file must give the
#   perplexity `microllm eval --protocol llama-cpp` computes on it, within 1%.
# Prints one RESULT line per file (size, both perplexities, both quantize times) and exits
# non-zero if a check fails.
# Usage: scripts/interop/iquants.sh   (env MODEL, TYPES="iq4_xs iq4_nl ...", WINDOWS=8, CHUNKS=16, CTX=256)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$root"
model=$(bash scripts/fetch-model.sh "${MODEL:-smollm2}")
CALIB=${CALIB:-$root/../shared/assets/data/c4.calib.txt}
TEXT=${TEXT:-$root/../shared/assets/data/wiki.eval.txt}
TYPES=${TYPES:-iq4_xs iq4_nl q4_k_m q5_k_m q6_k}
WINDOWS=${WINDOWS:-8}
CHUNKS=${CHUNKS:-16}
CTX=${CTX:-256}
work=$root/target/interop/iquants
[ "${MODEL:-smollm2}" = smollm2 ] || work=$work/$(basename "$model" .gguf)
mkdir -p "$work"
llama=$(scripts/interop/build-llama-cpp.sh)
cargo build --release --quiet
m=$root/target/release/microllm

# The F32 source both start from (llama-quantize refuses to requantize Q4_1), and one
# importance matrix from llama-imatrix that both use.
[ -f "$work/f32.gguf" ] || "$m" convert --model "$model" --gguf-type f32 --out "$work/f32.gguf" >/dev/null
if [ ! -f "$work/llama.imatrix.gguf" ]; then
    head -c 400000 "$CALIB" > "$work/calib.txt"
    "$llama/llama-imatrix" -m "$work/f32.gguf" -f "$work/calib.txt" -c "$CTX" --chunks "$CHUNKS" \
        -t 2 -o "$work/llama.imatrix.gguf" >"$work/imatrix.log" 2>&1
fi

seconds() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$s" "$(date +%s.%N)"; }
llama_ppl() {
    "$llama/llama-perplexity" -m "$1" -f "$TEXT" -c 512 --chunks "$WINDOWS" -t 2 2>&1 \
        | grep -o "Final estimate: PPL = [0-9.]*" | grep -o "[0-9.]*$"
}
ours_ppl() {
    "$m" eval --model "$1" --data "$TEXT" --ctx 512 --max-windows "$WINDOWS" --protocol llama-cpp \
        2>/dev/null | awk '$1 == "perplexity" { print $2 }'
}
status=0
for t in $TYPES; do
    for mode in plain imatrix; do
        name=$t-$mode
        ours_args=() llama_args=()
        if [ "$mode" = imatrix ]; then
            ours_args=(--imatrix "$work/llama.imatrix.gguf")
            llama_args=(--imatrix "$work/llama.imatrix.gguf")
        fi
        ours_s=$(seconds "$m" quantize --model "$work/f32.gguf" --gguf-type "$t" "${ours_args[@]}" \
            --force --out "$work/ours-$name.gguf")
        llama_s=$(seconds "$llama/llama-quantize" "${llama_args[@]}" "$work/f32.gguf" \
            "$work/llama-$name.gguf" "${t^^}" 2)
        diff=$(python3 scripts/interop/gguf_tensor_diff.py "$work/ours-$name.gguf" "$work/llama-$name.gguf" | tail -1)
        lp=$(llama_ppl "$work/ours-$name.gguf")
        op=$(ours_ppl "$work/ours-$name.gguf")
        mb=$(python3 -c "import os,sys; print(f'{os.path.getsize(sys.argv[1]) / 1e6:.1f}')" "$work/ours-$name.gguf")
        echo "RESULT $name: $mb MB; llama-perplexity $lp, microllm eval $op on microllm's file; quantize microllm ${ours_s} s, llama-quantize ${llama_s} s; tensors: $diff"
        if [[ ! $diff =~ differ\ 0$ ]]; then echo "CHECK FAIL $name: bytes differ"; status=1; fi
        if ! python3 -c "import sys; a,b=map(float,sys.argv[1:3]); sys.exit(0 if abs(a/b-1)<=0.01 else 1)" "$op" "$lp"; then
            echo "CHECK FAIL $name: perplexities beyond 1%"; status=1
        fi
    done
done
[ $status = 0 ] && echo "CHECK ok   every file byte-identical, every perplexity within 1%"
exit $status
