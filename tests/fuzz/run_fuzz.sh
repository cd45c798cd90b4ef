#!/usr/bin/env bash
# One bounded libFuzzer run: run_fuzz.sh FUZZER CORPUS_DIR SECONDS [WORK_DIR]
# FUZZ_RUNS=N (environment): stop after N executions instead (SECONDS still bounds it); a campaign.
# FUZZ_ARGS="...": more libFuzzer flags (e.g. "-jobs=16 -workers=16" on a cluster node), or other values of the
#   defaults below (e.g. "-rss_limit_mb=4096": the netCDF targets grow by about 2.5 KB per input, in HDF5).
# Fuzzes from a copy of the committed seed corpus (the source tree is not written), for SECONDS of wall time,
# under the fuzzer's own limits (2 GiB RSS, 10 s per input); prints the executions and coverage at the end.
# A crash leaves crash-* / leak-* / timeout-* files in WORK_DIR (default: a temporary directory, kept then)
# and exits non-zero: copy the input into tests/fuzz/regressions/<target>/ and fix the parser.
set -euo pipefail
fz=$(realpath "$1") corpus=$(realpath "$2") secs=$3
work=${4:-$(mktemp -d /tmp/tsr_fuzz_run.XXXXXX)}
mkdir -p "$work/corpus"
cp -r "$corpus"/. "$work/corpus/" 2>/dev/null || true
cd "$work"
# HDF5 and Open MPI keep allocations for the process's life: leaks are detected in tessera's unit tests instead
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:symbolize=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
set +e
runs=()
[ -n "${FUZZ_RUNS:-}" ] && runs=(-runs="$FUZZ_RUNS")
# shellcheck disable=SC2206
[ -n "${FUZZ_ARGS:-}" ] && runs+=(${FUZZ_ARGS})
# FUZZ_ARGS last: libFuzzer takes the last value of a flag given twice, so FUZZ_ARGS can change these defaults
"$fz" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$work/" "${runs[@]}" corpus > log.txt 2>&1
rc=$?
set -e
grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE|cov:" log.txt | tail -3
if [ $rc -ne 0 ]; then
  tail -40 log.txt
  echo "run_fuzz: $fz failed (exit $rc); artifacts in $work" >&2
  exit $rc
fi
[ -z "${4:-}" ] && rm -rf "$work"
exit 0
