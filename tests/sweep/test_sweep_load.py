#!/usr/bin/python3
"""A few-shot sweep under load (`tessera fewshot`, 4 ranks, oversubscribed): 10,000 small entries
(the linear probe on a tiny random backbone, 1 training step, 16x16 glyphs: 5 tasks x 8 shot counts x
250 seeds), each through the real entry path (configuration, trainer, evaluation, journal, results file).
- every entry ran exactly once: one progress line per entry, the counter's indices 1..10000 each once,
  the (task, shots, seed) of the lines = the product, no duplicate, none missing; every rank took entries;
- the journal holds exactly 10,000 entries, named by the product, nothing else (no temporary left), and
  each one's rank and test accuracy are those of the results file;
- the results file: coordinates = the configured lists (each value once), status 1 for all 10,000,
  "complete", entries_done = entries_total = 10000, the rank of every entry = the rank of its progress line;
- --collect (4 ranks) assembles the same file from the journal alone.
Prints the measured figures: the sweep's wall time and time per entry, the journal's cost per entry
(the sweep's own "journal:" line: time in the journal write, fsync, rename and directory fsync, summed over
ranks), the results file's assembly from 10,000 journal entries (--collect).

usage: test_sweep_load.py TESSERA_BINARY SOURCE_DIR MPIEXEC
"""
import glob
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time

import numpy as np
import xarray as xr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from tiny_glyphs import check, counts, run  # noqa: E402

RANKS = 4
TASKS = ["latin", "greek", "cyrillic", "ogham", "runic"]
SHOTS = list(range(1, 9))
SEEDS = list(range(250))
N = len(TASKS) * len(SHOTS) * len(SEEDS)
VARS = ["status", "test_accuracy", "best_val_accuracy", "best_val_step", "test_accuracy_at_best_val",
        "final_train_loss", "trainable_parameters", "steps_run", "rank"]
LINE = re.compile(r"fewshot \[rank (\d+)\] (\d+)/(\d+) probe +(\S+) +(\d+) shots seed (\d+): test ([0-9.]+)")


def st_metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def line_of(text, prefix):
    m = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return m[-1] if m else "(missing)"


