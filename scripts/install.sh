#!/usr/bin/env bash
# Install clipforge and its packaged data. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

# Fashion-MNIST comes from Debian (dataset-fashion-mnist); without root, clipforge downloads it instead.
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "warning: could not install dataset-fashion-mnist; clipforge will try to download Fashion-MNIST"
  else
    echo "note: run 'sudo apt-get install dataset-fashion-mnist' for the packaged Fashion-MNIST"
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
