#!/usr/bin/python3
"""Few-shot sweeps (`tessera fewshot` under mpirun, real ranks) on a small glyph suite built by
`tessera prepare glyphs`, with every method of the default sweep (shared LoRA, Poly and MHR start from
adapters pre-trained here by `tessera pretrain`):
- 1 rank vs 2 ranks: every result and curve identical (the dynamic distribution changes only which
  rank ran an entry);
- the file opens in xarray with the expected dimensions, coordinates, fill values and attributes;
- kill and resume: SIGKILL of the 2-rank job while entries run leaves no results file (a previous one
  would be untouched); rerunning skips the journaled entries and ends equal to the uninterrupted run;
- stop signal: SIGTERM makes the ranks stop taking entries, write a file marked "partial" with fill
  values for entries not run, and exit 3 (requeue);
- corruption: a damaged journal entry runs again; a journal entry of another configuration is stale;
- job arrays: --shard 0/2 and 1/2 then --collect assemble the same file;
- bad input: an unknown method, a task not in the suite, duplicate shots: clear errors, exit non-zero.

usage: test_fewshot.py TESSERA_BINARY SOURCE_DIR MPIEXEC
"""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import xarray as xr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from tiny_glyphs import ENV, check, main_wrapper, model_sets, run  # noqa: E402

METHODS = ["lora", "shared_lora", "poly", "mhr", "mhr_z", "mhr_mu", "adapter", "mosa", "probe", "full"]
VARS = ["status", "test_accuracy", "best_val_accuracy", "best_val_step", "test_accuracy_at_best_val",
        "final_train_loss", "trainable_parameters", "train_loss", "val_accuracy", "test_accuracy_curve"]