def main():
    exe, src, mpiexec = sys.argv[1], sys.argv[2], sys.argv[3]
    tmp = tempfile.mkdtemp(prefix="tsr_sweep_load_")
    try:
        body(exe, src, mpiexec, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    return 1 if counts["failed"] or counts["passed"] == 0 else 0


def body(exe, src, mpiexec, tmp):
    suite = os.path.join(tmp, "glyphs.nc")
    # 13 renderings per class: 2 validation, 3 test, 8 training (the largest shot count)
    r = run([exe, "prepare", "glyphs", "--out", suite, "--scripts", ",".join(TASKS), "--classes", "5",
             "--min-classes", "5", "--examples", "13", "--val", "2", "--test", "3", "--size", "16"])
    check(r.returncode == 0, "prepare a glyph suite of 5 scripts, 16x16")
    if r.returncode:
        print(r.stderr[-3000:])
        return
    out = os.path.join(tmp, "load")
    sets = ["model.image_size=16", "model.patch_size=8", "model.channels=1", "model.dim=8", "model.depth=1",
            "model.heads=1", "model.mlp_dim=8", "model.num_classes=5", "data.mean=[0.12]", "data.std=[0.28]",
            "data.dataset=suite", f"data.path={suite}", "data.augment=false", "run.threads=1", "run.init=",
            "fewshot.methods=[probe]", "fewshot.tasks=[" + ",".join(TASKS) + "]",
            "fewshot.shots=[" + ",".join(map(str, SHOTS)) + "]", "fewshot.seeds=[" + ",".join(map(str, SEEDS)) + "]",
            "fewshot.lr_grid=[]", f"fewshot.method_dir={src}/configs/methods", "train.steps=1", "train.eval_every=1",
            "train.batch_size=4", "train.warmup_steps=0", f"run.output_dir={out}"]

    def fewshot(flags=()):
        args = [mpiexec, "-n", str(RANKS), "--oversubscribe", "--allow-run-as-root", exe, "fewshot",
                os.path.join(src, "configs/fewshot_glyphs.yaml")]
        for s in sets:
            args += ["--set", s]
        return args + list(flags)

    t0 = time.time()
    r = run(fewshot(), timeout=1200)
    wall = time.time() - t0
    check(r.returncode == 0 and f"{N} entries run in" in r.stderr and "(0 failed)" in r.stderr and
          f"{N} of {N} entries finished" in r.stderr, f"{N} entries at {RANKS} ranks: exit 0, none failed")
    if r.returncode:
        print(r.stderr[-3000:])
        return
    print(f"measured: sweep of {N} entries at {RANKS} ranks: {wall:.1f} s wall (launch to exit), "
          f"{1e3 * wall / N:.2f} ms per entry", flush=True)
    print("measured: " + line_of(r.stderr, "fewshot: journal:"), flush=True)
    print("measured: " + line_of(r.stderr, "fewshot: timing:"), flush=True)
    mj = re.search(r"journal: (\d+) entries written, ([0-9.]+) ms in all", r.stderr)
    mt = re.search(r"entries ([0-9.]+) s \(", r.stderr)
    if mj and mt:
        rank_ms = 1e3 * RANKS * float(mt.group(1)) / N
        print(f"measured: the journal is {float(mj.group(2)) / int(mj.group(1)):.2f} ms of the {rank_ms:.2f} ms of "
              f"rank time per entry ({RANKS} ranks x the entries' wall time / {N})", flush=True)
    check(mj is not None and int(mj.group(1)) == N, f"the sweep reports its journal writes ({N})")

    # every entry ran exactly once
    lines = [LINE.search(ln) for ln in r.stderr.splitlines()]
    lines = [m for m in lines if m]
    idx = sorted(int(m.group(2)) for m in lines)
    keys = [(m.group(4), int(m.group(5)), int(m.group(6))) for m in lines]
    want = {(t, k, s) for t in TASKS for k in SHOTS for s in SEEDS}
    check(len(lines) == N and idx == list(range(1, N + 1)) and all(int(m.group(3)) == N for m in lines),
          f"{len(lines)} progress lines, the counter handed out indices 1..{N} each once")
    check(len(set(keys)) == len(keys) == N and set(keys) == want,
          f"every (task, shots, seed) ran exactly once ({len(set(keys))} distinct of {len(keys)} lines, "
          f"{len(want - set(keys))} missing)")
    ran_by = {(m.group(4), int(m.group(5)), int(m.group(6))): int(m.group(1)) for m in lines}
    per_rank = {q: sum(1 for v in ran_by.values() if v == q) for q in range(RANKS)}
    check(all(per_rank[q] > 0 for q in range(RANKS)), f"every rank took entries {per_rank}")

    # the journal: exactly N entries, named by the product, nothing else
    jdir = os.path.join(out, "results.nc.entries")
    files = os.listdir(jdir)
    names = {f"probe__{t}__k{k}__s{s}.st" for (t, k, s) in want}
    check(len(files) == N and set(files) == names, f"the journal holds exactly {N} entries ({len(files)} files, "
          f"{len(set(files) - names)} unexpected, {len(names - set(files))} missing)")

    # the results file
    ds = xr.open_dataset(os.path.join(out, "results.nc"))
    check(dict(ds.sizes).get("method") == 1 and dict(ds.sizes).get("task") == len(TASKS) and
          dict(ds.sizes).get("shots") == len(SHOTS) and dict(ds.sizes).get("seed") == len(SEEDS),
          f"dimensions {dict(ds.sizes)}")
    coords = {"method": ["probe"], "task": TASKS, "shots": SHOTS, "seed": SEEDS}
    check(all(list(ds[c].values) == v and len(set(ds[c].values.tolist())) == len(v) for c, v in coords.items()),
          "coordinates = the configured lists, each value once")
    st = np.nan_to_num(ds.status.values, nan=0)
    check(st.shape == (1, len(TASKS), len(SHOTS), len(SEEDS)) and bool(np.all(st == 1)) and
          ds.attrs.get("sweep_status") == "complete" and int(ds.attrs.get("entries_done", -1)) == N and
          int(ds.attrs.get("entries_total", -1)) == N, f"status 1 for all {N} entries, complete, {N} of {N} done")
    acc = ds.test_accuracy.values
    check(bool(np.all(np.isfinite(acc) & (acc >= 0) & (acc <= 1))), "every test accuracy finite in [0, 1]")
    rk = ds["rank"].values
    bad = sum(1 for ti, t in enumerate(TASKS) for ki, k in enumerate(SHOTS) for si, s in enumerate(SEEDS)
              if int(rk[0, ti, ki, si]) != ran_by.get((t, k, s), -1))
    check(bad == 0, f"every entry's rank in the file is that of its progress line ({bad} differ)")
    bad = 0
    for ti, t in enumerate(TASKS):
        for ki, k in enumerate(SHOTS):
            for si, s in enumerate(SEEDS):
                md = st_metadata(os.path.join(jdir, f"probe__{t}__k{k}__s{s}.st"))
                bad += int(md.get("rank", -1)) != int(rk[0, ti, ki, si]) or \
                    float(md.get("test_accuracy", "nan")) != float(acc[0, ti, ki, si])
    check(bad == 0, f"every journal entry's rank and test accuracy = the file's ({bad} differ)")

    # assembly from the journal alone
    os.rename(os.path.join(out, "results.nc"), os.path.join(out, "first.nc"))
    t0 = time.time()
    c = run(fewshot(["--collect"]), timeout=1200)
    wall = time.time() - t0
    check(c.returncode == 0 and f"{N} finished" in c.stderr and "0 entries run" in c.stderr,
          f"--collect at {RANKS} ranks reads the {N} journal entries")
    if c.returncode:
        print(c.stderr[-3000:])
        return
    print(f"measured: --collect of {N} entries: {wall:.1f} s wall (launch to exit)", flush=True)
    print("measured: " + line_of(c.stderr, "fewshot: timing:"), flush=True)
    e = xr.open_dataset(os.path.join(out, "results.nc"))
    check(e.attrs.get("sweep_status") == "complete" and
          all(np.array_equal(ds[v].values, e[v].values, equal_nan=True) for v in VARS),
          "and assembles the same results")


if __name__ == "__main__":
    sys.exit(main())
