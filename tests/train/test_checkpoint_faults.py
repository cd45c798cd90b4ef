#!/usr/bin/python3
"""Checkpoints under faults (docs/RELIABILITY.md), with `tessera train` on a tiny backbone (Fashion-MNIST):
1. a corrupt newest checkpoint (one bit flipped in its data) is skipped on --resume with a warning naming it;
   the run resumes from the previous one and ends bit for bit equal to the uninterrupted run;
2. NaNs planted in the newer checkpoints (their checksums then fail; or in a file without checksums, whose
   values are checked finite): a run that then diverges names, as the last good checkpoint, one that verifies;
3. a checkpoint written before checksums existed (no 'tessera_crc32') is resumed from, with a warning;
4. disk full while rank 0 writes a checkpoint (2 ranks; `ulimit -f` on rank 0, with a stale temporary from a
   killed run in step-N.tmp): both ranks exit non-zero within the timeout, each prints a non-empty error that
   names the checkpoint, and no step-N.tmp stays behind.

usage: test_checkpoint_faults.py TESSERA_BINARY SOURCE_DIR MPIEXEC
"""
import glob
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch"))
import st  # noqa: E402

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
passed = failed = 0


def check(cond, what):
    global passed, failed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    passed += bool(cond)
    failed += not cond


SETS = ["model.dim=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "train.steps=6",
        "train.batch_size=16", "train.warmup_steps=1", "train.log_every=1", "train.eval_every=6",
        "train.eval_limit=100", "train.lr=2e-3", "run.threads=1", "run.checkpoint_every=2",
        "run.keep_checkpoints=3"]


def argv(exe, out, resume=False):
    a = [exe, "train", "configs/default.yaml"]
    for s in SETS + [f"run.output_dir={out}"]:
        a += ["--set", s]
    return a + (["--resume"] if resume else [])


def run(a, env=None, timeout=900):
    try:
        return subprocess.run(a, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(a, 124, e.stdout or "", (e.stderr or "") + "\nTIMEOUT")


def state(out, step):
    return os.path.join(out, "checkpoints", "step-%08d" % step, "state.safetensors")


def data_start(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def flip(path, at, mask=0x10):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ mask]))


def plant_nan(path, index=100):
    with open(path, "r+b") as f:
        f.seek(data_start(path) + 4 * index)
        f.write(struct.pack("<f", float("nan")))


def same_backbone(a, b):
    ta, _ = st.load(os.path.join(a, "backbone.safetensors"))
    tb, _ = st.load(os.path.join(b, "backbone.safetensors"))
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k].view(np.uint32), tb[k].view(np.uint32)) for k in ta)


def err_lines(text):
    return [l for l in text.splitlines() if "error:" in l]