def main(exe, src, mpiexec, tmp, suite, pre):
    model = model_sets(suite)

    cfg = os.path.join(src, "configs/fewshot_glyphs.yaml")
    sweep = model + ["model.num_classes=5", "fewshot.tasks=[ogham, runic]", "fewshot.shots=[1, 2]",
                     "fewshot.seeds=[0, 1]", f"fewshot.pretrained={pre}", f"run.init={pre}/backbone/model.safetensors",
                     "train.steps=6", "train.batch_size=8", "train.eval_every=2", "train.warmup_steps=1",
                     f"fewshot.method_dir={src}/configs/methods"]

    def fewshot(out, n, extra=(), flags=()):
        args = [mpiexec, "-n", str(n), "--oversubscribe", "--allow-run-as-root", exe, "fewshot", cfg]
        for s in sweep + [f"run.output_dir={out}"] + list(extra):
            args += ["--set", s]
        return args + list(flags)

    out1, out2 = os.path.join(tmp, "r1"), os.path.join(tmp, "r2")
    r1 = run(fewshot(out1, 1))
    check(r1.returncode == 0, "sweep at 1 rank")
    r2 = run(fewshot(out2, 2))
    check(r2.returncode == 0, "sweep at 2 ranks")
    if r1.returncode or r2.returncode:
        print(r1.stderr[-3000:], r2.stderr[-3000:])
        return
    a = xr.open_dataset(os.path.join(out1, "results.nc"))
    b = xr.open_dataset(os.path.join(out2, "results.nc"))
    check(dict(a.sizes) == {"method": 10, "task": 2, "shots": 2, "seed": 2, "eval_step": 3},
          f"dimensions {dict(a.sizes)}")
    check(list(a.method.values) == METHODS and list(a.task.values) == ["ogham", "runic"],
          "method and task are string coordinates")
    check(list(a.shots.values) == [1, 2] and list(a.seed.values) == [0, 1] and list(a.eval_step.values) == [2, 4, 6],
          "shots, seed and eval_step coordinates")
    check(a.attrs.get("sweep_status") == "complete" and int(a.attrs.get("entries_done")) == 80 and
          int(a.attrs.get("entries_total")) == 80, "sweep_status complete, 80 of 80 entries")
    check(a.attrs.get("Conventions") == "CF-1.8" and "git_commit" in a.attrs and "config" in a.attrs and
          a.attrs.get("world_size") == "1" and b.attrs.get("world_size") == "2" and "blas" in a.attrs,
          "provenance attributes (Conventions, git_commit, config, world_size, blas)")
    check(float(a.test_accuracy.sel({"method": "mhr", "task": "ogham", "shots": 2, "seed": 1})) >= 0,
          "sel by method and task names")
    same = all(np.array_equal(a[v].values, b[v].values, equal_nan=True) for v in VARS)
    check(same, "1 rank and 2 ranks: identical results and curves")
    check(set(np.unique(b["rank"].values)) == {0, 1}, "both ranks ran entries at 2 ranks")
    acc = a.test_accuracy.values
    check(np.all((acc >= 0) & (acc <= 1)), "accuracies in [0, 1]")
    tp = a.trainable_parameters.sel({"task": "ogham", "shots": 1, "seed": 0})
    check(int(tp.sel({"method": "mhr_z"})) < int(tp.sel({"method": "mhr"})) < int(tp.sel({"method": "full"})),
          "trainable parameters: mhr_z < mhr < full")
    check(int(tp.sel({"method": "probe"})) == 5 * 32 + 5, "linear probe trains the head only (5 x 32 + 5)")
    ref = a

    # kill and resume
    out3 = os.path.join(tmp, "r3")
    p = subprocess.Popen(fewshot(out3, 2), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    jdir = os.path.join(out3, "results.nc.entries")
    t0 = time.time()
    while time.time() - t0 < 300 and p.poll() is None and len(glob.glob(jdir + "/*.st")) < 12:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    njour = len(glob.glob(jdir + "/*.st"))
    check(0 < njour < 80, f"killed with {njour} entries journaled")
    check(not os.path.exists(os.path.join(out3, "results.nc")), "a killed sweep leaves no results file behind")
    r = run(fewshot(out3, 2))
    import re
    got = re.search(r"; (\d+) finished", r.stderr)
    nres = int(got.group(1)) if got else -1
    # (ranks may finish an entry or two after the launcher is killed, before they notice)
    check(r.returncode == 0 and njour <= nres < 80, f"rerun resumes from the journal ({nres} entries finished)")
    c = xr.open_dataset(os.path.join(out3, "results.nc"))
    check(all(np.array_equal(ref[v].values, c[v].values, equal_nan=True) for v in VARS),
          "resumed sweep equals the uninterrupted one")
    r = run(fewshot(out3, 2))
    check(r.returncode == 0 and "80 finished" in r.stderr and "0 entries run" in r.stderr,
          "a finished sweep reruns nothing")

    # corruption and stale entries
    victim = sorted(glob.glob(jdir + "/*.st"))[3]
    with open(victim, "r+b") as f:
        f.truncate(40)
    r = run(fewshot(out3, 2, ["fewshot.methods=[" + ", ".join(METHODS) + "]"]))
    check(r.returncode == 0 and "damaged" in r.stderr and "1 entries run" in r.stderr,
          "a damaged journal entry runs again")
    c = xr.open_dataset(os.path.join(out3, "results.nc"))
    check(all(np.array_equal(ref[v].values, c[v].values, equal_nan=True) for v in VARS), "and the result is the same")
    r = run(fewshot(out3, 1, ["optim.head_lr=0.02", "fewshot.methods=[probe]"]))
    check(r.returncode == 0 and "another configuration" in r.stderr and "8 entries run" in r.stderr,
          "entries made with another configuration are stale and run again")

    # stop signal (as Slurm's --signal=USR2 delivers it to the ranks): partial file, exit 3
    out4 = os.path.join(tmp, "r4")
    p = subprocess.Popen(fewshot(out4, 2, ["train.steps=60", "train.eval_every=20"]), env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    jdir4 = os.path.join(out4, "results.nc.entries")
    t0 = time.time()
    while time.time() - t0 < 300 and p.poll() is None and len(glob.glob(jdir4 + "/*.st")) < 4:
        time.sleep(0.02)
    kids = subprocess.run(["pgrep", "-s", str(p.pid), "-f", "tessera fewshot"], capture_output=True, text=True).stdout.split()
    for k in kids:
        try:
            os.kill(int(k), signal.SIGUSR2)
        except ProcessLookupError:
            pass
    p.communicate(timeout=300)
    check(p.returncode == 3, f"SIGUSR2: exit status 3 (got {p.returncode})")
    d = xr.open_dataset(os.path.join(out4, "results.nc"))
    ndone = int(d.attrs.get("entries_done", -1))
    st = np.nan_to_num(d.status.values, nan=0)
    check(d.attrs.get("sweep_status") == "partial" and 0 < ndone < 80 and int(st.sum()) == ndone,
          f"stopped sweep marked partial ({ndone} of 80 done)")
    check(bool(np.all(np.isnan(d.test_accuracy.values[st == 0]))), "entries not run hold fill values")
    check(bool(np.all(np.isfinite(d.test_accuracy.values[st == 1]))), "entries run hold values")

    # job arrays: two shards, then collect
    out5 = os.path.join(tmp, "r5")
    ok = all(run(fewshot(out5, 1, flags=["--shard", f"{i}/2"])).returncode == 0 for i in range(2))
    check(ok and not os.path.exists(os.path.join(out5, "results.nc")), "shards write the journal only")
    r = run(fewshot(out5, 2, flags=["--collect"]))
    e = xr.open_dataset(os.path.join(out5, "results.nc"))
    check(r.returncode == 0 and e.attrs.get("sweep_status") == "complete" and
          all(np.array_equal(ref[v].values, e[v].values, equal_nan=True) for v in VARS),
          "--collect assembles the shards' entries into the same file")

    # bad input
    r = run(fewshot(os.path.join(tmp, "bad"), 1, ["fewshot.methods=[lora, nosuch]"]))
    check(r.returncode != 0 and "nosuch" in r.stderr, "unknown method named in the error")
    r = run(fewshot(os.path.join(tmp, "bad"), 1, ["fewshot.tasks=[ogham, klingon]"]))
    check(r.returncode != 0 and "klingon" in r.stderr, "task not in the suite named in the error")
    r = run(fewshot(os.path.join(tmp, "bad"), 1, ["fewshot.shots=[1, 1]"]))
    check(r.returncode != 0 and "fewshot.shots" in r.stderr, "duplicate shot count refused")
    r = run(fewshot(os.path.join(tmp, "bad"), 1, [f"fewshot.pretrained={tmp}/nowhere"]))
    check(r.returncode != 0 and "nowhere" in r.stderr and "shared_lora" in r.stderr,
          "missing pre-trained adapters named in the error")


if __name__ == "__main__":
    main_wrapper(main, "tsr_fewshot_")
