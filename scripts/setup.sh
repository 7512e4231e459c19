#!/usr/bin/env bash
# setup.sh — installs the Debian 12 packages fedlora builds against. Idempotent:
# packages already present are left alone, and apt is not touched when nothing is missing.
#
# Usage: scripts/setup.sh            (as root, or a user with sudo)
#        FEDLORA_SKIP_SETUP=1 ...    skip entirely (for machines managed by other means)
set -euo pipefail

if [[ "${FEDLORA_SKIP_SETUP:-0}" == "1" ]]; then
  exit 0
fi

PACKAGES=(
  # toolchain
  g++ cmake ninja-build ccache pkg-config
  # libraries
  libtorch-dev libopenblas0-openmp
  libzmq3-dev cppzmq-dev libsodium-dev
  capnproto libcapnp-dev
  libssl-dev libyaml-cpp-dev
  nlohmann-json3-dev libspdlog-dev libcli11-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev
  # tests: the Prometheus text parser the ops endpoint is checked against, systemd-analyze for
  # the units, a browser for the HTML report
  python3-prometheus-client systemd chromium fonts-liberation
  # tokenizers (regex pre-tokenizers, Unicode normalisation, SentencePiece models) and gzip data
  libpcre2-dev libutf8proc-dev libsentencepiece-dev zlib1g-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=""
if [[ "$(id -u)" != "0" ]] && command -v sudo >/dev/null; then SUDO="sudo"; fi

if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "$(id -u)" != "0" && -z "$SUDO" ]]; then
    echo "setup.sh: missing packages: ${missing[*]}; install them as root (no sudo here)" >&2
    exit 1
  fi
  echo "setup.sh: installing ${#missing[@]} package(s): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's LibTorch multiplies through libblas.so.3. The reference BLAS is ~30x slower than
# OpenBLAS, and the pthread flavour oversubscribes cores with LibTorch's OpenMP pool: point the
# alternatives at the OpenMP flavour whenever it is installed.
arch="$(gcc -print-multiarch 2>/dev/null || true)"
arch="${arch:-x86_64-linux-gnu}"
for lib in libblas.so.3 liblapack.so.3; do
  target="/usr/lib/${arch}/openblas-openmp/${lib}"
  name="${lib}-${arch}"
  if [[ -e "$target" ]] && ! update-alternatives --query "$name" 2>/dev/null | grep -q "^Value: ${target}$"; then
    if [[ "$(id -u)" == "0" || -n "$SUDO" ]]; then
      $SUDO update-alternatives --set "$name" "$target" >/dev/null
    else
      echo "setup.sh: warning: ${name} does not point at OpenBLAS (OpenMP); training will be slow" >&2
    fi
  fi
done
