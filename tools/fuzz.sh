#!/usr/bin/env bash
# libFuzzer targets (fuzz/fuzz_<name>.cpp) under ASan + UBSan, built with Debian's clang-14.
#   tools/fuzz.sh TARGET SECONDS   fuzz one target (gguf, tokenizer, protocol, openai,
#                                  chat_template) for SECONDS seconds
#   tools/fuzz.sh all SECONDS      each target in turn, SECONDS seconds each
#   tools/fuzz.sh build            only configure + build build-fuzz/
# Each run starts from a copy of the target's seed corpus (fuzz/corpus/TARGET, never modified)
# in build-fuzz/corpus/TARGET; crash / leak / timeout inputs are written to
# build-fuzz/artifacts/TARGET/. Prints one line per target: executions, corpus size, crashes.
# Exit status: non-zero when any target crashed (or failed to build / start); 77 (skipped)
# without clang-14 / libfuzzer-14-dev.
# Needs clang-14 and libfuzzer-14-dev (tools/bootstrap.sh test installs them).
# Env: FUZZ_JOBS (ninja jobs), FUZZ_ARGS (extra libFuzzer flags, e.g. -max_len=65536).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(gguf tokenizer protocol openai chat_template)
usage() { echo "usage: $0 TARGET|all SECONDS  (targets: ${targets[*]}) | $0 build" >&2; exit 2; }
[ $# -ge 1 ] || usage
what=$1
secs=${2:-}
if [ "$what" != build ]; then
  [[ "$secs" =~ ^[0-9]+$ ]] && [ "$secs" -gt 0 ] || usage
  if [ "$what" = all ]; then run=("${targets[@]}")
  else
    case " ${targets[*]} " in *" $what "*) run=("$what") ;; *) usage ;; esac
  fi
fi

if ! command -v clang++-14 >/dev/null ||
   ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a >/dev/null 2>&1; then
  echo "fuzz: needs clang-14 and libfuzzer-14-dev (apt-get install clang-14 libfuzzer-14-dev): skipped" >&2
  exit 77  # meson's "skipped"
fi
b=build-fuzz
if [ ! -f $b/build.ninja ]; then
  cxx=clang++-14 cc=clang-14
  if command -v ccache >/dev/null; then cxx="ccache $cxx" cc="ccache $cc"; fi
  # debugoptimized: -O2 -g, asserts on; ASan + UBSan (UBSan errors abort: they are crashes).
  CXX=$cxx CC=$cc meson setup $b -Dfuzz=true --buildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false -Dcpp_args=-fno-sanitize-recover=all >&2
fi
ninja -C $b ${FUZZ_JOBS:+-j "$FUZZ_JOBS"} >&2
[ "$what" = build ] && exit 0

# Ours first, then the caller's (a later entry wins).
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
failed=0
for t in "${run[@]}"; do
  corpus=$b/corpus/$t art=$b/artifacts/$t
  rm -rf "$corpus" "$art"; mkdir -p "$corpus" "$art"
  cp fuzz/corpus/"$t"/* "$corpus"/
  log=$b/fuzz-$t.log
  set +e
  # -rss_limit_mb: the targets load vocabularies once; 2 GiB is far above what they need.
  "$b/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$art/" ${FUZZ_ARGS:-} "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  size=$(ls "$corpus" | wc -l)
  crashes=$(ls "$art" | grep -c -E '^(crash|leak|timeout|oom)-' || true)
  echo "fuzz $t: ${secs}s, ${execs:-?} executions, corpus $size inputs, $crashes crash(es), exit $rc"
  if [ "$rc" -ne 0 ]; then
    failed=1
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written|abort|terminate|what\(\)' "$log" | head -20 >&2 || true
    echo "fuzz $t: log $log, inputs in $art/" >&2
  fi
done
exit $failed
