#!/usr/bin/python3
"""PyTorch CPU baseline for tessera's ViT training step.

usage: torch_bench.py WORKLOAD THREADS MODE SECONDS
  WORKLOAD  vit-s-28 | vit-b16
  MODE      probe   only the head is trainable; autograd stops at the head
            frozen  backbone frozen, but pos_embed is a leaf requiring grad so the
                    gradient flows back through every block to the token embeddings
                    (pos_embed is not stepped)
            full    every parameter trainable
            adapter bottleneck adapter parallel to the MLP in every block, as tessera's (AdaptFormer):
                    own LayerNorm, down 64 (+bias), exact GELU, up (+bias, zero init), s = 0.1,
                    no dropout: out = mid + MLP(LN2(mid)) + 0.1 * up(gelu(down(LN_a(mid))))
            lora    LoRA r = 8, alpha = 16 on the q and v slices of qkv: y += (x A) B * alpha / r
            mhr     MHR on q, k, v (three D-wide slices of qkv) and proj: S = 8 skills, h = 4 heads,
                    rank 4, scale 1/r; routing logits for 16 tasks, sigmoid weights normalised per
                    head, no noise; one random task id per example; the combined A and B are built
                    per example (einsum) and applied with bmm, as torch_reference.py and peft do
            poly    mhr with h = 1
            In the adapter modes the adapter parameters and the head are trained; the backbone is
            frozen and autograd goes down to the lowest block with an adapter.
One step = zero_grad, forward, cross-entropy (mean), backward, AdamW(lr=1e-3) step.
2 warm-up steps, then steps until SECONDS have elapsed (at least one); the median
step time is reported on one final line.
"""
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

WORKLOADS = {
    "vit-s-28": dict(image=28, channels=1, patch=4, dim=192, depth=6, heads=3, mlp=768,
                     classes=10, batch=64),
    "vit-b16": dict(image=224, channels=3, patch=16, dim=768, depth=12, heads=12, mlp=3072,
                    classes=100, batch=8),
}
EPS = 1e-6
N_TASKS = 16
ADAPTERS = {
    "adapter": dict(kind="bottleneck", width=64, scale=0.1),
    "lora": dict(kind="lora", sites=("q", "v"), rank=8, alpha=16.0, skills=1, heads=1),
    "mhr": dict(kind="lora", sites=("q", "k", "v", "proj"), rank=4, alpha=1.0, skills=8, heads=4),
    "poly": dict(kind="lora", sites=("q", "k", "v", "proj"), rank=4, alpha=1.0, skills=8, heads=1),
}
MODES = ("probe", "frozen", "full") + tuple(ADAPTERS)


