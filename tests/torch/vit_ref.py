#!/usr/bin/python3
"""PyTorch reference ViT (timm / Hugging Face semantics) for verifying tessera.

Writes, into --out DIR:
  weights_timm.safetensors, weights_timm_f16.safetensors, weights_timm_bf16.safetensors,
  weights_hf.safetensors (vit.* prefix + unused pooler), weights_hf_noprefix.safetensors,
  config.json (Hugging Face ViTConfig style), ref.safetensors (input, labels,
  logits, loss, grad.<timm name>, grad_tokens.<l>, logits_f16, logits_bf16).

The model is written from torch functional ops with parameters held as a dict of
leaf tensors.  With --verify (default on) the outputs are re-read from disk and
checked against an independent nn.Module implementation (forward, loss, every
parameter gradient, the residual-stream gradients) and the HF files are mapped
back to timm names and compared bit for bit.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402


# --------------------------------------------------------------------- config
class Cfg:
    def __init__(self, batch=3, image=8, channels=3, patch=4, dim=16, depth=2, heads=2,
                 mlp=32, classes=5, eps=1e-6, seed=0):
        self.batch, self.image, self.channels, self.patch = batch, image, channels, patch
        self.dim, self.depth, self.heads, self.mlp = dim, depth, heads, mlp
        self.classes, self.eps, self.seed = classes, eps, seed
        if image % patch:
            raise ValueError("image must be a multiple of patch")
        if dim % heads:
            raise ValueError("dim must be a multiple of heads")
        self.grid = image // patch
        self.tokens = self.grid * self.grid + 1

    def meta(self):
        return {k: repr(getattr(self, k)) if k == "eps" else str(getattr(self, k))
                for k in ("batch", "image", "channels", "patch", "dim", "depth", "heads",
                          "mlp", "classes", "eps", "seed")}

    @staticmethod
    def from_meta(m):
        return Cfg(**{k: (float(m[k]) if k == "eps" else int(m[k]))
                      for k in ("batch", "image", "channels", "patch", "dim", "depth",
                                "heads", "mlp", "classes", "eps", "seed")})


def param_shapes(c):
    """Ordered timm names -> shape."""
    D, C, P, T, M, K = c.dim, c.channels, c.patch, c.tokens, c.mlp, c.classes
    s = [("patch_embed.proj.weight", (D, C, P, P)), ("patch_embed.proj.bias", (D,)),
         ("cls_token", (1, 1, D)), ("pos_embed", (1, T, D))]
    for l in range(c.depth):
        b = "blocks.%d." % l
        s += [(b + "norm1.weight", (D,)), (b + "norm1.bias", (D,)),
              (b + "attn.qkv.weight", (3 * D, D)), (b + "attn.qkv.bias", (3 * D,)),
              (b + "attn.proj.weight", (D, D)), (b + "attn.proj.bias", (D,)),
              (b + "norm2.weight", (D,)), (b + "norm2.bias", (D,)),
              (b + "mlp.fc1.weight", (M, D)), (b + "mlp.fc1.bias", (M,)),
              (b + "mlp.fc2.weight", (D, M)), (b + "mlp.fc2.bias", (D,))]
    s += [("norm.weight", (D,)), ("norm.bias", (D,)),
          ("head.weight", (K, D)), ("head.bias", (K,))]
    return s


# Scale of each linear weight, multiplied by 1/sqrt(fan_in).  qkv is larger so that
# the attention logits have a std of ~2 (softmax neither uniform nor one-hot).
_WSCALE = {"patch_embed.proj.weight": 1.0, "attn.qkv.weight": 1.2, "attn.proj.weight": 0.7,
           "mlp.fc1.weight": 1.0, "mlp.fc2.weight": 0.7, "head.weight": 1.0}


def init_params(c):
    """Deterministic float32 numpy weights (timm names)."""
    g = torch.Generator().manual_seed(c.seed)
    out = {}
    for name, shape in param_shapes(c):
        r = torch.randn(shape, generator=g, dtype=torch.float32)
        leaf = name.split(".")[-1]
        if name in ("cls_token", "pos_embed"):
            v = r * 0.5
        elif "norm" in name and leaf == "weight":
            v = 1.0 + 0.2 * r
        elif "norm" in name and leaf == "bias":
            v = 0.1 * r
        elif leaf == "bias":
            v = 0.1 * r
        else:
            key = name if name in _WSCALE else ".".join(name.split(".")[-3:])
            fan_in = int(np.prod(shape[1:]))
            v = r * (_WSCALE[key] / math.sqrt(fan_in))
        out[name] = v.numpy().astype(np.float32)
    return out


# ------------------------------------------------------------- functional model
def vit_forward(p, x, c, tok_hook=None, attn_hook=None):
    """p: dict timm name -> tensor.  x: (B,C,H,W).  Returns logits (B,K).
    tok_hook(l, t) is called with the residual stream entering block l (l = depth:
    the output of the last block)."""
    B = x.shape[0]
    D, H = c.dim, c.heads
    dh = D // H
    e = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=c.patch)
    e = e.flatten(2).transpose(1, 2)                          # (B, N, D)
    cls = p["cls_token"].expand(B, -1, -1)
    t = torch.cat([cls, e], dim=1) + p["pos_embed"]           # (B, T, D)
    T = t.shape[1]
    for l in range(c.depth):
        if tok_hook is not None:
            tok_hook(l, t)
        b = "blocks.%d." % l
        y = F.layer_norm(t, (D,), p[b + "norm1.weight"], p[b + "norm1.bias"], c.eps)
        qkv = F.linear(y, p[b + "attn.qkv.weight"], p[b + "attn.qkv.bias"])    # (B,T,3D)
        q, k, v = qkv.split(D, dim=-1)
        q = q.reshape(B, T, H, dh).transpose(1, 2)            # (B,H,T,dh)
        k = k.reshape(B, T, H, dh).transpose(1, 2)
        v = v.reshape(B, T, H, dh).transpose(1, 2)
        a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(dh), dim=-1)
        if attn_hook is not None:
            attn_hook(l, a)
        o = torch.matmul(a, v).transpose(1, 2).reshape(B, T, D)
        h = t + F.linear(o, p[b + "attn.proj.weight"], p[b + "attn.proj.bias"])
        y = F.layer_norm(h, (D,), p[b + "norm2.weight"], p[b + "norm2.bias"], c.eps)
        y = F.gelu(F.linear(y, p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"]))  # erf GELU
        t = h + F.linear(y, p[b + "mlp.fc2.weight"], p[b + "mlp.fc2.bias"])
    if tok_hook is not None:
        tok_hook(c.depth, t)
    t = F.layer_norm(t, (D,), p["norm.weight"], p["norm.bias"], c.eps)
    return F.linear(t[:, 0], p["head.weight"], p["head.bias"])


def run_reference(c, w_np, x_np, labels_np, dtype):
    """Forward + full backward.  Returns (logits, loss, grads dict, grad_tokens list, attn)."""
    p = {k: torch.tensor(v, dtype=dtype).requires_grad_(True) for k, v in w_np.items()}
    x = torch.tensor(x_np, dtype=dtype)
    labels = torch.tensor(labels_np, dtype=torch.int64)
    toks = [None] * (c.depth + 1)
    attn = [None] * c.depth

    def tok_hook(l, t):
        t.retain_grad()
        toks[l] = t

    def attn_hook(l, a):
        attn[l] = a.detach()

    logits = vit_forward(p, x, c, tok_hook, attn_hook)
    loss = F.cross_entropy(logits, labels)        # mean over the batch
    loss.backward()
    grads = {k: v.grad.detach().numpy() for k, v in p.items()}
    gtok = [t.grad.detach().numpy() for t in toks]
    return logits.detach().numpy(), loss.detach().reshape(1).numpy(), grads, gtok, attn


def logits_only(c, w_np, x_np, dtype):
    with torch.no_grad():
        p = {k: torch.tensor(v, dtype=dtype) for k, v in w_np.items()}
        return vit_forward(p, torch.tensor(x_np, dtype=dtype), c).numpy()


# ------------------------------------------------------------------ HF naming
def timm_to_hf(w, c, prefix=True, pooler=None):
    """timm-named dict -> Hugging Face ViTForImageClassification naming."""
    D = c.dim
    v = "vit." if prefix else ""
    o = {v + "embeddings.cls_token": w["cls_token"],
         v + "embeddings.position_embeddings": w["pos_embed"],
         v + "embeddings.patch_embeddings.projection.weight": w["patch_embed.proj.weight"],
         v + "embeddings.patch_embeddings.projection.bias": w["patch_embed.proj.bias"]}
    for l in range(c.depth):
        s = "blocks.%d." % l
        h = "%sencoder.layer.%d." % (v, l)
        o[h + "layernorm_before.weight"] = w[s + "norm1.weight"]
        o[h + "layernorm_before.bias"] = w[s + "norm1.bias"]
        qw, qb = w[s + "attn.qkv.weight"], w[s + "attn.qkv.bias"]
        for i, nm in enumerate(("query", "key", "value")):
            o[h + "attention.attention.%s.weight" % nm] = np.ascontiguousarray(qw[i * D:(i + 1) * D])
            o[h + "attention.attention.%s.bias" % nm] = np.ascontiguousarray(qb[i * D:(i + 1) * D])
        o[h + "attention.output.dense.weight"] = w[s + "attn.proj.weight"]
        o[h + "attention.output.dense.bias"] = w[s + "attn.proj.bias"]
        o[h + "layernorm_after.weight"] = w[s + "norm2.weight"]
        o[h + "layernorm_after.bias"] = w[s + "norm2.bias"]
        o[h + "intermediate.dense.weight"] = w[s + "mlp.fc1.weight"]
        o[h + "intermediate.dense.bias"] = w[s + "mlp.fc1.bias"]
        o[h + "output.dense.weight"] = w[s + "mlp.fc2.weight"]
        o[h + "output.dense.bias"] = w[s + "mlp.fc2.bias"]
    o[v + "layernorm.weight"] = w["norm.weight"]
    o[v + "layernorm.bias"] = w["norm.bias"]
    if pooler is not None:
        o[v + "pooler.dense.weight"] = pooler[0]
        o[v + "pooler.dense.bias"] = pooler[1]
    o["classifier.weight"] = w["head.weight"]
    o["classifier.bias"] = w["head.bias"]
    return o


def hf_to_timm(h, c):
    """Inverse of timm_to_hf; accepts either prefixed or unprefixed names, ignores the pooler."""
    v = "vit." if "vit.embeddings.cls_token" in h else ""
    w = {"cls_token": h[v + "embeddings.cls_token"],
         "pos_embed": h[v + "embeddings.position_embeddings"],
         "patch_embed.proj.weight": h[v + "embeddings.patch_embeddings.projection.weight"],
         "patch_embed.proj.bias": h[v + "embeddings.patch_embeddings.projection.bias"]}
    for l in range(c.depth):
        s = "blocks.%d." % l
        p = "%sencoder.layer.%d." % (v, l)
        w[s + "norm1.weight"] = h[p + "layernorm_before.weight"]
        w[s + "norm1.bias"] = h[p + "layernorm_before.bias"]
        w[s + "attn.qkv.weight"] = np.concatenate(
            [h[p + "attention.attention.%s.weight" % n] for n in ("query", "key", "value")], 0)
        w[s + "attn.qkv.bias"] = np.concatenate(
            [h[p + "attention.attention.%s.bias" % n] for n in ("query", "key", "value")], 0)
        w[s + "attn.proj.weight"] = h[p + "attention.output.dense.weight"]
        w[s + "attn.proj.bias"] = h[p + "attention.output.dense.bias"]
        w[s + "norm2.weight"] = h[p + "layernorm_after.weight"]
        w[s + "norm2.bias"] = h[p + "layernorm_after.bias"]
        w[s + "mlp.fc1.weight"] = h[p + "intermediate.dense.weight"]
        w[s + "mlp.fc1.bias"] = h[p + "intermediate.dense.bias"]
        w[s + "mlp.fc2.weight"] = h[p + "output.dense.weight"]
        w[s + "mlp.fc2.bias"] = h[p + "output.dense.bias"]
    w["norm.weight"] = h[v + "layernorm.weight"]
    w["norm.bias"] = h[v + "layernorm.bias"]
    w["head.weight"] = h["classifier.weight"]
    w["head.bias"] = h["classifier.bias"]
    return w


def hf_config(c):
    return {"model_type": "vit", "architectures": ["ViTForImageClassification"],
            "hidden_size": c.dim, "num_hidden_layers": c.depth,
            "num_attention_heads": c.heads, "intermediate_size": c.mlp,
            "hidden_act": "gelu", "layer_norm_eps": c.eps, "image_size": c.image,
            "patch_size": c.patch, "num_channels": c.channels, "qkv_bias": True,
            "num_labels": c.classes,
            "id2label": {str(i): "class%d" % i for i in range(c.classes)},
            "label2id": {"class%d" % i: i for i in range(c.classes)}}


# ------------------------------------------------------------------ generator
def generate(c, out, dtype):
    os.makedirs(out, exist_ok=True)
    tdt = torch.float64 if dtype == "float64" else torch.float32
    npdt = np.float64 if dtype == "float64" else np.float32
    w = init_params(c)
    names = [n for n, _ in param_shapes(c)]

    # input / labels / pooler come from a second stream so the weights do not depend on them
    g = torch.Generator().manual_seed(c.seed + 1000003)
    x = torch.randn((c.batch, c.channels, c.image, c.image), generator=g,
                    dtype=torch.float32).numpy().astype(npdt)
    labels = torch.randint(0, c.classes, (c.batch,), generator=g).numpy().astype(np.int64)
    pool_w = (torch.randn((c.dim, c.dim), generator=g) / math.sqrt(c.dim)).numpy().astype(np.float32)
    pool_b = (0.1 * torch.randn((c.dim,), generator=g)).numpy().astype(np.float32)

    logits, loss, grads, gtok, attn = run_reference(c, w, x, labels, tdt)
    w16 = {k: st.round_f16(v) for k, v in w.items()}
    wbf = {k: st.round_bf16(v) for k, v in w.items()}
    logits16 = logits_only(c, w16, x, tdt)
    logitsbf = logits_only(c, wbf, x, tdt)

    fmt = {"format": "pt"}
    st.save(os.path.join(out, "weights_timm.safetensors"), w, fmt)
    st.save(os.path.join(out, "weights_timm_f16.safetensors"), w, fmt,
            dtypes={k: "F16" for k in w})
    st.save(os.path.join(out, "weights_timm_bf16.safetensors"), w, fmt,
            dtypes={k: "BF16" for k in w})
    st.save(os.path.join(out, "weights_hf.safetensors"),
            timm_to_hf(w, c, prefix=True, pooler=(pool_w, pool_b)), fmt)
    st.save(os.path.join(out, "weights_hf_noprefix.safetensors"),
            timm_to_hf(w, c, prefix=False), fmt)
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path + ".tmp", "w") as f:
        json.dump(hf_config(c), f, indent=2)
        f.write("\n")
    os.replace(cfg_path + ".tmp", cfg_path)

    ref = {"input": x, "labels": labels, "logits": logits.astype(npdt),
           "loss": loss.astype(npdt)}
    for n in names:
        ref["grad." + n] = grads[n].astype(npdt)
    for l, gt in enumerate(gtok):
        ref["grad_tokens.%d" % l] = gt.astype(npdt)
    ref["logits_f16"] = logits16.astype(npdt)
    ref["logits_bf16"] = logitsbf.astype(npdt)
    meta = c.meta()
    meta["dtype"] = dtype
    meta["format"] = "pt"
    st.save(os.path.join(out, "ref.safetensors"), ref, meta)

    # activation statistics (to show the weights are non-trivial)
    for l, a in enumerate(attn):
        ent = -(a * torch.log(a.clamp_min(1e-30))).sum(-1).mean().item()
        print("block %d attention: max prob %.3f, mean entropy %.3f (uniform %.3f)"
              % (l, a.max().item(), ent, math.log(c.tokens)))
    print("logits std %.3f  loss %.6f  labels %s" % (logits.std(), loss[0], labels.tolist()))
    print("max|logits - logits_f16| %.3e  max|logits - logits_bf16| %.3e"
          % (np.abs(logits - logits16).max(), np.abs(logits - logitsbf).max()))
    print("wrote %s" % out)


# -------------------------------------------- independent check (nn.Module path)
class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        D = c.dim
        self.norm1 = nn.LayerNorm(D, eps=c.eps)
        self.q = nn.Linear(D, D)
        self.k = nn.Linear(D, D)
        self.v = nn.Linear(D, D)
        self.proj = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D, eps=c.eps)
        self.fc1 = nn.Linear(D, c.mlp)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(c.mlp, D)
        self.heads = c.heads

    def forward(self, x):
        y = self.norm1(x)
        q, k, v = self.q(y), self.k(y), self.v(y)
        dh = q.shape[-1] // self.heads
        outs = []
        for hd in range(self.heads):            # per-head loop, explicit exp-normalise
            sl = slice(hd * dh, (hd + 1) * dh)
            s = torch.einsum("btd,bsd->bts", q[..., sl], k[..., sl]) * (dh ** -0.5)
            s = s - s.max(-1, keepdim=True).values
            e = s.exp()
            outs.append(torch.einsum("bts,bsd->btd", e / e.sum(-1, keepdim=True), v[..., sl]))
        x = x + self.proj(torch.cat(outs, -1))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class _ViT(nn.Module):
    """Independent implementation loaded from HF-named weights."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        D = c.dim
        self.patch = nn.Conv2d(c.channels, D, c.patch, stride=c.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, D))
        self.pos = nn.Parameter(torch.zeros(1, c.tokens, D))
        self.blocks = nn.ModuleList([_Block(c) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(D, eps=c.eps)
        self.head = nn.Linear(D, c.classes)
        self.streams = []

    def load_hf(self, h):
        v = "vit." if "vit.embeddings.cls_token" in h else ""
        t = lambda n: torch.from_numpy(np.array(h[n]))  # noqa: E731
        with torch.no_grad():
            self.cls.copy_(t(v + "embeddings.cls_token"))
            self.pos.copy_(t(v + "embeddings.position_embeddings"))
            self.patch.weight.copy_(t(v + "embeddings.patch_embeddings.projection.weight"))
            self.patch.bias.copy_(t(v + "embeddings.patch_embeddings.projection.bias"))
            for l, b in enumerate(self.blocks):
                p = "%sencoder.layer.%d." % (v, l)
                pairs = [(b.norm1, "layernorm_before"), (b.q, "attention.attention.query"),
                         (b.k, "attention.attention.key"), (b.v, "attention.attention.value"),
                         (b.proj, "attention.output.dense"), (b.norm2, "layernorm_after"),
                         (b.fc1, "intermediate.dense"), (b.fc2, "output.dense")]
                for mod, n in pairs:
                    mod.weight.copy_(t(p + n + ".weight"))
                    mod.bias.copy_(t(p + n + ".bias"))
            self.norm.weight.copy_(t(v + "layernorm.weight"))
            self.norm.bias.copy_(t(v + "layernorm.bias"))
            self.head.weight.copy_(t("classifier.weight"))
            self.head.bias.copy_(t("classifier.bias"))

    def timm_grads(self):
        """Parameter gradients under timm names."""
        g = {"patch_embed.proj.weight": self.patch.weight.grad,
             "patch_embed.proj.bias": self.patch.bias.grad,
             "cls_token": self.cls.grad, "pos_embed": self.pos.grad,
             "norm.weight": self.norm.weight.grad, "norm.bias": self.norm.bias.grad,
             "head.weight": self.head.weight.grad, "head.bias": self.head.bias.grad}
        for l, b in enumerate(self.blocks):
            s = "blocks.%d." % l
            g[s + "norm1.weight"], g[s + "norm1.bias"] = b.norm1.weight.grad, b.norm1.bias.grad
            g[s + "attn.qkv.weight"] = torch.cat([b.q.weight.grad, b.k.weight.grad, b.v.weight.grad])
            g[s + "attn.qkv.bias"] = torch.cat([b.q.bias.grad, b.k.bias.grad, b.v.bias.grad])
            g[s + "attn.proj.weight"], g[s + "attn.proj.bias"] = b.proj.weight.grad, b.proj.bias.grad
            g[s + "norm2.weight"], g[s + "norm2.bias"] = b.norm2.weight.grad, b.norm2.bias.grad
            g[s + "mlp.fc1.weight"], g[s + "mlp.fc1.bias"] = b.fc1.weight.grad, b.fc1.bias.grad
            g[s + "mlp.fc2.weight"], g[s + "mlp.fc2.bias"] = b.fc2.weight.grad, b.fc2.bias.grad
        return {k: v.detach().numpy() for k, v in g.items()}

    def _keep(self, t):
        if t.requires_grad:
            t.retain_grad()
        self.streams.append(t)

    def forward(self, x):
        B = x.shape[0]
        e = self.patch(x).reshape(B, self.c.dim, -1).permute(0, 2, 1)
        t = torch.cat([self.cls.expand(B, 1, -1), e], 1) + self.pos
        self.streams = []
        for b in self.blocks:
            self._keep(t)
            t = b(t)
        self._keep(t)
        return self.head(self.norm(t)[:, 0])


def _rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def verify(out):
    ref, meta = st.load(os.path.join(out, "ref.safetensors"))
    c = Cfg.from_meta(meta)
    dtype = meta.get("dtype", "float32")
    tdt = torch.float64 if dtype == "float64" else torch.float32
    tol = 1e-10 if dtype == "float64" else 2e-4
    ok = True

    def check(label, err, lim):
        nonlocal ok
        good = err <= lim
        ok &= good
        print("  %-58s %.3e %s" % (label, err, "ok" if good else "FAIL (limit %.1e)" % lim))

    wt, mt = st.load(os.path.join(out, "weights_timm.safetensors"))
    hf, _ = st.load(os.path.join(out, "weights_hf.safetensors"))
    hfn, _ = st.load(os.path.join(out, "weights_hf_noprefix.safetensors"))
    names = [n for n, _ in param_shapes(c)]
    print("verify %s (%s, %d params, %d tensors in ref)" % (out, dtype, len(wt), len(ref)))
    assert list(wt) == names and mt == {"format": "pt"}
    for n, shp in param_shapes(c):
        assert wt[n].shape == shp and wt[n].dtype == np.float32, n
        assert ref["grad." + n].shape == shp, n
        assert np.abs(wt[n]).max() > 0 and np.abs(ref["grad." + n]).max() > 0, n
    assert "vit.pooler.dense.weight" in hf and "pooler.dense.weight" not in hfn
    assert not any(k.startswith("vit.") for k in hfn)
    assert len(hf) == len(wt) + 4 * c.depth + 2 and len(hfn) == len(wt) + 4 * c.depth

    # HF files map back to exactly the timm numbers
    for label, h in (("weights_hf", hf), ("weights_hf_noprefix", hfn)):
        back = hf_to_timm(h, c)
        assert set(back) == set(wt)
        d = max(float(np.abs(back[k] - wt[k]).max()) for k in wt)
        check("%s -> timm max|diff|" % label, d, 0.0)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["hidden_size"] == c.dim and cfg["num_hidden_layers"] == c.depth
    assert cfg["layer_norm_eps"] == c.eps and len(cfg["id2label"]) == c.classes

    # f16 / bf16 files hold the rounded weights
    w16, _ = st.load(os.path.join(out, "weights_timm_f16.safetensors"))
    wbf, _ = st.load(os.path.join(out, "weights_timm_bf16.safetensors"))
    assert set(st.dtypes_of(os.path.join(out, "weights_timm_f16.safetensors")).values()) == {"F16"}
    assert set(st.dtypes_of(os.path.join(out, "weights_timm_bf16.safetensors")).values()) == {"BF16"}
    check("f16 file == float16(weights)",
          max(float(np.abs(w16[k] - st.round_f16(wt[k])).max()) for k in wt), 0.0)
    check("bf16 file == torch bfloat16(weights)",
          max(float(np.abs(wbf[k] - torch.from_numpy(wt[k]).bfloat16().float().numpy()).max())
              for k in wt), 0.0)
    check("f16 weights rel. rounding error",
          max(_rel(w16[k], wt[k]) for k in wt), 1e-3)
    check("bf16 weights rel. rounding error",
          max(_rel(wbf[k], wt[k]) for k in wt), 8e-3)

    # independent nn.Module model, loaded from the HF file, forward + backward
    x = torch.from_numpy(ref["input"]).to(tdt)
    labels = torch.from_numpy(ref["labels"])
    for label, h in (("vit.*", hf), ("no prefix", hfn)):
        m = _ViT(c).to(tdt)
        m.load_hf(h)
        logits = m(x)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        print(" nn.Module model from HF weights (%s):" % label)
        check("logits max|diff|", float(np.abs(logits.detach().numpy() - ref["logits"]).max()), tol)
        check("loss |diff|", float(abs(loss.item() - ref["loss"][0])), tol)
        g = m.timm_grads()
        check("grads: max over params of max|diff|/max|ref|",
              max(_rel(g[n], ref["grad." + n]) for n in names), 10 * tol)
        check("grad_tokens: max over l of max|diff|/max|ref|",
              max(_rel(m.streams[l].grad.numpy(), ref["grad_tokens.%d" % l])
                  for l in range(c.depth + 1)), 10 * tol)
        with torch.no_grad():
            for lab, ww, key in (("f16", w16, "logits_f16"), ("bf16", wbf, "logits_bf16")):
                m2 = _ViT(c).to(tdt)
                m2.load_hf(timm_to_hf(ww, c))
                check("logits with %s weights max|diff|" % lab,
                      float(np.abs(m2(x).numpy() - ref[key]).max()), tol)
    # autograd vs central finite differences of the loss (float64), a few entries per tensor
    xd = torch.from_numpy(ref["input"]).double()
    pd = {k: torch.from_numpy(v).double() for k, v in wt.items()}

    def lossf():
        with torch.no_grad():
            return F.cross_entropy(vit_forward(pd, xd, c), labels).item()

    _, _, g64, _, _ = run_reference(c, wt, ref["input"], ref["labels"], torch.float64)
    rng = np.random.default_rng(c.seed)
    worst = 0.0
    for n in names:
        flat = pd[n].view(-1)
        for i in rng.choice(flat.numel(), size=min(3, flat.numel()), replace=False):
            h, old = 1e-5, flat[i].item()
            flat[i] = old + h
            lp = lossf()
            flat[i] = old - h
            lm = lossf()
            flat[i] = old
            fd = (lp - lm) / (2 * h)
            an = g64[n].reshape(-1)[i]
            worst = max(worst, abs(fd - an) / max(1e-3, abs(an)))
    check("float64 autograd vs finite differences (rel.)", worst, 1e-5)
    if dtype == "float32":
        check("float32 grads vs float64 grads (max|diff|/max|ref|)",
              max(_rel(ref["grad." + n], g64[n]) for n in names), 1e-4)

    # the residual gradient entering block 0 summed over the batch is the pos_embed grad
    check("sum_b grad_tokens.0 vs grad.pos_embed",
          _rel(ref["grad_tokens.0"].sum(0, keepdims=True), ref["grad.pos_embed"]), 10 * tol)
    print("verify: %s" % ("PASS" if ok else "FAIL"))
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--image", type=int, default=8)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--mlp", type=int, default=32)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--no-verify", action="store_true", help="skip the independent re-check")
    ap.add_argument("--verify-only", action="store_true",
                    help="only re-check an existing --out directory")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)          # bitwise-reproducible reductions
    torch.use_deterministic_algorithms(True)
    if not a.verify_only:
        c = Cfg(a.batch, a.image, a.channels, a.patch, a.dim, a.depth, a.heads, a.mlp,
                a.classes, a.eps, a.seed)
        generate(c, a.out, a.dtype)
    if a.no_verify:
        return 0
    return 0 if verify(a.out) else 1


if __name__ == "__main__":
    sys.exit(main())
