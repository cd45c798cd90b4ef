#!/usr/bin/python3
"""Fault injection with real ranks (2 ranks under mpirun; a tiny backbone on a small glyph suite):
1. one rank SIGKILLed (its own pid, not the launcher's group) during `tessera pretrain` after a checkpoint:
   mpirun ends non-zero within a bound; --resume ends bitwise equal to the uninterrupted run;
2. the same during a few-shot sweep: the job ends; the rerun resumes from the journal and results.nc
   equals the uninterrupted sweep's (every variable but wall time and rank);
3. a torn journal entry (the newest one cut to half, to its header, to 1 byte) next to a stale atomic
   temporary `<entry>.tmp.<dead pid>`: the rerun says the entry is damaged, names it, runs exactly it, and
   the results are the same;
4. disk full on a small tmpfs (skipped, exit 77, when it cannot be mounted): (a) the sweep's journal:
   every rank ends non-zero by itself (the failing one saying "No space left on device" and naming the
   file, the others naming it; no MPI_Abort), the entries written before
   verify, no temporary stays; after freeing, the rerun gives the same results; (b) the results file
   (--collect): every rank says what failed, the earlier results.nc is byte-identical, no RESULTS.tmp
   stays; after freeing, --collect writes the right file; (c) a checkpoint during pretrain: every rank
   says what failed, the earlier checkpoints verify, --resume after freeing ends bitwise equal;
5. the suite on rank 1 only is a directory, an empty file or a FIFO: every rank exits non-zero by itself
   (mpirun told not to kill the others) with rank 1's message;
6. a rank killed at the worst moment, by tessera's own fault point (TESSERA_FAULT_KILL_WRITE, atomic.c):
   inside the write of a checkpoint's state and at the rename of the checkpoint directory (--resume starts
   from the previous checkpoint and ends bitwise equal, no temporary left), inside the write of a journal
   entry (its half-written temporary stays; the rerun completes with equal results) and at the rename of
   results.nc (the rerun publishes the same file, no results.nc.tmp left).
Every job is bounded (JOB_TIMEOUT); a job still running then has hung: its process group is killed and
the check fails. One line per case with its outcome and seconds; exit 1 on any failure.

usage: test_faults.py TESSERA_BINARY SOURCE_DIR MPIEXEC
"""
import glob
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import xarray as xr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch"))
import st  # noqa: E402

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
NO_ABORT = dict(ENV, OMPI_MCA_orte_abort_on_non_zero_status="0")  # mpirun waits for every rank
JOB_TIMEOUT = 90   # seconds: a job running longer has hung
END_BOUND = 30     # seconds: a job with a killed or failing rank must end within this
VARS = ["status", "test_accuracy", "best_val_accuracy", "best_val_step", "test_accuracy_at_best_val",
        "final_train_loss", "trainable_parameters", "steps_run", "train_loss", "val_accuracy", "test_accuracy_curve"]
failed = passed = 0
case_failed = False


def check(cond, what):
    global passed, failed, case_failed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    passed += bool(cond)
    failed += not cond
    case_failed |= not cond


def wrap(logs, argv, exec_=False):
    """argv under a small shell per rank (R: the rank) writing its stdout and stderr to logs/out.R, err.R and
    its exit status to logs/status.R; exec_: the shell execs argv instead, so that logs/pid.R is the rank's pid."""
    sh = ('r=${OMPI_COMM_WORLD_RANK:-x}; d=$1; shift; ' + (
          'echo $$ >"$d/pid.$r"; exec "$@" >"$d/out.$r" 2>"$d/err.$r"' if exec_ else
          '"$@" >"$d/out.$r" 2>"$d/err.$r"; s=$?; echo $s >"$d/status.$r"; exit $s'))
    return ["/bin/sh", "-c", sh, "rank", logs] + list(argv)


