"""Shared set-up of the MPI tests: a small glyph suite (tessera prepare glyphs) and a tiny backbone with
LoRA, Poly, MHR and MoSA x MHR adapters pre-trained on three of its scripts (tessera pretrain, 2 ranks)."""
import os
import subprocess

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
TRAIN = ["latin", "greek", "cyrillic"]


counts = {"passed": 0, "failed": 0}


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    counts["passed" if cond else "failed"] += 1


def main_wrapper(body, prefix):
    """Runs body(exe, src, mpiexec, tmp, suite, pre) after the set-up; prints the tally; exits non-zero
    on any failure (or when nothing was checked)."""
    import shutil
    import sys
    import tempfile
    exe, src, mpiexec = sys.argv[1], sys.argv[2], sys.argv[3]
    tmp = tempfile.mkdtemp(prefix=prefix)
    got = setup(exe, src, mpiexec, tmp, check)
    if got:
        body(exe, src, mpiexec, tmp, *got)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    sys.exit(1 if counts["failed"] or counts["passed"] == 0 else 0)


class Result:
    def __init__(self, p):
        self.returncode, self.stderr = p.returncode, p.stdout + p.stderr  # info on stdout, errors on stderr


def run(c, timeout=900):
    return Result(subprocess.run(c, env=ENV, capture_output=True, text=True, timeout=timeout))


def model_sets(suite):
    return ["model.image_size=28", "model.patch_size=7", "model.channels=1", "model.dim=32", "model.depth=2",
            "model.heads=2", "model.mlp_dim=64", "data.mean=[0.12]", "data.std=[0.28]", "run.threads=1",
            "data.dataset=suite", f"data.path={suite}"]


def setup(exe, src, mpiexec, tmp, check):
    """Returns (suite path, pre-training directory) or None after reporting a failure."""
    suite = os.path.join(tmp, "glyphs.nc")
    r = run([exe, "prepare", "glyphs", "--out", suite, "--scripts", "latin,greek,cyrillic,ogham,runic",
             "--classes", "5", "--min-classes", "5", "--examples", "10", "--val", "2", "--test", "3"])
    check(r.returncode == 0, "prepare a small glyph suite")
    if r.returncode:
        print(r.stderr[-3000:])
        return None
    pre = os.path.join(tmp, "pre")
    common = model_sets(suite) + ["suite.source=[" + ", ".join(TRAIN) + "]", "suite.train=[" + ", ".join(TRAIN) + "]",
                                  "train.batch_size=16", "train.log_every=5", "train.eval_every=1000",
                                  "train.eval_limit=10"]
    stages = [("backbone", os.path.join(src, "configs/pretrain_backbone_glyphs.yaml"),
               ["data.role=source", "model.num_classes=15", "train.steps=10", "data.augment=false"])]
    for m in ["lora", "poly", "mhr", "mosa_mhr"]:
        stages.append((m, os.path.join(src, f"configs/methods/{m}.yaml"),
                       ["data.role=train", "model.num_classes=15", "data.joint_labels=true", "train.steps=6",
                        f"run.init={pre}/backbone/model.safetensors", "run.reset_head=true"]))
    for name, cfg, extra in stages:
        args = [mpiexec, "-n", "2", "--oversubscribe", "--allow-run-as-root", exe, "pretrain", cfg]
        for s in common + extra + [f"run.output_dir={pre}/{name}"]:
            args += ["--set", s]
        r = run(args)
        check(r.returncode == 0, f"pretrain {name}")
        if r.returncode:
            print(r.stderr[-3000:])
            return None
    return suite, pre