def main():
    exe, src, mpiexec = sys.argv[1], sys.argv[2], sys.argv[3]
    os.chdir(src)
    tmp = tempfile.mkdtemp(prefix="tsr_ckpt_faults.")
    try:
        full = os.path.join(tmp, "full")
        r = run(argv(exe, full))
        check(r.returncode == 0, "uninterrupted run: exit 0" + ("" if r.returncode == 0 else r.stderr[-1500:]))
        _, meta = st.load(state(full, 6))
        check("tessera_crc32" in meta and len(meta["tessera_crc32"].split()) == 1 + 3,
              "a checkpoint carries its checksums in __metadata__ (header + 3 tensors)")

        # 1. the newest checkpoint corrupt: skipped, resumed from step 4, bit for bit
        b = os.path.join(tmp, "corrupt")
        shutil.copytree(full, b)
        os.unlink(os.path.join(b, "backbone.safetensors"))
        flip(state(b, 6), data_start(state(b, 6)) + 5000)
        r = run(argv(exe, b, resume=True))
        out = r.stdout + r.stderr
        check(r.returncode == 0, "resume past a corrupt checkpoint: exit 0" + ("" if r.returncode == 0 else out[-1500:]))
        check("skipping the checkpoint" in out and "step-00000006" in out and "fails its checksum" in out,
              "the corrupt checkpoint is named in a warning, with the tensor that fails")
        check("resume: from the checkpoint of step 4" in out, "resumed from the previous complete checkpoint (4)")
        check(r.returncode == 0 and same_backbone(full, b), "corrupt newest skipped + resumed == uninterrupted, bit for bit")

        # 2. NaN planted in steps 4 and 6; then the run diverges: the message names step 2, which verifies
        c = os.path.join(tmp, "nan")
        shutil.copytree(full, c)
        plant_nan(state(c, 6))
        plant_nan(state(c, 4))
        r = run(argv(exe, c, resume=True), env=dict(ENV, TESSERA_FAULT_NAN_STEP="3"))
        out = r.stdout + r.stderr
        div = [l for l in out.splitlines() if "diverged" in l]
        check(r.returncode != 0 and len(div) >= 1, "a NaN loss after resuming stops the run non-zero")
        check(len(div) >= 1 and "step-00000002" in div[0] and "verified" in div[0] and "step-00000006" not in div[0]
              and "step-00000004" not in div[0], "the divergence message names a checkpoint that verifies: "
              + (div[0] if div else "(none)"))
        # a NaN in a file without checksums (so that only the value check can see it) is refused as well
        c2 = os.path.join(tmp, "nan_nocrc")
        shutil.copytree(full, c2)
        t, m = st.load(state(c2, 6))
        m.pop("tessera_crc32")
        t["model"][7] = np.nan
        st.save(state(c2, 6), t, m)
        r = run(argv(exe, c2, resume=True))
        out = r.stdout + r.stderr
        check(r.returncode == 0 and "step-00000006" in out and "value 7 is nan" in out
              and "resume: from the checkpoint of step 4" in out,
              "a checkpoint holding a NaN is skipped even without checksums")

        # 3. a checkpoint from before checksums: resumed from, with a warning
        d = os.path.join(tmp, "legacy")
        shutil.copytree(full, d)
        os.unlink(os.path.join(d, "backbone.safetensors"))
        t, m = st.load(state(d, 6))
        m.pop("tessera_crc32")
        st.save(state(d, 6), t, m)
        r = run(argv(exe, d, resume=True))
        out = r.stdout + r.stderr
        check(r.returncode == 0 and "written before checkpoints carried checksums" in out
              and "resume: from the checkpoint of step 6" in out, "a checkpoint without checksums: read, with a warning")
        check(r.returncode == 0 and same_backbone(full, d), "... and its parameters are the same")

        # 4. disk full on rank 0 (ulimit -f: writes past 64 KiB fail with EFBIG, SIGXFSZ ignored) while a
        # killed run's temporary sits in step-00000002.tmp
        e = os.path.join(tmp, "full_disk")
        stale = os.path.join(e, "checkpoints", "step-00000002.tmp")
        os.makedirs(stale)
        open(os.path.join(stale, "state.safetensors.tmp.99999"), "wb").close()
        shell = "trap '' XFSZ; ulimit -f 64; exec \"$@\""
        a = [mpiexec, "--oversubscribe", "--allow-run-as-root", "-n", "1", "bash", "-c", shell, "bash"] + argv(exe, e) + \
            [":", "-n", "1"] + argv(exe, e)
        r = run(a, timeout=600)
        errs = err_lines(r.stdout + r.stderr)
        check(r.returncode not in (0, 124), f"disk full: the job exits non-zero within the timeout (rc {r.returncode})")
        check(len(errs) >= 2 and all(l.split("error:", 1)[1].strip() for l in errs),
              "every error line says something: " + " | ".join(errs)[:600])
        check(any("stopping: rank 0 failed" in l and "checkpoint of step 2" in l for l in errs) and
              any("checkpoint of step 2" in l and "stopping" not in l for l in errs),
              "both ranks name the checkpoint that failed")
        left = glob.glob(os.path.join(e, "checkpoints", "*.tmp")) + glob.glob(os.path.join(e, "checkpoints", "*", "*.tmp.*"))
        check(not left, "no step-N.tmp or temporary stays behind: " + ", ".join(left))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
