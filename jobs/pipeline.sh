#!/bin/bash
# The whole glyph-suite study as a chain of Slurm jobs, each one starting only when the one before it
# succeeded (sbatch --dependency=afterok):
#
#   prepare   tessera prepare glyphs --roles configs/glyphs.yaml --out data/glyphs.nc
#                                                             (skipped when data/glyphs.nc exists)
#   pretrain  jobs/pretrain.slurm: the backbone, then every method of CONFIG_DIR/methods (or --methods)
#   fewshot   jobs/fewshot.slurm FEWSHOT_CONFIG               -> RUNS/fewshot/results.nc
#   analyze   jobs/analyze.slurm ANALYZE_CONFIG               -> RUNS/analyze/alignment.nc
#   report    jobs/report.slurm (analysis/report.py)          -> RUNS/report/report.md
#
# usage: jobs/pipeline.sh [--config-dir DIR] [--out RUNS] [--tiny] [--methods A,B,...] [--wait]
#                         [--stages LIST] [--after JOBID] [--sbatch-arg ARG ...] [--dry-run]
#   --config-dir DIR   configurations (default configs): DIR/pretrain_backbone_glyphs.yaml, DIR/glyphs.yaml,
#                      DIR/methods/*.yaml, DIR/fewshot_glyphs.yaml, DIR/analyze_glyphs.yaml (when missing, the
#                      analysis uses the few-shot configuration)
#   --out RUNS         root of every output (default runs; with --tiny runs/tiny): RUNS/glyphs/{backbone,METHOD}
#                      (pre-training), RUNS/fewshot, RUNS/analyze, RUNS/report, job logs in RUNS/logs
#   --tiny             a smoke test of the chain: 20 pre-training steps, 2 held-out tasks x 2 methods x 1 shot
#                      count x 1 seed x 5 steps (no learning-rate selection), 1 analysed method
#   --methods LIST     pre-train only these methods (names of DIR/methods/NAME.yaml, or paths), comma-separated
#                      (exported as METHODS="a b" for jobs/pretrain.slurm, and the only methods in configs/methods)
#   --fewshot-config F, --analyze-config F   override the configurations of those stages
#   --stages LIST      run only these stages, in chain order (comma-separated; default all five)
#   --after JOBID      the first job also waits for JOBID (afterok)
#   --sbatch-arg ARG   an extra sbatch option for every job (repeat it), e.g. --sbatch-arg=--partition=cpu
#   --wait             wait for the last job and exit with 0 if every job completed, 1 otherwise (naming the
#                      stage that failed and its log)
#   --dry-run          print the sbatch commands and submit nothing
# Prints one line "STAGE JOBID" per job submitted.
#
# How RUNS and DIR reach jobs/pretrain.slurm (which writes runs/glyphs/... and reads configs/... relative to
# the directory it was submitted from): every job is submitted from RUNS/.submit, where build, data, jobs,
# analysis, ... link to the repository, configs links to DIR (or holds the --methods subset of DIR/methods)
# and runs links to RUNS. The jobs run there too, so relative paths in the configurations (data/glyphs.nc,
# runs/glyphs/backbone/model.safetensors) resolve into the repository's data and RUNS.
# A job that fails cancels the rest of the chain (--kill-on-invalid-dep=yes) instead of leaving it pending.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAGES_ALL=(prepare pretrain fewshot analyze report)
CONFIG_DIR=$ROOT/configs
RUNS=""
TINY=0
WAIT=0
DRY=0
AFTER=""
METHODS=""
FEWSHOT_CONFIG=""
ANALYZE_CONFIG=""
STAGES=""
SBATCH_EXTRA=()
POLL=${PIPELINE_POLL:-5}

