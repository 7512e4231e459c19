#!/usr/bin/env bash
# bench-client-step.sh — one fedlora client LoRA training step (bench_client_step) against the
# same step in PyTorch eager + PEFT (bench/peers/client_step_peft.py), same shapes, threads and
# device, in one run; prints ratio = peft ms/step / fedlora ms/step (> 1: fedlora is faster).
# Not part of CI: the first run installs torch, transformers and peft from PyPI into a venv.
#
#   scripts/bench-client-step.sh [MODEL ...] [--batch B] [--seq T] [--rank R] [--threads P]
#                                [--steps N] [--warmup W] [--repeats K] [--device cpu|cuda]
#                                [--peak-tflops F] [--attn sdpa|eager]
# MODEL: stories260k (default), small (~42M, random weights), 0.5b (~517M, random weights).
# Without --batch/--seq/--steps/... each model uses the sizes in the table below (chosen so a
# 2-core CPU finishes in minutes); flags given apply to every model.
#
# Environment:
#   BUILD_DIR            fedlora build directory (default build-bench; configured like
#                        scripts/build.sh when it has no CMakeCache.txt). For --device cuda it
#                        must be built against a CUDA LibTorch (docs/gpu.md).
#   FEDLORA_BENCH_VENV   the venv (default build-venv, ignored by git)
#   TORCH_INDEX_URL      where pip gets torch (default https://download.pytorch.org/whl/cpu for
#                        --device cpu; PyPI when unreachable, and always for --device cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

models=() device=cpu extra=() peak="" attn=sdpa
declare -A given=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    stories260k|small|0.5b) models+=("$1"); shift ;;
    --batch|--seq|--rank|--threads|--steps|--warmup|--repeats) given[$1]="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --peak-tflops) peak="$2"; shift 2 ;;
    --attn) attn="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench-client-step.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
  esac
done
[[ ${#models[@]} -gt 0 ]] || models=(stories260k)
# MFU needs the device's peak; 989 TFLOP/s is bf16 dense on an H100/H200 SXM.
if [[ -z "$peak" && "$device" == cuda* ]]; then peak=989; fi

# Per-model defaults: batch seq steps warmup repeats.
declare -A defaults=(
  [stories260k]="8 256 10 2 3"
  [small]="8 256 3 1 2"
  [0.5b]="1 128 3 1 2"
)

# --- fedlora ---------------------------------------------------------------------------------
BUILD_DIR="${BUILD_DIR:-build-bench}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}" CCACHE_BASEDIR="${CCACHE_BASEDIR:-$repo}"
export CCACHE_NOHASHDIR=1
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >/dev/null
fi
cmake --build "$BUILD_DIR" --target bench_client_step -j "$(nproc)" >/dev/null
bench="$BUILD_DIR/bench/bench_client_step"

# --- PyTorch + PEFT --------------------------------------------------------------------------
venv="${FEDLORA_BENCH_VENV:-$repo/build-venv}"
py="$venv/bin/python"
if ! [[ -x "$py" ]] || ! "$py" -c "import torch, transformers, peft" 2>/dev/null; then
  echo "== setting up $venv (torch, transformers, peft)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
  if [[ "$device" == cuda* ]] || ! "$venv/bin/pip" install -q torch --index-url "$index"; then
    echo "== torch from PyPI (the CUDA-enabled wheel; it also runs on the CPU)"
    "$venv/bin/pip" install -q torch
  fi
  "$venv/bin/pip" install -q transformers peft
fi

echo "== machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
ms_of() { sed -n 's/.* ms_per_step=\([0-9.]*\).*/\1/p'; }
for model in "${models[@]}"; do
  read -r batch seq steps warmup repeats <<<"${defaults[$model]}"
  args=(--model "$model" --batch "${given[--batch]:-$batch}" --seq "${given[--seq]:-$seq}"
        --rank "${given[--rank]:-8}" --threads "${given[--threads]:-$(nproc)}"
        --steps "${given[--steps]:-$steps}" --warmup "${given[--warmup]:-$warmup}"
        --repeats "${given[--repeats]:-$repeats}" --device "$device")
  if [[ -n "$peak" ]]; then args+=(--peak-tflops "$peak"); fi
  fedlora_line="$("$bench" "${args[@]}" --assets "$repo/assets")"
  echo "$fedlora_line"
  peft_line="$(PYTHONWARNINGS=ignore "$py" bench/peers/client_step_peft.py "${args[@]}" \
               --attn "$attn" --assets "$repo/assets")"
  echo "$peft_line"
  fedlora_ms="$(ms_of <<<"$fedlora_line")" peft_ms="$(ms_of <<<"$peft_line")"
  awk -v m="$model" -v d="$device" -v f="$fedlora_ms" -v p="$peft_ms" \
    'BEGIN { printf "client_step model=%s device=%s fedlora_ms=%s peft_ms=%s ratio=%.2f\n", m, d, f, p, p / f }'
done