def wrap_fault(logs, argv, rank, spec):
    """argv per rank as wrap() (logs/err.R, status.R), rank `rank` with TESSERA_FAULT_KILL_WRITE=spec."""
    sh = ('r=${OMPI_COMM_WORLD_RANK:-x}; d=$1; f=$2; k=$3; shift 3; '
          'if [ "$r" = "$k" ]; then export TESSERA_FAULT_KILL_WRITE="$f"; fi; '
          '"$@" >"$d/out.$r" 2>"$d/err.$r"; s=$?; echo $s >"$d/status.$r"; exit $s')
    return ["/bin/sh", "-c", sh, "rank", logs, spec, str(rank)] + list(argv)


def start(argv, env=ENV):
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(p, timeout=JOB_TIMEOUT):
    """(status, seconds waited, output); status None: hung, the process group killed."""
    t0 = time.time()
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        rc = None
    dt = time.time() - t0
    try:  # nothing of the job outlives it
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return rc, dt, out


def job(argv, env=ENV, timeout=JOB_TIMEOUT):
    rc, dt, out = finish(start(argv, env), timeout)
    if rc is None:
        check(False, f"HUNG after {dt:.0f} s: {' '.join(argv[:8])} ...\n" + out[-1500:])
    return rc, out


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def wait_for(cond, p, limit=60):
    t0 = time.time()
    while time.time() - t0 < limit and p.poll() is None and not cond():
        time.sleep(0.01)
    return cond()


def kill_rank(logs, r):
    pid = int(read(os.path.join(logs, f"pid.{r}")).strip())
    os.kill(pid, signal.SIGKILL)
    return pid


def md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def same_tensors(a, b):
    ta, _ = st.load(a)
    tb, _ = st.load(b)
    return ta.keys() == tb.keys() and all(ta[k].tobytes() == tb[k].tobytes() for k in ta)


def same_results(a, b):
    with xr.open_dataset(a) as x, xr.open_dataset(b) as y:
        return x.attrs.get("sweep_status") == y.attrs.get("sweep_status") == "complete" and \
            all(np.array_equal(x[v].values, y[v].values, equal_nan=True) for v in VARS)


def temporaries(d):
    return [os.path.relpath(p, d) for p in glob.glob(os.path.join(d, "**", "*.tmp*"), recursive=True)]


