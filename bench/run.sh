#!/usr/bin/env bash
# Side-by-side benchmark: tessera (build/bench_step) and PyTorch (bench/torch_bench.py, Debian's
# python3-torch) on the reference workloads of BENCHMARKS.md, same machine, same thread count, run
# alternately REPS times; prints the median images/s of each and the ratio.
# usage: bench/run.sh [THREADS=2] [SECONDS=10] [REPS=3] [WORKLOADS="vit-s-28:probe vit-s-28:frozen ..."]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
SECONDS_PER=${2:-10}
REPS=${3:-3}
WORKLOADS=${4:-"vit-s-28:probe vit-s-28:frozen vit-s-28:full vit-b16:frozen vit-b16:full"}
BIN=${BENCH_BIN:-build/bench_step}
[ -x "$BIN" ] || { echo "bench: $BIN not built (cmake --build build)"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
printf "%-10s %-7s %7s | %12s %12s %7s | %9s %9s\n" workload mode threads "tessera i/s" "torch i/s" ratio "rss MB" "torch MB"
for wm in $WORKLOADS; do
  w=${wm%%:*}; m=${wm##*:}
  ts=(); ps=(); tr=0; pr=0
  for ((i = 0; i < REPS; i++)); do
    out=$("$BIN" "$w" "$THREADS" "$m" "$SECONDS_PER")
    ts+=("$(echo "$out" | field img_per_s)"); tr=$(echo "$out" | field peak_rss_mb)
    out=$(/usr/bin/python3 bench/torch_bench.py "$w" "$THREADS" "$m" "$SECONDS_PER")
    ps+=("$(echo "$out" | field img_per_s)"); pr=$(echo "$out" | field peak_rss_mb)
  done
  t=$(printf "%s\n" "${ts[@]}" | median); p=$(printf "%s\n" "${ps[@]}" | median)
  printf "%-10s %-7s %7s | %12.2f %12.2f %6.2fx | %9.0f %9.0f\n" "$w" "$m" "$THREADS" "$t" "$p" \
    "$(echo "$t $p" | awk '{print $1/$2}')" "$tr" "$pr"
done
