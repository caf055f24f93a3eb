#!/usr/bin/env bash
# microllm eval beside llama.cpp's llama-perplexity on the same files: same text
# (wiki.eval.txt), ctx 512, the same windows and threads, llama.cpp's scoring protocol
# (`--protocol llama-cpp`: BOS in each window's first slot, second half scored). Whole-process
# wall time and peak RSS from /usr/bin/time, RUNS pairs per file (microllm and llama.cpp
# alternating), medians; prints a Markdown table and writes target/bench/vs-llama/results.json.
#
# Files: SmolLM2-135M as F16 (microllm convert from the Q4_1 asset), Q8_0 / Q4_0 / Q4_K_M /
# IQ4_XS (llama-quantize from an F32 export), the Q4_1 asset itself, Gemma 3 270M's Q4_K_M mix
# (llama.cpp's own file from PyPI; 262k-token vocabulary) and Qwen2.5-Coder-0.5B's Q4_K_M mix
# (Q5_0/Q8_0/Q4_K/Q6_K, 485 MB; 152k-token vocabulary), both by scripts/fetch-model.sh.
#
# Usage: scripts/bench/vs-llama-perplexity.sh [WINDOWS=8] [RUNS=3] [THREADS=2] [FILES...]
#   FILES: any of f16 q8_0 q4_0 q4_k_m iq4_xs q4_1 gemma3 qwen05 (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
windows=${1:-8}
runs=${2:-3}
threads=${3:-2}
shift $(($# < 3 ? $# : 3))
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(f16 q8_0 q4_0 q4_k_m iq4_xs q4_1 gemma3 qwen05)

assets=$(bash scripts/fetch-assets.sh)
bin=$(bash scripts/interop/build-llama-cpp.sh)
cargo build --release --quiet
microllm=target/release/microllm
out=target/bench/vs-llama
files=$out/files
mkdir -p "$files"
text="$assets/data/wiki.eval.txt"
smol="$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf"

# The files, made once.
path_of() {
  case $1 in
    f16) echo "$files/smollm2-F16.gguf" ;;
    q8_0) echo "$files/smollm2-Q8_0.gguf" ;;
    q4_0) echo "$files/smollm2-Q4_0.gguf" ;;
    q4_k_m) echo "$files/smollm2-Q4_K_M.gguf" ;;
    iq4_xs) echo "$files/smollm2-IQ4_XS.gguf" ;;
    q4_1) echo "$smol" ;;
    gemma3) echo "target/models/gemma3-270m-Q4_K_M.gguf" ;;
    qwen05) echo "target/models/qwen2.5-coder-0.5b-instruct-Q4_K_M.gguf" ;;
    *) echo "unknown file '$1' (f16 q8_0 q4_0 q4_k_m iq4_xs q4_1 gemma3 qwen05)" >&2; exit 2 ;;
  esac
}
for f in "${wanted[@]}"; do
  p=$(path_of "$f")
  [ -f "$p" ] && continue
  case $f in
    f16) "$microllm" convert --model "$smol" --out "$p" --gguf-type f16 >/dev/null ;;
    q8_0 | q4_0 | q4_k_m | iq4_xs)
      f32="$files/smollm2-F32.gguf"
      [ -f "$f32" ] || "$microllm" convert --model "$smol" --out "$f32" --gguf-type f32 >/dev/null
      "$bin/llama-quantize" "$f32" "$p" "$(echo "$f" | tr a-z A-Z)" 2 >"$p.log" 2>&1 \
        || { tail -5 "$p.log" >&2; exit 1; }
      ;;
    gemma3) bash scripts/fetch-model.sh gemma3 >/dev/null ;;
    qwen05) bash scripts/fetch-model.sh qwen2.5-0.5b >/dev/null ;;
  esac
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(grep -o 'avx512_vnni' /proc/cpuinfo | head -1 || echo 'no avx512_vnni')"
echo "text: wiki.eval.txt, ctx 512, $windows windows, $threads threads, $runs runs per file"

# One measured run: "<seconds> <peak KB> <perplexity>".
measure() {
  local log=$1
  shift
  /usr/bin/time -f "TIME %e %M" "$@" >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
  local t m p
  read -r t m < <(grep '^TIME ' "$log" | tail -1 | cut -d' ' -f2-)
  p=$(grep -oE 'Final estimate: PPL = [0-9.]+|^perplexity +[0-9.]+' "$log" | grep -oE '[0-9.]+$')
  echo "$t $m $p"
}

results=$out/results.tsv
: >"$results"
for f in "${wanted[@]}"; do
  p=$(path_of "$f")
  for i in $(seq "$runs"); do
    read -r mt mm mp < <(measure "$out/$f-microllm-$i.log" "$microllm" --threads "$threads" \
      eval --model "$p" --data "$text" --ctx 512 --max-windows "$windows" --protocol llama-cpp)
    read -r lt lm lp < <(measure "$out/$f-llama-$i.log" "$bin/llama-perplexity" -m "$p" \
      -f "$text" -c 512 --chunks "$windows" -t "$threads")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$f" "$(stat -c %s "$p")" \
      "$mt" "$mm" "$mp" "$lt" "$lm" "$lp" >>"$results"
  done
done

python3 - "$results" "$out/results.json" "$windows" <<'EOF'
import json, statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
windows = int(sys.argv[3])
by = {}
for f, size, mt, mm, mp, lt, lm, lp in rows:
    by.setdefault(f, []).append((int(size), float(mt), int(mm), float(mp), float(lt), int(lm), float(lp)))
tokens = windows * 512
print()
print("| file | size | llama-perplexity: s, peak MB, PPL | microllm: s, peak MB, PPL | speed microllm / llama.cpp | PPL difference |")
print("|---|---|---|---|---|---|")
doc = []
for f, rs in by.items():
    med = lambda i: statistics.median(r[i] for r in rs)
    size, mt, mm, mp, lt, lm, lp = rs[0][0], med(1), med(2), rs[0][3], med(4), med(5), rs[0][6]
    ratio = lt / mt
    diff = (mp - lp) / lp * 100
    print(f"| {f} | {size / 1e6:.1f} MB | {lt:.2f} s, {lm / 1024:.0f} MB, {lp:.4f} "
          f"| {mt:.2f} s, {mm / 1024:.0f} MB, {mp:.4f} | {ratio:.2f}x | {diff:+.2f}% |")
    doc.append({"file": f, "bytes": size, "runs": len(rs), "tokens": tokens,
                "llama_cpp": {"seconds": lt, "peak_mb": lm / 1024, "perplexity": lp,
                              "all_seconds": [r[4] for r in rs]},
                "microllm": {"seconds": mt, "peak_mb": mm / 1024, "perplexity": mp,
                             "all_seconds": [r[1] for r in rs]},
                "speed_ratio": ratio, "perplexity_difference_pct": diff})
json.dump(doc, open(sys.argv[2], "w"), indent=2)
print(f"\n(median of {len(next(iter(by.values())))} runs each; wrote {sys.argv[2]})")
EOF
