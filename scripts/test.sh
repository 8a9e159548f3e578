#!/usr/bin/env bash
# README command 2 (and CI): install with the test extras, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
export HF_HUB_OFFLINE=1
python3 -m pytest "$@"
