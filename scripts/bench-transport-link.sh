#!/usr/bin/env bash
# bench-transport-link.sh — bench/transport's raw path over a rate-limited link instead of bare
# loopback: a private network namespace whose loopback device is shaped with tc (token bucket).
# Shows what CURVE costs where the network, not memory, is the limit.
#
# Usage: scripts/bench-transport-link.sh [RATE ...]      (as root; default: 1gbit 10gbit)
# Needs iproute2 (ip, tc) and a build (scripts/build.sh). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${BUILD_DIR:-build}/bench/bench_transport"
[[ -x "$BENCH" ]] || { echo "bench-transport-link.sh: build first ($BENCH missing)" >&2; exit 1; }
[[ "$(id -u)" == "0" ]] || { echo "bench-transport-link.sh: needs root (ip netns, tc)" >&2; exit 1; }

rates=("$@")
[[ ${#rates[@]} -gt 0 ]] || rates=(1gbit 10gbit)
ns="fedlora-bench-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns exec "$ns" ip link set lo up
for rate in "${rates[@]}"; do
  ip netns exec "$ns" tc qdisc replace dev lo root tbf rate "$rate" burst 8mb latency 100ms
  echo "# link: $rate (tc tbf on a namespace's loopback)"
  ip netns exec "$ns" "$BENCH" --paths raw --sizes 1024,16384 --repeats 2 | grep '^path='
done
