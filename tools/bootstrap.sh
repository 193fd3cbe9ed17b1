#!/usr/bin/env bash
# One-step set-up for tern on Debian 12: installs what is missing (apt-get), builds a release
# build in ./build, then runs the job asked for.
#   tools/bootstrap.sh demo   generate text on the embedded default and print tokens/s
#   tools/bootstrap.sh test   run the whole test suite (what CI runs)
#   tools/bootstrap.sh build  only install + build
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:-demo}

packages=(g++ meson ninja-build pkg-config capnproto libcapnp-dev libhwloc-dev hwloc
          prometheus-cpp-dev doctest-dev libasio-dev nlohmann-json3-dev libcli11-dev
          iproute2 curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [ ! -f build/build.ninja ]; then
  meson setup build --buildtype=release >&2
fi
ninja -C build >&2

case "$job" in
  build) ;;
  demo)
    # A real trained model (float weights) tells a story; then a synthetic ternary model of
    # bitnet.cpp's 125M layout shows ternary throughput. Both on the embedded default.
    ./build/tools/tern/tern run -m tests/data/stories260K/stories260K.gguf \
      -p "Once upon a time" -n 128 --temp 0.8 --seed 42
    mkdir -p models
    [ -f models/125M.gguf ] || ./build/tools/tern/tern gen --layout 125M -o models/125M.gguf
    ./build/tools/tern/tern run -m models/125M.gguf -p "The capital of France is" -n 32 --seed 42
    ;;
  test)
    set +e
    meson test -C build --print-errorlogs --num-processes 2
    rc=$?
    set -e
    # A plain closing line with the counts, readable by any CI.
    python3 - build/meson-logs/testlog.json <<'PY' || true
import json, sys
ok = bad = skip = 0
for line in open(sys.argv[1]):
    r = json.loads(line).get("result", "")
    if r in ("OK", "EXPECTEDFAIL"): ok += 1
    elif r == "SKIP": skip += 1
    else: bad += 1
print(f"{ok} passed, {bad} failed, {skip} skipped")
PY
    exit $rc
    ;;
  *) echo "usage: $0 demo|test|build" >&2; exit 2 ;;
esac
