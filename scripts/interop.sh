#!/usr/bin/env bash
# interop.sh — checks fedlora against transformers, PEFT and tokenizers (issue: real models).
#
# Installs torch, transformers, peft, safetensors and tokenizers from PyPI into a cached
# virtualenv (~/.cache/fedlora-interop; FEDLORA_INTEROP_VENV overrides), builds fedlora, then runs
# scripts/interop/check.py: random Llama and Qwen2 checkpoints in HF format with real
# tokenizer.json files, compared on logits, token ids, exported and imported PEFT adapters and
# a merged model. Not part of CI (the download is ~3 GB); run it by hand:
#   ./scripts/interop.sh [--work DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${FEDLORA_INTEROP_VENV:-$HOME/.cache/fedlora-interop}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import torch, transformers, peft, safetensors, tokenizers" 2>/dev/null; then
  echo "interop.sh: installing torch, transformers, peft, safetensors, tokenizers into $VENV"
  "$VENV/bin/pip" install -q torch transformers peft safetensors tokenizers
fi

./scripts/setup.sh
./scripts/build.sh --target fedlora-client fedlora-sim >/dev/null
BUILD_DIR="${BUILD_DIR:-build}"
mkdir -p "$BUILD_DIR/interop-bin"
ln -sf "$PWD/$BUILD_DIR/client/fedlora-client" "$PWD/$BUILD_DIR/sim/fedlora-sim" "$BUILD_DIR/interop-bin/"
exec "$VENV/bin/python" scripts/interop/check.py --bin "$BUILD_DIR/interop-bin" \
  --corpus assets/datasets/tinyshakespeare/input.txt "$@"
