#!/usr/bin/env bash
# The headline distillation experiment (docs/distillation.md, docs/benchmarks.md):
# SmolLM2-135M with 6 of its 30 blocks removed by ShortGPT block influence, healed on
# c4.calib.txt (a) by distillation from stored teacher logits and (b) by plain next-token
# cross-entropy on exactly the same windows in the same order, both evaluated on
# wiki.eval.txt (24 windows x 512, the project's protocol) before, during and after.
#
# Records per run: wall time and peak RSS (/usr/bin/time), training tokens/s, and the
# perplexity curve (perplexity vs training tokens and training seconds) from the reports.
#
# Usage: scripts/bench/distill.sh [STEPS=100]   (env: LR, BATCH, SEQLEN, TOPK, EVAL_EVERY,
#        FREEZE_BLOCKS, OUT)
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-100}
lr=${LR:-5e-4}
batch=${BATCH:-8}
seqlen=${SEQLEN:-256}
topk=${TOPK:-64}
eval_every=${EVAL_EVERY:-25}
freeze_blocks=${FREEZE_BLOCKS:-0}
out=${OUT:-target/bench/distill}
assets=$(bash scripts/fetch-assets.sh)
model=$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
train=$assets/data/c4.calib.txt
held_out=$assets/data/wiki.eval.txt
cargo build --release --quiet
bin=target/release/microllm
mkdir -p "$out"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"

timed() { # NAME CMD...: runs CMD with its log in $out/NAME.log, prints wall s and peak MB
  local name=$1; shift
  /usr/bin/time -f '%e %M' -o "$out/$name.time" "$@" > "$out/$name.log" 2>&1
  read -r secs kb < "$out/$name.time"
  echo "$name: $secs s wall, $((kb / 1024)) MB peak RSS"
}

# 1. Teacher logits, once (kept between runs of this script).
if [ ! -f "$out/store/manifest.json" ]; then
  timed store $bin distill logits --teacher "$model" --data "$train" --seqlen "$seqlen" \
    --top-k "$topk" --out "$out/store"
fi
grep -E "size|speed" "$out/store.log" || true

common=(--teacher "$model" --student-from-teacher drop-layers=6 --data "$train"
  --seqlen "$seqlen" --batch "$batch" --steps "$steps" --lr "$lr" --warmup-steps 10
  --freeze-embeddings --freeze-blocks "$freeze_blocks" --eval "$held_out" --eval-ctx 512
  --eval-windows 24 --eval-every "$eval_every" --checkpoint-every 0 --force)

# 2. Distillation from the stored logits.
timed kd $bin distill "${common[@]}" --logits "$out/store" --loss kl:1 --out "$out/kd"
# 3. Plain cross-entropy, the same windows in the same order (same seed, same window count).
timed ce $bin distill "${common[@]}" --loss ce:1 --out "$out/ce"

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
reports = {name: json.load(open(f"{out}/{name}.report.json")) for name in ("kd", "ce")}
runs = {name: r["distill"] for name, r in reports.items()}
# The recipe's eval pass measured the unpruned teacher on the same windows.
base = reports["kd"]["eval"]["original"]["perplexity"]
pruned = runs["kd"]["evals"][0]["perplexity"]  # step 0: before training
print(f"\nunpruned {base:.4f}, pruned (24 blocks) {pruned:.4f}, half the gap {(base + pruned) / 2:.4f}")
print("| run | step | tokens | training s | perplexity | gap recovered |")
print("|---|---|---|---|---|---|")
for name, r in runs.items():
    for p in r["evals"]:
        rec = (pruned - p["perplexity"]) / (pruned - base)
        print(f"| {name} | {p['step']} | {p['tokens']} | {p['train_seconds']:.0f} | {p['perplexity']:.4f} | {100 * rec:.1f}% |")
for name, r in runs.items():
    evaluating = sum(p["seconds"] for p in r["evals"])
    print(f"{name}: {r['tokens']} tokens in {r['train_seconds']:.0f} s of training, "
          f"{r['tokens_per_second']:.1f} tokens/s; {evaluating:.0f} s evaluating")
PY