die() { echo "pipeline: error: $*" >&2; exit 2; }
usage() { sed -n '/^# usage:/,/^# Prints/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

while [ $# -gt 0 ]; do
  case "$1" in
    --config-dir) [ $# -ge 2 ] || usage; CONFIG_DIR=$(abspath "$2"); shift 2 ;;
    --config-dir=*) CONFIG_DIR=$(abspath "${1#*=}"); shift ;;
    --out) [ $# -ge 2 ] || usage; RUNS=$(abspath "$2"); shift 2 ;;
    --out=*) RUNS=$(abspath "${1#*=}"); shift ;;
    --tiny) TINY=1; shift ;;
    --wait) WAIT=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --methods) [ $# -ge 2 ] || usage; METHODS=$2; shift 2 ;;
    --methods=*) METHODS=${1#*=}; shift ;;
    --fewshot-config) [ $# -ge 2 ] || usage; FEWSHOT_CONFIG=$(abspath "$2"); shift 2 ;;
    --fewshot-config=*) FEWSHOT_CONFIG=$(abspath "${1#*=}"); shift ;;
    --analyze-config) [ $# -ge 2 ] || usage; ANALYZE_CONFIG=$(abspath "$2"); shift 2 ;;
    --analyze-config=*) ANALYZE_CONFIG=$(abspath "${1#*=}"); shift ;;
    --stages) [ $# -ge 2 ] || usage; STAGES=$2; shift 2 ;;
    --stages=*) STAGES=${1#*=}; shift ;;
    --after) [ $# -ge 2 ] || usage; AFTER=$2; shift 2 ;;
    --after=*) AFTER=${1#*=}; shift ;;
    --sbatch-arg) [ $# -ge 2 ] || usage; SBATCH_EXTRA+=("$2"); shift 2 ;;
    --sbatch-arg=*) SBATCH_EXTRA+=("${1#*=}"); shift ;;
    -h|--help) usage ;;
    *) echo "pipeline: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -n "$RUNS" ] || { if [ $TINY = 1 ]; then RUNS=$ROOT/runs/tiny; else RUNS=$ROOT/runs; fi; }
[ -d "$CONFIG_DIR" ] || die "no configuration directory $CONFIG_DIR"
[ -n "$FEWSHOT_CONFIG" ] || FEWSHOT_CONFIG=$CONFIG_DIR/fewshot_glyphs.yaml
if [ -z "$ANALYZE_CONFIG" ]; then
  ANALYZE_CONFIG=$CONFIG_DIR/analyze_glyphs.yaml
  [ -f "$ANALYZE_CONFIG" ] || ANALYZE_CONFIG=$FEWSHOT_CONFIG
fi

