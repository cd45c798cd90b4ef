#!/usr/bin/python3
"""Ranks fail together: a failure on one rank only (writing train_log.csv or a checkpoint, reading the
data, loading the configuration) must stop every rank quickly with a non-zero status, never hang the job.
Each case runs `tessera pretrain` under mpirun on a small glyph suite, twice: with a plain mpirun, which
must return non-zero, and with mpirun told not to kill the other ranks once one exits non-zero (Open
MPI's orte_abort_on_non_zero_status=0), where every rank must end by itself with a non-zero status. Each
rank's stdout, stderr and exit status go to files of their own (a small /bin/sh wrapper). Checks:
- the job ends in under MAX_SECONDS; one still running after TIMEOUT seconds (TSR_FAIL_TOGETHER_TIMEOUT,
  default 120) has hung: a failure; the main thread of each stuck rank is shown with gdb, then the
  process group is killed;
- the failing rank logs "tessera: error: <message>" naming the file (or setting);
- every other rank logs "tessera: error: stopping: rank R failed: <message>".
Cases: (a) run.output_dir/train_log.csv is a directory; (b) run.output_dir/checkpoints is a regular file
and a checkpoint is due at step 2; (c) rank 1 only reads a truncated copy of the suite (MPMD: data.path
differs per rank); (d) rank 1 only has a bad setting (model.dim=-3) or a configuration file that does
not exist; (e) (a) at 3 ranks. The time each failing job took to end is printed at the end.

usage: test_fail_together.py TESSERA_BINARY SOURCE_DIR MPIEXEC
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
# Open MPI's mpirun kills the other ranks once one exits non-zero, which would hide a rank that does not
# end by itself; with this it waits for every rank (a rank that would hang, hangs), but returns 0.
NO_ABORT = dict(ENV, OMPI_MCA_orte_abort_on_non_zero_status="0")
TIMEOUT = int(os.environ.get("TSR_FAIL_TOGETHER_TIMEOUT", "120"))  # seconds before a job counts as hung
MAX_SECONDS = min(60, TIMEOUT)  # a failing job must end within this
SCRIPTS = ["latin", "greek", "cyrillic"]
passed = failed = 0


def check(cond, what):
    global passed, failed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    passed += bool(cond)
    failed += not cond


def sets(suite, out, extra=()):
    """The --set arguments of a small, quick pre-training run on the suite."""
    s = ["model.image_size=28", "model.patch_size=7", "model.channels=1", "model.dim=32", "model.depth=2",
         "model.heads=2", "model.mlp_dim=64", "model.num_classes=15", "data.dataset=suite", f"data.path={suite}",
         "data.role=source", "data.augment=false", "data.mean=[0.12]", "data.std=[0.28]",
         "suite.source=[" + ", ".join(SCRIPTS) + "]", "train.steps=6", "train.batch_size=16",
         "train.warmup_steps=1", "train.log_every=2", "train.eval_every=1000", "train.eval_limit=10",
         "run.threads=1", f"run.output_dir={out}"] + list(extra)
    args = []
    for x in s:
        args += ["--set", x]
    return args


def launcher(mpiexec):
    return [mpiexec, "--oversubscribe", "--allow-run-as-root"]


def rank(tmp, exe, *args):
    """One application context's command: tessera under a small shell that keeps each rank's stdout,
    stderr and exit status apart (DIR/out.R, DIR/err.R, DIR/status.R; R is the rank in MPI_COMM_WORLD)."""
    sh = ('r=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${PMIX_RANK:-x}}}; d=$1; shift; '
          '"$@" >"$d/out.$r" 2>"$d/err.$r"; s=$?; echo $s >"$d/status.$r"; exit $s')
    return ["/bin/sh", "-c", sh, "rank", tmp, exe] + list(args)


def stacks(sid):
    """gdb backtraces (main thread) of the tessera processes of session sid (a hung job)."""
    pids = subprocess.run(["pgrep", "-s", str(sid), "-x", "tessera"], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            bt = subprocess.run(["gdb", "-p", pid, "-batch", "-ex", "thread 1", "-ex", "bt 20"], capture_output=True,
                                text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            bt = f"(gdb failed: {e})"
        frames = [ln for ln in bt.splitlines() if ln.startswith("#")]
        print(f"--- main thread of hung process {pid}:\n" + "\n".join(frames), flush=True)


def job(argv, env):
    """Runs argv in its own session; returns (status or None when it hung, seconds, mpirun's output).
    A hung job's ranks are shown with gdb, then the whole session is killed."""
    t0 = time.time()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=TIMEOUT)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        dt = time.time() - t0
        stacks(p.pid)
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return None, dt, out
    return rc, time.time() - t0, out


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def failing_job(name, tmp, argv_of, nranks, bad, names):
    """One case, run twice: argv_of(logs) is the mpirun command line whose ranks write into logs.
    1. plain mpirun: it returns non-zero in time;
    2. mpirun waiting for every rank (NO_ABORT): every rank ends by itself in time with a non-zero status,
       rank bad logs its error naming names, every other rank logs "stopping: rank bad failed: ...".
    Rank bad fails, and its message must mention names."""
    before = failed
    runs = []
    for mode, env in (("mpirun", ENV), ("every rank by itself", NO_ABORT)):
        logs = os.path.join(tmp, "logs", name.split(".")[0] + ("" if env is ENV else "_noabort"))
        os.makedirs(logs)
        rc, dt, out = job(argv_of(logs), env)
        runs.append((mode, rc, dt, out, logs))
        print(f"{name} [{mode}]: " + (f"ended after {dt:.1f} s, mpirun status {rc}" if rc is not None
                                     else f"HUNG: killed after {dt:.1f} s"), flush=True)
        check(rc is not None and dt < MAX_SECONDS, f"{name} [{mode}]: the job ended in {dt:.1f} s "
              f"(< {MAX_SECONDS} s; a job still running after {TIMEOUT} s is killed)")
    _, rc, _, _, _ = runs[0]
    check(rc is not None and rc != 0, f"{name}: mpirun returned non-zero (status {rc})")
    _, rc, _, out, logs = runs[1]
    status = [read(os.path.join(logs, f"status.{r}")) for r in range(nranks)]
    status = [int(x) if x and x.strip().lstrip("-").isdigit() else None for x in status]
    check(rc is not None and all(s is not None and s != 0 for s in status),
          f"{name}: every rank exited by itself with a non-zero status: {status}")
    err = [(read(os.path.join(logs, f"err.{r}")) or "").splitlines() for r in range(nranks)]
    own = [e for e in err[bad] if e.startswith("tessera: error:") and not e.startswith("tessera: error: stopping:")]
    check(any(names in e for e in own), f"{name}: rank {bad} logs its error naming '{os.path.basename(names)}': "
          + (own[0] if own else "(none)"))
    for r in range(nranks):
        if r == bad:
            continue
        stop = [e for e in err[r] if e.startswith(f"tessera: error: stopping: rank {bad} failed:")]
        check(any(names in e for e in stop), f"{name}: rank {r} logs: " + (stop[0] if stop else
                                                                            f"(no 'stopping: rank {bad} failed' line)"))
    if failed > before:
        for mode, rc, dt, out, logs in runs:
            print(f"[{mode}] mpirun's output:\n" + "\n".join(out.splitlines()[-20:]))
            for r in range(nranks):
                print(f"[{mode}] rank {r} status {(read(os.path.join(logs, f'status.{r}')) or 'none').strip()}; stderr:\n"
                      + "\n".join((read(os.path.join(logs, f"err.{r}")) or "").splitlines()[-10:]))
                print(f"[{mode}] rank {r} stdout (last lines):\n"
                      + "\n".join((read(os.path.join(logs, f"out.{r}")) or "").splitlines()[-4:]))
        sys.stdout.flush()
    return [(mode, dt if rc is not None else None) for mode, rc, dt, _, _ in runs]


