#!/usr/bin/env bash
# Task accuracy (issue 17), checked against independent scorers on the same items:
#   1. items in each dataset's own layout are made from wiki.eval.txt (make_task_items.py;
#      no benchmark data can be downloaded here);
#   2. lm-evaluation-harness itself (its task configs pointed at the local files, transformers
#      on the same GGUF in f32) and `microllm eval --task --compute dense` score every task,
#      0-shot and few-shot; check_tasks.py compares them item by item (>= 99% same choice,
#      accuracies within 0.5 points);
#   3. llama-perplexity --multiple-choice on llama.cpp's binary files (HellaSwag, and ARC with
#      the harness's prompt as the question) beside `microllm eval --protocol llama-cpp` on the
#      same files, item by item (check_llama_tasks.py; --compute f32 gated, int8 shown);
#   4. llama-perplexity --winogrande on llama.cpp's CSV, all items and 120 drawn by
#      --winogrande-tasks, each item's two scores compared (check_llama_tasks.py; gated on an
#      F32 conversion of the model, the quantized file shown);
#   5. llama-perplexity --hellaswag on llama.cpp's text file beside
#      `microllm eval --task hellaswag --protocol llama-cpp --compute f32` (accuracy within
#      0.5 points; both draw the file's items in llama.cpp's shuffled order, and
#      check_llama_tasks.py is the item-by-item check; llama.cpp rounds activations to 8 bits, which moves a close item's
#      per-token mean by a few hundredths of a nat, so exact per-item agreement is not
#      expected of any f32 scorer).
# Usage: scripts/interop/tasks.sh   (env ITEMS=200 items per task, TASKS=hellaswag,mmlu to pick)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$root"
MODEL=${MODEL:-$root/../shared/assets/models/SmolLM2-135M-Instruct.Q4_1.gguf}
TEXT=${TEXT:-$root/../shared/assets/data/wiki.eval.txt}
ITEMS=${ITEMS:-200}
work=$root/target/interop/tasks
venv=$root/target/lmeval-venv
py=$venv/bin/python

# lm-eval, transformers and torch (CPU use; the PyPI wheel pulls the CUDA runtime packages).
[ -x "$py" ] || python3 -m venv "$venv"
"$py" -c "import lm_eval, transformers, torch, gguf, accelerate" 2>/dev/null \
  || "$py" -m pip install --quiet torch==2.15.0 transformers==5.24.0 lm-eval==0.4.13 \
       gguf==0.19.0 accelerate
cargo build --release --quiet
m=$root/target/release/microllm

"$py" scripts/interop/make_task_items.py "$TEXT" "$work/items" "$ITEMS"
status=0
"$py" scripts/interop/check_tasks.py "$m" "$MODEL" "$work/items" "$work/out" "$ITEMS" || status=1

llama=$(scripts/interop/build-llama-cpp.sh)
bins=("$work/items/hellaswag.bin:hellaswag" "$work/items/arc_easy.bin:arc_easy")
"$py" scripts/interop/check_llama_tasks.py "$m" "$llama" "$MODEL" f32 "${bins[@]}" || status=1
"$py" scripts/interop/check_llama_tasks.py "$m" "$llama" "$MODEL" int8 "${bins[@]}" || true
# WinoGrande: gated on an F32 file, where both sides multiply in f32, so the check is of the
# scoring rules alone; the quantized file is shown (llama.cpp rounds its activations to 8 bits).
wino=("$work/items/winogrande.csv:winogrande" "$work/items/winogrande.csv:winogrande:120")
"$m" convert --model "$MODEL" --out "$work/model-f32.gguf" --gguf-type f32 --force >/dev/null
"$py" scripts/interop/check_llama_tasks.py "$m" "$llama" "$work/model-f32.gguf" f32 "${wino[@]}" || status=1
"$py" scripts/interop/check_llama_tasks.py "$m" "$llama" "$MODEL" f32 "${wino[@]}" || true
"$llama/llama-perplexity" -m "$MODEL" -f "$work/items/hellaswag.txt" --hellaswag \
  --hellaswag-tasks "$ITEMS" -t "$(nproc)" -c 2048 > "$work/llama-hellaswag.log" 2>&1
theirs=$(awk -v n="$ITEMS" '$1 == n {sub("%", "", $2); print $2 / 100}' "$work/llama-hellaswag.log")
"$m" eval --model "$MODEL" --task hellaswag --data "$work/items/hellaswag.txt" \
  --protocol llama-cpp --compute f32 --json "$work/out/microllm_llama_hellaswag.json" >/dev/null
mine=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['result']['acc'])" \
  "$work/out/microllm_llama_hellaswag.json")
echo "llama-perplexity --hellaswag, $ITEMS items: llama.cpp $theirs, microllm --protocol llama-cpp $mine"
"$py" -c "import sys; sys.exit(abs(float(sys.argv[1]) - float(sys.argv[2])) > 0.005 + 1e-9)" "$theirs" "$mine" \
  || { echo "FAIL: more than 0.5 points apart"; status=1; }
exit $status
