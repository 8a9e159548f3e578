#!/usr/bin/env bash
# README command 1: install, then run the main job on the packaged defaults
# (EfficientNet-Lite0 + all-MiniLM-L6-v2 aligned on the seen Fashion-MNIST classes, zero-shot on the unseen).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
clipforge align "$@"
