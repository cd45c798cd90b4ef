#!/usr/bin/python3
"""Every method trains: `tessera adapt` with each configs/methods/*.yaml on a small ViT (random backbone,
Fashion-MNIST label-permutation tasks) must exit 0, lower its training loss (mean of the last 10 steps
below the mean of the first 10), and write its outputs; then
the few-shot variants start from pre-trained adapters on held-out tasks (5 shots per class):
Poly/MHR fine-tune (fresh routing rows), MHR-z (only the rows), MHR-mu (skills averaged), shared LoRA
fine-tuned, LoRA from scratch.

usage: test_methods.py TESSERA_BINARY SOURCE_DIR
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
SMALL = ["model.dim=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "train.steps=60",
         "train.batch_size=32", "train.warmup_steps=4", "train.log_every=10", "train.eval_every=40",
         "train.eval_limit=200", "optim.adapter_lr=5e-3", "optim.head_lr=5e-3", "optim.backbone_lr=1e-3",
         "run.threads=2", "data.tasks=1"]
passed = failed = 0


def check(cond, what):
    global passed, failed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if cond:
        passed += 1
    else:
        failed += 1


def adapt(exe, cfg, out, extra=()):
    args = [exe, "adapt", cfg]
    for s in SMALL + [f"run.output_dir={out}"] + list(extra):
        args += ["--set", s]
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    # the mean training loss of the first and of the last logging window (10 steps each)
    losses = [float(x) for x in re.findall(r"step +\d+/\d+  loss ([0-9.]+)", r.stdout)]
    if r.returncode != 0 or len(losses) < 2:
        print(r.stdout[-3000:], r.stderr[-3000:])
        return None
    tp = re.search(r"trainable parameters (\d+)", r.stdout)
    return losses[0], losses[-1], int(tp.group(1)) if tp else -1


def main():
    exe, src = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in sorted(glob.glob(os.path.join(src, "configs/methods/*.yaml"))):
            name = os.path.basename(cfg)[:-5]
            out = os.path.join(tmp, name)
            res = adapt(exe, cfg, out)
            check(res is not None, f"{name}: exits 0")
            if res is None:
                continue
            first, last, tp = res
            check(last < first, f"{name}: training loss {first:.4f} -> {last:.4f} ({tp} trainable parameters)")
            want = ["model.safetensors", "train_log.csv", "config.yaml"]
            if name not in ("probe", "full"):
                want.append("adapters.safetensors")
            check(all(os.path.exists(os.path.join(out, f)) for f in want), f"{name}: wrote {', '.join(want)}")
        # few-shot variants on held-out tasks (numbers 10, 11), 5 examples per class
        few = ["data.tasks=2", "data.task_offset=10", "data.shots=5"]
        mhr = os.path.join(tmp, "mhr", "adapters.safetensors")
        lora = os.path.join(tmp, "lora", "adapters.safetensors")
        cases = [("mhr finetune", os.path.join(src, "configs/methods/mhr.yaml"), [f"adapter.init={mhr}", "adapter.fewshot=finetune"]),
                 ("mhr-z", os.path.join(src, "configs/methods/mhr.yaml"), [f"adapter.init={mhr}", "adapter.fewshot=z"]),
                 ("mhr-mu", os.path.join(src, "configs/methods/mhr.yaml"), [f"adapter.init={mhr}", "adapter.fewshot=mu"]),
                 ("shared lora finetune", os.path.join(src, "configs/methods/lora.yaml"), [f"adapter.init={lora}", "adapter.fewshot=finetune"]),
                 ("lora from scratch", os.path.join(src, "configs/methods/lora.yaml"), [])]
        params = {}
        for label, cfg, extra in cases:
            res = adapt(exe, cfg, os.path.join(tmp, "few_" + label.replace(" ", "_")), few + extra)
            check(res is not None, f"few-shot {label}: exits 0")
            if res is None:
                continue
            first, last, tp = res
            params[label] = tp
            check(last < first, f"few-shot {label}: training loss {first:.4f} -> {last:.4f} ({tp} trainable parameters)")
        if "mhr-z" in params and "mhr finetune" in params:
            check(params["mhr-z"] < params["mhr finetune"] / 10,
                  f"MHR-z trains only routing rows (+ head): {params['mhr-z']} vs {params['mhr finetune']} parameters")
        # bad configuration: refused naming the key
        r = subprocess.run([exe, "adapt", os.path.join(src, "configs/methods/mhr.yaml"), "--set", "adapter.routing=mhx"],
                           env=ENV, capture_output=True, text=True, timeout=60)
        check(r.returncode != 0 and "adapter.routing" in r.stderr, "unknown routing refused naming adapter.routing")
        r = subprocess.run([exe, "adapt", os.path.join(src, "configs/methods/mhr.yaml"), "--set", "adapter.init=/nonexistent.safetensors"],
                           env=ENV, capture_output=True, text=True, timeout=60)
        check(r.returncode != 0 and "nonexistent" in r.stderr, "missing adapter.init refused naming the file")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
