#!/usr/bin/env bash
# load.sh — one real fedlora-coordinator process (CURVE, tcp loopback) against N real client
# sessions of bench/load_driver.cc for R rounds of small uploads; prints the driver's table
# (coordinator peak RSS, round latency, messages/s, acknowledged vs committed uploads) and the
# coordinator's exit status. Not part of CI.
#
#   scripts/load.sh [--clients 1000] [--rounds 10] [--threads 4] [--out DIR] [--keep]
#                   [--layers 2] [--dim 64] [--rank 4]   (the declared model and adapter)
#                   [--set key=value ...]        (coordinator config overrides)
#
# Every round selects all N sessions and waits for all of them (round.min_clients = quorum = N);
# each upload is a rank-4 adapter of 2 layers x {q_proj, v_proj} at 64 x 64 (8 KiB) unless
# --layers/--dim/--rank say otherwise (32 x 2048 at rank 16: 16.8 MB per upload, the ingest
# measurement of docs/benchmarks.md). Keys: the
# coordinator's from `fedlora-coordinator keygen`, the N clients' from `fedlora-load-driver
# enroll`, which also writes the authorized_clients file. Heartbeats default to the coordinator's
# defaults (1000 ms x 5); the coordinator measures silence only up to when it last caught up with
# its queue, so persisting a round's 1000 uploads no longer drops live sessions (docs/
# reliability.md, "Load"). Builds fedlora-coordinator and
# fedlora-load-driver in $BUILD_DIR (default build/; SKIP_BUILD=1 uses what is there).
# Exit status: the driver's (0 when every session finished and no acknowledged upload is
# missing), or 1 when the coordinator failed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
clients=1000 rounds=10 threads=4 out="" keep=0 sets=() layers=2 dim=64 rank=4
while [[ $# -gt 0 ]]; do
  case "$1" in
    --clients) clients="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --layers) layers="$2"; shift 2 ;;
    --dim) dim="$2"; shift 2 ;;
    --rank) rank="$2"; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "load.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

build="${BUILD_DIR:-build}"
[[ "$build" = /* ]] || build="$repo/$build"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" ${CMAKE_ARGS:-}
  fi
  cmake --build "$build" -j "$(nproc)" --target fedlora-coordinator fedlora-load-driver
fi
coordinator_bin="$build/server/fedlora-coordinator"
driver_bin="$build/bench/fedlora-load-driver"

out="${out:-$(mktemp -d /tmp/fedlora-load.XXXXXX)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
coordinator_pid=""
cleanup() {
  local status=$?
  [[ -n "$coordinator_pid" ]] && kill -KILL "$coordinator_pid" 2>/dev/null || true
  [[ -n "$coordinator_pid" ]] && wait "$coordinator_pid" 2>/dev/null || true
  if (( status == 0 && keep == 0 )); then rm -rf "$out"; else echo "load.sh: files in $out"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Each session is a TCP connection (a file descriptor) on both sides.
ulimit -n "$(ulimit -Hn)"
rm -rf "$out/keys" "$out/state"
"$coordinator_bin" keygen --dir "$out/keys" > "$out/keygen.log"
"$driver_bin" enroll --clients "$clients" --dir "$out/keys"

digest="$(printf 'a%.0s' $(seq 64))"
cat > "$out/coordinator.yaml" <<EOF
state_dir: state
rounds: $rounds
seed: 7
base_model_sha256: $digest
log_level: info
transport: {bind: 'tcp://127.0.0.1:*', heartbeat_interval_ms: 1000, heartbeat_liveness: 5}
security: {mode: curve, secret_key_file: keys/coordinator.key_secret,
           authorized_clients: keys/authorized_clients}
round: {min_clients: $clients, quorum: $clients, timeout_ms: 300000}
eval: {enabled: true, initial: true, max_batches: 1, timeout_ms: 300000}
lora: {rank: $rank, alpha: $((2 * rank)), targets: [q_proj, v_proj]}
train: {local_steps: 1, batch_size: 4, seq_len: 32}
EOF

"$coordinator_bin" --config "$out/coordinator.yaml" "${sets[@]}" > "$out/coordinator.log" 2>&1 &
coordinator_pid=$!
endpoint=""
for (( t = 0; t < 300; t++ )); do
  endpoint="$(grep -o 'coordinator listening on tcp://[0-9.]*:[0-9]*' "$out/coordinator.log" \
              | head -1 | awk '{print $4}' || true)"
  kill -0 "$coordinator_pid" 2>/dev/null || break
  [[ -n "$endpoint" ]] && break
  sleep 0.1
done
[[ -n "$endpoint" ]] || { tail -20 "$out/coordinator.log" >&2; exit 1; }
echo "load.sh: coordinator $coordinator_pid on $endpoint; $clients sessions, $rounds rounds, files in $out"

driver_status=0
"$driver_bin" run --coordinator "$endpoint" --server-key "$out/keys/coordinator.key" \
  --keys "$out/keys" --clients "$clients" --threads "$threads" --pid "$coordinator_pid" \
  --state-dir "$out/state" --digest "$digest" --layers "$layers" --dim "$dim" || driver_status=$?

coordinator_status=0
for (( t = 0; t < 300; t++ )); do kill -0 "$coordinator_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$coordinator_pid" 2>/dev/null; then
  echo "load.sh: the coordinator is still running 30 s after the driver finished" >&2
  coordinator_status=1
else
  wait "$coordinator_pid" || coordinator_status=$?
fi
coordinator_pid=""
echo "load.sh: coordinator exit status $coordinator_status; driver exit status $driver_status"
echo "load.sh: coordinator log: $(grep -c '\[warning\]' "$out/coordinator.log" || true) warning line(s), $(grep -c 'is gone' "$out/coordinator.log" || true) 'is gone'"
(( coordinator_status == 0 )) || exit 1
exit "$driver_status"
