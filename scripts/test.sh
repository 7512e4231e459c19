#!/usr/bin/env bash
# test.sh — installs dependencies, builds, and runs every test through ctest.
#   ./scripts/test.sh                 # everything (unit + integration)
#   ./scripts/test.sh -L unit         # extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
ctest --test-dir "$BUILD_DIR" -j "$(nproc)" --output-on-failure --timeout 900 "$@"
