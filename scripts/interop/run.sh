#!/usr/bin/env bash
# Proves that microllm's outputs load in the real consumers and compute the same logits:
#   transformers (CPU)  <- compressed-tensors (sym, asym, act-order, AWQ), structured-pruned f32 dir,
#                          f32 dir (baseline), GPTQ (through a GPTQ backend if one is installed)
#   compressed-tensors  <- the library's own decompress/compress on our tensors (below transformers)
#   compressed-tensors  <- W8A8 int-quantized and FP8 float-quantized: transformers' weights +
#                          the library's per-token 8-bit activations (check_w8a8.py, against its
#                          own float64 control); FP8 weights only (naive-quantized) in transformers
#   GPTQ layout proof   <- GPTQ (sym, asym, act-order): reference v1 unpacking vs microllm
#   llama.cpp           <- GGUF: GPTQ Q4_0 (sym g32), GPTQ Q4_1 (asym g32), convert q4_k mix, F32;
#                          control: the published Q4_1 file made by llama.cpp
# Prints one RESULT line per (output, consumer) and exits non-zero if any check fails.
#
# Usage: scripts/interop/run.sh [--build-only]
#   env: SAMPLES (16) SEQLEN (512) calibration windows for quantize; MODEL, CALIB, OUT_DIR;
#        SKIP_SETUP=1 to use target/interop-venv as it is.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$root"
MODEL=${MODEL:-$root/../shared/assets/models/SmolLM2-135M-Instruct.Q4_1.gguf}
CALIB=${CALIB:-$root/../shared/assets/data/c4.calib.txt}
TEXT=${TEXT:-$root/../shared/assets/data/wiki.eval.txt}
OUT=${OUT_DIR:-$root/target/interop/out}
SAMPLES=${SAMPLES:-16}
SEQLEN=${SEQLEN:-512}
bin=$root/target/release/microllm
py=$root/target/interop-venv/bin/python
mkdir -p "$OUT"

[ -x "$bin" ] || cargo build --release || exit 2

