#!/usr/bin/env bash
# A checkpoint with LLaMA-2-7B's exact shapes and the hub's layout (bf16 safetensors shards +
# index, the 32000-piece LLaMA-style SentencePiece tokenizer of scripts/fetch-tokenizers.sh), random weights
# (make_random_llama.py: magnitudes 2^-7..2^-3, activations stay finite), then microllm on it
# with wall time and peak RSS (/usr/bin/time) per step, and llama.cpp on microllm's files.
# Real 7B weights are not available here: these figures are about time, memory and loading,
# not quality (a random model's perplexity is meaningless).
#
# Usage: scripts/bench/llama2-7b-shape.sh STEP...      steps, in any order:
#   make     write the checkpoint (target/bench/llama2-7b-shape, 13.5 GB; LAYERS=32 by default,
#            LAYERS=N for a model of 7B-sized blocks but fewer of them)
#   rtn      convert --gguf-type q4_k_m, and llama-quantize Q4_K_M from an F16 GGUF of the same
#            weights (written by convert), both timed; llama-perplexity (1 chunk) on ours
#   gptq     quantize --method gptq --bits 4 --group-size 128 --samples 16 --seqlen 512 into
#            GGUF; llama-tokenize and llama-perplexity (1 chunk) on it
#   gptq-8x256  the same at 8 x 256 calibration tokens, symmetric (the GPTQ speed target)
#   distill  distill logits --teacher on 4 windows of 256 tokens (the teacher streamed)
# Results: one line per step in target/bench/llama2-7b-shape.results, logs beside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
layers=${LAYERS:-32}
dir=target/bench/llama2-7b-shape${LAYERS:+-$layers}
out=target/bench/7b-out${LAYERS:+-$layers}
results=target/bench/llama2-7b-shape${LAYERS:+-$layers}.results
mkdir -p "$out"
assets=$(bash scripts/fetch-assets.sh)
bin=target/release/microllm
cargo build --release --quiet

# timed NAME CMD...: runs CMD, appends "NAME: S s wall, M MB peak RSS" to the results.
timed() {
  local name=$1; shift
  echo "+ $*" >&2
  /usr/bin/time -f '%e %M' -o "$out/$name.time" "$@" >"$out/$name.log" 2>&1 \
    || { tail -20 "$out/$name.log" >&2; echo "$name failed" >&2; exit 1; }
  read -r secs kb < "$out/$name.time"
  echo "$name: ${secs} s wall, $((kb / 1024)) MB peak RSS" | tee -a "$results"
}

make_model() {
  [ -f "$dir/model.safetensors.index.json" ] \
    || python3 scripts/bench/make_random_llama.py "$dir" --layers "$layers" --hidden 4096 \
      --intermediate 11008 --heads 32 --kv-heads 32 --vocab 32000 --dtype bf16 \
      --shard-gb 10 --max-position 4096
  if [ ! -f "$dir/tokenizer.json" ]; then
    local toks
    toks=$(bash scripts/fetch-tokenizers.sh)
    cp "$toks/llama2/tokenizer.json" "$toks/llama2/tokenizer_config.json" "$dir/"
  fi
}

for step in "$@"; do
  case $step in
    make) make_model; $bin inspect --model "$dir" >"$out/inspect.txt"; head -8 "$out/inspect.txt" ;;
    rtn)
      llama=$(bash scripts/interop/build-llama-cpp.sh)
      timed rtn-q4_k_m $bin convert --model "$dir" --out "$out/rtn-q4_k_m.gguf" \
        --gguf-type q4_k_m --force
      [ -f "$out/f16.gguf" ] || $bin convert --model "$dir" --out "$out/f16.gguf" \
        --gguf-type f16 --force >"$out/f16.log" 2>&1
      timed llama-quantize-q4_k_m "$llama/llama-quantize" "$out/f16.gguf" \
        "$out/llama-q4_k_m.gguf" Q4_K_M 2
      ls -l "$out/rtn-q4_k_m.gguf" "$out/llama-q4_k_m.gguf" | tee -a "$results"
      timed llama-perplexity-rtn "$llama/llama-perplexity" -m "$out/rtn-q4_k_m.gguf" \
        -f "$assets/data/wiki.eval.txt" -c 512 --chunks 1 -t 2
      grep -E "Final estimate" "$out/llama-perplexity-rtn.log" | tee -a "$results"
      ;;
    gptq)
      llama=$(bash scripts/interop/build-llama-cpp.sh)
      timed gptq-4bit-g128 $bin quantize --model "$dir" --method gptq --bits 4 \
        --group-size 128 --samples 16 --seqlen 512 --calib "$assets/data/c4.calib.txt" \
        --out "$out/gptq-4bit-g128.gguf" --force
      ls -l "$out/gptq-4bit-g128.gguf" | tee -a "$results"
      "$llama/llama-tokenize" -m "$out/gptq-4bit-g128.gguf" -p "The capital of France" \
        --ids --log-disable | tail -1 | sed 's/^/llama-tokenize: /' | tee -a "$results"
      timed llama-perplexity-gptq "$llama/llama-perplexity" -m "$out/gptq-4bit-g128.gguf" \
        -f "$assets/data/wiki.eval.txt" -c 512 --chunks 1 -t 2
      grep -E "Final estimate" "$out/llama-perplexity-gptq.log" | tee -a "$results"
      ;;
    gptq-8x256)
      timed gptq-4bit-g128-8x256 $bin quantize --model "$dir" --method gptq --bits 4 \
        --group-size 128 --sym --samples 8 --seqlen 256 --calib "$assets/data/c4.calib.txt" \
        --out "$out/gptq-4bit-g128-8x256.gguf" --force
      ls -l "$out/gptq-4bit-g128-8x256.gguf" | tee -a "$results"
      ;;
    distill)
      timed distill-logits $bin distill logits --teacher "$dir" \
        --data "$assets/data/c4.calib.txt" --seqlen 256 --max-windows 4 --top-k 64 \
        --out "$out/logits" --force
      ;;
    *) echo "unknown step $step (make, rtn, gptq, gptq-8x256, distill)" >&2; exit 2 ;;
  esac
done
