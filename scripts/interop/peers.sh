#!/usr/bin/env bash
# Checkpoints made by the peers' own tools (issue 20), read by microllm: each is quantized from
# SmolLM2-135M (microllm's f32 conversion of the published GGUF) on the CPU by llm-compressor
# 0.14 (`llmc:SCHEME`, make_llmc.py), GPTQModel 7.7 (`gptqmodel:VARIANT`, make_gptqmodel.py) or
# AutoRound 0.15 (`autoround:VARIANT`, its auto_gptq, auto_awq and auto_round exports,
# make_autoround.py), then its perplexity is measured by transformers (the tools' runtime: compressed-tensors with
# its activation quantization, GPTQModel's kernels) and by `microllm eval` on the same token
# ids (WINDOWS x 512 of wiki.eval.txt, every position after the first scored): the two must
# agree within 0.1%. microllm's GPTQ at llm-compressor's GPTQ settings (SAMPLES x 512
# calibration tokens of c4.calib.txt, 4-bit symmetric groups of 32) is set beside them, with
# wall time and peak RSS.
#
# Needs target/lmeval-venv (scripts/tasks.sh makes it: torch, transformers, compressed-tensors)
# with the tools added without their pins, which would downgrade torch and transformers:
#   target/lmeval-venv/bin/python -m pip install --no-deps llmcompressor==0.14.0.1 \
#     gptqmodel==7.7.0 optimum==2.3.0 PyPcre LogBar device-smi tokenicer defuser pillow \
#     auto-round==0.15.1 py-cpuinfo
#
# Usage: scripts/interop/peers.sh    env: SAMPLES (32), WINDOWS (8), CHECKPOINTS (tool:variant ...)
set -euo pipefail
cd "$(dirname "$0")/../.."
assets=$(bash scripts/fetch-assets.sh)
py=target/lmeval-venv/bin/python
"$py" -c "import llmcompressor, gptqmodel, auto_round" 2>/dev/null || {
  echo "llmcompressor, gptqmodel or auto_round is not importable from $py (see the header of $0)" >&2
  exit 2
}
cargo build --release --quiet
bin=target/release/microllm
out=target/interop/llmc
mkdir -p "$out"
SAMPLES=${SAMPLES:-32}
WINDOWS=${WINDOWS:-8}
CHECKPOINTS=${CHECKPOINTS:-llmc:gptq-w4g32 llmc:awq-w4g64 llmc:w8a8-int8 llmc:fp8-dynamic llmc:mixed \
  gptqmodel:4-32-sym gptqmodel:4-64-asym-act-v2 gptqmodel:3-64-asym gptqmodel:8-128-sym-act \
  gptqmodel:2-32-sym autoround:4-32-asym autoround:4-32-asym-awq autoround:4-32-sym-ar \
  autoround:4-32-asym-ar}
model=$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -d "$out/f32" ] || "$bin" convert --model "$model" --dtype f32 --out "$out/f32" >/dev/null
ids=$out/eval-ids-$WINDOWS.safetensors
[ -e "$ids" ] || "$py" scripts/interop/make_ids.py "$out/f32" "$assets/data/wiki.eval.txt" "$ids" \
  --rows 1 --len $((WINDOWS * 512)) >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "SmolLM2-135M; calibration $SAMPLES x 512 (c4), eval $WINDOWS x 512 (wiki); $("$py" -c 'import llmcompressor, gptqmodel; print("llmcompressor", llmcompressor.__version__, "gptqmodel", gptqmodel.__version__)' 2>/dev/null)"
