#!/usr/bin/env bash
# chaos.sh — a real federation (one fedlora-coordinator, several fedlora-client processes, CURVE
# over tcp loopback, the stories260K model) whose coordinator and clients are killed with SIGKILL
# at random points and restarted (the coordinator from its state_dir, on the same endpoint).
# Checks that the run completes, that every round is committed exactly once, that every
# checkpoint verifies (`fedlora-coordinator verify`), and that the final global adapter is
# bit-identical (SHA-256 of global.safetensors) to an uninterrupted run of the same configuration.
# ctest runs a small setting (ChaosTest.KilledCoordinatorAndClientsStillGiveTheBitIdenticalAdapter,
# labels slow and integration, ~15 s; `./scripts/test.sh -LE slow` skips it); larger ones are run
# by hand.
#
#   scripts/chaos.sh [--seed S] [--kills N] [--rounds R] [--clients C] [--out DIR] [--keep]
#
# Every round waits for all C clients (round.min_clients = quorum = C), so the result does not
# depend on which client was killed when: a killed client's task is re-sent when it reconnects (or
# re-issued by a retry), and its training is a pure function of the task (seed, client name and
# round). Kill k comes once about k/N of the rounds are committed, plus a random part of a round;
# the victim is the coordinator or one client, at random. Randomness comes from bash's RANDOM
# seeded with --seed (default: from the clock; printed). Builds fedlora-coordinator and
# fedlora-client in $BUILD_DIR (default build/; SKIP_BUILD=1 uses what is there, as ctest does).
# Exit status: 0 when every check passes, 1 when one fails, 2 on usage errors.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seed="" kills=6 rounds=4 clients=3 out="" keep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --kills) kills="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in kills rounds clients; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "chaos.sh: --$v wants a number" >&2; exit 2; }
done
(( clients >= 1 && rounds >= 1 )) || { echo "chaos.sh: --clients and --rounds >= 1" >&2; exit 2; }
seed="${seed:-$(( $(date +%s%N) % 1000000 ))}"
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "chaos.sh: --seed wants a number" >&2; exit 2; }
echo "chaos.sh: seed $seed (rerun with --seed $seed), $kills kills, $rounds rounds, $clients clients"

