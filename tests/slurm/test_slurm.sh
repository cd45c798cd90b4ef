#!/bin/bash
# tessera under a real single-node Slurm (tests/slurm/cluster.sh): batch jobs, MPI inside an allocation,
# dependency chains, a failed dependency, and the requeue path of `tessera pretrain`.
#
#   tests/slurm/test_slurm.sh BUILD_DIR SOURCE_DIR
#
# (a) a 2-task job sees SLURM_JOB_ID / SLURM_NTASKS and runs `mpirun -n 2 tessera version` (and
#     `srun --mpi=pmix` when Slurm has PMIx) inside its allocation; `sbatch --wait` returns 0;
# (b) A -> B with --dependency=afterok:A: B starts after A has finished and reads A's output file;
# (c) a failing job: `sbatch --wait` returns its exit status; a job that depends on it with afterok
#     never runs (it stays pending with reason DependencyNeverSatisfied and is cancelled);
# (d) requeue: a `tessera pretrain` job sent USR2 (as Slurm's --signal=USR2@90 does) checkpoints, exits
#     with status 3 after `scontrol requeue`, and the requeued job resumes and completes
#     (TESSERA_SLURM_SKIP_REQUEUE=1 leaves it out);
# (e) jobs/pipeline.sh: the five chained jobs with the real binary on real data (tiny settings), and
#     a failing stage that cancels the rest of the chain.
# Each check prints PASS or FAIL; the exit status is 1 if any failed. Exit 77 (skip) when Slurm cannot run
# here, unless TESSERA_REQUIRE_SLURM=1 (CI installs Slurm: there a missing Slurm is a failure).
# TESSERA_SLURM_KEEP=1 keeps the work directory (job scripts, outputs, daemon logs).
set -uo pipefail

