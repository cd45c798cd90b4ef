#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang with ASan + UBSan, in build-fuzz/) and fuzzes each for a
# bounded time from its committed seed corpus. Usage: scripts/fuzz.sh [SECONDS] [TARGET ...]
#   SECONDS  per target (default 60); TARGET: safetensors config hf_config adapter_desc dataset_nc suite_nc
#            journal image (default: all)
# Prints one line per target (executions, coverage edges, features, corpus size) and exits non-zero if any
# target crashed, leaked, hung or ran out of memory; the input that did it is kept (path printed): add it to
# tests/fuzz/regressions/<target>/ (replayed by the ctest fuzz_replay_<target> of every build) and fix the
# parser. Needs clang-14 and libclang-rt-14-dev (scripts/setup.sh). Why libFuzzer and not AFL++: the targets
# are in-process parsers of small files, libFuzzer ships with Debian's clang (no extra toolchain), runs each
# input in-process thousands of times a second with ASan/UBSan, and its harnesses double as plain replay
# programs under gcc (tests/fuzz/replay_main.c), so every crash found becomes a test of every build.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(safetensors config hf_config adapter_desc dataset_nc suite_nc journal image)
BUILD=build-fuzz
mkdir -p "$BUILD"
CC=${FUZZ_CC:-clang} cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTESSERA_FUZZ=ON > "$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target "${TARGETS[@]/#/fuzz_}" > "$BUILD/build.log" 2>&1 ||
  { tail -40 "$BUILD/build.log"; exit 1; }
fail=0
for t in "${TARGETS[@]}"; do
  work=$(mktemp -d /tmp/tsr_fuzz_$t.XXXXXX)
  if tests/fuzz/run_fuzz.sh "$BUILD/tests/fuzz/fuzz_$t" "tests/fuzz/corpus/$t" "$SECS" "$work" > "$work/summary" 2>&1; then
    st=ok
  else
    st=CRASH
    fail=1
  fi
  execs=$(grep -o 'number_of_executed_units: [0-9]*' "$work/log.txt" | grep -o '[0-9]*$' || echo ?)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "$work/log.txt" | tail -1 || echo "cov: ?")
  echo "fuzz_$t: $st, $execs executions in ${SECS} s, $cov"
  if [ $st = ok ]; then rm -rf "$work"; else
    ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* 2>/dev/null | sed 's/^/  input: /' || true
    grep -E "ERROR|SUMMARY|^ +#[0-9]+ " "$work/log.txt" | head -12 | sed 's/^/  | /' || true
  fi
done
exit $fail
