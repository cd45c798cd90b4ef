#!/usr/bin/env bash
# Side-by-side benchmark: tessera (build/bench_step) and PyTorch (bench/torch_bench.py, Debian's
# python3-torch) on the reference workloads of BENCHMARKS.md, same machine, same thread count, run
# alternately REPS times; prints the median images/s of each and the ratio, then the routing overhead
# (MHR step time / plain adapter step time) of each program on every workload that has both.
# tessera's mhr-sorted (the batch ordered by task) has no PyTorch twin: it is compared with torch's mhr
# (PyTorch builds the routed weights per example, so the order of the batch does not matter to it).
# Two more columns: tessera's model GFLOP/s (bench_step's flops_per_image x images/s; what is counted:
# docs/BENCHMARKS.md) and its percent of the fp32 FMA peak that build/bench_peak measures first at the
# same thread count (${BENCH_PEAK:-build/bench_peak}; "-" when it is not built).
# Last two columns: tessera with the frozen backbone in bf16 (TESSERA_PRECISION=bf16, model.precision
# bf16), run in the same alternation: images/s and peak RSS ("-" for full, or without a bf16 product;
# BF16=0 leaves them out).
# usage: bench/run.sh [THREADS=2] [SECONDS=10] [REPS=3] [WORKLOADS="vit-s-28:probe vit-s-28:adapter ..."]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
SECONDS_PER=${2:-10}
REPS=${3:-3}
WORKLOADS=${4:-"vit-s-28:probe vit-s-28:adapter vit-s-28:lora vit-s-28:mhr vit-s-28:mhr-sorted vit-s-28:poly vit-s-28:full vit-b16:adapter vit-b16:mhr"}
BIN=${BENCH_BIN:-build/bench_step}
[ -x "$BIN" ] || { echo "bench: $BIN not built (cmake --build build)"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
PEAK_BIN=${BENCH_PEAK:-build/bench_peak}
PEAK=""
if [ -x "$PEAK_BIN" ]; then
  PEAK=$("$PEAK_BIN" "$THREADS" 0.5 | sed -n "s/^peak fp32_fma threads=$THREADS gflops=\([0-9.]*\).*/\1/p")
  echo "fp32 FMA peak, $THREADS threads (bench_peak): ${PEAK:-?} GFLOP/s"
fi
declare -A TS PS  # median images/s by workload:mode (PS keyed by tessera's mode name)
BF16=${BF16:-1}
printf "%-10s %-10s %7s | %12s %12s %7s | %9s %9s | %8s %6s | %9s %8s\n" workload mode threads "tessera i/s" "torch i/s" ratio "rss MB" "torch MB" "GFLOP/s" "%peak" "bf16 i/s" "bf16 MB"
for wm in $WORKLOADS; do
  w=${wm%%:*}; m=${wm##*:}
  tm=$m; [ "$m" = mhr-sorted ] && tm=mhr
  ts=(); ps=(); bs=(); tr=0; pr=0; fpi=0; br="-"
  for ((i = 0; i < REPS; i++)); do
    out=$("$BIN" "$w" "$THREADS" "$m" "$SECONDS_PER")
    ts+=("$(echo "$out" | field img_per_s)"); tr=$(echo "$out" | field peak_rss_mb)
    fpi=$(echo "$out" | sed -n 's/.*flops_per_image=\([0-9.e+]*\).*/\1/p')
    out=$(/usr/bin/python3 bench/torch_bench.py "$w" "$THREADS" "$tm" "$SECONDS_PER")
    ps+=("$(echo "$out" | field img_per_s)"); pr=$(echo "$out" | field peak_rss_mb)
    if [ "$BF16" = 1 ] && [ "$m" != full ]; then
      out=$(TESSERA_PRECISION=bf16 "$BIN" "$w" "$THREADS" "$m" "$SECONDS_PER" 2>/dev/null || true)
      v=$(echo "$out" | field img_per_s); [ -n "$v" ] && bs+=("$v") && br=$(echo "$out" | field peak_rss_mb)
    fi
  done
  t=$(printf "%s\n" "${ts[@]}" | median); p=$(printf "%s\n" "${ps[@]}" | median)
  b="-"; [ ${#bs[@]} -gt 0 ] && b=$(printf "%s\n" "${bs[@]}" | median)
  TS[$w:$m]=$t; PS[$w:$m]=$p
  gf=$(echo "$t ${fpi:-0}" | awk '{printf "%.1f", $1 * $2 * 1e-9}')
  pc=$(echo "$gf ${PEAK:-0}" | awk '{if ($2 > 0) printf "%.0f%%", 100 * $1 / $2; else print "-"}')
  printf "%-10s %-10s %7s | %12.2f %12.2f %6.2fx | %9.0f %9.0f | %8s %6s | %9s %8s\n" "$w" "$m" "$THREADS" "$t" "$p" \
    "$(echo "$t $p" | awk '{print $1/$2}')" "$tr" "$pr" "$gf" "$pc" "$b" "$br"
done
# routing overhead: step time ratio = (adapter images/s) / (mhr images/s), same batch
ratio() { echo "$1 $2" | awk '{printf "%.2f", $1/$2}'; }
for w in $(for wm in $WORKLOADS; do echo "${wm%%:*}"; done | awk '!s[$0]++'); do
  a=${TS[$w:adapter]:-}; [ -n "$a" ] || continue
  if [ -n "${TS[$w:mhr]:-}" ]; then
    echo "$w routing overhead: tessera mhr / adapter step time = $(ratio "$a" "${TS[$w:mhr]}") (target <= 1.10)"
  fi
  if [ -n "${TS[$w:mhr-sorted]:-}" ]; then
    echo "$w routing overhead: tessera mhr-sorted / adapter step time = $(ratio "$a" "${TS[$w:mhr-sorted]}") (target <= 1.10)"
  fi
  if [ -n "${TS[$w:mhr]:-}" ] || [ -n "${TS[$w:mhr-sorted]:-}" ]; then
    pm=${PS[$w:mhr]:-${PS[$w:mhr-sorted]:-}}
    echo "$w routing overhead: PyTorch mhr / adapter step time = $(ratio "${PS[$w:adapter]}" "$pm")"
  fi
done