# build NAME ARGS...: runs `microllm ARGS --out $OUT/NAME` unless the output exists (a lock
# directory lets two builders share the list: REVERSE=1 scripts/interop/run.sh --build-only).
build() {
  local name=$1; shift
  if [ -e "$OUT/$name" ]; then echo "exists  $OUT/$name" >&2; return 0; fi
  if ! mkdir "$OUT/.lock-$name" 2>/dev/null; then echo "busy    $OUT/$name (another builder)" >&2; return 0; fi
  echo "+ microllm $* --out $OUT/$name" >&2
  local t0=$SECONDS rc=0
  "$bin" "$@" --out "$OUT/$name" >"$OUT/$name.log" 2>&1 || rc=1
  rmdir "$OUT/.lock-$name"
  if [ $rc != 0 ]; then echo "FAILED building $name (log: $OUT/$name.log)" >&2; tail -5 "$OUT/$name.log" >&2; return 1; fi
  echo "  built $name in $((SECONDS - t0)) s" >&2
}
Q="quantize --model $MODEL --calib $CALIB --samples $SAMPLES --seqlen $SEQLEN --bits 4"
fail=0
outputs=(
  "f32|convert --model $MODEL --dtype f32"
  "ct-sym|$Q --format compressed-tensors --group-size 64"
  "ct-asym|$Q --format compressed-tensors --group-size 64 --asym"
  "ct-actorder|$Q --format compressed-tensors --group-size 64 --act-order"
  "ct-awq|$Q --method awq --format compressed-tensors --group-size 64"
  "ct-w8a8|quantize --model $MODEL --calib $CALIB --samples $SAMPLES --seqlen $SEQLEN --scheme w8a8-int8 --smoothquant 0.5"
  "ct-fp8|quantize --model $MODEL --calib $CALIB --samples $SAMPLES --seqlen $SEQLEN --scheme w8a8-fp8"
  "ct-fp8w|quantize --model $MODEL --method rtn --scheme w8a16-fp8"
  "gguf-awq-q4_1.gguf|$Q --method awq --group-size 32 --asym"
  "gptq-sym|$Q --format gptq --group-size 64"
  "gptq-asym|$Q --format gptq --group-size 64 --asym"
  "gptq-actorder|$Q --format gptq --group-size 64 --act-order"
  "gguf-gptq-q4_0.gguf|$Q --group-size 32 --sym"
  "gguf-gptq-q4_1.gguf|$Q --group-size 32 --asym"
  "gguf-q4_k.gguf|convert --model $MODEL --gguf-type q4_k"
  "gguf-f32.gguf|convert --model $MODEL --gguf-type f32"
  "pruned|prune --structured --model $MODEL --calib $CALIB --samples 8 --mlp-keep 0.75 --heads-keep 0.6667 --drop-layers 2 --dtype f32"
)
if [ "${REVERSE:-0}" = 1 ]; then
  for ((i = ${#outputs[@]} - 1; i >= 0; i--)); do build "${outputs[i]%%|*}" ${outputs[i]#*|} || fail=1; done
else
  for j in "${outputs[@]}"; do build "${j%%|*}" ${j#*|} || fail=1; done
fi
# microllm's own f32 reading of each packed checkpoint, for the layout proofs.
for v in ct-sym ct-asym ct-actorder gptq-sym gptq-asym gptq-actorder; do
  [ -e "$OUT/$v" ] && { build $v-f32 convert --model "$OUT/$v" --dtype f32 || fail=1; }
done
for g in gguf-gptq-q4_0.gguf gguf-gptq-q4_1.gguf gguf-q4_k.gguf gguf-f32.gguf; do
  [ -e "$OUT/$g" ] && { build $g-f32 convert --model "$OUT/$g" --dtype f32 || fail=1; }
done
# Control for llama.cpp's kernel noise: the model file as published (made by llama.cpp, not microllm).
[ -e "$OUT/upstream-q4_1.gguf" ] || ln -s "$MODEL" "$OUT/upstream-q4_1.gguf"
[ "${1:-}" = "--build-only" ] && exit $fail

[ "${SKIP_SETUP:-0}" = 1 ] || scripts/interop/setup.sh >&2 || { echo "setup failed" >&2; fail=1; }

# Fixed token ids: 4 rows x 128 tokens of wiki text, tokenized by the model's own tokenizer.
ids=$OUT/ids.safetensors
[ -e "$ids" ] || "$py" scripts/interop/make_ids.py "$OUT/f32" "$TEXT" "$ids" || exit 2

# microllm's logits on every output.
for m in f32 ct-sym ct-asym ct-actorder ct-awq ct-w8a8 ct-fp8 ct-fp8w gptq-sym gptq-asym gptq-actorder pruned \
         gguf-gptq-q4_0.gguf gguf-gptq-q4_1.gguf gguf-awq-q4_1.gguf gguf-q4_k.gguf gguf-f32.gguf \
         upstream-q4_1.gguf; do
  lg=$OUT/logits-$m.safetensors
  [ -e "$lg" ] && continue
  [ -e "$OUT/$m" ] || continue
  "$bin" logits --model "$OUT/$m" --tokens "$ids" --out "$lg" >/dev/null 2>"$OUT/logits-$m.log" \
    || { echo "RESULT $m microllm-logits loaded=no (see $OUT/logits-$m.log)"; fail=1; }
done

results=$OUT/results.txt
: >"$results"
check() {
  "$@" 2>>"$OUT/checks.log" | tee -a "$results" | grep '^RESULT'
  local st=("${PIPESTATUS[@]}")
  [ "${st[0]}" = 0 ] || fail=1
}
for m in f32 pruned ct-sym ct-asym ct-actorder ct-awq ct-fp8w gptq-sym gptq-asym gptq-actorder; do
  check "$py" scripts/interop/check_transformers.py "$OUT/$m" "$ids" "$OUT/logits-$m.safetensors" --name "$m"
done
for m in ct-w8a8 ct-fp8; do
  check "$py" scripts/interop/check_w8a8.py "$OUT/$m" "$ids" "$OUT/logits-$m.safetensors" --name "$m"
done
for v in sym asym actorder; do
  check "$py" scripts/interop/check_ct_library.py "$OUT/ct-$v" "$OUT/ct-$v-f32" --name "ct-$v" \
    --ids "$ids" --logits "$OUT/logits-ct-$v.safetensors"
  check "$py" scripts/interop/check_gptq_layout.py "$OUT/gptq-$v" "$OUT/gptq-$v-f32" --name "gptq-$v" \
    --ids "$ids" --logits "$OUT/logits-gptq-$v.safetensors"
done
# llama.cpp quantizes activations to 8 bits for its quantized matmuls: the published file (made by
# llama.cpp's own tools) is the control for how far that moves logits; the threshold is set from it.
LLAMA_MIN_TOP1=${LLAMA_MIN_TOP1:-0.95}
for m in gguf-f32.gguf upstream-q4_1.gguf gguf-gptq-q4_0.gguf gguf-gptq-q4_1.gguf gguf-awq-q4_1.gguf \
         gguf-q4_k.gguf; do
  f32=(); [ -e "$OUT/$m-f32" ] && f32=(--f32-dir "$OUT/$m-f32")
  check "$py" scripts/interop/check_llama_cpp.py "$OUT/$m" "$ids" "$OUT/logits-$m.safetensors" --name "$m" \
    --min-top1 "$LLAMA_MIN_TOP1" "${f32[@]}"
done
echo "versions:"; "$py" -m pip freeze 2>/dev/null | grep -i -E '^(torch|transformers|compressed.tensors|llama.cpp.python|llama_cpp_python|gguf|safetensors|numpy|tokenizers|gptqmodel|optimum|accelerate|auto.gptq)=='
echo "overall: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
