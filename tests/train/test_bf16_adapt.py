#!/usr/bin/python3
"""model.precision end to end (small ViT on Fashion-MNIST, the settings of test_methods.py): a backbone
is first trained briefly in fp32 (tessera train, 150 steps; a random backbone would barely matter to the
result: its blocks add little to the residual stream, so even negated weights went unnoticed), then LoRA
and MHR adapters are trained on it for 60 steps on a label-permuted task (tessera adapt, a zero head) with
the frozen backbone in fp32 and in bf16: the final test accuracies agree within 0.05 (same data, same
seed: the difference comes only from bf16 rounding in the forward and input-gradient products; 500 test
images), and so do the training losses of every logging window (mean of 10 steps) within 0.01 (seen:
3e-4; the accuracy alone is a blunt check here: halving fc1's bf16 weights moved it by 0.002 but the
losses by 0.036); auto logs both timings and its decision; full
fine-tuning refuses bf16 naming the key and keeps fp32 under auto. The bf16 model keeps its block weights in
bf16 only: its model.safetensors still holds them in fp32 bit for bit as run.init has them (read again from
the file), and so does its training-state checkpoint, from which --resume continues. On a machine without a bf16 product
(no oneDNN, or a CPU it cannot run bf16 on) explicit bf16 must be refused with a message naming
model.precision, and the comparison is skipped.

usage: test_bf16_adapt.py TESSERA_BINARY SOURCE_DIR
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch"))
import st  # noqa: E402
import numpy as np  # noqa: E402

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
SMALL = ["model.dim=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "train.steps=60",
         "train.batch_size=32", "train.warmup_steps=4", "train.log_every=10", "train.eval_every=60",
         "train.eval_limit=500", "optim.adapter_lr=5e-3", "optim.head_lr=5e-3", "optim.backbone_lr=1e-3",
         "run.threads=2", "data.tasks=1"]
TOL = 0.05
LOSS_TOL = 0.01
MARK = "precision: block weights qkv, proj, fc1, fc2 in bf16"  # the log line of a bf16 model
passed = failed = 0


def check(cond, what):
    global passed, failed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if cond:
        passed += 1
    else:
        failed += 1


def adapt(exe, cfg, out, extra=(), resume=False):
    args = [exe, "adapt", cfg] + (["--resume"] if resume else [])
    for s in SMALL + [f"run.output_dir={out}"] + list(extra):
        args += ["--set", s]
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    acc = re.findall(r"mean test accuracy over \d+ tasks ([0-9.]+)", r.stdout)
    return r.returncode, float(acc[-1]) if acc else None, r.stdout + r.stderr


def losses(log):
    return [float(x) for x in re.findall(r"step +\d+/\d+  loss ([0-9.]+)", log)]


def check_bf16_outputs(exe, cfg, out, backbone, init):
    """A bf16 run's model.safetensors and state checkpoint hold the block weights of run.init bit for bit; --resume."""
    bw = st.load(backbone)[0]
    mw = st.load(os.path.join(out, "model.safetensors"))[0]
    names = [k for k in bw if re.match(r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.weight$", k)]
    same = len(names) == 8 and all(k in mw and mw[k].dtype == bw[k].dtype and (mw[k] == bw[k]).all() for k in names)
    check(same, f"bf16: model.safetensors holds the {len(names)} fp32 block weights of run.init bit for bit")
    sv = st.load(os.path.join(out, "checkpoints", "step-00000060", "state.safetensors"))[0]["model"]
    flat = np.concatenate([bw[k].ravel() for k in names])
    check(sv.dtype == np.float32 and np.isin(flat, sv).all() and int(np.count_nonzero(sv)) >= flat.size,
          "bf16: the training-state checkpoint holds the fp32 block weights (not zeros)")
    rc, _, log = adapt(exe, cfg, out, init + ["model.precision=bf16", "run.checkpoint_every=30"], resume=True)
    m2 = st.load(os.path.join(out, "model.safetensors"))[0] if rc == 0 else {}
    check(rc == 0 and "resume: from the checkpoint of step 60" in log and all(
        k in m2 and (m2[k] == mw[k]).all() for k in mw), "bf16: --resume from the checkpoint, the same parameters")
    if rc != 0:
        print(log[-2000:])


def main():
    exe, src = sys.argv[1], sys.argv[2]
    cfgs = os.path.join(src, "configs/methods")
    with tempfile.TemporaryDirectory() as tmp:
        bb = os.path.join(tmp, "backbone")
        args = [exe, "train", os.path.join(src, "configs/default.yaml")]
        for s in SMALL[:4] + ["train.steps=150", "train.batch_size=64", "train.lr=2e-3", "train.warmup_steps=10",
                              "train.eval_every=150", "train.log_every=50", "train.eval_limit=200",
                              "run.threads=2", f"run.output_dir={bb}"]:
            args += ["--set", s]
        r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
        check(r.returncode == 0, "tessera train: a small fp32 backbone")
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:])
            return 1
        init = ["run.init=" + os.path.join(bb, "backbone.safetensors"), "run.reset_head=true", "data.task_offset=1"]
        # does this machine have a bf16 product? (explicit bf16 either runs or is refused by name)
        rc, _, log = adapt(exe, os.path.join(cfgs, "lora.yaml"), os.path.join(tmp, "probe16"),
                           ["model.precision=bf16", "train.steps=1", "train.eval_every=1", "train.eval_limit=10"])
        if rc != 0:
            check("model.precision bf16" in log and "set model.precision to fp32" in log,
                  "no bf16 product here: explicit bf16 refused naming model.precision")
            print(log[-1500:])
            print("SKIP  bf16 vs fp32 (no bf16 matrix product on this machine)")
        else:
            for method in ("lora", "mhr"):
                cfg = os.path.join(cfgs, method + ".yaml")
                res = {}
                for p in ("fp32", "bf16"):
                    ck = ["run.checkpoint_every=30"] if p == "bf16" and method == "lora" else []
                    rc, acc, log = adapt(exe, cfg, os.path.join(tmp, f"{method}_{p}"), init + [f"model.precision={p}"] + ck)
                    check(rc == 0 and acc is not None, f"{method} {p}: exits 0 with a test accuracy")
                    if rc != 0:
                        print(log[-3000:])
                    res[p] = (acc, log)
                a32, a16 = res["fp32"][0], res["bf16"][0]
                check(MARK in res["bf16"][1] and MARK not in res["fp32"][1],
                      f"{method}: the bf16 run holds the block weights in bf16, the fp32 run does not")
                l32, l16 = losses(res["fp32"][1]), losses(res["bf16"][1])
                dl = max((abs(a - b) for a, b in zip(l32, l16)), default=float("inf"))
                check(len(l32) == len(l16) >= 5 and dl <= LOSS_TOL,
                      f"{method}: training losses per logging window within {LOSS_TOL} (max |diff| {dl:.4f})")
                if a32 is not None and a16 is not None:
                    check(abs(a32 - a16) <= TOL, f"{method}: final test accuracy fp32 {a32:.4f}, bf16 {a16:.4f} "
                          f"(|diff| {abs(a32 - a16):.4f} <= {TOL})")
                if method == "lora" and res["bf16"][0] is not None:
                    check_bf16_outputs(exe, cfg, os.path.join(tmp, "lora_bf16"), os.path.join(bb, "backbone.safetensors"),
                                       init)
        # auto: a decision with its reason (both timings when the CPU has native bf16)
        rc, acc, log = adapt(exe, os.path.join(cfgs, "lora.yaml"), os.path.join(tmp, "auto"),
                             ["model.precision=auto", "train.steps=2", "train.eval_every=2", "train.eval_limit=10"])
        m = re.search(r"model\.precision auto: (fp32|bf16) \(([^\n]*)", log)
        check(rc == 0 and m is not None, "auto: exits 0 and logs its decision: " + (m.group(0) if m else "none"))
        if m and "representative product" in m.group(2):
            t = re.search(r"fp32 ([0-9.]+) ms, bf16 ([0-9.]+) ms", m.group(2))
            check(t is not None and (m.group(1) == "bf16") == (float(t.group(1)) > 1.10 * float(t.group(2))),
                  "auto: the decision follows the logged timings and the 10% margin")
        # full fine-tuning stays fp32
        full = os.path.join(cfgs, "full.yaml")
        short = ["train.steps=2", "train.eval_every=2", "train.eval_limit=10"]
        rc, _, log = adapt(exe, full, os.path.join(tmp, "full16"), ["model.precision=bf16"] + short)
        check(rc != 0 and "model.precision bf16 applies to a frozen backbone only" in log,
              "full fine-tuning: explicit bf16 refused naming model.precision")
        rc, _, log = adapt(exe, full, os.path.join(tmp, "fullauto"), ["model.precision=auto"] + short)
        check(rc == 0 and "model.precision auto: fp32 (full fine-tuning" in log and MARK not in log,
              "full fine-tuning: auto stays fp32 and says why")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
