#!/usr/bin/python3
"""`tessera predict` against PyTorch: timm-named and Hugging Face-named checkpoints (with and without
the `vit.` prefix) of a small ViT must reproduce the PyTorch logits (tests/torch/vit_ref.py) to 1e-4
max abs error, written as safetensors and as netCDF; bad input files must be refused with a message
naming the file and tensor, and a non-zero exit status.

usage: test_predict.py TESSERA_BINARY REFERENCE_DIR
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

TOL = 1e-4
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="2")
failures = 0
passed = 0


def run(args):
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)


def check(cond, what):
    global failures, passed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if cond:
        passed += 1
    else:
        failures += 1


def main():
    exe, ref_dir = sys.argv[1], sys.argv[2]
    ref, meta = st.load(os.path.join(ref_dir, "ref.safetensors"))
    want = ref["logits"]
    heads, eps = meta["heads"], meta["eps"]
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("weights_timm.safetensors", ["--set", f"model.heads={heads}", "--set", f"model.ln_eps={eps}"]),
            ("weights_hf.safetensors", []),  # config.json beside it gives heads and layer_norm_eps
            ("weights_hf_noprefix.safetensors", []),
        ]
        for ckpt, extra in cases:
            for ext in ("safetensors", "nc"):
                out = os.path.join(tmp, f"logits.{ext}")
                r = run([exe, "predict", "--checkpoint", os.path.join(ref_dir, ckpt),
                         "--input", os.path.join(ref_dir, "ref.safetensors"), "--output", out] + extra)
                if r.returncode != 0:
                    print(r.stdout, r.stderr)
                check(r.returncode == 0, f"predict {ckpt} -> .{ext} exits 0")
                if r.returncode != 0:
                    continue
                if ext == "safetensors":
                    got, gmeta = st.load(out)
                    got = got["logits"]
                    check("config" in gmeta and "git_commit" in gmeta, "output carries config and git commit")
                else:
                    import netCDF4
                    with netCDF4.Dataset(out) as d:
                        got = np.array(d.variables["logits"][:])
                        check("config" in d.ncattrs(), "netCDF output carries the config")
                err = float(np.max(np.abs(got - want)))
                check(got.shape == want.shape and err <= TOL,
                      f"{ckpt} -> .{ext}: logits max abs error {err:.2e} <= {TOL:g}")
        # bad inputs: clear message, non-zero exit, no output written
        bad = os.path.join(tmp, "bad.safetensors")
        w, _ = st.load(os.path.join(ref_dir, "weights_timm.safetensors"))
        w["blocks.0.attn.qkv.weight"] = w["blocks.0.attn.qkv.weight"][:, :-1].copy()
        st.save(bad, w)
        out = os.path.join(tmp, "never.safetensors")
        r = run([exe, "predict", "--checkpoint", bad, "--input", os.path.join(ref_dir, "ref.safetensors"),
                 "--output", out, "--set", f"model.heads={heads}"])
        check(r.returncode != 0 and "blocks.0.attn.qkv.weight" in r.stderr and not os.path.exists(out),
              "mis-shaped tensor refused, naming it: " + r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "")
        with open(bad, "wb") as f:
            f.write(b"\x00" * 5)
        r = run([exe, "predict", "--checkpoint", bad, "--input", os.path.join(ref_dir, "ref.safetensors"),
                 "--output", out])
        check(r.returncode != 0 and "bad.safetensors" in r.stderr, "5-byte checkpoint refused: "
              + (r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""))
        r = run([exe, "predict", "--checkpoint", os.path.join(ref_dir, "weights_timm.safetensors"),
                 "--input", os.path.join(ref_dir, "weights_timm.safetensors"), "--output", out,
                 "--set", f"model.heads={heads}"])
        check(r.returncode != 0 and "'input'" in r.stderr, "input file without `input` refused")
        r = run([exe, "predict", "--checkpoint", os.path.join(ref_dir, "weights_timm.safetensors"),
                 "--input", os.path.join(ref_dir, "ref.safetensors"), "--output", out, "--set", "model.hedas=2"])
        check(r.returncode != 0 and "model.hedas" in r.stderr, "unknown --set key refused")
    print(f"{passed} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
