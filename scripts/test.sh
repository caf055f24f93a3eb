#!/usr/bin/env bash
# The test suite, as the README gives it: optimised builds (the real-model tests evaluate
# SmolLM2 and would crawl unoptimised), assets fetched first when ../shared/assets is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh >/dev/null
cargo test --workspace --release "$@"
