#!/usr/bin/env bash
# Mutation testing of the core modules with their fast unit tests (mutmut, one worker, low priority).
# Slow (tens of minutes), so not part of CI's default run. Arguments go to benchmarks/mutation.py:
#   bash scripts/mutation.sh                         every core module -> benchmarks/results/mutation.json
#   bash scripts/mutation.sh --modules losses,heads  a subset (see benchmarks/mutation.py for the names)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
exec nice -n 15 python3 benchmarks/mutation.py "$@"