def make_params(w, gen):
    D, C, P, M, K = w["dim"], w["channels"], w["patch"], w["mlp"], w["classes"]
    T = (w["image"] // P) ** 2 + 1

    def lin(o, i):
        return torch.randn(o, i, generator=gen) / math.sqrt(i), 0.02 * torch.randn(o, generator=gen)

    p = {}
    p["patch_embed.proj.weight"] = torch.randn(D, C, P, P, generator=gen) / math.sqrt(C * P * P)
    p["patch_embed.proj.bias"] = 0.02 * torch.randn(D, generator=gen)
    p["cls_token"] = 0.02 * torch.randn(1, 1, D, generator=gen)
    p["pos_embed"] = 0.02 * torch.randn(1, T, D, generator=gen)
    for l in range(w["depth"]):
        b = "blocks.%d." % l
        p[b + "norm1.weight"], p[b + "norm1.bias"] = torch.ones(D), torch.zeros(D)
        p[b + "attn.qkv.weight"], p[b + "attn.qkv.bias"] = lin(3 * D, D)
        p[b + "attn.proj.weight"], p[b + "attn.proj.bias"] = lin(D, D)
        p[b + "norm2.weight"], p[b + "norm2.bias"] = torch.ones(D), torch.zeros(D)
        p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"] = lin(M, D)
        p[b + "mlp.fc2.weight"], p[b + "mlp.fc2.bias"] = lin(D, M)
    p["norm.weight"], p["norm.bias"] = torch.ones(D), torch.zeros(D)
    p["head.weight"], p["head.bias"] = lin(K, D)
    return p


def make_adapter_params(w, spec, gen):
    """Adapter tensors of every block (names as tessera's), all trainable."""
    D = w["dim"]
    p = {}
    for l in range(w["depth"]):
        b = "blocks.%d." % l
        if spec["kind"] == "bottleneck":
            r = spec["width"]
            a = b + "adapter.parallel."
            p[a + "ln.weight"], p[a + "ln.bias"] = torch.ones(D), torch.zeros(D)
            bound = 1.0 / math.sqrt(D)
            p[a + "down.weight"] = (2 * torch.rand(r, D, generator=gen) - 1) * bound
            p[a + "down.bias"] = torch.zeros(r)
            p[a + "up.weight"], p[a + "up.bias"] = torch.zeros(D, r), torch.zeros(D)
            continue
        r, S, h = spec["rank"], spec["skills"], spec["heads"]
        for site in spec["sites"]:
            a = b + "lora." + site + "."
            bound = 1.0 / math.sqrt(3.0 * D)
            if S == 1:
                p[a + "A"] = (2 * torch.rand(D, r, generator=gen) - 1) * bound
                p[a + "B"] = torch.zeros(r, D)
            else:
                p[a + "A"] = (2 * torch.rand(h, S, D // h, r, generator=gen) - 1) * bound
                p[a + "B"] = torch.zeros(h, S, r, D // h)
                p[a + "Z"] = (2 * torch.rand(N_TASKS, h * S, generator=gen) - 1) * 1e-3
    return p


def lora_delta(p, a, spec, x, tid):
    """scale * (x A_t) B_t for the LoRA / Poly / MHR module with prefix a; x (B, T, din)."""
    r, S, h = spec["rank"], spec["skills"], spec["heads"]
    scale = spec["alpha"] / r
    if S == 1:
        return torch.matmul(torch.matmul(x, p[a + "A"]), p[a + "B"]) * scale
    bs = x.shape[0]
    z = torch.sigmoid(p[a + "Z"][tid]).view(bs, h, S)
    wgt = z / (z.sum(-1, keepdim=True) + 1e-12)
    At = torch.einsum("bqs,qsdr->bqdr", wgt, p[a + "A"]).reshape(bs, -1, r)
    Bt = torch.einsum("bqs,qsrd->bqrd", wgt, p[a + "B"]).transpose(1, 2).reshape(bs, r, -1)
    return torch.bmm(torch.bmm(x, At), Bt) * scale


def forward(p, x, w, spec=None, tid=None):
    B = x.shape[0]
    D, H, P = w["dim"], w["heads"], w["patch"]
    dh = D // H
    e = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=P)
    e = e.flatten(2).transpose(1, 2)
    t = torch.cat([p["cls_token"].expand(B, -1, -1), e], dim=1) + p["pos_embed"]
    T = t.shape[1]
    scale = 1.0 / math.sqrt(dh)
    for l in range(w["depth"]):
        b = "blocks.%d." % l
        y = F.layer_norm(t, (D,), p[b + "norm1.weight"], p[b + "norm1.bias"], EPS)
        qkv = F.linear(y, p[b + "attn.qkv.weight"], p[b + "attn.qkv.bias"])
        lora = spec is not None and spec["kind"] == "lora"
        if lora:   # LoRA on the q / k / v slices of the fused qkv output
            for j, site in enumerate(("q", "k", "v")):
                if site in spec["sites"]:
                    qkv[..., j * D:(j + 1) * D] += lora_delta(p, b + "lora." + site + ".", spec, y, tid)
        qkv = qkv.reshape(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)   # (3,B,H,T,dh)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * scale, dim=-1)
        o = torch.matmul(a, v).transpose(1, 2).reshape(B, T, D)
        pr = F.linear(o, p[b + "attn.proj.weight"], p[b + "attn.proj.bias"])
        if lora and "proj" in spec["sites"]:
            pr = pr + lora_delta(p, b + "lora.proj.", spec, o, tid)
        t = t + pr
        y = F.layer_norm(t, (D,), p[b + "norm2.weight"], p[b + "norm2.bias"], EPS)
        y = F.gelu(F.linear(y, p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"]))
        y = F.linear(y, p[b + "mlp.fc2.weight"], p[b + "mlp.fc2.bias"])
        if spec is not None and spec["kind"] == "bottleneck":
            a = b + "adapter.parallel."
            u = F.layer_norm(t, (D,), p[a + "ln.weight"], p[a + "ln.bias"], EPS)
            u = F.gelu(F.linear(u, p[a + "down.weight"], p[a + "down.bias"]))
            y = y + spec["scale"] * F.linear(u, p[a + "up.weight"], p[a + "up.bias"])
        t = t + y
    t = F.layer_norm(t, (D,), p["norm.weight"], p["norm.bias"], EPS)
    return F.linear(t[:, 0], p["head.weight"], p["head.bias"])


def main(argv):
    if len(argv) != 5 or argv[1] not in WORKLOADS or argv[3] not in MODES:
        sys.stderr.write(__doc__)
        return 2
    wname, threads, mode, seconds = argv[1], int(argv[2]), argv[3], float(argv[4])
    w = WORKLOADS[wname]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    p = make_params(w, gen)
    spec = ADAPTERS.get(mode)
    if spec is not None:
        ap = make_adapter_params(w, spec, gen)
        p.update(ap)
        trainable = list(ap) + ["head.weight", "head.bias"]
        grad_leaves = trainable
    elif mode == "full":
        trainable = list(p)
        grad_leaves = trainable
    elif mode == "frozen":
        trainable = ["head.weight", "head.bias"]
        grad_leaves = trainable + ["pos_embed"]     # forces backward through every block
    else:
        trainable = ["head.weight", "head.bias"]
        grad_leaves = trainable
    for n in grad_leaves:
        p[n].requires_grad_(True)
    opt = torch.optim.AdamW([p[n] for n in trainable], lr=1e-3)
    others = [p[n] for n in grad_leaves if n not in trainable]
    x = torch.randn(w["batch"], w["channels"], w["image"], w["image"], generator=gen)
    y = torch.randint(0, w["classes"], (w["batch"],), generator=gen)
    tid = torch.randint(0, N_TASKS, (w["batch"],), generator=gen)   # one random task per example

    def step():
        opt.zero_grad(set_to_none=True)
        for t in others:
            t.grad = None
        loss = F.cross_entropy(forward(p, x, w, spec, tid), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(2):
        step()
    times = []
    t_end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        loss = step()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 >= t_end:
            break
    if not math.isfinite(loss.item()):
        sys.stderr.write("non-finite loss\n")
        return 1
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    ntrain = sum(p[n].numel() for n in trainable)
    print("torch workload=%s mode=%s threads=%d step_ms=%.2f img_per_s=%.2f peak_rss_mb=%.1f trainable=%d"
          % (wname, mode, threads, med * 1e3, w["batch"] / med, rss, ntrain))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