def main():
    exe, src, mpiexec = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = os.path.join(src, "configs/pretrain_backbone_glyphs.yaml")
    tmp = tempfile.mkdtemp(prefix="tsr_failtog_")
    times = []
    try:
        suite = os.path.join(tmp, "glyphs.nc")
        r = subprocess.run([exe, "prepare", "glyphs", "--out", suite, "--scripts", ",".join(SCRIPTS), "--classes",
                            "5", "--min-classes", "5", "--examples", "10", "--val", "2", "--test", "3"],
                           env=ENV, capture_output=True, text=True, timeout=600)
        check(r.returncode == 0, "prepare a small glyph suite")
        if r.returncode:
            print(r.stdout[-2000:], r.stderr[-2000:])
            return 1
        mpi = launcher(mpiexec)
        # the same run with nothing wrong ends normally, every rank with status 0
        ok, logs = os.path.join(tmp, "ok"), os.path.join(tmp, "logs", "ok")
        os.makedirs(logs)
        rc, dt, out = job(mpi + ["-n", "2"] + rank(logs, exe, "pretrain", cfg, *sets(suite, ok)), ENV)
        st = [(read(os.path.join(logs, f"status.{r}")) or "").strip() for r in range(2)]
        good = rc == 0 and st == ["0", "0"] and os.path.exists(os.path.join(ok, "train_log.csv"))
        check(good, f"reference: the 2-rank run ends normally (status {rc}, ranks {st}, {dt:.1f} s)")
        if not good:
            print(out[-2000:], read(os.path.join(logs, "err.0")), read(os.path.join(logs, "err.1")))

        # (a) and (e): train_log.csv is a directory, at 2 and at 3 ranks: rank 0 cannot create it
        for n, name in ((2, "a. train_log.csv is a directory"), (3, "e. train_log.csv is a directory, 3 ranks")):
            out = os.path.join(tmp, f"log{n}")
            os.makedirs(os.path.join(out, "train_log.csv"))
            times.append((name, failing_job(name, tmp, lambda logs: mpi + ["-n", str(n)] + rank(
                logs, exe, "pretrain", cfg, *sets(suite, out)), n, 0, os.path.join(out, "train_log.csv"))))

        # (b) checkpoints is a regular file and a checkpoint is due at step 2 (of 6): rank 0 cannot write it
        name, out = "b. checkpoints is a regular file", os.path.join(tmp, "ckpt")
        os.makedirs(out)
        open(os.path.join(out, "checkpoints"), "w").close()
        times.append((name, failing_job(name, tmp, lambda logs: mpi + ["-n", "2"] + rank(
            logs, exe, "pretrain", cfg, *sets(suite, out, ["run.checkpoint_every=2"])), 2, 0,
            os.path.join(out, "checkpoints"))))

        # (c) rank 1 reads a truncated copy of the suite (MPMD: data.path differs per rank)
        name, bad, out = "c. rank 1 reads a truncated suite", os.path.join(tmp, "truncated.nc"), os.path.join(tmp, "read")
        with open(suite, "rb") as f, open(bad, "wb") as g:
            g.write(f.read(1000))
        times.append((name, failing_job(name, tmp, lambda logs: mpi + ["-n", "1"] + rank(
            logs, exe, "pretrain", cfg, *sets(suite, out)) + [":", "-n", "1"] + rank(
            logs, exe, "pretrain", cfg, *sets(bad, out)), 2, 1, bad)))

        # (d) rank 1 only has a bad setting, or a configuration file that does not exist
        name, out = "d1. rank 1 has model.dim=-3", os.path.join(tmp, "conf")
        times.append((name, failing_job(name, tmp, lambda logs: mpi + ["-n", "1"] + rank(
            logs, exe, "pretrain", cfg, *sets(suite, out)) + [":", "-n", "1"] + rank(
            logs, exe, "pretrain", cfg, *sets(suite, out, ["model.dim=-3"])), 2, 1, "model.dim")))
        name, missing = "d2. rank 1 has a configuration file that does not exist", os.path.join(tmp, "no_such.yaml")
        times.append((name, failing_job(name, tmp, lambda logs: mpi + ["-n", "1"] + rank(
            logs, exe, "pretrain", cfg, *sets(suite, out)) + [":", "-n", "1"] + rank(
            logs, exe, "pretrain", missing, *sets(suite, out)), 2, 1, missing)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print("time to end each failing job (plain mpirun / every rank by itself):")
        for name, t in times:
            print(f"  {name}: " + " / ".join(f"{dt:.1f} s" if dt is not None else "HUNG" for _, dt in t))
        print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
