#!/usr/bin/env bash
# privacy-utility.sh — the utility of differential privacy: fedavg, ffa and fedsvd at epsilon 1,
# 4 and 8 (delta 1e-5, sigma solved from the budget, adaptive clipping) and without DP, on
# tinyshakespeare (perplexity; configs/sim/dp-utility-shakespeare.yaml) and SpamAssassin
# (accuracy against the majority baseline; configs/sim/dp-utility-spam.yaml, needs ../shared).
# Writes the table into docs/privacy.md (between the privacy-utility markers).
#   ./scripts/privacy-utility.sh
#   STRATEGIES="ffa" EPSILONS="4 inf" DATASETS="shakespeare" ./scripts/privacy-utility.sh
# Extra arguments go to every fedlora-sim run. Results: runs/privacy/<dataset>/<strategy>-<eps>/.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-runs/privacy}"
STRATEGIES="${STRATEGIES:-fedavg ffa fedsvd}"
EPSILONS="${EPSILONS:-1 4 8 inf}"
DATASETS="${DATASETS:-shakespeare spam}"

./scripts/setup.sh
./scripts/build.sh --target fedlora-sim
BUILD_DIR="${BUILD_DIR:-build}"

for d in $DATASETS; do
  for s in $STRATEGIES; do
    for e in $EPSILONS; do
      run="$OUT/$d/$s-$e"
      privacy=(--set coordinator.privacy.enabled=false)
      if [ "$e" != inf ]; then
        privacy=(--set coordinator.privacy.enabled=true --set "coordinator.privacy.target_epsilon=$e")
      fi
      echo "== $d $s epsilon $e"
      rm -rf "$run"
      "$BUILD_DIR/sim/fedlora-sim" --config "configs/sim/dp-utility-$d.yaml" --out "$run" \
          --set log_level=warn --set "coordinator.strategy.name=$s" "${privacy[@]}" "$@" |
        sed -n '/^eval_loss/p'
    done
  done
done
python3 scripts/privacy_table.py --runs "$OUT" --doc docs/privacy.md \
    --datasets "$DATASETS" --strategies "$STRATEGIES" --epsilons "$EPSILONS"
echo "table written to docs/privacy.md"
