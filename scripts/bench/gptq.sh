#!/usr/bin/env bash
# Full GPTQ run on SmolLM2-135M, the issue's setting: calibrated on 128 x 512 tokens of
# c4.calib.txt, 4-bit, written as GGUF; prints wall time, peak RSS and the per-phase split from
# the report. Targets: under 5 minutes on 2 cores, peak RSS under 1 GiB.
# Usage: scripts/bench/gptq.sh [extra quantize flags, e.g. --group-size 64 --asym]
# With EVAL=1, also measures perplexity before and after (24 x 512 tokens of wiki.eval.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
assets=$(bash scripts/fetch-assets.sh)
cargo build --release --quiet
out=target/bench
mkdir -p "$out"
bin=target/release/microllm
eval_args=()
[ "${EVAL:-0}" = 1 ] && eval_args=(--eval "$assets/data/wiki.eval.txt")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
/usr/bin/time -f '%e %M' -o "$out/time.txt" \
  $bin quantize --model "$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --calib "$assets/data/c4.calib.txt" --samples 128 --seqlen 512 \
  --out "$out/smollm2-gptq.gguf" --force "${eval_args[@]}" "$@"
read -r secs kb < "$out/time.txt"
echo "gptq: ${secs} s wall, peak RSS $((kb / 1024)) MB"
python3 - "$out/smollm2-gptq.report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
blocks = r["block_seconds"]
print(f"blocks: {sum(blocks):.1f} s over {len(blocks)} blocks "
      f"(min {min(blocks):.2f}, max {max(blocks):.2f}); write {r['output']['write_seconds']:.1f} s")
p = r.get("block_phase_seconds")
if p:
    print(f"in the blocks: forward {p['forward']:.1f} s, Hessians {p['statistics']:.1f} s, "
          f"solves {p['solve']:.1f} s")
if r.get("eval"):
    e = r["eval"]
    print(f"perplexity {e['original']['perplexity']:.4f} -> {e['compressed']['perplexity']:.4f}")
PY
