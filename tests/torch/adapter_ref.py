#!/usr/bin/python3
"""PyTorch reference for tessera's adapters (LoRA, Poly, MHR, bottleneck adapters), for C parity tests.

usage: adapter_ref.py --out DIR --case NAME|all [--seed 0] [--dtype float32|float64] [--no-verify]

Writes, for each case, into DIR/NAME/:
  weights_timm.safetensors  the backbone (timm names, tests/torch/vit_ref.py's init_params)
  adapters.safetensors      every adapter tensor (F32) and, as metadata, every hyper-parameter
  ref.safetensors           input (B,C,H,W), labels (B) I64, task_ids (B) I64, logits (the training
                            forward, with routing noise where it is on), logits_eval (z = sigmoid(Z),
                            no noise), loss [1], noise.<module> (n_tasks, h*S), and grad.<name> for
                            every adapter tensor and head.weight / head.bias (the rest is frozen)

Semantics (../shared/METHODS.md, sections LoRA, Poly, MHR, Bottleneck adapter); linear y = x W^T + b.
A module ("routed low-rank pair") has din, dout, rank r, S skills, h heads:
  A (h, S, din/h, r), B (h, S, r, dout/h), Z (n_tasks, h*S) viewed (h, S) when S > 1.
  routing for task t: z = sigmoid(Z[t]); training with noise (relaxed Bernoulli, tau):
      p = clamp(sigmoid(Z[t]), eps, 1-eps), l = log p - log(1-p),
      z = clamp(sigmoid((l + log u - log(1-u)) / tau), eps, 1-eps)
  with eps = float32 machine epsilon and u = noise[t] (one row per task, shared by its examples;
  the generated u lie in [0.02, 0.98], so clamping u or not gives the same numbers).
  w[q,s] = z[q,s] / (sum_s z[q,s] + 1e-12); S = 1: no routing at all (w = 1 exactly).
  A_t = row-concatenation over q of sum_s w[q,s] A[q,s]; B_t = column-concatenation of sum_s w B.
LoRA at a linear layer: y += (alpha / r) (x A_t) B_t. Sites: q, k, v (slices of the qkv output,
  input LN1 output), proj (input: attention output before proj), fc1 (input LN2 output), fc2 (input
  GELU output).
Bottleneck: f(x) = act(x A_t + bd_t) B_t + bu_t, bd_t = sum_s mean_q(w[q,s]) down.bias[s],
  bu_t (head q's features) = sum_s w[q,s] up.bias[s] (head q's features). Placements:
  parallel      out = mid + FC2(GELU(FC1(LN2(mid)))) + s f(LN_a(mid))
  houlsby_attn  mid = x + (y + s f(y)), y = proj(attn(LN1(x)))
  mlp_seq       out = mid + (y + s f(y)), y = fc2 output
No dropout. Loss = mean cross entropy over the batch.

Metadata (adapters.safetensors and ref.safetensors, all strings): case, kind (lora | bottleneck),
sites (lora) or pos (bottleneck) comma-separated, rank, alpha (lora), scale (lora: alpha/rank;
bottleneck: s), activation (bottleneck: gelu | relu), dropout (0), skills, adapter_heads (the routing
heads h: "heads" keeps vit_ref.py's meaning, the backbone's attention heads), n_tasks, noise (0/1),
tau, route_eps, plus the model sizes batch, image, channels, patch, dim, depth, heads, mlp, classes,
eps, seed; ref.safetensors also has dtype.

Self-check (default on; --no-verify skips it), from the files read back, in float64:
  the functional ViT without adapters == vit_ref.vit_forward; logits, loss and gradients recomputed
  == stored; autograd vs central finite differences on a few entries of every gradient tensor;
  S = 1: the routed code path == a plain LoRA / adapter built directly from the tensors (forward and
  gradients); S > 1: routing weights and combined A_t, B_t, biases from explicit numpy loops == torch,
  and the batched routed forward == per-example forwards through dense per-task adapters.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
import vit_ref  # noqa: E402

ROUTE_EPS = 1.1920928955078125e-07   # float32 machine epsilon
NORM_EPS = 1e-12                      # w = z / (sum z + 1e-12)
LORA_SITES = ("q", "k", "v", "proj", "fc1", "fc2")
BN_POS = ("parallel", "houlsby_attn", "mlp_seq")
MODEL = dict(batch=4, image=8, channels=3, patch=4, dim=16, depth=2, heads=2, mlp=32, classes=5,
             eps=1e-6)
N_TASKS = 3

CASES = {
    "lora": dict(kind="lora", sites=LORA_SITES, rank=4, alpha=8.0, skills=1, heads=1, noise=0),
    "poly": dict(kind="lora", sites=("q", "v", "fc1"), rank=2, alpha=2.0, skills=4, heads=1, noise=1),
    "mhr": dict(kind="lora", sites=("q", "k", "v", "proj", "fc2"), rank=2, alpha=2.0, skills=3,
                heads=2, noise=0),
    "mhr_noise": dict(kind="lora", sites=("q", "fc1"), rank=2, alpha=2.0, skills=3, heads=2, noise=1),
    "adapter": dict(kind="bottleneck", pos=("parallel",), rank=4, scale=0.1, act="gelu", skills=1,
                    heads=1, noise=0),
    "adapter_mhr": dict(kind="bottleneck", pos=("parallel",), rank=4, scale=0.1, act="gelu", skills=2,
                        heads=2, noise=1),
    "houlsby": dict(kind="bottleneck", pos=("houlsby_attn", "mlp_seq"), rank=4, scale=1.0, act="gelu",
                    skills=1, heads=1, noise=0),
    "pfeiffer": dict(kind="bottleneck", pos=("mlp_seq",), rank=4, scale=1.0, act="relu", skills=3,
                     heads=2, noise=0),
}


# ------------------------------------------------------------------- spec
class Spec:
    """Adapter hyper-parameters of one case (built from CASES or read back from metadata)."""

    def __init__(self, kind, rank, skills, heads, n_tasks, noise, sites=(), pos=(), alpha=None,
                 scale=None, act=None, tau=1.0):
        self.kind, self.rank, self.skills, self.heads = kind, int(rank), int(skills), int(heads)
        self.n_tasks, self.noise, self.tau = int(n_tasks), int(noise), float(tau)
        self.sites, self.pos = tuple(sites), tuple(pos)
        if kind == "lora":
            self.alpha = float(alpha)
            self.scale = self.alpha / self.rank
            self.act = None
            assert self.sites and all(s in LORA_SITES for s in self.sites)
        elif kind == "bottleneck":
            self.alpha = None
            self.scale = float(scale)
            self.act = act
            assert act in ("gelu", "relu") and self.pos and all(p in BN_POS for p in self.pos)
        else:
            raise ValueError("kind %r" % kind)

    @property
    def routed(self):
        return self.skills > 1

    def meta(self, name):
        m = {"case": name, "kind": self.kind, "rank": str(self.rank), "scale": repr(self.scale),
             "skills": str(self.skills), "adapter_heads": str(self.heads),
             "n_tasks": str(self.n_tasks), "noise": str(self.noise), "tau": repr(self.tau),
             "route_eps": repr(ROUTE_EPS), "dropout": "0"}
        if self.kind == "lora":
            m["sites"] = ",".join(self.sites)
            m["alpha"] = repr(self.alpha)
        else:
            m["pos"] = ",".join(self.pos)
            m["activation"] = self.act
        return m

    @staticmethod
    def from_meta(m):
        kw = dict(kind=m["kind"], rank=m["rank"], skills=m["skills"], heads=m["adapter_heads"],
                  n_tasks=m["n_tasks"], noise=m["noise"], tau=m["tau"])
        if m["kind"] == "lora":
            kw.update(sites=m["sites"].split(","), alpha=m["alpha"])
        else:
            kw.update(pos=m["pos"].split(","), scale=m["scale"], act=m["activation"])
        return Spec(**kw)

    def modules(self, c):
        """Ordered list of (prefix, din, dout)."""
        D, M = c.dim, c.mlp
        width = {"q": (D, D), "k": (D, D), "v": (D, D), "proj": (D, D), "fc1": (D, M), "fc2": (M, D)}
        out = []
        for l in range(c.depth):
            if self.kind == "lora":
                for s in LORA_SITES:
                    if s in self.sites:
                        out.append(("blocks.%d.lora.%s" % (l, s),) + width[s])
            else:
                for p in BN_POS:
                    if p in self.pos:
                        out.append(("blocks.%d.adapter.%s" % (l, p), D, D))
        for _, din, dout in out:
            if din % self.heads or dout % self.heads:
                raise ValueError("din/dout not divisible by the routing heads")
        return out

    def tensor_shapes(self, c):
        """Ordered adapter tensor names -> shape."""
        h, S, r, n = self.heads, self.skills, self.rank, self.n_tasks
        out = []
        for pre, din, dout in self.modules(c):
            if self.kind == "lora":
                out += [(pre + ".A", (h, S, din // h, r)), (pre + ".B", (h, S, r, dout // h))]
            else:
                out += [(pre + ".down.A", (h, S, din // h, r)), (pre + ".down.bias", (S, r)),
                        (pre + ".up.B", (h, S, r, dout // h)), (pre + ".up.bias", (S, dout))]
            if S > 1:
                out.append((pre + ".Z", (n, h * S)))
            if pre.endswith(".parallel"):
                out += [(pre + ".ln.weight", (din,)), (pre + ".ln.bias", (din,))]
        return out

    def noise_shapes(self, c):
        if not (self.noise and self.routed):
            return []
        return [("noise." + pre, (self.n_tasks, self.heads * self.skills))
                for pre, _, _ in self.modules(c)]


def model_cfg(seed):
    return vit_ref.Cfg(seed=seed, **MODEL)


def task_ids_for(B, n, g):
    """Mixed, non-contiguous task ids using every task ([2, 0, 2, 1] for B = 4, n = 3)."""
    if B == 4 and n == 3:
        return np.array([2, 0, 2, 1], np.int64)
    assert B >= n
    while True:
        t = torch.randint(0, n, (B,), generator=g).numpy().astype(np.int64)
        t[torch.randperm(B, generator=g)[:n].numpy()] = np.arange(n)
        if all(t[i] != t[i + 1] for i in range(B - 1)):
            return t


def init_adapters(spec, c, seed):
    """Non-trivial float32 adapter tensors and routing noise (numpy)."""
    g = torch.Generator().manual_seed(seed)
    r, s = spec.rank, spec.scale
    out = {}
    for name, shape in spec.tensor_shapes(c):
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        leaf = name.split(".", 4)[4]          # A, B, Z, down.A, down.bias, up.B, up.bias, ln.*
        din = shape[2] * shape[0] if leaf in ("A", "down.A") else None
        seq = ".houlsby_attn." in name or ".mlp_seq." in name
        if leaf in ("A", "down.A"):
            # x A_t: O(1) entries (a sequential adapter's input, a sublayer output, has std ~0.5)
            v = x * ((2.0 if seq else 1.0) / math.sqrt(din))
        elif leaf == "B":
            v = x * (0.5 / (spec.scale * math.sqrt(r)))   # scale * (xA) B: std ~0.5
        elif leaf == "up.B":
            v = x * ((0.3 if seq else 0.2) / (s * math.sqrt(0.5 * r)))   # s * f: std ~0.2-0.3
        elif leaf == "Z":
            v = x * 1.0                       # routing far from uniform
        elif leaf == "ln.weight":
            v = 1.0 + 0.2 * x
        elif leaf == "ln.bias":
            v = 0.1 * x
        elif leaf == "down.bias":
            v = 0.3 * x
        elif leaf == "up.bias":
            v = (0.2 / s) * 0.3 * x
        else:
            raise AssertionError(name)
        out[name] = v.numpy().astype(np.float32)
    noise = {}
    for name, shape in spec.noise_shapes(c):
        noise[name] = (0.02 + 0.96 * torch.rand(shape, generator=g, dtype=torch.float32)).numpy()
    return out, noise


# ------------------------------------------------------------------ routing
def routing_weights(Z, u, spec, use_noise):
    """Z (n, h*S), u (n, h*S) or None -> w (n, h, S)."""
    n, h, S = spec.n_tasks, spec.heads, spec.skills
    if use_noise:
        p = torch.sigmoid(Z).clamp(ROUTE_EPS, 1 - ROUTE_EPS)
        l = torch.log(p) - torch.log(1 - p)
        uu = u.clamp(ROUTE_EPS, 1 - ROUTE_EPS)
        z = torch.sigmoid((l + torch.log(uu) - torch.log(1 - uu)) / spec.tau)
        z = z.clamp(ROUTE_EPS, 1 - ROUTE_EPS)
    else:
        z = torch.sigmoid(Z)
    z = z.reshape(n, h, S)
    return z / (z.sum(-1, keepdim=True) + NORM_EPS)


def combine(ad, pre, spec, din, dout, noise, use_noise):
    """Per-task combined tensors: A_t (n|1, din, r), B_t (n|1, r, dout), bd (n|1, r), bu (n|1, dout)
    (bd, bu None for LoRA).  S = 1: no routing, a single shared set (leading dim 1)."""
    h, S, r = spec.heads, spec.skills, spec.rank
    lora = spec.kind == "lora"
    A = ad[pre + (".A" if lora else ".down.A")]
    B = ad[pre + (".B" if lora else ".up.B")]
    bd = bu = None
    if S == 1:
        At = A[:, 0].reshape(1, din, r)
        Bt = B[:, 0].permute(1, 0, 2).reshape(1, r, dout)
        if not lora:
            bd = ad[pre + ".down.bias"][0:1]
            bu = ad[pre + ".up.bias"][0:1]
        return At, Bt, bd, bu
    n = spec.n_tasks
    w = routing_weights(ad[pre + ".Z"], noise.get("noise." + pre), spec, use_noise)   # (n, h, S)
    At = torch.einsum("nqs,qsir->nqir", w, A).reshape(n, din, r)
    Bt = torch.einsum("nqs,qsrj->nrqj", w, B).reshape(n, r, dout)
    if not lora:
        bd = torch.einsum("ns,sr->nr", w.mean(1), ad[pre + ".down.bias"])
        bu = torch.einsum("nqs,sqj->nqj", w, ad[pre + ".up.bias"].reshape(S, h, dout // h))
        bu = bu.reshape(n, dout)
    return At, Bt, bd, bu


def _act(spec, x):
    return F.gelu(x) if spec.act == "gelu" else F.relu(x)


class Routed:
    """Module evaluator: the routed code path (combined tensors per task, gathered per example)."""

    def __init__(self, ad, spec, c, task_ids, noise, use_noise):
        self.spec = spec
        self.tid = torch.as_tensor(task_ids, dtype=torch.int64)
        self.comb = {pre: combine(ad, pre, spec, din, dout, noise, use_noise)
                     for pre, din, dout in spec.modules(c)}

    def has(self, pre):
        return pre in self.comb

    def __call__(self, pre, x):
        """LoRA: scale (x A_t) B_t.  Bottleneck: f(x) (unscaled).  x (B, T, din)."""
        At, Bt, bd, bu = self.comb[pre]
        idx = self.tid if At.shape[0] > 1 else torch.zeros_like(self.tid)
        Ae, Be = At[idx], Bt[idx]                                   # (B, din, r), (B, r, dout)
        hid = torch.matmul(x, Ae)                                   # (B, T, r)
        if self.spec.kind == "lora":
            return self.spec.scale * torch.matmul(hid, Be)
        hid = _act(self.spec, hid + bd[idx][:, None, :])
        return torch.matmul(hid, Be) + bu[idx][:, None, :]


class Dense:
    """Module evaluator: plain LoRA / adapter from dense matrices, no routing code.
    mats: prefix -> (A (din, r), B (r, dout), bd (r) or None, bu (dout) or None), one task."""

    def __init__(self, spec, mats):
        self.spec, self.mats = spec, mats

    def has(self, pre):
        return pre in self.mats

    def __call__(self, pre, x):
        A, B, bd, bu = self.mats[pre]
        if self.spec.kind == "lora":
            return self.spec.scale * ((x @ A) @ B)
        return _act(self.spec, x @ A + bd) @ B + bu


def dense_s1(ad, spec, c):
    """S = 1: the plain adapter built directly from the stored tensors (heads concatenated)."""
    lora = spec.kind == "lora"
    mats = {}
    for pre, din, dout in spec.modules(c):
        A = ad[pre + (".A" if lora else ".down.A")]
        B = ad[pre + (".B" if lora else ".up.B")]
        Ad = torch.cat([A[q, 0] for q in range(spec.heads)], 0)
        Bd = torch.cat([B[q, 0] for q in range(spec.heads)], 1)
        if lora:
            mats[pre] = (Ad, Bd, None, None)
        else:
            mats[pre] = (Ad, Bd, ad[pre + ".down.bias"][0], ad[pre + ".up.bias"][0])
    return Dense(spec, mats)


# --------------------------------------------------------------- the model
def forward(p, ad, x, c, spec, mod):
    """Functional ViT (timm semantics, as vit_ref.vit_forward) with adapters.  p: backbone tensors,
    ad: adapter tensors, mod: module evaluator (Routed / Dense) or None (no adapters)."""
    B = x.shape[0]
    D, H = c.dim, c.heads
    dh = D // H
    s = spec.scale if spec is not None else 0.0
    on = (lambda pre: mod is not None and mod.has(pre))

    e = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=c.patch)
    e = e.flatten(2).transpose(1, 2)
    t = torch.cat([p["cls_token"].expand(B, -1, -1), e], dim=1) + p["pos_embed"]
    T = t.shape[1]
    for l in range(c.depth):
        b = "blocks.%d." % l
        lo = "blocks.%d.lora." % l
        bn = "blocks.%d.adapter." % l
        y = F.layer_norm(t, (D,), p[b + "norm1.weight"], p[b + "norm1.bias"], c.eps)
        qkv = F.linear(y, p[b + "attn.qkv.weight"], p[b + "attn.qkv.bias"])
        q, k, v = qkv.split(D, dim=-1)
        if on(lo + "q"):
            q = q + mod(lo + "q", y)
        if on(lo + "k"):
            k = k + mod(lo + "k", y)
        if on(lo + "v"):
            v = v + mod(lo + "v", y)
        q = q.reshape(B, T, H, dh).transpose(1, 2)
        k = k.reshape(B, T, H, dh).transpose(1, 2)
        v = v.reshape(B, T, H, dh).transpose(1, 2)
        a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(dh), dim=-1)
        o = torch.matmul(a, v).transpose(1, 2).reshape(B, T, D)
        y = F.linear(o, p[b + "attn.proj.weight"], p[b + "attn.proj.bias"])
        if on(lo + "proj"):
            y = y + mod(lo + "proj", o)
        if on(bn + "houlsby_attn"):
            y = y + s * mod(bn + "houlsby_attn", y)
        h = t + y
        y = F.layer_norm(h, (D,), p[b + "norm2.weight"], p[b + "norm2.bias"], c.eps)
        f1 = F.linear(y, p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"])
        if on(lo + "fc1"):
            f1 = f1 + mod(lo + "fc1", y)
        g = F.gelu(f1)
        y = F.linear(g, p[b + "mlp.fc2.weight"], p[b + "mlp.fc2.bias"])
        if on(lo + "fc2"):
            y = y + mod(lo + "fc2", g)
        if on(bn + "mlp_seq"):
            y = y + s * mod(bn + "mlp_seq", y)
        t = h + y
        if on(bn + "parallel"):
            pre = bn + "parallel"
            ya = F.layer_norm(h, (D,), ad[pre + ".ln.weight"], ad[pre + ".ln.bias"], c.eps)
            t = t + s * mod(pre, ya)
    t = F.layer_norm(t, (D,), p["norm.weight"], p["norm.bias"], c.eps)
    return F.linear(t[:, 0], p["head.weight"], p["head.bias"])


def tensors(w_np, ad_np, noise_np, dtype, grad=True):
    """numpy -> torch; adapters and head require grad."""
    p = {k: torch.tensor(v, dtype=dtype) for k, v in w_np.items()}
    ad = {k: torch.tensor(v, dtype=dtype) for k, v in ad_np.items()}
    nz = {k: torch.tensor(v, dtype=dtype) for k, v in noise_np.items()}
    if grad:
        for k in ("head.weight", "head.bias"):
            p[k].requires_grad_(True)
        for v in ad.values():
            v.requires_grad_(True)
    return p, ad, nz


def run_case(c, spec, w_np, ad_np, noise_np, x_np, labels_np, tids, dtype, evaluator="routed"):
    """Training forward (noise where on) + backward.  Returns logits, loss, grads (adapter + head)."""
    p, ad, nz = tensors(w_np, ad_np, noise_np, dtype)
    x = torch.tensor(x_np, dtype=dtype)
    if evaluator == "routed":
        mod = Routed(ad, spec, c, tids, nz, use_noise=bool(spec.noise and spec.routed))
    else:
        mod = dense_s1(ad, spec, c)
    logits = forward(p, ad, x, c, spec, mod)
    loss = F.cross_entropy(logits, torch.as_tensor(labels_np, dtype=torch.int64))
    loss.backward()
    grads = {k: v.grad.detach().numpy().copy() for k, v in ad.items()}
    grads["head.weight"] = p["head.weight"].grad.numpy().copy()
    grads["head.bias"] = p["head.bias"].grad.numpy().copy()
    return logits.detach().numpy(), loss.detach().reshape(1).numpy(), grads


def eval_logits(c, spec, w_np, ad_np, noise_np, x_np, tids, dtype, use_noise=False, adapters=True):
    with torch.no_grad():
        p, ad, nz = tensors(w_np, ad_np, noise_np, dtype, grad=False)
        mod = Routed(ad, spec, c, tids, nz, use_noise) if adapters else None
        return forward(p, ad, torch.tensor(x_np, dtype=dtype), c, spec, mod).numpy()


# --------------------------------------------------------------- generator
def generate(name, c, out, dtype, seed):
    spec = Spec(n_tasks=N_TASKS, **CASES[name])
    os.makedirs(out, exist_ok=True)
    tdt = torch.float64 if dtype == "float64" else torch.float32
    npdt = np.float64 if dtype == "float64" else np.float32
    w = vit_ref.init_params(c)
    g = torch.Generator().manual_seed(c.seed + 1000003)      # as vit_ref: input, labels
    x = torch.randn((c.batch, c.channels, c.image, c.image), generator=g,
                    dtype=torch.float32).numpy().astype(npdt)
    labels = torch.randint(0, c.classes, (c.batch,), generator=g).numpy().astype(np.int64)
    tids = task_ids_for(c.batch, spec.n_tasks, g)
    ad, noise = init_adapters(spec, c, seed + 2000003 + 7919 * list(CASES).index(name))

    logits, loss, grads = run_case(c, spec, w, ad, noise, x, labels, tids, tdt)
    logits_eval = eval_logits(c, spec, w, ad, noise, x, tids, tdt, use_noise=False)
    logits_bb = eval_logits(c, spec, w, ad, noise, x, tids, tdt, adapters=False)

    meta = dict(c.meta())
    meta.update(spec.meta(name))
    meta["format"] = "pt"
    st.save(os.path.join(out, "weights_timm.safetensors"), w, {"format": "pt"})
    st.save(os.path.join(out, "adapters.safetensors"), ad, meta)
    ref = {"input": x, "labels": labels, "task_ids": tids, "logits": logits.astype(npdt),
           "logits_eval": logits_eval.astype(npdt), "loss": loss.astype(npdt)}
    for k, v in noise.items():
        ref[k] = v.astype(npdt)
    for k in list(ad) + ["head.weight", "head.bias"]:
        ref["grad." + k] = grads[k].astype(npdt)
    rmeta = dict(meta)
    rmeta["dtype"] = dtype
    st.save(os.path.join(out, "ref.safetensors"), ref, rmeta)

    dl = np.abs(logits - logits_bb).max()
    print("%-12s %2d adapter tensors  loss %.5f  logits std %.3f  max|logits - backbone| %.3f"
          "%s  task_ids %s" % (name, len(ad), loss[0], logits.std(), dl,
                               ("  max|logits - logits_eval| %.3f" % np.abs(logits - logits_eval).max())
                               if noise else "", tids.tolist()))
    for k, v in grads.items():
        assert np.abs(v).max() > 0, "zero gradient " + k
    assert dl > 0.05 * logits_bb.std(), "adapters barely change the logits"


# ------------------------------------------------------------------ verify
def _rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def np_routing(Z, u, spec, use_noise):
    """Explicit loops (float64 numpy): w (n, h, S)."""
    n, h, S = spec.n_tasks, spec.heads, spec.skills
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    w = np.zeros((n, h, S))
    for t in range(n):
        for q in range(h):
            z = []
            for s_ in range(S):
                zl = float(Z[t, q * S + s_])
                if use_noise:
                    pp = min(max(sig(zl), ROUTE_EPS), 1 - ROUTE_EPS)
                    uu = min(max(float(u[t, q * S + s_]), ROUTE_EPS), 1 - ROUTE_EPS)
                    zz = sig((math.log(pp) - math.log(1 - pp) + math.log(uu) - math.log(1 - uu))
                             / spec.tau)
                    z.append(min(max(zz, ROUTE_EPS), 1 - ROUTE_EPS))
                else:
                    z.append(sig(zl))
            tot = sum(z) + NORM_EPS
            for s_ in range(S):
                w[t, q, s_] = z[s_] / tot
    return w


def np_dense(ad, pre, spec, din, dout, w, t):
    """Explicit loops: the dense (A_t, B_t, bd_t, bu_t) of task t."""
    h, S, r = spec.heads, spec.skills, spec.rank
    lora = spec.kind == "lora"
    A = ad[pre + (".A" if lora else ".down.A")].astype(np.float64)
    B = ad[pre + (".B" if lora else ".up.B")].astype(np.float64)
    di, do = din // h, dout // h
    At, Bt = np.zeros((din, r)), np.zeros((r, dout))
    for q in range(h):
        for s_ in range(S):
            At[q * di:(q + 1) * di] += w[t, q, s_] * A[q, s_]
            Bt[:, q * do:(q + 1) * do] += w[t, q, s_] * B[q, s_]
    if lora:
        return At, Bt, None, None
    dbias = ad[pre + ".down.bias"].astype(np.float64)
    ubias = ad[pre + ".up.bias"].astype(np.float64)
    bd, bu = np.zeros(r), np.zeros(dout)
    for s_ in range(S):
        bd += np.mean(w[t, :, s_]) * dbias[s_]
        for q in range(h):
            bu[q * do:(q + 1) * do] += w[t, q, s_] * ubias[s_, q * do:(q + 1) * do]
    return At, Bt, bd, bu


def verify(out, fd_entries=3):
    ref, meta = st.load(os.path.join(out, "ref.safetensors"))
    ad, ameta = st.load(os.path.join(out, "adapters.safetensors"))
    w, _ = st.load(os.path.join(out, "weights_timm.safetensors"))
    c = vit_ref.Cfg.from_meta(meta)
    spec = Spec.from_meta(ameta)
    dtype = meta["dtype"]
    tol = 1e-10 if dtype == "float64" else 2e-4
    use_noise = bool(spec.noise and spec.routed)
    errs = {}
    ok = True

    def check(label, err, lim):
        nonlocal ok
        good = err <= lim
        ok &= good
        errs[label] = err
        print("    %-56s %.3e %s" % (label, err, "ok" if good else "FAIL (limit %.1e)" % lim))

    # contract: names, shapes, dtypes, metadata
    assert list(ad) == [n for n, _ in spec.tensor_shapes(c)], list(ad)
    for n, shp in spec.tensor_shapes(c):
        assert ad[n].shape == shp and ad[n].dtype == np.float32, n
        assert ref["grad." + n].shape == shp, n
    assert set(st.dtypes_of(os.path.join(out, "adapters.safetensors")).values()) == {"F32"}
    rdt = st.dtypes_of(os.path.join(out, "ref.safetensors"))
    assert rdt["labels"] == "I64" and rdt["task_ids"] == "I64"
    for n, shp in spec.noise_shapes(c):
        assert ref[n].shape == shp, n
    assert sorted(k for k in ref if k.startswith("noise.")) == sorted(n for n, _ in spec.noise_shapes(c))
    tids = ref["task_ids"]
    assert sorted(set(tids.tolist())) == list(range(spec.n_tasks))
    for k in ("batch", "image", "channels", "patch", "dim", "depth", "heads", "mlp", "classes", "eps"):
        assert ameta[k] == meta[k], k
    noise = {k: v for k, v in ref.items() if k.startswith("noise.")}
    x, labels = ref["input"], ref["labels"]
    print("  verify %s (%s, %s, S=%d, h=%d, noise %d)" % (out, dtype, spec.kind, spec.skills,
                                                          spec.heads, spec.noise))
    d64 = torch.float64

    # the functional ViT without adapters is vit_ref's
    with torch.no_grad():
        pv = {k: torch.tensor(v, dtype=d64) for k, v in w.items()}
        a0 = vit_ref.vit_forward(pv, torch.tensor(x, dtype=d64), c).numpy()
    check("no adapters vs vit_ref.vit_forward (max abs)",
          float(np.abs(eval_logits(c, spec, w, ad, noise, x, tids, d64, adapters=False) - a0).max()),
          1e-12)

    # recompute in float64
    lg, ls, g64 = run_case(c, spec, w, ad, noise, x, labels, tids, d64)
    check("logits vs float64 recompute (max abs)", float(np.abs(lg - ref["logits"]).max()), tol)
    check("loss vs float64 recompute", float(abs(ls[0] - ref["loss"][0])), tol)
    le = eval_logits(c, spec, w, ad, noise, x, tids, d64, use_noise=False)
    check("logits_eval vs float64 recompute (max abs)", float(np.abs(le - ref["logits_eval"]).max()), tol)
    gnames = list(ad) + ["head.weight", "head.bias"]
    check("grads vs float64 recompute (max rel)", max(_rel(ref["grad." + n], g64[n]) for n in gnames),
          10 * tol)

    # central finite differences (float64)
    p, adt, nz = tensors(w, ad, noise, d64, grad=False)
    xd = torch.tensor(x, dtype=d64)
    lab = torch.as_tensor(labels, dtype=torch.int64)

    def lossf():
        with torch.no_grad():
            mod = Routed(adt, spec, c, tids, nz, use_noise)
            return F.cross_entropy(forward(p, adt, xd, c, spec, mod), lab).item()

    rng = np.random.default_rng(c.seed)
    worst, worst_abs = 0.0, 0.0
    for n in gnames:
        flat = (p[n] if n.startswith("head.") else adt[n]).view(-1)
        for i in rng.choice(flat.numel(), size=min(fd_entries, flat.numel()), replace=False):
            hstep, old = 1e-5, flat[i].item()
            flat[i] = old + hstep
            lp = lossf()
            flat[i] = old - hstep
            lm = lossf()
            flat[i] = old
            fd = (lp - lm) / (2 * hstep)
            an = float(g64[n].reshape(-1)[i])
            worst = max(worst, abs(fd - an) / max(1e-3, abs(an)))
            worst_abs = max(worst_abs, abs(fd - an))
    check("autograd vs central finite differences (rel, %d/tensor)" % fd_entries, worst, 1e-6)
    errs["fd_abs"] = worst_abs

    if not spec.routed:
        # S = 1: the routed code path equals a plain LoRA / adapter built directly
        lp_, lsp, gp = run_case(c, spec, w, ad, noise, x, labels, tids, d64, evaluator="plain")
        check("S=1: routed path vs plain module, logits (max abs)", float(np.abs(lg - lp_).max()), 1e-12)
        check("S=1: routed path vs plain module, grads (max rel)",
              max(_rel(g64[n], gp[n]) for n in gnames), 1e-12)
    else:
        # routing from explicit loops, combined tensors, per-example dense forwards
        with torch.no_grad():
            werr, cerr = 0.0, 0.0
            mats = {}
            for pre, din, dout in spec.modules(c):
                wn = np_routing(ad[pre + ".Z"].astype(np.float64), noise.get("noise." + pre), spec,
                                use_noise)
                wt = routing_weights(adt[pre + ".Z"], nz.get("noise." + pre), spec, use_noise).numpy()
                werr = max(werr, float(np.abs(wn - wt).max()))
                comb = combine(adt, pre, spec, din, dout, nz, use_noise)
                mats[pre] = []
                for t in range(spec.n_tasks):
                    dn = np_dense(ad, pre, spec, din, dout, wn, t)
                    for a_, b_ in zip(dn, comb):
                        if a_ is not None:
                            cerr = max(cerr, float(np.abs(a_ - b_[t].numpy()).max()))
                    mats[pre].append(tuple(None if m is None else torch.tensor(m) for m in dn))
            check("routing weights: numpy loops vs torch (max abs)", werr, 1e-13)
            check("combined A_t, B_t, biases: loops vs torch (max abs)", cerr, 1e-13)
            lex = np.zeros_like(lg)
            for b in range(c.batch):
                d = Dense(spec, {k: v[int(tids[b])] for k, v in mats.items()})
                lex[b] = forward(p, adt, xd[b:b + 1], c, spec, d).numpy()[0]
            check("batched routed forward vs per-example dense (max abs)",
                  float(np.abs(lg - lex).max()), 1e-12)
            wmin = min(float(routing_weights(adt[pre + ".Z"], nz.get("noise." + pre), spec,
                                             use_noise).min()) for pre, _, _ in spec.modules(c))
            wmax = max(float(routing_weights(adt[pre + ".Z"], nz.get("noise." + pre), spec,
                                             use_noise).max()) for pre, _, _ in spec.modules(c))
            print("    routing weights range [%.3f, %.3f] (uniform %.3f)" % (wmin, wmax, 1.0 / spec.skills))
    print("  verify %s: %s" % (os.path.basename(out), "PASS" if ok else "FAIL"))
    return ok, errs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--case", required=True, choices=list(CASES) + ["all"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--no-verify", action="store_true", help="skip the self-check")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    names = list(CASES) if a.case == "all" else [a.case]
    c = model_cfg(a.seed)
    for n in names:
        generate(n, c, os.path.join(a.out, n), a.dtype, a.seed)
    ok = True
    if not a.no_verify:
        summary = []
        for n in names:
            good, errs = verify(os.path.join(a.out, n))
            ok &= good
            summary.append((n, good, errs))
        print("summary (max errors):")
        for n, good, errs in summary:
            print("  %-12s %s  fd rel %.2e  grads vs f64 %.2e  logits vs f64 %.2e%s" % (
                n, "PASS" if good else "FAIL",
                errs["autograd vs central finite differences (rel, 3/tensor)"],
                errs["grads vs float64 recompute (max rel)"],
                errs["logits vs float64 recompute (max abs)"],
                ("  plain %.1e" % max(v for k, v in errs.items() if k.startswith("S=1")))
                if any(k.startswith("S=1") for k in errs) else
                ("  per-example %.1e" % errs["batched routed forward vs per-example dense (max abs)"])))
    print("%s in %.2f s" % ("PASS" if ok else "FAIL", time.time() - t0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
