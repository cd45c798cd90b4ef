#!/usr/bin/env bash
# The few-shot study of docs/RESULTS.md (v2), end to end, on 2 MPI ranks of one machine:
#   1. the glyph suite v2.1 (data/glyphs.nc) if missing
#   2. the backbone (configs/pretrain_backbone_glyphs.yaml, dim 192, depth 6, 2000 steps) and the
#      multi-task runs LoRA, Poly, MHR and MoSA x MHR on the 62 training scripts (STEPS steps each)
#      -> runs/glyphs/ (jobs/pretrain.slurm run directly; finished runs are skipped)
#   3. the few-shot sweep of configs/fewshot_glyphs.yaml (learning rates chosen on validation scripts,
#      then 12 methods x 12 held-out scripts x {1, 5, 10} shots x 3 seeds) -> $STUDY/fewshot/results.nc
#   4. the same linear probe on a randomly initialised backbone (the evidence that pre-training helps)
#      -> $STUDY/probe_random/results.nc
#   5. task gradient alignment of LoRA, Poly, MHR (ScaLAPACK) -> $STUDY/analyze/alignment.nc
#   6. the reports -> $STUDY/report/ and $STUDY/report_probe_random/
# Every stage resumes: the sweeps journal their entries, so rerunning the script continues where it
# stopped. Extra arguments are passed to both sweeps as --set overrides (e.g. model.precision=bf16, as
# the study ran). Usage: scripts/study.sh [key=value ...]   (STUDY=DIR, default runs/study)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
STUDY=${STUDY:-runs/study}
PY=${PYTHON:-/usr/bin/python3}
T0=$(date +%s)
stage() { echo; echo "=== study [$(( $(date +%s) - T0 )) s] $*"; }
SETS=()
for kv in "$@"; do SETS+=(--set "$kv"); done

stage "1/6 glyph suite"
if [ -f data/glyphs.nc ] && ncdump -h data/glyphs.nc 2>/dev/null | grep 'glyph_suite_version = "2.1"' > /dev/null; then
  echo "study: data/glyphs.nc is the glyph suite v2.1"
else
  ./build/tessera prepare glyphs --roles configs/glyphs.yaml --out data/glyphs.nc
fi

stage "2/6 backbone and multi-task runs -> runs/glyphs/"
STEPS=${STEPS:-400} METHODS="lora poly mhr mosa_mhr" bash jobs/pretrain.slurm

stage "3/6 few-shot sweep -> $STUDY/fewshot/results.nc"
mpirun -n 2 ./build/tessera fewshot configs/fewshot_glyphs.yaml --set run.output_dir="$STUDY/fewshot" "${SETS[@]}"

stage "4/6 linear probe on a random backbone -> $STUDY/probe_random/results.nc"
mpirun -n 2 ./build/tessera fewshot configs/fewshot_glyphs.yaml --set run.output_dir="$STUDY/probe_random" \
  --set "fewshot.methods=[probe]" --set 'run.init=""' "${SETS[@]}"

stage "5/6 task gradient alignment -> $STUDY/analyze/alignment.nc"
mpirun -n 2 ./build/tessera analyze configs/analyze_glyphs.yaml --set run.output_dir="$STUDY/analyze" \
  --set analyze.results="$STUDY/analyze/alignment.nc"

stage "6/6 reports"
"$PY" analysis/report.py "$STUDY/fewshot/results.nc" --alignment "$STUDY/analyze/alignment.nc" \
  --out "$STUDY/report" --json "$STUDY/report/summary.json" --metric test_accuracy_at_best_val
"$PY" analysis/report.py "$STUDY/probe_random/results.nc" --out "$STUDY/report_probe_random" \
  --json "$STUDY/report_probe_random/summary.json" --metric test_accuracy_at_best_val \
  --title "Linear probe on a randomly initialised backbone"
stage "done in $(( $(date +%s) - T0 )) s: $STUDY/report/report.md"
