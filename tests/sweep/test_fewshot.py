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
- bad input: an unknown method, a task not in the suite, duplicate shots, pre-trained adapters made by
  another configuration, a learning-rate selection task that is a test task: clear errors, exit non-zero;
- matched methods: MoSA trains the adapter's parameters, MoSA x MHR those of MHR, LoRA from scratch, shared
  LoRA and MHR-mu the same single LoRA;
- the protocol: the test accuracy at the best validation step is that of the restored parameters (equal to
  the curve's point there); with train.patience an entry stops exactly patience evaluations after its best;
  the learning-rate selection runs every method x multiplier on the validation tasks, is journaled and
  resumable, and the results file holds its mean accuracies, the chosen multiplier (the best mean) and the
  resulting learning rates.

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

METHODS = ["lora", "shared_lora", "poly", "mhr", "mhr_z", "mhr_mu", "adapter", "mosa", "sparse", "mosa_mhr",
           "probe", "full"]
NM = len(METHODS)
NE = NM * 2 * 2 * 2  # entries: methods x 2 tasks x 2 shot counts x 2 seeds
VARS = ["status", "test_accuracy", "best_val_accuracy", "best_val_step", "test_accuracy_at_best_val",
        "final_train_loss", "trainable_parameters", "steps_run", "train_loss", "val_accuracy", "test_accuracy_curve"]


def st_metadata(path):
    """The __metadata__ of a safetensors file (a journal entry)."""
    import json
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def at_best(ds):
    """Per entry: the test accuracy curve's value at best_val_step, and test_accuracy_at_best_val."""
    steps = list(ds.eval_step.values)
    got, want = [], []
    for idx in np.ndindex(ds.status.shape):
        if ds.status.values[idx] != 1:
            continue
        k = steps.index(int(ds.best_val_step.values[idx]))
        got.append(float(ds.test_accuracy_at_best_val.values[idx]))
        want.append(float(ds.test_accuracy_curve.values[idx + (k,)]))
    return np.array(got), np.array(want)


def main(exe, src, mpiexec, tmp, suite, pre):
    model = model_sets(suite)

    cfg = os.path.join(src, "configs/fewshot_glyphs.yaml")
    sweep = model + ["model.num_classes=5", "fewshot.tasks=[ogham, runic]", "fewshot.shots=[1, 2]",
                     "fewshot.seeds=[0, 1]", f"fewshot.pretrained={pre}", f"run.init={pre}/backbone/model.safetensors",
                     "train.steps=6", "train.batch_size=8", "train.eval_every=2", "train.warmup_steps=1",
                     f"fewshot.method_dir={src}/configs/methods", "fewshot.lr_grid=[]"]

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
    check(dict(a.sizes) == {"method": NM, "task": 2, "shots": 2, "seed": 2, "eval_step": 3, "lr_multiplier": 1},
          f"dimensions {dict(a.sizes)}")
    check(list(a.method.values) == METHODS and list(a.task.values) == ["ogham", "runic"],
          "method and task are string coordinates")
    check(list(a.shots.values) == [1, 2] and list(a.seed.values) == [0, 1] and list(a.eval_step.values) == [2, 4, 6],
          "shots, seed and eval_step coordinates")
    check(a.attrs.get("sweep_status") == "complete" and int(a.attrs.get("entries_done")) == NE and
          int(a.attrs.get("entries_total")) == NE, f"sweep_status complete, {NE} of {NE} entries")
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
    n = {m: int(tp.sel({"method": m})) for m in METHODS}
    check(n["mosa"] == n["adapter"] and n["mosa_mhr"] == n["mhr"] and n["sparse"] < n["adapter"],
          f"MoSA trains the adapter's parameters ({n['mosa']} = {n['adapter']}), MoSA x MHR those of MHR "
          f"({n['mosa_mhr']} = {n['mhr']}), the sparse baseline fewer ({n['sparse']})")
    check(n["lora"] == n["shared_lora"] == n["mhr_mu"], f"LoRA, shared LoRA and MHR-mu train one LoRA ({n['lora']})")
    got, want = at_best(a)
    check(len(got) == NE and np.allclose(got, want, atol=1e-6),
          "test accuracy at the best validation step = the restored parameters' (the curve's point there)")
    check(bool(np.all(a.steps_run.values == 6)) and
          np.allclose(a.lr_multiplier_chosen.values, 1) and np.allclose(a.head_lr.values, 0.01),
          "no early stop at train.patience 3 within 3 evaluations; no selection: x1, head_lr 0.01")
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
    check(0 < njour < NE, f"killed with {njour} entries journaled")
    check(not os.path.exists(os.path.join(out3, "results.nc")), "a killed sweep leaves no results file behind")
    r = run(fewshot(out3, 2))
    import re
    got = re.search(r"; (\d+) finished", r.stderr)
    nres = int(got.group(1)) if got else -1
    # (ranks may finish an entry or two after the launcher is killed, before they notice)
    check(r.returncode == 0 and njour <= nres < NE, f"rerun resumes from the journal ({nres} entries finished)")
    c = xr.open_dataset(os.path.join(out3, "results.nc"))
    check(all(np.array_equal(ref[v].values, c[v].values, equal_nan=True) for v in VARS),
          "resumed sweep equals the uninterrupted one")
    r = run(fewshot(out3, 2))
    check(r.returncode == 0 and f"{NE} finished" in r.stderr and "0 entries run" in r.stderr,
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
    check(d.attrs.get("sweep_status") == "partial" and 0 < ndone < NE and int(st.sum()) == ndone,
          f"stopped sweep marked partial ({ndone} of {NE} done)")
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
    r = run(fewshot(os.path.join(tmp, "bad"), 1, ['fewshot.set=["shared_lora:adapter.lora_rank=2"]']))
    check(r.returncode != 0 and "shared_lora" in r.stderr and "adapter.lora_rank: 4 vs 2" in r.stderr,
          "pre-trained adapters made by another configuration refused, the differing key named")
    r = run(fewshot(os.path.join(tmp, "bad"), 1, ["fewshot.lr_grid=[0.5, 2]", "fewshot.lr_tasks=[runic]"]))
    check(r.returncode != 0 and "'runic' is also a task of the sweep" in r.stderr,
          "a learning-rate selection task that is a test task is refused")

    # the learning-rate selection, then the test entries at the chosen rates; early stopping
    out6 = os.path.join(tmp, "r6")
    grid = [0.5, 2.0]
    sel = ["fewshot.methods=[probe, lora, mosa_mhr]", "fewshot.tasks=[ogham]", "fewshot.lr_tasks=[runic]",
           "fewshot.lr_grid=[0.5, 2]", "fewshot.lr_shots=[2]", "fewshot.lr_seeds=[0, 1]", "fewshot.seeds=[0]",
           "train.steps=12", "train.patience=1"]
    r = run(fewshot(out6, 2, sel))
    check(r.returncode == 0 and "learning-rate selection: 3 methods x 2 multipliers x 1 tasks" in r.stderr,
          "sweep with a learning-rate selection at 2 ranks")
    if r.returncode:
        print(r.stderr[-3000:])
        return
    f = xr.open_dataset(os.path.join(out6, "results.nc"))
    jl = glob.glob(os.path.join(out6, "results.nc.entries", "lr__*.st"))
    check(len(jl) == 3 * 2 * 2 and list(f.lr_multiplier.values) == grid and
          bool(np.all(f.lr_selection_entries.values == 2)), "12 selection entries journaled, 2 per method and multiplier")
    mean = {}
    for p in jl:
        md = st_metadata(p)
        name = os.path.basename(p)[4:].split("__")
        key = (name[0], float(name[4][1:-3]))
        mean.setdefault(key, []).append(float(md["test_accuracy_at_best_val"]))
    ok = True
    for i, m in enumerate(["probe", "lora", "mosa_mhr"]):
        accs = [np.mean(mean[(m, g)]) for g in grid]
        ok &= np.allclose(f.lr_selection_accuracy.values[i], accs)
        best = max(range(2), key=lambda g: (accs[g], -abs(np.log(grid[g])), -grid[g]))
        ok &= float(f.lr_multiplier_chosen.values[i]) == grid[best]
        ok &= np.isclose(float(f.head_lr.values[i]), 0.01 * grid[best])
        ok &= np.isclose(float(f.adapter_lr.values[i]), 3e-3 * grid[best])
    check(ok, "the file's selection means are the journal's, the chosen multiplier is the best mean (ties: the "
          f"smaller), the learning rates are base x chosen ({list(f.lr_multiplier_chosen.values)})")
    sr, bs = f.steps_run.values.ravel(), f.best_val_step.values.ravel()
    check(bool(np.all(sr == np.minimum(12, bs + 2))) and bool(np.any(sr < 12)),
          f"train.patience 1: every entry stops one evaluation after its best (steps run {list(sr)})")
    got, want = at_best(f)
    check(np.allclose(got, want, atol=1e-6), "early-stopped entries: test accuracy at the best step restored")
    r = run(fewshot(out6, 1, sel))
    check(r.returncode == 0 and "12 finished, 0 to run" in r.stderr and "0 entries run" in r.stderr,
          "a finished selection and sweep rerun nothing")
    g = xr.open_dataset(os.path.join(out6, "results.nc"))
    check(all(np.array_equal(f[v].values, g[v].values, equal_nan=True) for v in VARS + ["lr_selection_accuracy"]),
          "and give the same file at 1 rank")

    # train.test_every_eval false: the test split only at a new best validation accuracy and at the end;
    # every figure of the protocol unchanged
    # (no early stopping, so that evaluations after a best that are not the last exist)
    out7, out8 = os.path.join(tmp, "r7"), os.path.join(tmp, "r8")
    r = run(fewshot(out7, 2, sel + ["train.patience=0", "train.test_every_eval=false"]))
    r8 = run(fewshot(out8, 2, sel + ["train.patience=0"]))
    check(r.returncode == 0 and r8.returncode == 0, "sweeps with train.test_every_eval false and true")
    if r.returncode or r8.returncode:
        print(r.stderr[-3000:], r8.stderr[-3000:])
        return
    f = xr.open_dataset(os.path.join(out8, "results.nc"))
    h = xr.open_dataset(os.path.join(out7, "results.nc"))
    same = [v for v in VARS + ["lr_selection_accuracy"] if v != "test_accuracy_curve"
            and np.array_equal(f[v].values, h[v].values, equal_nan=True)]
    check(len(same) == len(VARS), f"test_every_eval=false: every other figure identical ({same})")
    fc, hc, vc = f.test_accuracy_curve.values, h.test_accuracy_curve.values, h.val_accuracy.values
    ok, nskip = True, 0
    for idx in np.ndindex(h.status.shape):
        best, n = -1.0, int(np.sum(np.isfinite(vc[idx])))
        for k in range(n):
            new = vc[idx + (k,)] > best
            best = max(best, vc[idx + (k,)])
            want = fc[idx + (k,)] if new or k == n - 1 else np.nan
            nskip += not (new or k == n - 1)
            ok &= np.array_equal(hc[idx + (k,)], want, equal_nan=True)
    check(ok and nskip > 0, f"the test curve holds values exactly at new bests and at the end ({nskip} skipped)")


if __name__ == "__main__":
    main_wrapper(main, "tsr_fewshot_")