echo
echo "| checkpoint | made by | wall s | peak RSS MB | format | transformers ppl | microllm ppl | apart |"
echo "|---|---|---|---|---|---|---|---|"
ppl_microllm() { "$bin" eval --model "$1" --data "$ids" --ctx 512 --max-windows "$WINDOWS" 2>&1 | awk '/^perplexity/ {print $2}'; }
# Empty output (not a failed pipeline) when transformers cannot load the checkpoint.
ppl_transformers() { { "$py" scripts/interop/ppl_transformers.py "$@" "$ids" --windows "$WINDOWS" 2>/dev/null || true; } | awk '/^PPL/ {print $2}'; }
row() {
  local name=$1 maker=$2 dir=$3 timefile=$4
  read -r secs kb <"$timefile"
  local fmt theirs ours
  fmt=$(python3 - "$dir/config.json" <<'PY'
import json, sys
q = json.load(open(sys.argv[1]))["quantization_config"]
if q["quant_method"] == "awq":
    print(f"awq {q.get('version', 'gemm')} {q['bits']}-bit g{q['group_size']}")
elif q["quant_method"] == "auto-round":
    print(f"auto-round {q['packing_format']} {q['bits']}-bit g{q['group_size']} "
          f"{'sym' if q.get('sym', True) else 'asym'}")
elif q["quant_method"] == "gptq":
    print(" ".join([q.get("checkpoint_format") or q.get("format") or "gptq",
                    f"{q['bits']}-bit g{q['group_size']}", "sym" if q.get("sym", True) else "asym"]
                   + (["desc_act"] if q.get("desc_act") else [])))
else:
    print(q["format"])
PY
)
  theirs=$(ppl_transformers "$dir")
  if [ -z "$theirs" ]; then
    # transformers 5.24 + compressed-tensors 0.20 refuse asymmetric pack-quantized files (even
    # llm-compressor's own): the library's decompression in transformers' model instead.
    theirs=$(ppl_transformers "$dir" --library-decompress "$out/f32")
    fmt="$fmt (library-decompressed)"
  fi
  ours=$(ppl_microllm "$dir")
  python3 - "$name" "$maker" "$secs" "$kb" "$fmt" "$theirs" "$ours" <<'PY'
import sys
name, maker, secs, kb, fmt, theirs, ours = sys.argv[1:]
t, o = float(theirs), float(ours)
apart = abs(o - t) / t * 100
print(f"| {name} | {maker} | {float(secs):.0f} | {int(kb) // 1024} | {fmt} | {t:.4f} | {o:.4f} | {apart:.3f}%{'' if apart <= 0.1 else ' FAIL'} |")
PY
}
fail=0
: >"$out/table.md"
for c in $CHECKPOINTS; do
  tool=${c%%:*} v=${c#*:}
  case $tool in
    llmc) maker=(scripts/interop/make_llmc.py --scheme "$v") by=llm-compressor ;;
    gptqmodel) maker=(scripts/interop/make_gptqmodel.py --variant "$v") by=GPTQModel ;;
    autoround) maker=(scripts/interop/make_autoround.py --variant "$v")
      case $v in *-awq) e=auto_awq ;; *-ar) e=auto_round ;; *) e=auto_gptq ;; esac
      by="AutoRound ($e)" ;;
    *) echo "unknown tool in $c" >&2; fail=1; continue ;;
  esac
  s=$tool-$v dir=$out/$tool-$v
  if [ ! -e "$dir/config.json" ]; then
    /usr/bin/time -f '%e %M' -o "$out/$s.time" "$py" "${maker[@]}" "$out/f32" \
      "$assets/data/c4.calib.txt" "$dir" --samples "$SAMPLES" >"$out/$s.log" 2>&1 \
      || { echo "$by $v failed (log: $out/$s.log)" >&2; fail=1; continue; }
  fi
  row "$v" "$by" "$dir" "$out/$s.time" | tee -a "$out/table.md"
done
# microllm at llm-compressor's GPTQ settings, for the anchor figure.
dir=$out/microllm-gptq-w4g32
if [ ! -e "$dir/config.json" ]; then
  /usr/bin/time -f '%e %M' -o "$out/microllm-gptq-w4g32.time" "$bin" quantize --model "$model" \
    --calib "$assets/data/c4.calib.txt" --samples "$SAMPLES" --seqlen 512 --bits 4 --group-size 32 \
    --sym --format compressed-tensors --out "$dir" --force >"$out/microllm-gptq-w4g32.log" 2>&1
fi
row microllm-gptq-w4g32 "microllm quantize" "$dir" "$out/microllm-gptq-w4g32.time" | tee -a "$out/table.md"
grep -q FAIL "$out/table.md" && fail=1
exit $fail
