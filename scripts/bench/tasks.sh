#!/usr/bin/env bash
# Task accuracy of SmolLM2-135M before and after compression (issue 17): the original Q4_1
# file, GPTQ 4-bit g32 (32 x 512 calibration tokens), Wanda 50% (same calibration), each
# scored on every task file made from wiki.eval.txt by scripts/interop/make_task_items.py
# (no benchmark data can be downloaded here; these items test drift, not knowledge).
# Prints acc / acc_norm per (model, task) and the scoring time per 1000 items.
# Usage: scripts/bench/tasks.sh   (env ITEMS=200, COMPUTE=int8|f32|dense, default int8)
set -euo pipefail
cd "$(dirname "$0")/../.."
items=${ITEMS:-200}
compute=${COMPUTE:-int8}
assets=$(bash scripts/fetch-assets.sh)
model=$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
calib=$assets/data/c4.calib.txt
cargo build --release --quiet
bin=target/release/microllm
out=target/bench/tasks
mkdir -p "$out"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); --compute $compute"
python3 scripts/interop/make_task_items.py "$assets/data/wiki.eval.txt" "$out/items" "$items"
[ -f "$out/gptq.gguf" ] || $bin quantize --model "$model" --calib "$calib" --bits 4 \
  --group-size 32 --samples 32 --seqlen 512 --out "$out/gptq.gguf" --force > "$out/gptq.log"
[ -d "$out/wanda" ] || $bin prune --model "$model" --calib "$calib" --method wanda \
  --sparsity 0.5 --samples 32 --seqlen 512 --out "$out/wanda" --force > "$out/wanda.log"

echo "| model | task | items | acc | acc_norm | s per 1000 items |"
echo "|---|---|---|---|---|---|"
for name in original gptq wanda; do
  case $name in
    original) m=$model ;;
    gptq) m=$out/gptq.gguf ;;
    wanda) m=$out/wanda ;;
  esac
  for task in hellaswag arc_easy piqa winogrande mmlu; do
    $bin eval --model "$m" --task "$task" --data "$out/items/$task.jsonl" \
      --compute "$compute" --json "$out/$name-$task.json" > /dev/null
    python3 - "$out/$name-$task.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["result"]
norm = "–" if r.get("acc_norm") is None else f"{r['acc_norm']:.4f} ± {r['acc_norm_stderr']:.4f}"
print(f"| {sys.argv[2]} | {r['task']} | {r['items']} | {r['acc']:.4f} ± {r['acc_stderr']:.4f} | "
      f"{norm} | {1000 * r['seconds'] / r['items']:.0f} |")
PY
  done
done
