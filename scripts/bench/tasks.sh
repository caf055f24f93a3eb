#!/usr/bin/env bash
# Task accuracy of SmolLM2-135M before and after compression (issue 17): the original Q4_1
# file, GPTQ 4-bit g32 (32 x 512 calibration tokens), Wanda 50% (same calibration), the
# 24-block student (6 blocks dropped by ShortGPT influence) before healing, and the same
# student distilled from the live teacher (STUDENT_STEPS steps of 8 x 256 c4 tokens), each
# scored on every task file made from wiki.eval.txt by scripts/interop/make_task_items.py
# (no benchmark data can be downloaded here; these items test drift, not knowledge).
# Prints acc / acc_norm per (model, task) and the scoring time per 1000 items.
# Usage: scripts/bench/tasks.sh   (env ITEMS=200, COMPUTE=int8|f32|dense (default int8),
#        STUDENT_STEPS=50)
set -euo pipefail
cd "$(dirname "$0")/../.."
items=${ITEMS:-200}
compute=${COMPUTE:-int8}
student_steps=${STUDENT_STEPS:-50}
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
[ -d "$out/dropped" ] || $bin prune --model "$model" --calib "$calib" --structured --drop-layers 6 \
  --samples 8 --seqlen 512 --out "$out/dropped" --force > "$out/dropped.log"
[ -d "$out/student" ] || /usr/bin/time -f '%e s, %M KB' $bin distill --teacher "$model" \
  --student-from-teacher drop-layers=6 --data "$calib" --seqlen 256 --batch 8 \
  --steps "$student_steps" --lr 5e-4 --warmup-steps 10 --freeze-embeddings \
  --checkpoint-every 0 --out "$out/student" --force > "$out/student.log" 2>&1

echo "| model | task | items | acc | acc_norm | s per 1000 items |"
echo "|---|---|---|---|---|---|"
for name in original gptq wanda dropped student; do
  case $name in
    original) m=$model ;;
    gptq) m=$out/gptq.gguf ;;
    wanda) m=$out/wanda ;;
    dropped) m=$out/dropped ;;
    student) m=$out/student ;;
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