# the stages, in chain order
want() { [ -z "$STAGES" ] || [[ ",$STAGES," == *",$1,"* ]]; }
if [ -n "$STAGES" ]; then
  for s in ${STAGES//,/ }; do [[ " ${STAGES_ALL[*]} " == *" $s "* ]] || die "unknown stage '$s' (stages: ${STAGES_ALL[*]})"; done
fi

# everything the chosen stages need, checked before anything is submitted
command -v sbatch >/dev/null || [ $DRY = 1 ] || die "sbatch not found (is this a Slurm login node? SLURM_CONF?)"
need() { [ -e "$1" ] || die "$2: missing $1"; }
want pretrain && { need "$ROOT/jobs/pretrain.slurm" pretrain; need "$CONFIG_DIR/pretrain_backbone_glyphs.yaml" pretrain
                   need "$CONFIG_DIR/glyphs.yaml" pretrain; need "$CONFIG_DIR/methods" pretrain; }
want fewshot && { need "$ROOT/jobs/fewshot.slurm" fewshot; need "$FEWSHOT_CONFIG" fewshot; }
want analyze && { need "$ROOT/jobs/analyze.slurm" analyze; need "$ANALYZE_CONFIG" analyze; }
want report && { need "$ROOT/jobs/report.slurm" report; need "$ROOT/analysis/report.py" report; }
METHOD_FILES=()
if [ -n "$METHODS" ]; then
  for m in ${METHODS//,/ }; do
    case "$m" in */*|*.yaml) f=$(abspath "$m") ;; *) f=$CONFIG_DIR/methods/$m.yaml ;; esac
    [ -f "$f" ] || die "--methods: no configuration $f"
    METHOD_FILES+=("$f")
  done
fi

# the submission directory RUNS/.submit (see the header)
SUBMIT=$RUNS/.submit
LOGS=$RUNS/logs
if [ $DRY = 0 ]; then
  mkdir -p "$SUBMIT" "$LOGS" || die "cannot create $SUBMIT"
  for e in "$ROOT"/*; do
    n=$(basename "$e")
    case "$n" in runs|configs) continue ;; esac
    [ "$e" -ef "$RUNS" ] && continue
    ln -sfn "$e" "$SUBMIT/$n"
  done
  rm -rf "$SUBMIT/configs"
  if [ ${#METHOD_FILES[@]} -gt 0 ]; then   # DIR with methods/ holding only the chosen methods
    mkdir -p "$SUBMIT/configs/methods"
    for e in "$CONFIG_DIR"/*; do [ "$(basename "$e")" = methods ] || ln -sfn "$e" "$SUBMIT/configs/$(basename "$e")"; done
    for f in "${METHOD_FILES[@]}"; do ln -sfn "$f" "$SUBMIT/configs/methods/$(basename "$f")"; done
  else
    ln -sfn "$CONFIG_DIR" "$SUBMIT/configs"
  fi
  ln -sfn .. "$SUBMIT/runs"
fi

# what the jobs read from the environment (sbatch passes it on: --export=ALL)
OUT_DIR=$RUNS
export RUNS=runs                                # for the jobs: relative to the submission directory (= OUT_DIR)
[ -n "${TESSERA:-}" ] && export TESSERA=$(abspath "$TESSERA")
if [ ${#METHOD_FILES[@]} -gt 0 ]; then   # jobs/pretrain.slurm reads METHODS (names in configs/methods)
  METHODS=""; for f in "${METHOD_FILES[@]}"; do METHODS+="${METHODS:+ }$(basename "$f" .yaml)"; done
  export METHODS
fi
FEWSHOT_SETS=(--set run.output_dir=runs/fewshot --set fewshot.results=runs/fewshot/results.nc
              --set fewshot.method_dir="$CONFIG_DIR/methods")
ANALYZE_SETS=(--set analyze.results=runs/analyze/alignment.nc)
if [ $TINY = 1 ]; then
  export BACKBONE_STEPS=${BACKBONE_STEPS:-20} STEPS=${STEPS:-20}
  FEWSHOT_SETS+=(--set "fewshot.methods=[lora,mhr]" --set "fewshot.tasks=[glagolitic,ogham]" --set "fewshot.shots=[1]"
                 --set "fewshot.seeds=[0]" --set "fewshot.lr_grid=[]" --set train.steps=5 --set train.eval_every=5
                 --set train.log_every=5)
  ANALYZE_SETS+=(--set "analyze.methods=[mhr]" --set analyze.examples=8)
fi

JOB_IDS=()
JOB_STAGES=()
PREV=$AFTER
submit() { # submit STAGE SBATCH_ARGS...: chain after the previous job, print "STAGE JOBID"
  local stage=$1 id; shift
  local args=(--parsable --job-name="tessera-$stage" --output="$LOGS/$stage-%j.out" --chdir="$SUBMIT"
              --kill-on-invalid-dep=yes "${SBATCH_EXTRA[@]}")
  [ -n "$PREV" ] && args+=(--dependency="afterok:$PREV")
  if [ $DRY = 1 ]; then
    printf '(cd %q &&' "$SUBMIT"; printf ' %q' sbatch "${args[@]}" "$@"; echo ")"
    id="DRY$((${#JOB_IDS[@]} + 1))"
  else
    id=$(cd "$SUBMIT" && sbatch "${args[@]}" "$@") || {
      echo "pipeline: error: sbatch for $stage failed; cancelling the jobs submitted so far: ${JOB_IDS[*]:-none}" >&2
      [ ${#JOB_IDS[@]} -gt 0 ] && scancel "${JOB_IDS[@]}"
      exit 1; }
    id=${id%%;*}
  fi
  echo "$stage $id"
  JOB_IDS+=("$id"); JOB_STAGES+=("$stage"); PREV=$id
}

want prepare && submit prepare --ntasks=1 --time=00:30:00 --wrap \
  'set -e; if [ -f data/glyphs.nc ]; then echo "prepare: data/glyphs.nc exists"; exit 0; fi
   mkdir -p data; T=data/.glyphs-$SLURM_JOB_ID.nc
   "${TESSERA:-./build/tessera}" prepare glyphs --roles configs/glyphs.yaml --out "$T" && mv "$T" data/glyphs.nc && echo "prepare: wrote data/glyphs.nc"'
want pretrain && submit pretrain "$ROOT/jobs/pretrain.slurm"
want fewshot && submit fewshot "$ROOT/jobs/fewshot.slurm" "$FEWSHOT_CONFIG" "${FEWSHOT_SETS[@]}"
want analyze && submit analyze "$ROOT/jobs/analyze.slurm" "$ANALYZE_CONFIG" "${ANALYZE_SETS[@]}"
want report && submit report "$ROOT/jobs/report.slurm" runs/fewshot/results.nc \
  "$(want analyze && echo runs/analyze/alignment.nc)" runs/report
[ ${#JOB_IDS[@]} -gt 0 ] || die "no stage selected"
echo "pipeline: outputs in $OUT_DIR, logs in $LOGS"
[ $WAIT = 1 ] && [ $DRY = 0 ] || exit 0

# --wait: poll every job until the last one has ended
state_of() { scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
terminal() { case "$1" in COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|BOOT_FAIL|DEADLINE|PREEMPTED|SPECIAL_EXIT) return 0 ;; *) return 1 ;; esac; }
declare -A SEEN=()
LAST=${JOB_IDS[-1]}
while :; do
  done_all=1
  for i in "${!JOB_IDS[@]}"; do
    id=${JOB_IDS[$i]}
    terminal "${SEEN[$id]:-}" && continue
    st=$(state_of "$id" JobState)
    if [ -z "$st" ]; then   # purged from slurmctld's memory (MinJobAge): ask accounting if there is one
      st=$(sacct -n -X -P -j "$id" -o State 2>/dev/null | head -n 1 | awk '{print $1}')
      [ -n "$st" ] || st=UNKNOWN
    fi
    if [ "${SEEN[$id]:-}" != "$st" ]; then echo "pipeline: ${JOB_STAGES[$i]} ($id) $st"; SEEN[$id]=$st; fi
    # a dependant that can never start (a cluster without kill_invalid_depend): cancel it
    [ "$st" = PENDING ] && [ "$(state_of "$id" Reason)" = DependencyNeverSatisfied ] && scancel "$id"
    terminal "$st" || [ "$st" = UNKNOWN ] || done_all=0
  done
  [ $done_all = 1 ] && break
  sleep "$POLL"
done
for i in "${!JOB_IDS[@]}"; do
  st=${SEEN[${JOB_IDS[$i]}]}
  if [ "$st" != COMPLETED ]; then
    echo "pipeline: FAILED at ${JOB_STAGES[$i]} (job ${JOB_IDS[$i]}: $st); log: $(ls "$LOGS/${JOB_STAGES[$i]}-${JOB_IDS[$i]}.out" 2>/dev/null || echo none)" >&2
    exit 1
  fi
done
echo "pipeline: every job completed (last: $LAST); report in $OUT_DIR/report"
exit 0
