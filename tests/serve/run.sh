#!/usr/bin/env bash
# Runs the tern serve tests (node --test, real clients over loopback HTTP):
#   tests/serve/run.sh                      every *.test.mjs here
#   tests/serve/run.sh openai.test.mjs ...  these files
# Environment: TERN_EXE (the tern binary; default build/tools/tern/tern), TERN_TEST_DATA
# (tests/data), TMPDIR (scratch; generated models are cached there), SERVE_LOAD_SECONDS (60).
# Exit status: node's; 77 (skipped, for meson) when node is missing or too old, or when every
# test that ran reported itself skipped (no chromium, no prometheus).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if ! command -v node >/dev/null 2>&1; then
  echo "serve tests: node is missing (apt-get install nodejs npm): skipped"
  exit 77
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "serve tests: node $(node --version) is older than 18: skipped"
  exit 77
fi

# npm ci, unless node_modules was installed from this very lockfile (offline runs then work).
# Serialised: meson may start several of these scripts at once.
stamp=node_modules/.tern-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
exec 9>"$here/.npm-ci.lock"
flock 9
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "serve tests: npm is missing and node_modules is not installed from package-lock.json (apt-get install npm)" >&2
    exit 1
  fi
  echo "serve tests: npm ci" >&2
  if ! npm ci --no-audit --no-fund --loglevel=error >&2; then
    echo "serve tests: npm ci failed" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
flock -u 9

export TMPDIR=${TMPDIR:-/tmp}
mkdir -p "$TMPDIR"
if [ $# -eq 0 ]; then set -- *.test.mjs; fi
tap=$(mktemp "$TMPDIR/tern-serve-tap.XXXXXX")
trap 'rm -f "$tap"' EXIT
# Human-readable progress on stdout, TAP into a file for the counts.
node --test --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap" "$@"
rc=$?
count() { sed -n "s/^# $1 \([0-9]*\)$/\1/p" "$tap" | tail -1; }
pass=$(count pass); skipped=$(count skipped); fail=$(count fail)
echo "${pass:-0} passed, ${fail:-0} failed, ${skipped:-0} skipped"
if [ "$rc" -eq 0 ] && [ "${pass:-0}" -eq 0 ] && [ "${skipped:-0}" -gt 0 ]; then exit 77; fi
exit "$rc"
