#!/usr/bin/env bash
# The main job on the embedded default, from a fresh Debian 12 machine, in about ten minutes on 2 cores:
#   1. installs the Debian packages and builds tessera
#   2. renders the glyph suite v2.1 from Debian's fonts (137 writing systems, renderings per class by the
#      roles of configs/glyphs.yaml: 192,000 images, about 15 s; docs/GLYPHS.md)
#   3. pre-trains a small ViT backbone (dim 128, depth 4: the study's is dim 192, depth 6) on the 46
#      source scripts (2 MPI ranks)
#   4. multi-task pre-training of LoRA, Poly and MHR on the 68 training scripts (2 ranks)
#   5. a few-shot sweep on held-out scripts: 10 methods x 4 scripts x {1, 5} shots x 2 seeds (2 ranks,
#      one netCDF results file; prototype heads, no learning-rate selection, 30 steps)
#   6. task gradient alignment of LoRA, Poly and MHR with ScaLAPACK (2 ranks)
#   7. the report: tables with confidence intervals and figures
# The stages are the Slurm jobs of jobs/ run directly (no Slurm needed); jobs/pipeline.sh submits the
# same chain to a cluster. Finished stages are skipped when the script runs again. The settings are
# short so that it fits ten minutes; docs/RESULTS.md has the full-size study.
# Usage: scripts/quickstart.sh            (QUICK_RUNS=DIR changes the output root, default runs)
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
stage() { echo; echo "=== quickstart [$(( $(date +%s) - T0 )) s] $*"; }

stage "1/7 packages and build"
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j "$(nproc)" > /dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
OUT=${QUICK_RUNS:-runs}

stage "2/7 glyph suite v2.1"
# a data/glyphs.nc of an older suite (no glyph_suite_version "2.1") is rebuilt
if [ -f data/glyphs.nc ] && ncdump -h data/glyphs.nc 2>/dev/null | grep 'glyph_suite_version = "2.1"' > /dev/null; then
  echo "quickstart: data/glyphs.nc is the glyph suite v2.1"
else
  ./build/tessera prepare glyphs --roles configs/glyphs.yaml --out data/glyphs.nc
fi

# The quickstart's runs live apart from the study's (runs/glyphs, the configurations' default), with a
# smaller backbone so that the whole chain fits ten minutes.
QG=$OUT/quickstart/glyphs
SMALL="model.dim=128 model.depth=4 model.heads=4 model.mlp_dim=384"
MSETS=(); for kv in $SMALL; do MSETS+=(--set "$kv"); done
stage "3/7 and 4/7 backbone, then LoRA, Poly and MHR (multi-task) -> $QG/"
GLYPH_RUNS=$QG BACKBONE_SETS="$SMALL" BACKBONE_STEPS=${BACKBONE_STEPS:-500} STEPS=${STEPS:-150} \
  METHODS="lora poly mhr" bash jobs/pretrain.slurm

stage "5/7 few-shot sweep -> $OUT/quickstart/fewshot/results.nc"
bash jobs/fewshot.slurm configs/fewshot_glyphs.yaml --set run.output_dir="$OUT/quickstart/fewshot" "${MSETS[@]}" \
  --set fewshot.pretrained="$QG" --set run.init="$QG/backbone/model.safetensors" \
  --set "fewshot.methods=[lora, shared_lora, poly, mhr, mhr_z, mhr_mu, adapter, mosa, probe, full]" \
  --set "fewshot.tasks=[glagolitic, samaritan, grantha, ogham]" --set "fewshot.shots=[1, 5]" \
  --set "fewshot.seeds=[0, 1]" --set "fewshot.lr_grid=[]" --set train.steps=30 --set train.batch_size=24 \
  --set train.eval_every=10

stage "6/7 task gradient alignment -> $OUT/quickstart/analyze/alignment.nc"
ANALYZE_RESULTS="$OUT/quickstart/analyze/alignment.nc" bash jobs/analyze.slurm configs/analyze_glyphs.yaml \
  "${MSETS[@]}" --set fewshot.pretrained="$QG" --set analyze.examples=40 --set train.batch_size=40

stage "7/7 report"
bash jobs/report.slurm "$OUT/quickstart/fewshot/results.nc" "$OUT/quickstart/analyze/alignment.nc" "$OUT/quickstart/report"

stage "done in $(( $(date +%s) - T0 )) s"
echo "quickstart: report $OUT/quickstart/report/report.md (figures beside it), results $OUT/quickstart/fewshot/results.nc,"
echo "            alignment $OUT/quickstart/analyze/alignment.nc, pre-trained runs $QG/"
