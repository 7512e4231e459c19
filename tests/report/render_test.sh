#!/usr/bin/env bash
# render_test.sh BUILD_DIR SOURCE_DIR WORK_DIR — the report in a real browser: three short real
# runs (fedlora-sim: fedavg, ffa, fedsa), fedlora-report of one run and of all three, each page
# loaded in headless Chromium. Fails on a script error (the page's script marks <body
# data-ready="N"> as its last act, N the charts it found), on a chart without a line, or on a
# page with no chart. Leaves a screenshot of the comparison in WORK_DIR/report-3.png.
set -euo pipefail
build="$(cd "$1" && pwd)" src="$(cd "$2" && pwd)" work="$3"
rm -rf "$work"; mkdir -p "$work"
fail() { echo "render_test: $*" >&2; exit 1; }
browser="$(command -v chromium || command -v chromium-browser || true)"
[[ -n "$browser" ]] || fail "no chromium (scripts/setup.sh installs Debian's)"
flags=(--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars
       --user-data-dir="$work/chromium-profile" --enable-logging=stderr --v=0)

for s in fedavg ffa fedsa; do
  "$build/sim/fedlora-sim" --config "$src/configs/sim/shakespeare-$s.yaml" --out "$work/$s" \
    --set num_clients=3 --set coordinator.rounds=2 --set coordinator.round.min_clients=3 \
    --set coordinator.round.quorum=2 \
    --set coordinator.train.local_steps=2 --set coordinator.train.seq_len=32 \
    --set coordinator.eval.max_batches=1 --set "coordinator.lora.targets=[q_proj,v_proj]" \
    --set log_level=warn > "$work/$s.log" 2>&1 || { tail "$work/$s.log"; fail "fedlora-sim $s failed"; }
done

check() {  # check NAME RUN_DIR...
  local name="$1"; shift
  "$build/report/fedlora-report" "$@" --out "$work/$name.html" > /dev/null
  timeout 120 "$browser" "${flags[@]}" --dump-dom "file://$work/$name.html" \
    > "$work/$name.dom" 2> "$work/$name.console" || fail "chromium could not load $name.html"
  if grep -E "Uncaught|SyntaxError|TypeError|ReferenceError" "$work/$name.console"; then
    fail "$name.html: script error"
  fi
  python3 - "$work/$name.dom" "$name" <<'PY'
import re, sys
dom = open(sys.argv[1]).read()
name = sys.argv[2]
ready = re.search(r'<body[^>]*data-ready="(\d+)"', dom)
if not ready:
    sys.exit(f"{name}: the page's script did not finish (no data-ready on <body>)")
charts = re.findall(r'<svg class="plot".*?</svg>', dom, re.S)
if not charts or int(ready.group(1)) != len(charts):
    sys.exit(f"{name}: {len(charts)} charts, script saw {ready.group(1)}")
for chart in charts:
    title = re.search(r'<text class="title"[^>]*>(.*?)</text>', chart).group(1)
    lines = re.findall(r'<polyline class="line" points="([^"]*)"', chart)
    if "no data" in chart or not lines or not any(len(l.split()) >= 2 for l in lines):
        sys.exit(f"{name}: chart '{title}' is empty")
print(f"render_test: {name}: {len(charts)} charts, each with a line")
PY
}
check report-1 "$work/fedavg"
check report-3 "$work/fedavg" "$work/ffa" "$work/fedsa"
grep -c '<tr><td><span class="swatch"' "$work/report-3.dom" | grep -qx 3 || fail "report-3: not 3 table rows"
timeout 120 "$browser" "${flags[@]}" --window-size=1400,2200 --screenshot="$work/report-3.png" \
  "file://$work/report-3.html" > /dev/null 2>&1 || fail "no screenshot"
echo "render_test: OK (screenshot $work/report-3.png)"
