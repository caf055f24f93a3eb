#!/usr/bin/env bash
# Opens a microllm HTML report in headless Chromium and fails unless it loads without
# JavaScript errors and shows its charts.
#
# Usage: scripts/check-html.sh REPORT.html [MIN_CHARTS]
#
#   Installs Debian's chromium when absent (apt-get, as root). Dumps the DOM after the page's
#   script ran (--dump-dom) and counts the SVG charts (at least MIN_CHARTS, default 1) and the
#   error markers; captures the browser's console (--enable-logging=stderr) and fails on any
#   "Uncaught" error or console error from the page; writes REPORT.png (a screenshot) beside it.
# No network is used by the page; the browser runs with its network features off.
set -euo pipefail
report=${1:?usage: scripts/check-html.sh REPORT.html [MIN_CHARTS]}
min_charts=${2:-1}
[[ -f "$report" ]] || { echo "check-html: no file $report" >&2; exit 1; }
report=$(cd "$(dirname "$report")" && pwd -P)/$(basename "$report")

browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$browser" ]]; then
  echo "check-html: installing Debian's chromium (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq chromium >&2
  browser=$(command -v chromium)
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --user-data-dir="$profile" --enable-logging=stderr --v=0)

dom=$("$browser" "${flags[@]}" --virtual-time-budget=2000 --dump-dom "file://$report" 2>"$profile/console.log")
charts=$(grep -o '<svg class="chart"' <<<"$dom" | wc -l)
"$browser" "${flags[@]}" --window-size=1100,2400 --screenshot="${report%.html}.png" \
  "file://$report" 2>/dev/null >/dev/null || true

status=0
if grep -E 'Uncaught|CONSOLE.*(ERROR|error)|console.*error' "$profile/console.log" >/dev/null; then
  echo "check-html: JavaScript errors in $report:" >&2
  grep -E 'Uncaught|CONSOLE|console' "$profile/console.log" >&2
  status=1
fi
if [[ "$charts" -lt "$min_charts" ]]; then
  echo "check-html: $charts charts in $report, expected at least $min_charts" >&2
  status=1
fi
if ! grep -q '</html>\|</body>' <<<"$dom"; then
  echo "check-html: the page did not render" >&2
  status=1
fi
points=$(grep -o '<circle' <<<"$dom" | wc -l)
echo "check-html: $report: $charts charts, $points points, console errors: $([[ $status == 0 ]] && echo none || echo yes)"
exit $status
