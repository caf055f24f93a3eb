#!/usr/bin/env bash
# Reads a GGUF file with llama.cpp's Python reader (the `gguf` package from PyPI, installed
# into target/pyenv on first use) to show that files microllm writes open outside microllm.
# Usage: scripts/check-gguf.sh FILE.gguf
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
venv="$root/target/pyenv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import gguf' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet 'gguf==0.19.0' >&2
fi
exec "$venv/bin/python" "$root/scripts/check_gguf.py" "$1"
