#!/usr/bin/python3
"""`tessera predict` against PyTorch: timm-named and Hugging Face-named checkpoints (with and without
the `vit.` prefix) of a small ViT must reproduce the PyTorch logits (tests/torch/vit_ref.py) to 1e-4
max abs error, written as safetensors and as netCDF; bad input files must be refused with a message
naming the file and tensor, and a non-zero exit status.

Adapters (`--adapters FILE --task N`): for every case of tests/torch/adapter_ref.py (generated here into a
temporary directory), the reference adapter tensors are written as a tessera adapter file (the tensors plus
the `tessera_adapters` JSON description, built here from the reference's metadata); tessera predict with
them, every image given task N, must reproduce adapter_ref's evaluation-mode forward (z = sigmoid(Z[N]),
no noise) for that single-task batch to 1e-4. Files without the description, a --task outside the routing
rows, and adapters for another backbone are refused.

usage: test_predict.py TESSERA_BINARY REFERENCE_DIR
"""
import json
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


def tessera_description(spec, c):
    """The `tessera_adapters` JSON (src/adapters/adapter_io.h) of an adapter_ref case."""
    lora = spec.kind == "lora"
    return {
        "format": "tessera-adapters", "version": 1,
        "lora_sites": list(spec.sites) if lora else [], "lora_rank": spec.rank if lora else 0,
        "lora_alpha": spec.alpha if lora else 0.0,
        "bn_sites": [] if lora else list(spec.pos), "bn_dim": 0 if lora else spec.rank,
        "bn_scale": 0.0 if lora else spec.scale, "bn_dropout": 0.0,
        "activation": "gelu" if lora else spec.act,
        "skills": spec.skills, "heads": spec.heads, "n_tasks": spec.n_tasks, "noise": spec.noise,
        "tau": spec.tau, "layer_min": 0, "layer_max": -1,
        "depth": c.depth, "dim": c.dim, "mlp": c.mlp, "tokens": c.tokens, "ln_eps": c.eps,
    }


