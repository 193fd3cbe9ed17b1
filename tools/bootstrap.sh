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
          libboost1.81-dev iproute2 curl)
# test also cross-compiles the kernels for AArch64 and runs their tests under qemu-user, and
# drives `tern serve` with real clients (tests/serve: node, headless chromium, prometheus), and
# runs the libFuzzer targets briefly (tools/fuzz.sh: clang-14, libfuzzer-14-dev).
if [ "$job" = test ]; then
  packages+=(g++-aarch64-linux-gnu qemu-user nodejs npm chromium prometheus clang-14 libfuzzer-14-dev)
fi
missing=()
for p in "${packages[@]}"; do
  # A node from elsewhere (e.g. a nodejs package that bundles npm) counts: installing Debian's
  # npm beside it would conflict.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
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
    # The kernels again, cross-compiled for AArch64 (NEON rows) and run under qemu-user: once on
    # an emulated CPU with every feature, once on an ARMv8.0-A core without dotprod.
    rm -f build-arm/meson-logs/testlog.json
    if [ ! -f build-arm/build.ninja ]; then
      meson setup build-arm --cross-file tools/cross/aarch64-linux-gnu.ini -Dkernels_only=true >&2
    fi
    ninja -C build-arm >&2 && meson test -C build-arm --print-errorlogs --num-processes 2
    arm_rc=$?
    set -e
    # A plain closing line with the counts over both suites, readable by any CI; a suite that
    # did not get to run (set-up or build failure) counts as one failure.
    python3 - build/meson-logs/testlog.json build-arm/meson-logs/testlog.json <<'PY' || true
import json, os, sys
ok = bad = skip = 0
for path in sys.argv[1:]:
    if not os.path.exists(path):
        print(f"{path}: missing (the suite did not run)", file=sys.stderr)
        bad += 1
        continue
    for line in open(path):
        r = json.loads(line).get("result", "")
        if r in ("OK", "EXPECTEDFAIL"): ok += 1
        elif r == "SKIP": skip += 1
        else: bad += 1
print(f"{ok} passed, {bad} failed, {skip} skipped")
PY
    if [ "$rc" -ne 0 ]; then exit "$rc"; fi
    exit "$arm_rc"
    ;;
  *) echo "usage: $0 demo|test|build" >&2; exit 2 ;;
esac
