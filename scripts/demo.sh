#!/usr/bin/env bash
# demo.sh — installs dependencies, builds, and runs the default federated fine-tuning
# simulation: 8 clients, tinyshakespeare split by speaking character, the pretrained stories260K
# Llama with LoRA, FedAvg, 5 rounds. Prints per-round progress and where the results went.
#   ./scripts/demo.sh [OUTPUT_DIR] [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="runs/demo-$(date +%Y%m%d-%H%M%S)"
if [[ $# -gt 0 && "$1" != --* ]]; then
  OUT="$1"
  shift
fi

./scripts/setup.sh
./scripts/build.sh --target fedlora-sim fedlora-coordinator fedlora-client
BUILD_DIR="${BUILD_DIR:-build}"

echo
echo "== fedlora demo: 8 clients, stories260K + LoRA, tinyshakespeare by speaker, FedAvg =="
echo
"$BUILD_DIR/sim/fedlora-sim" --config configs/sim/shakespeare-fedavg.yaml --out "$OUT" "$@"
echo
echo "Per-round metrics: $OUT/metrics.jsonl"
echo "Global adapters:   $OUT/checkpoints/<round>/global.safetensors"
echo "PEFT adapter:      $OUT/peft  (PeftModel.from_pretrained-ready; docs/models.md)"