def fill(mnt, leave):
    """Fills the file system at mnt with mnt/filler until no space is left, then frees `leave` bytes."""
    path = os.path.join(mnt, "filler")
    with open(path, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    try:
        os.truncate(path, max(0, os.path.getsize(path) - leave))
    except OSError:
        pass


def no_space_error(text, where):
    """A 'tessera: error' line naming a file under `where` and the full disk."""
    return [l for l in text.splitlines() if l.startswith("tessera: error") and where in l
            and "No space left on device" in l]


def main():
    exe, src, mpiexec = sys.argv[1], sys.argv[2], sys.argv[3]
    os.chdir(src)
    mpi = [mpiexec, "--oversubscribe", "--allow-run-as-root"]
    tmp = tempfile.mkdtemp(prefix="tsr_faults.")
    mnt = os.path.join(tmp, "mnt")
    mounted = skipped = False
    times = []

    def case(name, body):
        global case_failed
        case_failed = False
        t0 = time.time()
        try:
            body()
        except Exception as e:  # a crash of the test itself fails the case
            check(False, f"{name}: {type(e).__name__}: {e}")
        outcome = "FAIL" if case_failed else "SKIP" if skipped and name.startswith("4.") else "PASS"
        times.append(f"{name}: {outcome} ({time.time() - t0:.1f} s)")
        print("== " + times[-1], flush=True)

    try:
        suite = os.path.join(tmp, "glyphs.nc")
        r = subprocess.run([exe, "prepare", "glyphs", "--out", suite, "--scripts", "latin,greek,cyrillic,ogham,runic",
                            "--classes", "5", "--min-classes", "5", "--examples", "10", "--val", "2", "--test", "3"],
                           env=ENV, capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, "prepare a small glyph suite" + ("" if r.returncode == 0 else r.stderr[-1500:]))
        if r.returncode:
            return 1
        model = ["model.image_size=28", "model.patch_size=7", "model.channels=1", "model.dim=32", "model.depth=2",
                 "model.heads=2", "model.mlp_dim=64", "data.mean=[0.12]", "data.std=[0.28]", "run.threads=1",
                 "data.dataset=suite"]

        def sets(xs):
            a = []
            for x in xs:
                a += ["--set", x]
            return a

        def pretrain(out, path=suite, resume=False):
            return [exe, "pretrain", "configs/pretrain_backbone_glyphs.yaml"] + sets(
                model + [f"data.path={path}", "suite.source=[latin, greek, cyrillic]", "data.role=source",
                         "model.num_classes=15", "data.augment=false", "train.batch_size=16", "train.log_every=10",
                         "train.eval_every=1000", "train.eval_limit=10", "train.steps=200", "run.checkpoint_every=10",
                         "run.keep_checkpoints=3", f"run.output_dir={out}"]) + (["--resume"] if resume else [])

        def fewshot(out, flags=()):
            return [exe, "fewshot", "configs/fewshot_glyphs.yaml"] + sets(
                model + [f"data.path={suite}", "model.num_classes=5", "fewshot.tasks=[ogham, runic]",
                         "fewshot.shots=[1, 2]", "fewshot.seeds=[0, 1]", "fewshot.methods=[lora, adapter, full]",
                         f"fewshot.pretrained={tmp}/none", f"run.init={tmp}/ref_pre/model.safetensors",
                         "train.steps=150", "train.patience=0", "train.batch_size=8", "train.eval_every=50",
                         "train.warmup_steps=1", "fewshot.method_dir=configs/methods", "fewshot.lr_grid=[]",
                         f"run.output_dir={out}"]) + list(flags)

        ne = 3 * 2 * 2 * 2
        ref_pre, ref_sw = os.path.join(tmp, "ref_pre"), os.path.join(tmp, "ref_sw")
        rc, out = job(mpi + ["-n", "2"] + pretrain(ref_pre))
        check(rc == 0, "reference: uninterrupted 2-rank pretrain" + ("" if rc == 0 else out[-1500:]))
        rc, out = job(mpi + ["-n", "2"] + fewshot(ref_sw))
        check(rc == 0, "reference: uninterrupted 2-rank sweep" + ("" if rc == 0 else out[-1500:]))
        if failed:
            return 1
        ref_model, ref_res = os.path.join(ref_pre, "model.safetensors"), os.path.join(ref_sw, "results.nc")

        def one_rank_killed_pretrain():
            out, logs = os.path.join(tmp, "c1"), os.path.join(tmp, "c1_logs")
            os.makedirs(logs)
            p = start(mpi + ["-n", "2"] + wrap(logs, pretrain(out), exec_=True))
            ok = wait_for(lambda: glob.glob(os.path.join(out, "checkpoints", "step-*", "DONE")), p)
            check(ok and p.poll() is None, "pretrain: a checkpoint written while the job runs")
            pid = kill_rank(logs, 1)
            rc, dt, o = finish(p, END_BOUND)
            check(rc is not None and rc != 0, f"pretrain: rank 1 (pid {pid}) killed: mpirun ends in {dt:.1f} s "
                  f"with status {rc} (bound {END_BOUND} s)")
            check(not os.path.exists(os.path.join(out, "model.safetensors")), "the killed run wrote no final model")
            rc, o = job(mpi + ["-n", "2"] + pretrain(out, resume=True))
            check(rc == 0 and "resume: from the checkpoint of step" in o, "--resume completes"
                  + ("" if rc == 0 else o[-1500:]))
            check(rc == 0 and same_tensors(ref_model, os.path.join(out, "model.safetensors")),
                  "killed rank + resumed == uninterrupted, bit for bit")

        def one_rank_killed_sweep():
            out, logs = os.path.join(tmp, "c2"), os.path.join(tmp, "c2_logs")
            os.makedirs(logs)
            jdir = os.path.join(out, "results.nc.entries")
            p = start(mpi + ["-n", "2"] + wrap(logs, fewshot(out), exec_=True))
            wait_for(lambda: len(glob.glob(jdir + "/*.st")) >= 4, p)
            pid = kill_rank(logs, 1)
            rc, dt, o = finish(p, END_BOUND)
            nj = len(glob.glob(jdir + "/*.st"))
            check(rc is not None and rc != 0, f"sweep: rank 1 (pid {pid}) killed with {nj} of {ne} entries journaled: "
                  f"mpirun ends in {dt:.1f} s with status {rc}")
            check(0 < nj < ne and not os.path.exists(os.path.join(out, "results.nc")),
                  "the killed sweep left a partial journal and no results file")
            rc, o = job(mpi + ["-n", "2"] + fewshot(out))
            check(rc == 0 and f"{ne} of {ne} entries finished" in o, "the rerun completes"
                  + ("" if rc == 0 else o[-1500:]))
            check(rc == 0 and same_results(ref_res, os.path.join(out, "results.nc")),
                  "results.nc equals the uninterrupted sweep's")

        def torn_entry():
            jref = os.path.join(ref_sw, "results.nc.entries")
            names = sorted(os.listdir(jref), key=lambda n: (os.stat(os.path.join(jref, n)).st_mtime_ns, n))
            victim = names[-1]
            size = os.path.getsize(os.path.join(jref, victim))
            with open(os.path.join(jref, victim), "rb") as f:
                header = 8 + struct.unpack("<Q", f.read(8))[0]
            dead = 4194000
            while os.path.exists(f"/proc/{dead}"):
                dead -= 1
            for label, cut in (("half", size // 2), ("header only", header), ("1 byte", 1)):
                out = os.path.join(tmp, "c3_" + label.replace(" ", "_"))
                jdir = os.path.join(out, "results.nc.entries")
                shutil.copytree(jref, jdir)
                with open(os.path.join(jdir, victim), "r+b") as f:
                    f.truncate(cut)
                stale = os.path.join(jdir, f"{victim}.tmp.{dead}")
                with open(os.path.join(jref, victim), "rb") as f, open(stale, "wb") as g:
                    g.write(f.read(size // 3))
                rc, o = job(mpi + ["-n", "2"] + fewshot(out))
                damaged = [l for l in o.splitlines() if "damaged" in l]
                check(rc == 0 and len(damaged) == 1 and victim in damaged[0] and "1 entries run" in o,
                      f"torn entry ({label}, {cut} of {size} bytes): the rerun names it damaged and runs exactly it: "
                      + (damaged[0] if damaged else o[-800:]))
                check(rc == 0 and same_results(ref_res, os.path.join(out, "results.nc")),
                      f"torn entry ({label}): results equal the uninterrupted sweep's")
                check(not os.path.exists(stale) or os.path.getsize(stale) == size // 3,
                      f"the stale temporary {os.path.basename(stale)} is ignored or removed")

        def killed_at_the_worst_moment():
            # tessera's own fault point (atomic.c, TESSERA_FAULT_KILL_WRITE): the rank kills itself with SIGKILL in
            # the middle of a file write (the temporary cut to half) or just before the rename that publishes it
            def killed_job(name, argv, rank, spec):
                logs = os.path.join(tmp, name + "_logs")
                os.makedirs(logs)
                rc, dt, o = finish(start(mpi + ["-n", "2"] + wrap_fault(logs, argv, rank, spec)), JOB_TIMEOUT)
                hit = [l for l in read(os.path.join(logs, f"err.{rank}")).splitlines() if "fault injection" in l]
                check(rc is not None and rc != 0 and len(hit) == 1,
                      f"{name}: rank {rank} killed itself ({hit[0].split(': ', 2)[-1] if hit else 'no fault point hit'}); "
                      f"the job ends in {dt:.1f} s with status {rc}")
                return rc
            # pretrain: inside the write of checkpoint 20's state (rank 0 writes it), then at its rename
            for name, spec in (("c6_ckpt_write", "step-00000020.tmp/state.safetensors"),
                               ("c6_ckpt_rename", "checkpoints/step-00000020$")):
                out = os.path.join(tmp, name)
                killed_job(name, pretrain(out), 0, spec)
                ck = os.path.join(out, "checkpoints")
                check(os.path.isdir(os.path.join(ck, "step-00000020.tmp"))
                      and not os.path.exists(os.path.join(ck, "step-00000020")),
                      f"{name}: step 20 stays a temporary (step-00000020.tmp), never a checkpoint")
                rc, o = job(mpi + ["-n", "2"] + pretrain(out, resume=True))
                check(rc == 0 and "resume: from the checkpoint of step 10" in o,
                      f"{name}: --resume starts from step 10" + ("" if rc == 0 else o[-1500:]))
                check(rc == 0 and same_tensors(ref_model, os.path.join(out, "model.safetensors"))
                      and not temporaries(out), f"{name}: resumed == uninterrupted, bit for bit, no temporary left: "
                      + ", ".join(temporaries(out)))
            # sweep: rank 1 inside the write of its third journal entry; rank 0 at the rename of results.nc
            for name, rank, spec in (("c6_journal_write", 1, ".entries/#3"), ("c6_results_rename", 0, "results.nc$")):
                out = os.path.join(tmp, name)
                killed_job(name, fewshot(out), rank, spec)
                res = os.path.join(out, "results.nc")
                check(not os.path.exists(res), f"{name}: no results.nc")
                if name == "c6_journal_write":
                    half = glob.glob(os.path.join(out, "results.nc.entries", "*.st.tmp.*"))
                    check(len(half) == 1, f"{name}: the entry's half-written temporary is there: {half}")
                else:
                    check(os.path.exists(res + ".tmp"), f"{name}: the finished but unpublished results.nc.tmp is there")
                rc, o = job(mpi + ["-n", "2"] + fewshot(out))
                check(rc == 0 and "damaged" not in o and f"{ne} of {ne} entries finished" in o,
                      f"{name}: the rerun completes (no entry damaged)" + ("" if rc == 0 else o[-1500:]))
                check(rc == 0 and same_results(ref_res, res) and not os.path.exists(res + ".tmp"),
                      f"{name}: results.nc equals the uninterrupted sweep's, no results.nc.tmp left")

        def disk_full():
            nonlocal mounted, skipped
            os.makedirs(mnt)
            m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], capture_output=True, text=True)
            if m.returncode != 0:
                print(f"SKIP  disk full: cannot mount a tmpfs ({(m.stderr or m.stdout).strip()})", flush=True)
                skipped = True
                return
            mounted = True
            # (a) the journal: the disk fills while the sweep runs
            out, logs = os.path.join(mnt, "a"), os.path.join(tmp, "c4a_logs")
            os.makedirs(logs)
            jdir = os.path.join(out, "results.nc.entries")
            p = start(mpi + ["-n", "2"] + wrap(logs, fewshot(out)))
            wait_for(lambda: len(glob.glob(jdir + "/*.st")) >= 3, p)
            fill(mnt, 0)
            rc, dt, o = finish(p, END_BOUND)
            errs = "".join(read(os.path.join(logs, f"err.{r}")) for r in range(2))
            nj = glob.glob(jdir + "/*.st")
            check(rc is not None and rc != 0, f"(a) journal on a full disk: the job ends in {dt:.1f} s, status {rc}, "
                  f"{len(nj)} entries journaled")
            lines = no_space_error(errs, mnt)
            check(len(lines) >= 1, "(a) the error names the file and the full disk: " + (lines[0] if lines else errs[-800:]))
            # a failed journal write stops every rank after its current entry, and the ranks fail together
            # (sweep.c entry_writes_failed): each rank says why, nobody is killed by MPI_Abort
            quiet = [r for r in range(2) if "tessera: error" not in read(os.path.join(logs, f"err.{r}"))]
            check(not quiet and "MPI_ABORT" not in o,
                  f"(a) every rank prints an error of its own (ranks without one: {quiet}; MPI_ABORT in mpirun's "
                  f"output: {'MPI_ABORT' in o})")
            check(not os.path.exists(os.path.join(out, "results.nc.tmp")), "(a) no results.nc.tmp stays behind")
            bad = []
            for e in nj:
                try:
                    st.load(e)
                except Exception as x:  # noqa: BLE001
                    bad.append(f"{os.path.basename(e)}: {x}")
            check(nj and not bad, f"(a) the {len(nj)} entries written before verify" + ("; ".join(bad)))
            left = [t for t in temporaries(out) if ".tmp." in t]
            check(not left and not os.path.exists(os.path.join(out, "results.nc")),
                  "(a) no *.tmp.* temporary and no results file stay behind: " + ", ".join(left))
            os.unlink(os.path.join(mnt, "filler"))
            rc, o = job(mpi + ["-n", "2"] + fewshot(out))
            check(rc == 0 and "damaged" not in o and f"; {len(nj)} finished" in o,
                  f"(a) the rerun takes the {len(nj)} journaled entries as finished (none damaged)")
            check(rc == 0 and same_results(ref_res, os.path.join(out, "results.nc")),
                  "(a) after freeing space the rerun completes with the same results" + ("" if rc == 0 else o[-1500:]))
            shutil.rmtree(out)
            # (b) the results file: --collect with the journal and an earlier complete results.nc on a full disk
            out, logs = os.path.join(mnt, "b"), os.path.join(tmp, "c4b_logs")
            os.makedirs(logs)
            shutil.copytree(os.path.join(ref_sw, "results.nc.entries"), os.path.join(out, "results.nc.entries"))
            for f in ("results.nc", "config.yaml"):
                shutil.copy(os.path.join(ref_sw, f), out)
            before = md5(os.path.join(out, "results.nc"))
            fill(mnt, 32 * 1024)  # room for config.yaml (every rank writes it), not for the results file
            p = start(mpi + ["-n", "2"] + wrap(logs, fewshot(out, ["--collect"])), NO_ABORT)
            rc, dt, o = finish(p, END_BOUND)
            status = [read(os.path.join(logs, f"status.{r}")).strip() for r in range(2)]
            check(rc is not None and all(s not in ("", "0") for s in status),
                  f"(b) results file on a full disk: every rank ends by itself non-zero ({status}) in {dt:.1f} s")
            errs = [read(os.path.join(logs, f"err.{r}")) for r in range(2)]
            own = [[l for l in e.splitlines() if l.startswith("tessera: error:") and "results.nc" in l] for e in errs]
            check(all(own), "(b) every rank names the results file: " + " | ".join(x[0] if x else "(none)" for x in own))
            lines = no_space_error("".join(errs), mnt)
            check(len(lines) >= 1, "(b) and the full disk: " + (lines[0] if lines else "(no 'No space left on device')"))
            check(md5(os.path.join(out, "results.nc")) == before, "(b) the earlier results.nc is byte-identical")
            left = temporaries(out)
            check(not left, "(b) no results.nc.tmp or other temporary stays behind: " + ", ".join(left))
            os.unlink(os.path.join(mnt, "filler"))
            rc, o = job(mpi + ["-n", "2"] + fewshot(out, ["--collect"]))
            check(rc == 0 and same_results(ref_res, os.path.join(out, "results.nc")),
                  "(b) after freeing space --collect writes the same results" + ("" if rc == 0 else o[-1500:]))
            shutil.rmtree(out)
            # (c) a checkpoint during pretrain: the disk fills after the first checkpoint
            out, logs = os.path.join(mnt, "c"), os.path.join(tmp, "c4c_logs")
            os.makedirs(logs)
            p = start(mpi + ["-n", "2"] + wrap(logs, pretrain(out)), NO_ABORT)
            wait_for(lambda: glob.glob(os.path.join(out, "checkpoints", "step-*", "DONE")), p)
            fill(mnt, 0)
            rc, dt, o = finish(p, END_BOUND)
            status = [read(os.path.join(logs, f"status.{r}")).strip() for r in range(2)]
            check(rc is not None and all(s not in ("", "0") for s in status),
                  f"(c) checkpoint on a full disk: every rank ends by itself non-zero ({status}) in {dt:.1f} s")
            errs = [read(os.path.join(logs, f"err.{r}")) for r in range(2)]
            own = [[l for l in e.splitlines() if l.startswith("tessera: error:")] for e in errs]
            check(all(own) and all(no_space_error("\n".join(x), mnt) or "checkpoint" in x[0] for x in own),
                  "(c) every rank says what failed: " + " | ".join(x[0] if x else "(none)" for x in own))
            check(any(no_space_error(e, mnt) for e in errs), "(c) naming the full disk")
            done = sorted(glob.glob(os.path.join(out, "checkpoints", "step-*[0-9]")))
            bad = []
            for d in done:
                try:
                    st.load(os.path.join(d, "state.safetensors"))
                except Exception as x:  # noqa: BLE001
                    bad.append(f"{os.path.basename(d)}: {x}")
            check(done and not bad, f"(c) the earlier checkpoints ({len(done)}) verify" + "; ".join(bad))
            left = temporaries(out)
            check(not left, "(c) no step-N.tmp or temporary stays behind: " + ", ".join(left))
            os.unlink(os.path.join(mnt, "filler"))
            rc, o = job(mpi + ["-n", "2"] + pretrain(out, resume=True))
            check(rc == 0 and "resume: from the checkpoint of step" in o and "skipping" not in o,
                  "(c) --resume starts from the newest checkpoint, none skipped")
            check(rc == 0 and same_tensors(ref_model, os.path.join(out, "model.safetensors")),
                  "(c) after freeing space --resume ends bitwise equal" + ("" if rc == 0 else o[-1500:]))

        def bad_suite_on_rank1():
            d = os.path.join(tmp, "c5")
            os.makedirs(os.path.join(d, "dir.nc"))
            open(os.path.join(d, "empty.nc"), "w").close()
            os.mkfifo(os.path.join(d, "fifo.nc"))
            for kind in ("dir", "empty", "fifo"):
                bad, logs = os.path.join(d, f"{kind}.nc"), os.path.join(d, f"logs_{kind}")
                os.makedirs(logs)
                out = os.path.join(d, f"out_{kind}")
                argv = mpi + ["-n", "1"] + wrap(logs, pretrain(out)) + [":", "-n", "1"] + wrap(logs, pretrain(out, bad))
                t0 = time.time()
                rc, o = job(argv, NO_ABORT, timeout=END_BOUND)
                status = [read(os.path.join(logs, f"status.{r}")).strip() for r in range(2)]
                e0, e1 = read(os.path.join(logs, "err.0")), read(os.path.join(logs, "err.1"))
                own = [l for l in e1.splitlines() if l.startswith("tessera: error:") and bad in l]
                stop = [l for l in e0.splitlines() if l.startswith("tessera: error: stopping: rank 1 failed:") and bad in l]
                check(rc is not None and all(s not in ("", "0") for s in status) and own and stop,
                      f"suite on rank 1 is {kind}: every rank non-zero ({status}) in {time.time() - t0:.1f} s; "
                      + (own[0] if own else "rank 1: (no error naming the file)") + " / "
                      + (stop[0][:60] + "..." if stop else "rank 0: (no 'stopping: rank 1 failed')"))

        case("1. one rank SIGKILLed during pretrain", one_rank_killed_pretrain)
        case("2. one rank SIGKILLed during a sweep", one_rank_killed_sweep)
        case("3. torn journal entry + stale temporary", torn_entry)
        case("4. disk full (tmpfs)", disk_full)
        case("6. killed inside a write / before a rename (checkpoint, journal entry, results file)",
             killed_at_the_worst_moment)
        case("5. suite unreadable on rank 1 (directory, empty, FIFO)", bad_suite_on_rank1)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", mnt])
        shutil.rmtree(tmp, ignore_errors=True)
        for t in times:
            print(t)
        print(f"{passed} passed, {failed} failed" + (" (disk-full case skipped)" if skipped else ""))
    return 1 if failed or not passed else 77 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