def adapter_cases(exe, tmp):
    import torch
    import adapter_ref
    import vit_ref

    gen = os.path.join(tmp, "adapter_ref")
    here = os.path.dirname(os.path.abspath(__file__))
    r = run([sys.executable, os.path.join(here, "adapter_ref.py"), "--out", gen, "--case", "all", "--no-verify"])
    check(r.returncode == 0, "adapter_ref.py generates the adapter references")
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        return
    for i, name in enumerate(adapter_ref.CASES):
        d = os.path.join(gen, name)
        ad, ameta = st.load(os.path.join(d, "adapters.safetensors"))
        w, _ = st.load(os.path.join(d, "weights_timm.safetensors"))
        ref, _ = st.load(os.path.join(d, "ref.safetensors"))
        c = vit_ref.Cfg.from_meta(ameta)
        spec = adapter_ref.Spec.from_meta(ameta)
        desc = tessera_description(spec, c)
        tess = os.path.join(tmp, f"{name}.adapters.safetensors")
        st.save(tess, ad, {"tessera_adapters": json.dumps(desc), "format": "pt"})
        task = (i + 1) % spec.n_tasks
        x = ref["input"]
        tids = np.full(x.shape[0], task, np.int64)
        want = adapter_ref.eval_logits(c, spec, w, ad, {}, x, tids, torch.float64, use_noise=False)
        backbone = adapter_ref.eval_logits(c, spec, w, ad, {}, x, tids, torch.float64, adapters=False)
        sets = ["--set", f"model.heads={c.heads}", "--set", f"model.ln_eps={c.eps!r}"]
        base = [exe, "predict", "--checkpoint", os.path.join(d, "weights_timm.safetensors"),
                "--input", os.path.join(d, "ref.safetensors")]
        out = os.path.join(tmp, f"{name}.logits.safetensors")
        r = run(base + ["--output", out, "--adapters", tess, "--task", str(task)] + sets)
        if r.returncode != 0:
            print(r.stdout, r.stderr)
        check(r.returncode == 0, f"predict --adapters ({name}) --task {task} exits 0")
        if r.returncode != 0:
            continue
        got, gmeta = st.load(out)
        got = got["logits"]
        err = float(np.max(np.abs(got - want)))
        moved = float(np.max(np.abs(want - backbone)))
        check(got.shape == want.shape and err <= TOL and moved > 100 * TOL,
              f"{name} (S={spec.skills}, h={spec.heads}) task {task}: max abs error {err:.2e} <= {TOL:g} "
              f"(the adapters move the logits by {moved:.2e})")
        check(gmeta.get("adapters") == tess and gmeta.get("task") == str(task), "output records adapters and task")

    # refusals: clear message, non-zero exit, nothing written
    d = os.path.join(gen, "mhr")
    ad, ameta = st.load(os.path.join(d, "adapters.safetensors"))
    c = vit_ref.Cfg.from_meta(ameta)
    spec = adapter_ref.Spec.from_meta(ameta)
    sets = ["--set", f"model.heads={c.heads}", "--set", f"model.ln_eps={c.eps!r}"]
    base = [exe, "predict", "--checkpoint", os.path.join(d, "weights_timm.safetensors"),
            "--input", os.path.join(d, "ref.safetensors")]
    out = os.path.join(tmp, "never.safetensors")
    raw = os.path.join(d, "adapters.safetensors")
    r = run(base + ["--output", out, "--adapters", raw] + sets)
    check(r.returncode != 0 and "tessera_adapters" in r.stderr and not os.path.exists(out),
          "adapter file without the description refused")
    tess = os.path.join(tmp, "mhr.adapters.safetensors")
    r = run(base + ["--output", out, "--adapters", tess, "--task", str(spec.n_tasks)] + sets)
    check(r.returncode != 0 and "--task" in r.stderr and not os.path.exists(out), "--task outside the rows refused")
    r = run(base + ["--output", out, "--task", "0"] + sets)
    check(r.returncode != 0 and "--adapters" in r.stderr, "--task without --adapters refused")
    desc = tessera_description(spec, c)
    desc["mlp"] = 2 * c.mlp
    other = os.path.join(tmp, "other.adapters.safetensors")
    st.save(other, ad, {"tessera_adapters": json.dumps(desc)})
    r = run(base + ["--output", out, "--adapters", other] + sets)
    check(r.returncode != 0 and "other.adapters.safetensors" in r.stderr and not os.path.exists(out),
          "adapters for another backbone refused")
    del ad["blocks.1.lora.fc2.B"]
    desc["mlp"] = c.mlp
    st.save(other, ad, {"tessera_adapters": json.dumps(desc)})
    r = run(base + ["--output", out, "--adapters", other] + sets)
    check(r.returncode != 0 and "blocks.1.lora.fc2.B" in r.stderr and not os.path.exists(out),
          "adapter file missing a tensor refused, naming it")


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
        # a netCDF dataset input (ubyte images, normalised by tessera with data.mean / data.std) gives
        # the same logits as the same images normalised here and passed as a safetensors `input`
        import netCDF4
        rng = np.random.default_rng(5)
        B, C, S = ref["input"].shape[0], ref["input"].shape[1], ref["input"].shape[2]
        px = rng.integers(0, 256, size=(B, S, S, C), dtype=np.uint8)
        mean = np.array([0.5, 0.25, 0.75][:C] + [0.4] * max(0, C - 3), dtype=np.float32)
        std = np.array([0.3, 0.2, 0.5][:C] + [0.25] * max(0, C - 3), dtype=np.float32)
        nc_in = os.path.join(tmp, "images.nc")
        with netCDF4.Dataset(nc_in, "w", format="NETCDF4") as d:
            d.createDimension("example", None)
            d.createDimension("y", S)
            d.createDimension("x", S)
            d.createDimension("channel", C)
            v = d.createVariable("images", "u1", ("example", "y", "x", "channel"))
            v[:] = px
            d.setncattr("tessera_schema", "tessera-dataset-1")
            d.setncattr("task_name", "predict-test")
            d.setncattr("Conventions", "CF-1.8")
        x = ((px.astype(np.float32) / np.float32(255)) - mean) / std
        st_in = os.path.join(tmp, "images.safetensors")
        st.save(st_in, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2).astype(np.float32))})
        sets = ["--set", f"model.channels={C}", "--set", "data.mean=[" + ",".join(map(str, mean.tolist())) + "]",
                "--set", "data.std=[" + ",".join(map(str, std.tolist())) + "]"]
        hf = os.path.join(ref_dir, "weights_hf.safetensors")
        o1, o2 = os.path.join(tmp, "nc_in.safetensors"), os.path.join(tmp, "st_in.safetensors")
        r1 = run([exe, "predict", "--checkpoint", hf, "--input", nc_in, "--output", o1] + sets)
        r2 = run([exe, "predict", "--checkpoint", hf, "--input", st_in, "--output", o2])
        if r1.returncode or r2.returncode:
            print(r1.stderr, r2.stderr)
        ok = r1.returncode == 0 and r2.returncode == 0
        err = float(np.max(np.abs(st.load(o1)[0]["logits"] - st.load(o2)[0]["logits"]))) if ok else float("inf")
        check(ok and err <= 1e-5, f"netCDF input = normalised safetensors input: max abs diff {err:.2e}")

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
        adapter_cases(exe, tmp)
    print(f"{passed} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
