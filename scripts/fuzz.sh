#!/usr/bin/env bash
# Fuzzes the parsers that read untrusted bytes, one cargo-fuzz target each (fuzz/), from a
# seed corpus built out of the fixtures: GGUF files, Hugging Face directories, recipes and a
# teacher-logit store. Not part of the test suite or CI (it needs the nightly toolchain and
# runs as long as it is told to).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 60 s, every target
#
# A finding is written under fuzz/artifacts/TARGET/ and makes this script fail; reproduce it
# with `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf hf_dir recipe logit_store)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo build --release --quiet
bin=target/release/microllm
fixtures=../shared/fixtures
corpus=target/fuzz-corpus
rm -rf "$corpus"
mkdir -p "$corpus"/{gguf,hf_dir,recipe,logit_store}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Files joined into one fuzz input: each but the last prefixed by its length (u32 LE), as
# fuzz/fuzz_targets/common.rs splits them.
pack() {
    python3 - "$@" <<'PY'
import struct, sys
out, parts = sys.argv[1], sys.argv[2:]
data = b""
for i, p in enumerate(parts):
    b = open(p, "rb").read() if p != "-" else b""
    data += (struct.pack("<I", len(b)) + b) if i < len(parts) - 1 else b
open(out, "wb").write(data)
PY
}

for model in llama-tiny qwen3-tiny gemma3-tiny phi-tiny; do
    for type in f32 q8_0 q4_k_m; do
        "$bin" convert --model "$fixtures/$model" --gguf-type "$type" \
            --out "$corpus/gguf/$model-$type.gguf" >/dev/null 2>&1
    done
    pack "$corpus/hf_dir/$model" "$fixtures/$model/config.json" - "$fixtures/$model/model.safetensors"
done
sharded="$fixtures/llama-tiny-sharded"
pack "$corpus/hf_dir/llama-tiny-sharded" "$sharded/config.json" \
    "$sharded/model.safetensors.index.json" "$sharded/model-00001-of-00007.safetensors"
cp configs/*.yaml "$corpus/recipe/"
"$bin" distill logits --teacher "$fixtures/llama-tiny" \
    --data "$fixtures/llama-tiny/reference.safetensors" --seqlen 8 --top-k 4 \
    --out "$work/store" >/dev/null 2>&1
pack "$corpus/logit_store/store" "$work/store/manifest.json" "$work/store"/*.safetensors

status=0
for target in "${targets[@]}"; do
    echo "== $target: $seconds s"
    cargo +nightly fuzz run --release "$target" "$corpus/$target" -- \
        -max_total_time="$seconds" -max_len=1048576 -rss_limit_mb=4096 -print_final_stats=1 \
        2>&1 | grep -E "^(#[0-9]+ *DONE|Done|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written)" \
        || status=1
    if ls fuzz/artifacts/"$target"/* >/dev/null 2>&1; then
        echo "finding(s) in fuzz/artifacts/$target"
        status=1
    fi
done
exit $status
