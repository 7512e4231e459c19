#!/usr/bin/env bash
# compare-strategies.sh — runs every strategy experiment (configs/sim/shakespeare-<name>.yaml)
# and writes the comparison table into docs/strategies.md (between the compare markers).
#   ./scripts/compare-strategies.sh                       # all strategies, 5 rounds each
#   STRATEGIES="fedavg fedex" ./scripts/compare-strategies.sh --set coordinator.rounds=3
# Extra arguments go to every fedlora-sim run. Results: runs/compare/<name>/metrics.jsonl, and
# runs/compare/report.html (fedlora-report: the runs' charts overlaid, with their table).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-runs/compare}"
STRATEGIES="${STRATEGIES:-fedavg ffa fedex flora fedsa fedsb lorafair hetlora fslora}"

./scripts/setup.sh
./scripts/build.sh --target fedlora-sim fedlora-report
BUILD_DIR="${BUILD_DIR:-build}"

for s in $STRATEGIES; do
  echo "== $s"
  rm -rf "$OUT/$s"
  "$BUILD_DIR/sim/fedlora-sim" --config "configs/sim/shakespeare-$s.yaml" --out "$OUT/$s" \
      --set log_level=warn "$@" | sed -n '/^eval_loss/p'
done
python3 scripts/strategy_table.py --runs "$OUT" --doc docs/strategies.md $STRATEGIES
echo "table written to docs/strategies.md"
runs=()
for s in $STRATEGIES; do [[ -f "$OUT/$s/metrics.jsonl" ]] && runs+=("$OUT/$s"); done
"$BUILD_DIR/report/fedlora-report" "${runs[@]}" --out "$OUT/report.html"