build="${BUILD_DIR:-build}"
[[ "$build" = /* ]] || build="$repo/$build"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" ${CMAKE_ARGS:-}
  fi
  cmake --build "$build" -j "$(nproc)" --target fedlora-coordinator fedlora-client
fi
coordinator_bin="$build/server/fedlora-coordinator"
client_bin="$build/client/fedlora-client"

out="${out:-$(mktemp -d /tmp/fedlora-chaos.XXXXXX)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
declare -A pid=()  # "coordinator", "client-<i>" -> pid of the live process
cleanup() {
  local status=$?
  for name in "${!pid[@]}"; do kill -KILL "${pid[$name]}" 2>/dev/null || true; done
  for name in "${!pid[@]}"; do wait "${pid[$name]}" 2>/dev/null || true; done
  if (( status == 0 && keep == 0 )); then rm -rf "$out"; else echo "chaos.sh: files in $out"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- keys and configuration (README.md "Two machines, with keys") ----------------------------
rm -rf "$out/keys" "$out/reference" "$out/chaos"
"$coordinator_bin" keygen --dir "$out/keys" > "$out/keygen.log"
coordinator_key="$(sed -n 's/.*public key: *\([^ ]*\).*/\1/p' "$out/keygen.log" | head -1)"
[[ ${#coordinator_key} -eq 40 ]] || { cat "$out/keygen.log" >&2; exit 1; }
for (( i = 0; i < clients; i++ )); do
  "$client_bin" keygen --name "client-$i" --dir "$out/keys" > /dev/null
  "$coordinator_bin" clients add "client-$i" --key-file "$out/keys/client-$i.key" \
    --file "$out/keys/authorized_clients" > /dev/null
done

# The small, fast federation of tests/integration/process_test.cc, with keys; every round
# waits for every client.
cat > "$out/coordinator.yaml" <<EOF
rounds: $rounds
seed: 7
log_level: info
transport: {bind: 'tcp://127.0.0.1:*', heartbeat_interval_ms: 200, heartbeat_liveness: 5}
security: {mode: curve, secret_key_file: keys/coordinator.key_secret,
           authorized_clients: keys/authorized_clients}
round: {min_clients: $clients, quorum: $clients, timeout_ms: 120000, retry_delay_ms: 500}
eval: {enabled: true, initial: true, max_batches: 2, timeout_ms: 60000}
lora: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}
train: {learning_rate: 0.003, local_steps: 3, batch_size: 4, seq_len: 32}
EOF
cat > "$out/client.yaml" <<EOF
model: {path: $repo/assets/models/stories260K/stories260K.bin,
        tokenizer: $repo/assets/models/stories260K/tok512.bin}
data: {path: $repo/assets/datasets/tinyshakespeare/input.txt, partition: speaker,
       num_partitions: $clients, max_eval_windows: 8}
threads: 1
# A client restarted after the last round (its coordinator has left) gives up within ~15 s.
transport: {reconnect_min_ms: 100, reconnect_max_ms: 500, hello_timeout_ms: 1000,
            max_connect_attempts: 10}
security:
  coordinator_public_key: "$coordinator_key"
  secret_key_file: "$out/keys/{name}.key_secret"
EOF

# ---- processes -------------------------------------------------------------------------------
run_dir="" endpoint=""
start_coordinator() {  # [transport.bind override]
  local sets=(--set "state_dir=$run_dir/state")
  [[ -n "${1:-}" ]] && sets+=(--set "transport.bind=$1")
  "$coordinator_bin" --config "$out/coordinator.yaml" "${sets[@]}" >> "$run_dir/coordinator.log" 2>&1 &
  pid[coordinator]=$!
  # Wait for this start's "listening" line (the log accumulates over restarts).
  local starts; starts=$(grep -c "coordinator listening on" "$run_dir/coordinator.log" || true)
  for (( t = 0; t < 600; t++ )); do
    local now; now=$(grep -c "coordinator listening on" "$run_dir/coordinator.log" || true)
    if (( now > starts )) || { [[ -z "${1:-}" ]] && (( now > 0 )); }; then break; fi
    kill -0 "${pid[coordinator]}" 2>/dev/null || { tail -20 "$run_dir/coordinator.log" >&2; return 1; }
    sleep 0.1
  done
  endpoint="$(grep -o 'coordinator listening on tcp://[0-9.]*:[0-9]*' "$run_dir/coordinator.log" \
              | tail -1 | awk '{print $4}')"
  [[ -n "$endpoint" ]] || { tail -20 "$run_dir/coordinator.log" >&2; return 1; }
}
start_client() {  # index
  "$client_bin" --config "$out/client.yaml" --set "name=client-$1" \
    --set "data.partition_index=$1" --set "coordinator=$endpoint" \
    >> "$run_dir/client-$1.log" 2>&1 &
  pid[client-$1]=$!
}
committed_rounds() {  # lines in metrics.jsonl (one per committed round, 0..R)
  [[ -f "$run_dir/state/metrics.jsonl" ]] && wc -l < "$run_dir/state/metrics.jsonl" || echo 0
}
# Waits (bounded) for every process to exit; fails unless the coordinator exits 0 and each
# client exits 0, or 3 ("coordinator unreachable for transport.max_connect_attempts"): a client
# killed while the last round was being evaluated comes back after the coordinator said Bye and
# left. The run still counts only if every round was committed with every client (check_run).
finish_run() {
  local deadline=$(( SECONDS + 900 )) failed=0 name rc
  late=0
  while (( ${#pid[@]} > 0 && failed == 0 )); do
    if (( SECONDS >= deadline )); then
      echo "chaos.sh: still running after 900 s: ${!pid[*]}" >&2; return 1
    fi
    for name in "${!pid[@]}"; do
      kill -0 "${pid[$name]}" 2>/dev/null && continue
      rc=0; wait "${pid[$name]}" || rc=$?
      unset "pid[$name]"
      if (( rc == 3 )) && [[ "$name" != coordinator ]]; then
        echo "chaos.sh: $name came back after the run ended (exit 3: coordinator gone)"
        late=$(( late + 1 ))
      elif (( rc != 0 )); then
        echo "chaos.sh: $name exited with $rc" >&2; failed=1
      fi
    done
    sleep 0.2
  done
  return $failed
}
# Checks the state directory: every checkpoint verifies, rounds 0..R each recorded exactly once,
# every round aggregated all clients.
check_run() {
  local partial; partial="$(grep -vc "\"clients_reported\":$clients," "$run_dir/state/metrics.jsonl" || true)"
  (( partial == 1 )) || { echo "chaos.sh: a round committed without every client" >&2; return 1; }
  "$coordinator_bin" verify --state-dir "$run_dir/state" > "$run_dir/verify.log" 2>&1 \
    || { echo "chaos.sh: verify failed for $run_dir:" >&2; cat "$run_dir/verify.log" >&2; return 1; }
  local want; want="$(seq 0 "$rounds" | tr '\n' ' ')"
  local got; got="$(sed -n 's/^{"round":\([0-9]*\),.*/\1/p' "$run_dir/state/metrics.jsonl" | tr '\n' ' ')"
  [[ "$got" == "$want" ]] || { echo "chaos.sh: metrics rounds '$got', want '$want'" >&2; return 1; }
}
final_sha() {
  sha256sum "$run_dir/state/checkpoints/$(printf %06d "$rounds")/global.safetensors" | cut -d' ' -f1
}

# ---- the uninterrupted reference ----------------------------------------------------------
run_dir="$out/reference"; mkdir -p "$run_dir"
reference_start=$SECONDS
start_coordinator
for (( i = 0; i < clients; i++ )); do start_client "$i"; done
finish_run || { echo "chaos.sh: the reference run failed (logs in $run_dir)" >&2; exit 1; }
check_run
reference_sha="$(final_sha)"
reference_wall=$(( SECONDS - reference_start ))
echo "chaos.sh: reference run: $rounds rounds in ${reference_wall} s, final adapter $reference_sha"

# ---- the same run, with kills -------------------------------------------------------------
RANDOM=$seed
run_dir="$out/chaos"; mkdir -p "$run_dir"
chaos_start=$SECONDS
start_coordinator
fixed_endpoint="$endpoint"
for (( i = 0; i < clients; i++ )); do start_client "$i"; done
# Kill k waits until about k/kills of the rounds are committed, then a random 0 .. one round's
# time (the reference's mean round, first task to commit) more, so the kills fall at random points
# of every phase (training, uploads, evaluation, commit) across the whole run.
round_ms="$(grep -o '"seconds":[0-9.e+-]*' "$out/reference/state/metrics.jsonl" | tail -n +2 \
            | awk -F: '{ sum += $2; n++ } END { printf "%d", n ? 1000 * sum / n : 1000 }')"
(( round_ms >= 200 )) || round_ms=200
coordinator_kills=0 client_kills=0
for (( k = 1; k <= kills; k++ )); do
  target=$(( (k - 1) * (rounds + 1) / kills ))
  waited=0
  while (( $(committed_rounds) < target && waited < 6000 )); do sleep 0.1; waited=$(( waited + 1 )); done
  sleep "$(awk -v ms=$(( RANDOM % round_ms )) 'BEGIN { printf "%.3f", ms / 1000 }')"
  # Once the last round is committed the coordinator is saying Bye; a client killed now could
  # not come back, so the kills stop there.
  if (( $(committed_rounds) >= rounds + 1 )); then
    echo "chaos.sh: run complete after $(( k - 1 )) kill(s); no more kills"; break
  fi
  victim=$(( RANDOM % (clients + 1) ))  # 0: the coordinator, i: client-(i-1)
  progress="$(committed_rounds) round(s) committed"
  if (( victim == 0 )); then
    kill -KILL "${pid[coordinator]}"; wait "${pid[coordinator]}" 2>/dev/null || true
    echo "chaos.sh: kill $k: coordinator (SIGKILL; $progress); restarting from its state_dir"
    start_coordinator "$fixed_endpoint"
    coordinator_kills=$(( coordinator_kills + 1 ))
  else
    i=$(( victim - 1 ))
    kill -KILL "${pid[client-$i]}"; wait "${pid[client-$i]}" 2>/dev/null || true
    echo "chaos.sh: kill $k: client-$i (SIGKILL; $progress); restarting it"
    start_client "$i"
    client_kills=$(( client_kills + 1 ))
  fi
done
finish_run || { echo "chaos.sh: the chaos run did not complete (logs in $run_dir)" >&2; exit 1; }
check_run
chaos_sha="$(final_sha)"
chaos_wall=$(( SECONDS - chaos_start ))
checkpoints="$(grep -c ': OK ' "$run_dir/verify.log")"
identical=no
[[ "$chaos_sha" == "$reference_sha" ]] && identical=yes

echo
echo "| seed | kills (coordinator + clients) | rounds | clients | wall s (reference / chaos) | checkpoints verified | final sha256 identical |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
echo "| $seed | $(( coordinator_kills + client_kills )) ($coordinator_kills + $client_kills) | $rounds | $clients | $reference_wall / $chaos_wall | $checkpoints of $(( rounds + 1 )) | $identical |"
echo
echo "clients that came back after the end (exit 3): $late"
echo "reference: $reference_sha"
echo "chaos:     $chaos_sha"
[[ "$identical" == yes ]] || { echo "chaos.sh: the final adapters differ" >&2; exit 1; }
echo "chaos.sh: OK"