[ $# -eq 2 ] || { echo "usage: $0 BUILD_DIR SOURCE_DIR" >&2; exit 2; }
BUILD=$(cd "$1" && pwd) || exit 2
SRC=$(cd "$2" && pwd) || exit 2
TESSERA=$BUILD/tessera
[ -x "$TESSERA" ] || { echo "FAIL: no tessera binary at $TESSERA" >&2; exit 1; }
CLUSTER=$SRC/tests/slurm/cluster.sh

# a test run inside a Slurm job must not talk to the outer cluster
for v in $(env | sed -n 's/^\(SLURM_[A-Z0-9_]*\)=.*/\1/p'); do unset "$v"; done
unset SBATCH_PARTITION SBATCH_ACCOUNT SBATCH_QOS SBATCH_TIMELIMIT SBATCH_RESERVATION 2>/dev/null

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-slurm.XXXXXX") || exit 1
PASSED=0
FAILED=0
T_START=$SECONDS
cleanup() {
  local rc=$?
  if [ -n "${SLURM_CONF:-}" ]; then   # anything still queued or running
    squeue -h -o %i 2>/dev/null | while read -r j; do scancel "$j" 2>/dev/null; done
  fi
  bash "$CLUSTER" stop "$WORK/cluster" >/dev/null 2>&1 || bash "$CLUSTER" stop "$WORK/cluster"
  if [ "${TESSERA_SLURM_KEEP:-0}" = 1 ]; then echo "test_slurm: kept $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

check() { # check COND_STATUS MESSAGE [DETAIL_FILE...]
  local ok=$1 msg=$2; shift 2
  if [ "$ok" = 0 ]; then
    echo "PASS  $msg"; PASSED=$((PASSED + 1))
  else
    echo "FAIL  $msg"; FAILED=$((FAILED + 1))
    local f
    for f in "$@"; do [ -r "$f" ] && { echo "  ----- $f -----"; sed 's/^/  | /' "$f" | tail -n 40; }; done
  fi
}

# --- the cluster -------------------------------------------------------------------------------
t0=$SECONDS
out=$(bash "$CLUSTER" start "$WORK/cluster" 2>&1)
rc=$?
echo "$out"
if [ $rc = 77 ]; then
  if [ "${TESSERA_REQUIRE_SLURM:-0}" = 1 ]; then
    echo "FAIL  Slurm is required (TESSERA_REQUIRE_SLURM=1) but cannot run here (see above)"; exit 1
  fi
  echo "SKIP  test_slurm: Slurm cannot run here"; exit 77
fi
[ $rc = 0 ] || { echo "FAIL  start the single-node cluster"; exit 1; }
export SLURM_CONF=$WORK/cluster/slurm.conf
echo "test_slurm: cluster up in $((SECONDS - t0)) s"
export TESSERA SRC
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
J=$WORK/jobs
mkdir -p "$J"

job_field() { # job_field JOBID FIELD: a field of `scontrol show job` (empty if the job is gone)
  scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

wait_state() { # wait_state JOBID SECONDS STATE...: wait until the job's JobState is one of STATE
  local id=$1 limit=$2 s t=$SECONDS; shift 2
  while [ $((SECONDS - t)) -lt "$limit" ]; do
    s=$(job_field "$id" JobState)
    for want in "$@"; do [ "$s" = "$want" ] && return 0; done
    sleep 0.5
  done
  return 1
}

submit_wait() { # submit_wait SECONDS SBATCH_ARGS...: sbatch --wait; prints the job id, returns its status
  local limit=$1; shift
  timeout "$limit" sbatch --parsable --wait "$@"
}

# --- (a) a 2-task job: Slurm variables, MPI inside the allocation -------------------------------
cat > "$J/a.sh" <<'EOF'
#!/bin/bash
#SBATCH --job-name=tsr-a
#SBATCH --ntasks=2
#SBATCH --time=00:05:00
set -u
echo "job $SLURM_JOB_ID: $SLURM_NTASKS tasks on $SLURM_JOB_NODELIST"
[ -n "${SLURM_JOB_ID:-}" ] || { echo "no SLURM_JOB_ID"; exit 10; }
[ "${SLURM_NTASKS:-}" = 2 ] || { echo "SLURM_NTASKS=${SLURM_NTASKS:-} (want 2)"; exit 11; }
# tessera version prints on rank 0 only: check the exit status and the output, and count the ranks apart
mpirun -n 2 --oversubscribe --allow-run-as-root "$TESSERA" version > a.mpirun.out 2>&1 || { cat a.mpirun.out; exit 12; }
grep -q '^tessera ' a.mpirun.out && grep -q '^mpi: ' a.mpirun.out || { echo "no version lines"; cat a.mpirun.out; exit 13; }
n=$(mpirun -n 2 --oversubscribe --allow-run-as-root printenv OMPI_COMM_WORLD_RANK | sort -u | wc -l)
[ "$n" = 2 ] || { echo "mpirun -n 2 in the allocation started $n distinct ranks (want 2)"; exit 13; }
echo "mpirun -n 2: ok"
if srun --mpi=list 2>&1 | grep -c pmix >/dev/null; then
  srun --mpi=pmix -n 2 "$TESSERA" version > a.srun.out 2>&1 || { cat a.srun.out; exit 14; }
  grep -q '^tessera ' a.srun.out || { echo "srun --mpi=pmix -n 2 tessera version: no version line"; cat a.srun.out; exit 15; }
  n=$(srun -n 2 printenv SLURM_PROCID | sort -u | wc -l)
  [ "$n" = 2 ] || { echo "srun -n 2 started $n distinct tasks (want 2)"; exit 15; }
  echo "srun --mpi=pmix: ok"
fi
echo "a: ok"
EOF
t0=$SECONDS
A_ID=$(submit_wait 300 -D "$J" -o "$J/a.out" "$J/a.sh")
rc=$?
check $rc "(a) 2-task job $A_ID: SLURM_JOB_ID, SLURM_NTASKS=2, mpirun -n 2 tessera version$(grep -q 'srun --mpi=pmix: ok' "$J/a.out" 2>/dev/null && echo ', srun --mpi=pmix -n 2') (sbatch --wait rc $rc, $((SECONDS - t0)) s)" "$J/a.out"

# --- (b) A -> B with afterok: B runs after A and reads its output --------------------------------
cat > "$J/b1.sh" <<'EOF'
#!/bin/bash
#SBATCH --job-name=tsr-b1
#SBATCH --ntasks=1
sleep 3
echo "written by job $SLURM_JOB_ID" > b1.result.tmp && mv b1.result.tmp b1.result
EOF
cat > "$J/b2.sh" <<'EOF'
#!/bin/bash
#SBATCH --job-name=tsr-b2
#SBATCH --ntasks=1
want="written by job $1"
got=$(cat b1.result 2>/dev/null)
echo "b2 ($SLURM_JOB_ID) read: '$got'"
[ "$got" = "$want" ] || { echo "want '$want'"; exit 1; }
EOF
t0=$SECONDS
B1=$(sbatch --parsable -D "$J" -o "$J/b1.out" "$J/b1.sh")
B2=$(submit_wait 300 -D "$J" -o "$J/b2.out" --dependency=afterok:"$B1" "$J/b2.sh" "$B1")
rc=$?
s1=$(job_field "$B1" JobState)
check $([ $rc = 0 ] && [ "$s1" = COMPLETED ] && echo 0 || echo 1) \
  "(b) afterok chain $B1 -> $B2: B read A's output (A $s1, B rc $rc, $((SECONDS - t0)) s)" "$J/b1.out" "$J/b2.out"
# B must not have started before A ended
e1=$(job_field "$B1" EndTime); s2=$(job_field "$B2" StartTime)
check $([ -n "$e1" ] && [ -n "$s2" ] && [ ! "$s2" \< "$e1" ] && echo 0 || echo 1) "(b) B started ($s2) after A ended ($e1)"

# --- (c) a failing job; its afterok dependant never runs -----------------------------------------
cat > "$J/c1.sh" <<'EOF'
#!/bin/bash
#SBATCH --job-name=tsr-c1
#SBATCH --ntasks=1
sleep 3
echo "c1: failing on purpose"
exit 3
EOF
cat > "$J/c2.sh" <<'EOF'
#!/bin/bash
#SBATCH --job-name=tsr-c2
#SBATCH --ntasks=1
echo ran > c2.ran
EOF
t0=$SECONDS
C1=$(sbatch --parsable -D "$J" -o "$J/c1.out" "$J/c1.sh")
C2=$(sbatch --parsable -D "$J" -o "$J/c2.out" --dependency=afterok:"$C1" "$J/c2.sh")
# the same with --kill-on-invalid-dep=yes (what jobs/pipeline.sh uses): Slurm cancels it itself
C4=$(sbatch --parsable -D "$J" -o "$J/c4.out" --dependency=afterok:"$C1" --kill-on-invalid-dep=yes --wrap 'echo ran > c4.ran')
wait_state "$C1" 120 FAILED COMPLETED CANCELLED TIMEOUT NODE_FAIL
s1=$(job_field "$C1" JobState); ec=$(job_field "$C1" ExitCode)
check $([ "$s1" = FAILED ] && [ "$ec" = 3:0 ] && echo 0 || echo 1) "(c) job $C1 failed: state $s1, exit code $ec (want FAILED 3:0)" "$J/c1.out"
# the dependant: pending, DependencyNeverSatisfied (Slurm keeps it; with kill_invalid_depend it is cancelled)
reason=""
t=$SECONDS
while [ $((SECONDS - t)) -lt 60 ]; do
  s2=$(job_field "$C2" JobState); reason=$(job_field "$C2" Reason)
  [ "$reason" = DependencyNeverSatisfied ] || [ "$s2" = CANCELLED ] && break
  sleep 0.5
done
check $( { [ "$s2" = PENDING ] && [ "$reason" = DependencyNeverSatisfied ]; } || [ "$s2" = CANCELLED ] && echo 0 || echo 1) \
  "(c) afterok dependant $C2 of the failed job is not run: state $s2, reason $reason"
scancel "$C2" 2>/dev/null
wait_state "$C2" 30 CANCELLED
s2=$(job_field "$C2" JobState)
sleep 1
check $([ "$s2" = CANCELLED ] && [ ! -e "$J/c2.ran" ] && [ ! -e "$J/c2.out" ] && echo 0 || echo 1) \
  "(c) the dependant never ran and is cancelled: state $s2 ($((SECONDS - t0)) s)"
wait_state "$C4" 60 CANCELLED
s4=$(job_field "$C4" JobState)
check $([ "$s4" = CANCELLED ] && [ ! -e "$J/c4.ran" ] && echo 0 || echo 1) \
  "(c) with --kill-on-invalid-dep=yes the dependant $C4 is cancelled by Slurm without running: state $s4"
# sbatch --wait returns the exit status of a failing job
C3=$(submit_wait 120 -D "$J" -o "$J/c3.out" --wrap 'exit 5')
rc=$?
check $([ $rc = 5 ] && echo 0 || echo 1) "(c) sbatch --wait on a job exiting with 5 returns $rc (job $C3)" "$J/c3.out"

# --- (d) requeue: USR2 -> checkpoint -> scontrol requeue -> resume ------------------------------
if [ "${TESSERA_SLURM_SKIP_REQUEUE:-0}" = 1 ]; then
  echo "SKIP  (d) requeue (TESSERA_SLURM_SKIP_REQUEUE=1)"
else
cat > "$J/d.sh" <<'EOF'
#!/bin/bash
#SBATCH --job-name=tsr-d
#SBATCH --ntasks=2
#SBATCH --requeue
#SBATCH --open-mode=append
set -u
echo "d: job $SLURM_JOB_ID start (restart count ${SLURM_RESTART_COUNT:-0})"
trap 'echo "d: the batch shell got USR2"' USR2   # a handler (not an ignore: children would inherit it)
# the launcher of jobs/pretrain.slurm
if srun --mpi=list 2>/dev/null | grep -c pmix >/dev/null; then LAUNCH=(srun --mpi=pmix); else
  LAUNCH=(mpirun -n "$SLURM_NTASKS" --oversubscribe --allow-run-as-root); fi
echo "d: launcher ${LAUNCH[0]}"
"${LAUNCH[@]}" "$TESSERA" pretrain "$SRC/configs/methods/mhr.yaml" --set model.dim=32 --set model.depth=2 \
  --set model.heads=2 --set model.mlp_dim=64 --set train.batch_size=24 --set train.warmup_steps=2 \
  --set train.log_every=500 --set train.eval_every=1000000 --set train.eval_limit=50 --set run.threads=1 \
  --set data.tasks=4 --set train.steps="$STEPS" --set run.checkpoint_every=20 --set run.output_dir=d.run --resume
rc=$?
echo "d: tessera pretrain exit status $rc"
if [ $rc = 3 ]; then echo "d: stopped for requeue"; exit 0; fi
exit $rc
EOF
t0=$SECONDS
D=$(sbatch --parsable -D "$J" -o "$J/d.out" --export=ALL,STEPS=${TESSERA_SLURM_REQUEUE_STEPS:-1000} "$J/d.sh")
# wait for the first complete checkpoint, then send USR2 to the job's processes
# (a glob match, not `ls` of the matches: the job prunes old checkpoints, and `ls a/DONE b/DONE` fails
# when a is removed between the expansion and the stat, although b is complete; CI failed on that once)
t=$SECONDS; wrote=1
while [ $((SECONDS - t)) -lt 120 ]; do
  if compgen -G "$J/d.run/checkpoints/step-*/DONE" >/dev/null; then wrote=0; break; fi
  sleep 0.1
done
check $wrote "(d) job $D wrote a checkpoint" "$J/d.out"
# USR2 to the job's steps (what --signal=USR2@90 does: srun-launched ranks are step 0); ranks that
# mpirun started live in the batch step: signal that one instead
if grep -q "d: launcher srun" "$J/d.out"; then scancel --signal=USR2 "$D"; else scancel --signal=USR2 --batch "$D"; fi
# the job ends once (stopped, requeued), then runs again and completes
t=$SECONDS
while [ $((SECONDS - t)) -lt 300 ]; do
  s=$(job_field "$D" JobState); r=$(job_field "$D" Restarts)
  [ "$s" = COMPLETED ] || [ "$s" = FAILED ] || [ "$s" = CANCELLED ] || [ "$s" = TIMEOUT ] && break
  # a requeued batch job is held only with RequeueExitHold; release it if so
  [ "$(job_field "$D" Reason)" = JobHeldAdmin ] && scontrol release "$D" 2>/dev/null
  sleep 0.5
done
s=$(job_field "$D" JobState); r=$(job_field "$D" Restarts)
grep -q "stop signal" "$J/d.out" 2>/dev/null; sig=$?
# `scontrol requeue` (rank 0) ends the running job at once: Slurm logs "DUE TO JOB REQUEUE"
grep -q "d: stopped for requeue\|DUE TO JOB REQUEUE" "$J/d.out" 2>/dev/null; stopped=$?
grep -q "resume: from the checkpoint of step" "$J/d.out" 2>/dev/null; resumed=$?
check $([ $sig = 0 ] && [ $stopped = 0 ] && echo 0 || echo 1) "(d) USR2: the ranks checkpointed, stopped and requeued the job" "$J/d.out"
check $([ "${r:-0}" -ge 1 ] 2>/dev/null && [ $resumed = 0 ] && echo 0 || echo 1) \
  "(d) the job was requeued (restarts ${r:-?}) and resumed from its checkpoint" "$J/d.out"
check $([ "$s" = COMPLETED ] && [ -f "$J/d.run/adapters.safetensors" ] && echo 0 || echo 1) \
  "(d) the requeued job completed: state $s ($((SECONDS - t0)) s)" "$J/d.out"
fi

# --- (e) jobs/pipeline.sh: the whole chain, real binary, real data, tiny settings ----------------------
# A copy of the repository's job scripts and configurations in the work directory (the real build and
# analysis/ linked in), so that nothing is written into SOURCE_DIR: prepare (the glyph suite from
# Debian's fonts) -> pretrain (backbone, LoRA and MHR, 20 steps each) -> fewshot (2 held-out scripts x 2
# methods) -> analyze (ScaLAPACK, MHR) -> report, each job starting only after the previous one succeeded.
R=$WORK/root
mkdir -p "$R/jobs" "$R/data"
cp "$SRC"/jobs/pipeline.sh "$SRC"/jobs/*.slurm "$R/jobs/" && cp -r "$SRC/configs" "$R/"
ln -sfn "$BUILD" "$R/build"
ln -sfn "$SRC/analysis" "$R/analysis"
chmod +x "$R/jobs/pipeline.sh"
t0=$SECONDS
PIPELINE_POLL=1 timeout 600 env -u TESSERA "$R/jobs/pipeline.sh" --tiny --out "$WORK/runs" --methods lora,mhr --wait > "$J/e1.out" 2>&1
rc=$?
ok=1
NCD=$(command -v ncdump || echo false)
[ $rc = 0 ] && [ -f "$R/data/glyphs.nc" ] && [ -f "$WORK/runs/glyphs/backbone/model.safetensors" ] \
  && [ -f "$WORK/runs/glyphs/mhr/adapters.safetensors" ] && [ -f "$WORK/runs/glyphs/lora/adapters.safetensors" ] \
  && [ ! -e "$WORK/runs/glyphs/poly" ] \
  && "$NCD" -h "$WORK/runs/fewshot/results.nc" > "$J/results.cdl" && grep -q 'sweep_status = "complete"' "$J/results.cdl" \
  && "$NCD" -h "$WORK/runs/analyze/alignment.nc" > "$J/alignment.cdl" \
  && grep -q 'double cosine(method, task, task_b)' "$J/alignment.cdl" \
  && grep -q "^## Few-shot accuracy" "$WORK/runs/report/report.md" && [ -s "$WORK/runs/report/accuracy_vs_shots.png" ] \
  && [ -s "$WORK/runs/report/alignment_cosine.png" ] && [ "$(grep -c '^[a-z]* [0-9]*$' "$J/e1.out")" = 5 ] && ok=0
check $ok "(e) jobs/pipeline.sh --tiny --methods lora,mhr --wait: 5 chained jobs, every output (rc $rc, $((SECONDS - t0)) s)" \
  "$J/e1.out" $(ls "$WORK"/runs/logs/*.out 2>/dev/null)
# a failing stage (a sweep naming a method that does not exist) cancels the rest of the chain
t0=$SECONDS
sed 's/methods: \[lora,/methods: [no-such-method, lora,/' "$R/configs/fewshot_glyphs.yaml" > "$R/configs/fewshot_bad.yaml"
PIPELINE_POLL=1 timeout 300 env -u TESSERA "$R/jobs/pipeline.sh" --out "$WORK/runs2" --fewshot-config "$R/configs/fewshot_bad.yaml" \
  --stages fewshot,analyze,report --wait > "$J/e2.out" 2>&1
rc=$?
ok=1
[ $rc = 1 ] && grep -q "fewshot ([0-9]*) FAILED" "$J/e2.out" && grep -q "analyze ([0-9]*) CANCELLED" "$J/e2.out" \
  && grep -q "report ([0-9]*) CANCELLED" "$J/e2.out" && [ ! -e "$WORK/runs2/report/report.md" ] \
  && grep -q "no-such-method" "$WORK"/runs2/logs/fewshot-*.out && ok=0
check $ok "(e) a failing fewshot stage cancels analyze and report; --wait exits 1 (rc $rc, $((SECONDS - t0)) s)" "$J/e2.out" \
  $(ls "$WORK"/runs2/logs/*.out 2>/dev/null)

echo "test_slurm: $PASSED passed, $FAILED failed ($((SECONDS - T_START)) s)"
[ $FAILED = 0 ]
