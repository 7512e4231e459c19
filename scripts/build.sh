#!/usr/bin/env bash
# build.sh — configures and builds fedlora (Release, Ninja, ccache) into $BUILD_DIR (default
# build/). Extra arguments are passed to `cmake --build` (e.g. --target fedlora-sim).
#   CMAKE_PREFIX_PATH=/path/to/libtorch ./scripts/build.sh     # another LibTorch (e.g. CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR="${BUILD_DIR:-build}"
BUILD_TYPE="${BUILD_TYPE:-Release}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
export CCACHE_NOHASHDIR=1
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"

if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" ${CMAKE_ARGS:-}
fi
# Each LibTorch translation unit takes ~1.5 GB to compile; one job per core fits in 24 GiB.
cmake --build "$BUILD_DIR" -j "$(nproc)" "$@"
