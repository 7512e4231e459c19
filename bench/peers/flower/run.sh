#!/usr/bin/env bash
# Peer benchmark: the same federated LoRA task (stories260K, LoRA r=8 on all 7 linear modules,
# tinyshakespeare split contiguously, FedAvg, no evaluation) under fedlora-sim and under Flower's
# simulation engine (flwr + Ray, plain PyTorch clients), then fedlora's speed and memory
# relative to Flower's. Not part of CI; see README.md in this directory.
#
#   bench/peers/flower/run.sh [--clients 100] [--per-round 10] [--rounds 3] [--local-steps 10]
#                             [--out DIR] [--only fedlora|flower]
#
# Environment:
#   FEDLORA_SIM                fedlora-sim binary (default: build/sim/fedlora-sim in the repo)
#   FEDLORA_FLOWER_VENV        virtual environment to create or reuse (default:
#                              ~/.cache/fedlora-flower); gets `flwr[simulation] torch numpy
#                              psutil` from PyPI on first use
#   FEDLORA_FLOWER_TORCH_FROM  optional: an existing venv whose packages (torch) the new venv
#                              sees through a .pth file, so pip does not download torch again
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1  # No __pycache__ in the source tree (Ray workers inherit it).

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
clients=100 per_round=10 rounds=3 local_steps=10 out="" only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --clients) clients="$2"; shift 2 ;;
    --per-round) per_round="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --local-steps) local_steps="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
  esac
done
if (( per_round < 1 || per_round > clients || rounds < 1 || local_steps < 1 )); then
  echo "run.sh: need 1 <= --per-round <= --clients, --rounds >= 1, --local-steps >= 1" >&2
  exit 1
fi
sim="${FEDLORA_SIM:-$repo/build/sim/fedlora-sim}"
venv="${FEDLORA_FLOWER_VENV:-$HOME/.cache/fedlora-flower}"
out="${out:-$(mktemp -d /tmp/fedlora-flower-bench.XXXXXX)}"
mkdir -p "$out"
echo "== results in $out"

# --- Python environment --------------------------------------------------------------------
py="$venv/bin/python"
if ! [[ -x "$py" ]] || ! "$py" -c "import flwr, ray, torch, numpy, psutil" 2>/dev/null; then
  echo "== setting up $venv (flwr[simulation], torch, numpy, psutil from PyPI)"
  python3 -m venv "$venv"
  if [[ -n "${FEDLORA_FLOWER_TORCH_FROM:-}" ]]; then
    site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    other="$("$FEDLORA_FLOWER_TORCH_FROM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$other" > "$site/_fedlora_torch_from.pth"
  fi
  "$py" -m pip install --quiet "flwr[simulation]" torch numpy psutil
fi
"$py" -c 'import flwr, ray, torch; print(f"== flwr {flwr.__version__}, ray {ray.__version__}, torch {torch.__version__}")'
"$py" "$here/flower_sim.py" --check
# Context for the memory numbers: what importing this torch build alone costs one process.
"$py" -c 'import psutil, torch; print(f"{psutil.Process().memory_info().rss / 2**20:.0f}")' \
  > "$out/torch-import-rss-mb.txt"

# --- fedlora-sim -----------------------------------------------------------------------------
run_fedlora() {
  if ! [[ -x "$sim" ]]; then
    echo "run.sh: no fedlora-sim at $sim (build it, or set FEDLORA_SIM)" >&2
    exit 1
  fi
  local fraction
  fraction="$("$py" -c "print($per_round / $clients)")"
  echo "== fedlora-sim: $clients clients, $per_round per round, $rounds rounds, $local_steps local steps"
  rm -rf "$out/fedlora"
  "$py" "$here/measure.py" --out "$out/fedlora-measure.json" -- \
    "$sim" --config "$here/fedlora.yaml" --out "$out/fedlora" \
    --set num_clients="$clients" --set coordinator.rounds="$rounds" \
    --set coordinator.round.fraction="$fraction" --set coordinator.round.min_clients="$per_round" \
    --set coordinator.round.max_clients="$per_round" --set coordinator.round.quorum="$per_round" \
    --set coordinator.train.local_steps="$local_steps" > "$out/fedlora.log" 2>&1 \
    || { tail -20 "$out/fedlora.log" >&2; exit 1; }
  grep -E '^[0-9]+ ' "$out/fedlora.log" || true
}

