#!/usr/bin/env bash
# bench-scale.sh — runs configs/sim/scale-1000.yaml (50 clients a round) with N = 100 and
# N = 1000 virtual clients and checks that peak memory grows by no more than the per-client
# adapter and optimiser bytes per added client. Prints wall time, peak RSS and per-client bytes
# of each run, then the growth per added client against that bound. Not part of CI.
#
#   scripts/bench-scale.sh [--rounds 5] [--out DIR] [--sim build/sim/fedlora-sim]
#
# Exit status 0 when the growth is within the bound, 1 when it is not, 2 on usage errors.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds=5 out="" sim="$repo/build/sim/fedlora-sim"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --sim) sim="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "bench-scale.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$sim" ]] || { echo "bench-scale.sh: no fedlora-sim at $sim (build first)" >&2; exit 2; }
out="${out:-$(mktemp -d /tmp/fedlora-bench-scale.XXXXXX)}"
mkdir -p "$out"

for n in 100 1000; do
  rm -rf "$out/n$n"
  fraction="$(python3 -c "print(50 / $n)")"
  start=$(date +%s.%N)
  "$sim" --config "$repo/configs/sim/scale-1000.yaml" --out "$out/n$n" \
    --set num_clients="$n" --set coordinator.round.fraction="$fraction" \
    --set coordinator.rounds="$rounds" > "$out/n$n.log" 2>&1 \
    || { tail -20 "$out/n$n.log" >&2; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print($end - $start)" > "$out/n$n.wall"
done

python3 - "$out" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
runs = {}
for n in (100, 1000):
    lines = [json.loads(l) for l in (out / f"n{n}/metrics.jsonl").read_text().splitlines()]
    last = lines[-1]["simulation"]
    rounds = [l for l in lines if l["round"] >= 1]
    runs[n] = {
        "wall": float((out / f"n{n}.wall").read_text()),
        "peak": last["peak_rss_mb"],
        "state": last["client_state_bytes_mean"],
        "train": last["train_state_bytes_per_client"],
        "round_s": sum(l["seconds"] for l in rounds) / len(rounds),
        "virtual": last.get("virtual_elapsed_s", 0.0),
        "reported": sum(l["clients_reported"] for l in rounds) / len(rounds),
        "eval": rounds[-1]["eval_loss"],
    }
    r = runs[n]
    print(f"N={n}: wall_s={r['wall']:.1f} s_per_round={r['round_s']:.2f} peak_rss_mb={r['peak']:.0f} "
          f"client_state_bytes={r['state']:.0f} train_state_bytes_per_client={r['train']:.0f} "
          f"reported_per_round={r['reported']:.1f} virtual_s={r['virtual']:.0f} "
          f"final_eval_loss={r['eval']:.4f}")
growth = (runs[1000]["peak"] - runs[100]["peak"]) * 2**20 / 900
bound = runs[1000]["train"]
verdict = "within" if growth <= bound else "ABOVE"
print(f"peak growth per added client: {growth / 1024:.0f} KiB; adapter + gradient + AdamW per "
      f"client: {bound / 1024:.0f} KiB -> {verdict} the bound")
sys.exit(0 if growth <= bound else 1)
EOF
