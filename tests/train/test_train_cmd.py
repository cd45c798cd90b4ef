#!/usr/bin/python3
"""`tessera train` (full training of a backbone) on the one training loop, with real data (Debian's
Fashion-MNIST) and real ranks:
- a small backbone trains (the loss of the last logging window is below the first), writes
  backbone.safetensors in the requested naming (Hugging Face here), train_log.csv and config.yaml,
  and `tessera predict` reads the backbone back (its classifier included);
- checkpoints every N steps; --resume after a completed run continues from the newest checkpoint and
  ends with the same parameters;
- 2 ranks reach the same parameters as 1 rank (the same global batch for any rank count).

usage: test_train_cmd.py TESSERA_BINARY SOURCE_DIR MPIEXEC
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch"))
import st  # noqa: E402

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
TOL = 1e-4
passed = failed = 0


def check(cond, what):
    global passed, failed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    passed += bool(cond)
    failed += not cond


def sets(out, extra=()):
    s = ["model.dim=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "train.steps=40",
         "train.batch_size=32", "train.warmup_steps=4", "train.log_every=10", "train.eval_every=40",
         "train.eval_limit=300", "train.lr=2e-3", "model.naming=hf", "run.threads=1", "run.checkpoint_every=20",
         f"run.output_dir={out}"] + list(extra)
    return [a for x in s for a in ("--set", x)]


def train(exe, mpiexec, n, out, extra=(), resume=False):
    c = [mpiexec, "-n", str(n), "--oversubscribe", "--allow-run-as-root", exe, "train", "configs/default.yaml"]
    c += sets(out, extra) + (["--resume"] if resume else [])
    return subprocess.run(c, env=ENV, capture_output=True, text=True, timeout=600)


def losses(stdout):
    import re
    return [float(x) for x in re.findall(r"step +\d+/\d+  loss ([0-9.]+)", stdout)]


def maxdiff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def main():
    exe, src, mpiexec = sys.argv[1], sys.argv[2], sys.argv[3]
    os.chdir(src)
    with tempfile.TemporaryDirectory() as tmp:
        one = os.path.join(tmp, "one")
        r = train(exe, mpiexec, 1, one)
        ls = losses(r.stdout)
        check(r.returncode == 0, "tessera train: exit 0" + ("" if r.returncode == 0 else r.stderr[-1500:]))
        check(len(ls) >= 2 and ls[-1] < ls[0], f"training loss goes down: {ls[:1]} -> {ls[-1:]}")
        want = ["backbone.safetensors", "train_log.csv", "config.yaml"]
        check(all(os.path.exists(os.path.join(one, f)) for f in want), "wrote " + ", ".join(want))
        check(os.path.exists(os.path.join(one, "checkpoints", "step-00000040", "DONE")), "checkpoint of step 40")
        bb = os.path.join(one, "backbone.safetensors")
        t1, meta = st.load(bb) if os.path.exists(bb) else ({}, {})
        check(any(k.startswith("vit.") or k.startswith("embeddings.") for k in t1) and
              any("classifier" in k for k in t1), f"Hugging Face naming with a classifier ({len(t1)} tensors)")
        with open(os.path.join(one, "train_log.csv")) as f:
            head = f.readline().strip()
        check(head == "step,lr_factor,train_loss,grad_norm,test_accuracy,images_per_s", f"curve header: {head}")

        # predict reads the backbone back (Fashion-MNIST's test images as a netCDF dataset)
        pred = os.path.join(tmp, "logits.safetensors")
        x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
        inp = os.path.join(tmp, "input.safetensors")
        st.save(inp, {"input": x})
        rp = subprocess.run([exe, "predict", "--checkpoint", bb, "--input", inp, "--output", pred, "--set",
                             "model.heads=2"], env=ENV, capture_output=True, text=True, timeout=300)
        lg = st.load(pred)[0].get("logits") if rp.returncode == 0 and os.path.exists(pred) else None
        check(lg is not None and lg.shape == (3, 10) and np.all(np.isfinite(lg)),
              "tessera predict reads backbone.safetensors: logits (3, 10)" + ("" if rp.returncode == 0 else rp.stderr[-800:]))

        # --resume of a finished run: from the newest checkpoint (step 40), the same parameters
        rr = train(exe, mpiexec, 1, one, resume=True)
        check(rr.returncode == 0 and "resume: from the checkpoint of step 40" in rr.stdout, "--resume from step 40")
        t2 = st.load(bb)[0] if rr.returncode == 0 else {}
        check(t2 and maxdiff(t1, t2) == 0.0, "resumed run ends with the same parameters")

        # 2 ranks: the same global batch, the same parameters
        two = os.path.join(tmp, "two")
        r2 = train(exe, mpiexec, 2, two)
        check(r2.returncode == 0, "2 ranks: exit 0" + ("" if r2.returncode == 0 else r2.stderr[-1500:]))
        if r2.returncode == 0:
            # Summation order differs between 1 and 2 ranks; Adam's first updates g / (|g| + eps) amplify
            # that for weights whose gradient is near 0, so the bound is on the mean difference (a
            # different batch moves every weight by about lr per step: mean differences of ~1e-3).
            t3 = st.load(os.path.join(two, "backbone.safetensors"))[0]
            mean = float(np.mean(np.concatenate([np.abs(t1[k] - t3[k]).ravel() for k in t1])))
            check(mean <= TOL / 10, f"2 ranks vs 1 rank: mean abs parameter difference {mean:.2e} <= {TOL / 10:.0e} "
                  f"(max {maxdiff(t1, t3):.2e})")
    print(f"test_train_cmd: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