# --- Flower ----------------------------------------------------------------------------------
run_flower() {
  echo "== Flower: $clients clients, $per_round per round, $rounds rounds, $local_steps local steps"
  "$py" "$here/measure.py" --out "$out/flower-measure.json" -- \
    "$py" "$here/flower_sim.py" --clients "$clients" --per-round "$per_round" --rounds "$rounds" \
    --local-steps "$local_steps" --timings-out "$out/flower.json" > "$out/flower.log" 2>&1 \
    || { tail -30 "$out/flower.log" >&2; exit 1; }
  grep '^flower round' "$out/flower.log" || true
}

[[ "$only" == "flower" ]] || run_fedlora
[[ "$only" == "fedlora" ]] || run_flower
[[ -z "$only" ]] || exit 0

# --- Summary ---------------------------------------------------------------------------------
"$py" - "$out" "$clients" "$per_round" "$rounds" <<'EOF'
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
clients, per_round, rounds = sys.argv[2:5]


def steady(seconds: list[float]) -> float:
    """Mean round time without round 1 (which pays Flower's lazy Ray-actor start-up)."""
    return statistics.mean(seconds[1:] if len(seconds) > 1 else seconds)


fedlora_rounds = [json.loads(line) for line in (out / "fedlora/metrics.jsonl").read_text().splitlines()]
fedlora_s = [r["seconds"] for r in fedlora_rounds if r["round"] >= 1]
flower_s = json.loads((out / "flower.json").read_text())["round_seconds"]
fm = json.loads((out / "fedlora-measure.json").read_text())
wm = json.loads((out / "flower-measure.json").read_text())
# fedlora-sim is one process: the kernel's exact peak RSS. Flower: peak of the sampled sum of
# RSS over its whole process tree (driver, Ray services, actors).
fedlora_peak = max(fm["max_single_rss_mb"], fm["peak_rss_sum_mb"])
flower_peak = wm["peak_rss_sum_mb"]
print()
print("details:")
print(f"  fedlora round seconds: {' '.join(f'{s:.1f}' for s in fedlora_s)}")
print(f"  flower  round seconds: {' '.join(f'{s:.1f}' for s in flower_s)}"
      " (round 1 includes starting the Ray actors)")
print(f"  flower peak: RSS sum {flower_peak:.0f} MB over {wm['peak_processes']} processes, "
      f"PSS sum {wm['peak_pss_sum_mb']:.0f} MB; by process: "
      + ", ".join(f"{k} {v:.0f}" for k, v in wm["peak_breakdown_mb"].items()))
print(f"  a bare `import torch` of this build: {float((out / 'torch-import-rss-mb.txt').read_text()):.0f} MB RSS"
      " per Python process (driver and each actor)")
print(f"  s_per_round = mean over rounds 2..{rounds} (round 1 when rounds=1); "
      f"mean over all rounds: fedlora {statistics.mean(fedlora_s):.2f}, "
      f"flower {statistics.mean(flower_s):.2f}")
print()
for name, wall, s, peak in (("flower:", wm["wall_s"], steady(flower_s), flower_peak),
                            ("fedlora:", fm["wall_s"], steady(fedlora_s), fedlora_peak)):
    print(f"{name:<8} clients={clients} per_round={per_round} rounds={rounds} wall_s={wall:.1f} "
          f"s_per_round={s:.2f} peak_mem_mb={peak:.0f}")
print(f"ratio: speed={steady(flower_s) / steady(fedlora_s):.2f}x "
      f"memory={flower_peak / fedlora_peak:.2f}x")
EOF
