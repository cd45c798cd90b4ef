#!/usr/bin/python3
"""tessera <-> Hugging Face peft, checked by a statement that does not trust tessera.

A small ViT in Hugging Face naming (random weights, written here) is the frozen backbone of a LoRA
(configs/methods/lora.yaml: S = 1) and an MHR (configs/methods/mhr.yaml: h = 4, S = 8) adapter set trained
by `tessera adapt` on Fashion-MNIST label-permutation tasks. `tessera export-peft` writes each as a peft
adapter directory. Then:

- peft's forward, stated here in torch from peft's source (not imported: peft is not installed here), is
  applied to the Hugging Face ViT (also written here from torch ops, by module name): LoRA
  `y = base(x) + lora_B(lora_A(x)) * lora_alpha / r`; Poly `w = sigmoid(module_logits[task]).view(n_splits,
  n_skills)`, `w /= w.sum(-1) + 1e-12`, `A = einsum("bqs,qsdr->bqdr", w, poly_lora_A).reshape(b, in, r)`,
  `B = einsum("bqs,qsrd->bqrd", w, poly_lora_B).transpose(1, 2).reshape(b, r, out)`, `y = base(x) + x A B / r`.
  Its logits (float64) must equal `tessera predict --adapters adapters.safetensors --task t` to 1e-5.
- round trip: `tessera predict --adapters PEFT_DIR` gives bit-identical logits, and exporting the imported
  directory again gives bit-identical tensors and the same adapter_config.json.
- a peft directory seeds few-shot training (`adapter.init=PEFT_DIR`, finetune).
- the transformers-5 naming (vit.layers.N.attention.{q,k,v,o}_proj, mlp.fc1 / fc2, layernorm_before /
  after) loads in predict (logits identical to the 4.x naming, with and without `vit.`) and as run.init
  (the same training log as from the 4.x file), and exports with its own module paths.
- refusals: timm's fused qkv, lora_dropout > 0, another peft type, use_rslora, a target tessera does not have.

usage: test_peft.py TESSERA_BINARY SOURCE_DIR
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
D, L, NH, M, IMG, P, C, K, EPS = 32, 2, 2, 64, 28, 7, 1, 10, 1e-12
SMALL = [f"model.dim={D}", f"model.depth={L}", f"model.heads={NH}", f"model.mlp_dim={M}", f"model.patch_size={P}",
         f"model.ln_eps={EPS}", "train.steps=12", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=1",
         "train.eval_every=1000", "train.eval_limit=50", "optim.adapter_lr=3e-2", "optim.head_lr=5e-3",
         "run.threads=1"]
TOL = 1e-5
counts = {"passed": 0, "failed": 0}


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    counts["passed" if cond else "failed"] += 1
    return cond


def run(args, timeout=600):
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)
    return r


# ------------------------------------------------------------------ the backbone, Hugging Face naming

def hf_backbone(seed):
    g = np.random.default_rng(seed)

    def rn(*s, sd=0.08):
        return (g.standard_normal(s) * sd).astype(np.float32)

    t = {"vit.embeddings.cls_token": rn(1, 1, D, sd=0.5),
         "vit.embeddings.position_embeddings": rn(1, (IMG // P) ** 2 + 1, D, sd=0.5),
         "vit.embeddings.patch_embeddings.projection.weight": rn(D, C, P, P, sd=0.2),
         "vit.embeddings.patch_embeddings.projection.bias": rn(D),
         "vit.layernorm.weight": 1 + rn(D), "vit.layernorm.bias": rn(D),
         "classifier.weight": rn(K, D, sd=0.3), "classifier.bias": rn(K)}
    for i in range(L):
        b = f"vit.encoder.layer.{i}."
        for n in ("layernorm_before", "layernorm_after"):
            t[b + n + ".weight"] = 1 + rn(D)
            t[b + n + ".bias"] = rn(D)
        for n in ("query", "key", "value"):
            t[b + f"attention.attention.{n}.weight"] = rn(D, D, sd=0.3)
            t[b + f"attention.attention.{n}.bias"] = rn(D)
        t[b + "attention.output.dense.weight"], t[b + "attention.output.dense.bias"] = rn(D, D, sd=0.3), rn(D)
        t[b + "intermediate.dense.weight"], t[b + "intermediate.dense.bias"] = rn(M, D, sd=0.3), rn(M)
        t[b + "output.dense.weight"], t[b + "output.dense.bias"] = rn(D, M, sd=0.3), rn(D)
    return t


V5 = [(r"encoder\.layer\.(\d+)\.attention\.attention\.query", r"layers.\1.attention.q_proj"),
      (r"encoder\.layer\.(\d+)\.attention\.attention\.key", r"layers.\1.attention.k_proj"),
      (r"encoder\.layer\.(\d+)\.attention\.attention\.value", r"layers.\1.attention.v_proj"),
      (r"encoder\.layer\.(\d+)\.attention\.output\.dense", r"layers.\1.attention.o_proj"),
      (r"encoder\.layer\.(\d+)\.intermediate\.dense", r"layers.\1.mlp.fc1"),
      (r"encoder\.layer\.(\d+)\.output\.dense", r"layers.\1.mlp.fc2"),
      (r"encoder\.layer\.(\d+)\.layernorm_", r"layers.\1.layernorm_")]


def to_v5(t, prefix=True):
    out = {}
    for k, v in t.items():
        n = k
        for a, b in V5:
            n = re.sub(a, b, n)
        if not prefix and n.startswith("vit."):
            n = n[4:]
        out[n] = v
    return out


def hf_config():
    return {"model_type": "vit", "hidden_size": D, "num_hidden_layers": L, "num_attention_heads": NH,
            "intermediate_size": M, "image_size": IMG, "patch_size": P, "num_channels": C, "layer_norm_eps": EPS,
            "num_labels": K, "hidden_act": "gelu", "qkv_bias": True}


def write_model(d, tensors):
    os.makedirs(d, exist_ok=True)
    st.save(os.path.join(d, "model.safetensors"), tensors)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(), f)
    return os.path.join(d, "model.safetensors")


# ------------------------------------------------------------------ peft's forward, stated from its source

class PeftStatement:
    """Adapters of a peft directory, applied by module path (the key without 'base_model.model.')."""

    def __init__(self, d):
        with open(os.path.join(d, "adapter_config.json")) as f:
            self.cfg = json.load(f)
        w, _ = st.load(os.path.join(d, "adapter_model.safetensors"))
        self.w = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in w.items()}
        self.type = self.cfg["peft_type"]
        self.task_ids = None

    def delta(self, module, x):
        pre = "base_model.model." + module
        r = self.cfg["r"]
        if self.type == "LORA":
            if pre + ".lora_A.weight" not in self.w:
                return 0
            A, B = self.w[pre + ".lora_A.weight"], self.w[pre + ".lora_B.weight"]  # (r, in), (out, r)
            return (x @ A.T) @ B.T * (self.cfg["lora_alpha"] / r)
        if pre + ".poly_lora_A" not in self.w:
            return 0
        A, B = self.w[pre + ".poly_lora_A"], self.w[pre + ".poly_lora_B"]
        Z = self.w[pre + ".poly_router.module_logits"]
        ns, nk = self.cfg["n_splits"], self.cfg["n_skills"]
        z = torch.sigmoid(Z[self.task_ids].view(-1, ns, nk))  # evaluation: no relaxed-Bernoulli sample
        wts = z / (z.sum(dim=-1, keepdim=True) + 1e-12)
        bs = x.shape[0]
        Ab = torch.einsum("bqs,qsdr->bqdr", wts, A).reshape(bs, -1, r)
        Bb = torch.einsum("bqs,qsrd->bqrd", wts, B).transpose(1, 2).reshape(bs, r, -1)
        return x.bmm(Ab).bmm(Bb) / r


def hf_vit_logits(t, x, peft=None):
    """Hugging Face ViTForImageClassification's forward (eval), float64, from torch ops; peft adds its update
    to every Linear it adapts (looked up by module path)."""
    T = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in t.items()}
    x = torch.tensor(np.asarray(x, dtype=np.float64))

    def lin(mod, h):
        y = h @ T[mod + ".weight"].T + T[mod + ".bias"]
        return y + (peft.delta(mod, h) if peft else 0)

    def ln(mod, h):
        return torch.nn.functional.layer_norm(h, (D,), T[mod + ".weight"], T[mod + ".bias"], EPS)

    B = x.shape[0]
    e = torch.nn.functional.conv2d(x, T["vit.embeddings.patch_embeddings.projection.weight"],
                                   T["vit.embeddings.patch_embeddings.projection.bias"], stride=P)
    e = e.flatten(2).transpose(1, 2)
    h = torch.cat([T["vit.embeddings.cls_token"].expand(B, -1, -1), e], 1) + T["vit.embeddings.position_embeddings"]
    hd = D // NH
    for i in range(L):
        b = f"vit.encoder.layer.{i}."
        a = ln(b + "layernorm_before", h)
        q, k, v = (lin(b + f"attention.attention.{n}", a).view(B, -1, NH, hd).transpose(1, 2)
                   for n in ("query", "key", "value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, -1) @ v
        h = h + lin(b + "attention.output.dense", att.transpose(1, 2).reshape(B, -1, D))
        m = torch.nn.functional.gelu(lin(b + "intermediate.dense", ln(b + "layernorm_after", h)))
        h = h + lin(b + "output.dense", m)
    h = ln("vit.layernorm", h)
    return (h[:, 0] @ T["classifier.weight"].T + T["classifier.bias"]).numpy()


# ------------------------------------------------------------------ the checks

def predict(exe, ckpt, inp, out, adapters=None, task=None):
    args = [exe, "predict", "--checkpoint", ckpt, "--input", inp, "--output", out]
    if adapters:
        args += ["--adapters", adapters, "--task", str(task)]
    r = run(args)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:])
        return None
    return st.load(out)[0]["logits"]


def adapt(exe, cfg, out, extra):
    args = [exe, "adapt", cfg]
    for s in SMALL + [f"run.output_dir={out}"] + list(extra):
        args += ["--set", s]
    r = run(args)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:])
    return r


def losses(stdout):
    return re.findall(r"step +\d+/\d+  loss ([0-9.]+)", stdout)


def tensors_equal(d1, d2):
    a, _ = st.load(os.path.join(d1, "adapter_model.safetensors"))
    b, _ = st.load(os.path.join(d2, "adapter_model.safetensors"))
    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k].view(np.uint8),
                                                                                       b[k].view(np.uint8)) for k in a)


def refused(exe, ckpt, inp, tmp, src_dir, edit, words, what):
    d = os.path.join(tmp, "bad_" + re.sub(r"\W", "_", what))
    shutil.copytree(src_dir, d)
    edit(d)
    r = run([exe, "predict", "--checkpoint", ckpt, "--input", inp, "--output", os.path.join(tmp, "bad.safetensors"),
             "--adapters", d, "--task", "0"])
    ok = r.returncode != 0 and all(w in r.stderr for w in words)
    check(ok, f"refused: {what}")
    if not ok:
        print(r.stderr[-1500:])


def edit_config(**kv):
    def f(d):
        p = os.path.join(d, "adapter_config.json")
        with open(p) as fh:
            c = json.load(fh)
        c.update(kv)
        with open(p, "w") as fh:
            json.dump(c, fh)
    return f


def add_tensor(name, arr):
    def f(d):
        p = os.path.join(d, "adapter_model.safetensors")
        t, meta = st.load(p)
        t[name] = arr
        st.save(p, t, meta)
    return f


def main():
    exe, src = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="tsr_peft_")
    try:
        body(exe, src, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    return 1 if counts["failed"] or not counts["passed"] else 0


def body(exe, src, tmp):
    back = hf_backbone(7)
    back_ckpt = write_model(os.path.join(tmp, "backbone_v4"), back)
    back5_ckpt = write_model(os.path.join(tmp, "backbone_v5"), to_v5(back))
    x = np.random.default_rng(3).standard_normal((6, C, IMG, IMG)).astype(np.float32)
    inp = os.path.join(tmp, "input.safetensors")
    st.save(inp, {"input": x})

    # transformers-5 naming in predict: identical logits to the 4.x naming (with and without vit.)
    l4 = predict(exe, back_ckpt, inp, os.path.join(tmp, "l4.safetensors"))
    l5 = predict(exe, back5_ckpt, inp, os.path.join(tmp, "l5.safetensors"))
    np5 = write_model(os.path.join(tmp, "backbone_v5_noprefix"),
                      {k: v for k, v in to_v5(back, prefix=False).items()})
    l5n = predict(exe, np5, inp, os.path.join(tmp, "l5n.safetensors"))
    ref = hf_vit_logits(back, x)
    check(l4 is not None and np.abs(l4 - ref).max() < 1e-4, "predict, 4.x naming: logits match the torch statement")
    check(l5 is not None and l4 is not None and np.array_equal(l4, l5),
          "predict, transformers-5 naming (vit.layers.N.attention.q_proj, ...): logits identical to 4.x naming")
    check(l5n is not None and l4 is not None and np.array_equal(l4, l5n),
          "predict, transformers-5 naming without 'vit.': logits identical")

    results = {}
    for method, cfg in (("lora", "lora.yaml"), ("mhr", "mhr.yaml")):
        out = os.path.join(tmp, method)
        r = adapt(exe, os.path.join(src, "configs/methods", cfg), out, [f"run.init={back_ckpt}"])
        if not check(r.returncode == 0, f"{method}: tessera adapt from the 4.x-named backbone"):
            continue
        results[method] = r
        # the trained head into the Hugging Face model
        m, _ = st.load(os.path.join(out, "model.safetensors"))
        full = dict(back)
        full["classifier.weight"], full["classifier.bias"] = m["head.weight"], m["head.bias"]
        ckpt = write_model(os.path.join(out, "hf"), full)
        ad = os.path.join(out, "adapters.safetensors")
        pdir = os.path.join(out, "peft")
        r = run([exe, "export-peft", "--adapters", ad, "--checkpoint", ckpt, "--out", pdir,
                 "--base-model", "local/vit-tiny"])
        if not check(r.returncode == 0, f"{method}: export-peft"):
            print(r.stdout[-2000:], r.stderr[-2000:])
            continue
        with open(os.path.join(pdir, "adapter_config.json")) as f:
            pc = json.load(f)
        w, meta = st.load(os.path.join(pdir, "adapter_model.safetensors"))
        if method == "lora":
            check(pc["peft_type"] == "LORA" and pc["r"] == 4 and pc["lora_alpha"] == 1 and pc["lora_dropout"] == 0,
                  "lora: adapter_config.json LORA, r 4, lora_alpha 1 (scale 1/4 = tessera's), no dropout")
            key = "base_model.model.vit.encoder.layer.0.attention.attention.query.lora_A.weight"
            check(key in w and w[key].shape == (4, D), f"lora: {key} of shape (r, in)")
            tasks = [0]
        else:
            check(pc["peft_type"] == "POLY" and pc["n_splits"] == 4 and pc["n_skills"] == 8 and pc["n_tasks"] == 4
                  and pc["poly_type"] == "poly", "mhr: adapter_config.json POLY, n_splits 4, n_skills 8, n_tasks 4")
            key = "base_model.model.vit.encoder.layer.1.attention.output.dense.poly_lora_A"
            check(key in w and w[key].shape == (4, 8, D // 4, 4), f"mhr: {key} of shape (n_splits, n_skills, in/n_splits, r)")
            zk = "base_model.model.vit.encoder.layer.0.attention.attention.value.poly_router.module_logits"
            check(zk in w and w[zk].shape == (4, 32), f"mhr: {zk} of shape (n_tasks, n_splits * n_skills)")
            tasks = [0, 1, 3]
        check(meta == {"format": "pt"}, f"{method}: safetensors metadata exactly {{format: pt}}, as peft writes it ({meta})")
        peft = PeftStatement(pdir)
        for t in tasks:
            lt = predict(exe, ckpt, inp, os.path.join(tmp, "lt.safetensors"), ad, t)
            peft.task_ids = torch.full((x.shape[0],), t, dtype=torch.long)
            lp = hf_vit_logits(full, x, peft)
            lb = hf_vit_logits(full, x)
            if lt is None:
                check(False, f"{method}: tessera predict --adapters, task {t}")
                continue
            diff = float(np.abs(lt - lp).max())
            moved = float(np.abs(lp - lb).max())
            check(diff < TOL and moved > 1e-3,
                  f"{method}, task {t}: peft statement vs tessera logits max abs diff {diff:.3g} (< {TOL}); the "
                  f"adapters move the logits by {moved:.3g}")
            li = predict(exe, ckpt, inp, os.path.join(tmp, "li.safetensors"), pdir, t)
            check(li is not None and np.array_equal(li, lt),
                  f"{method}, task {t}: tessera predict with the peft directory: bit-identical logits")
        pdir2 = os.path.join(out, "peft_again")
        r = run([exe, "export-peft", "--adapters", pdir, "--checkpoint", ckpt, "--out", pdir2, "--base-model",
                 "local/vit-tiny"])
        with open(os.path.join(pdir2, "adapter_config.json")) as f2, open(os.path.join(pdir, "adapter_config.json")) as f1:
            same_cfg = json.load(f1) == json.load(f2)
        check(r.returncode == 0 and tensors_equal(pdir, pdir2) and same_cfg,
              f"{method}: export -> import -> export: bit-identical tensors, same adapter_config.json")
        if method == "mhr":
            # routing rows that differ strongly per task (random, +-3) written into the peft directory: tessera
            # reads them into the right rows (the trained rows are still near their +-1e-3 start)
            pz = os.path.join(out, "peft_rows")
            shutil.copytree(pdir, pz)
            g = np.random.default_rng(5)
            wz = {k: (g.uniform(-3, 3, v.shape).astype(np.float32) if k.endswith("module_logits") else v)
                  for k, v in w.items()}
            st.save(os.path.join(pz, "adapter_model.safetensors"), wz, {"format": "pt"})
            pz_peft = PeftStatement(pz)
            per_task = []
            for t in range(4):
                lt = predict(exe, ckpt, inp, os.path.join(tmp, "lz.safetensors"), pz, t)
                pz_peft.task_ids = torch.full((x.shape[0],), t, dtype=torch.long)
                lp = hf_vit_logits(full, x, pz_peft)
                per_task.append(lp)
                check(lt is not None and float(np.abs(lt - lp).max()) < TOL,
                      f"mhr, routing rows +-3, task {t}: peft statement vs tessera (peft directory) max abs diff "
                      f"{float(np.abs(lt - lp).max()) if lt is not None else float('nan'):.3g}")
            spread = min(float(np.abs(per_task[i] - per_task[j]).max()) for i in range(4) for j in range(i))
            check(spread > 1e3 * TOL, f"mhr, routing rows +-3: the tasks' logits differ (min pairwise {spread:.3g})")
        # a peft directory seeds few-shot training
        few = os.path.join(tmp, method + "_few")
        r = adapt(exe, os.path.join(src, "configs/methods", cfg), few,
                  [f"run.init={ckpt}", f"adapter.init={pdir}", "adapter.fewshot=finetune", "data.tasks=2",
                   "data.task_offset=10", "data.shots=5", "train.steps=4"])
        check(r.returncode == 0 and os.path.exists(os.path.join(few, "adapters.safetensors")),
              f"{method}: few-shot finetune from the peft directory (adapter.init)")
        if method == "lora":
            # transformers-5 naming: module paths in the export
            ck5 = write_model(os.path.join(out, "hf5"), to_v5(full))
            d5 = os.path.join(out, "peft5")
            r = run([exe, "export-peft", "--adapters", ad, "--checkpoint", ck5, "--out", d5])
            w5 = st.load(os.path.join(d5, "adapter_model.safetensors"))[0] if r.returncode == 0 else {}
            check("base_model.model.vit.layers.0.attention.q_proj.lora_A.weight" in w5 and
                  "base_model.model.vit.layers.1.attention.o_proj.lora_B.weight" in w5,
                  "lora: export with a transformers-5 backbone uses vit.layers.N.attention.{q,o}_proj")
            l5a = predict(exe, ck5, inp, os.path.join(tmp, "l5a.safetensors"), d5, 0)
            l4a = predict(exe, ckpt, inp, os.path.join(tmp, "l4a.safetensors"), ad, 0)
            check(l5a is not None and l4a is not None and np.array_equal(l5a, l4a),
                  "lora: transformers-5 backbone + its peft directory: logits identical")
            # timm: q, k, v are one fused Linear in peft
            r = run([exe, "export-peft", "--adapters", ad, "--checkpoint", os.path.join(out, "model.safetensors"),
                     "--out", os.path.join(out, "peft_timm")])
            check(r.returncode != 0 and "fused" in r.stderr and "qkv" in r.stderr,
                  "lora on q, k, v with a timm backbone: export refused (fused qkv)")
            # import refusals
            refused(exe, ckpt, inp, tmp, pdir, edit_config(lora_dropout=0.1), ["lora_dropout", "adapter_config.json"],
                    "lora_dropout 0.1")
            refused(exe, ckpt, inp, tmp, pdir, edit_config(peft_type="IA3"), ["peft_type", "IA3"], "peft_type IA3")
            refused(exe, ckpt, inp, tmp, pdir, edit_config(use_rslora=True), ["use_rslora"], "use_rslora")
            refused(exe, ckpt, inp, tmp, pdir, edit_config(modules_to_save=["classifier"]), ["modules_to_save"],
                    "modules_to_save")
            refused(exe, ckpt, inp, tmp, pdir,
                    add_tensor("base_model.model.classifier.lora_A.weight", np.zeros((4, D), np.float32)),
                    ["classifier", "not one of tessera's adapter sites"], "a target tessera does not have (classifier)")
            refused(exe, ckpt, inp, tmp, pdir, edit_config(target_modules=["key"]),
                    ["target_modules", "query"], "tensors outside target_modules")

    # transformers-5 naming as run.init: the same training as from the 4.x file
    if "lora" in results:
        r5 = adapt(exe, os.path.join(src, "configs/methods/lora.yaml"), os.path.join(tmp, "lora_v5"),
                   [f"run.init={back5_ckpt}"])
        a, b = losses(results["lora"].stdout), losses(r5.stdout)
        check(r5.returncode == 0 and len(a) > 3 and a == b,
              f"run.init in transformers-5 naming: exit 0, the same {len(b)} logged losses as from the 4.x file")


if __name__ == "__main__":
    sys.exit(main())
