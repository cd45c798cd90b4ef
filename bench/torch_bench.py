#!/usr/bin/python3
"""PyTorch CPU baseline for tessera's ViT training step.

usage: torch_bench.py WORKLOAD THREADS MODE SECONDS
  WORKLOAD  vit-s-28 | vit-b16
  MODE      probe   only the head is trainable; autograd stops at the head
            frozen  backbone frozen, but pos_embed is a leaf requiring grad so the
                    gradient flows back through every block to the token embeddings
                    (pos_embed is not stepped)
            full    every parameter trainable
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


def forward(p, x, w):
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
        qkv = qkv.reshape(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)   # (3,B,H,T,dh)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * scale, dim=-1)
        o = torch.matmul(a, v).transpose(1, 2).reshape(B, T, D)
        t = t + F.linear(o, p[b + "attn.proj.weight"], p[b + "attn.proj.bias"])
        y = F.layer_norm(t, (D,), p[b + "norm2.weight"], p[b + "norm2.bias"], EPS)
        y = F.gelu(F.linear(y, p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"]))
        t = t + F.linear(y, p[b + "mlp.fc2.weight"], p[b + "mlp.fc2.bias"])
    t = F.layer_norm(t, (D,), p["norm.weight"], p["norm.bias"], EPS)
    return F.linear(t[:, 0], p["head.weight"], p["head.bias"])


def main(argv):
    if len(argv) != 5 or argv[1] not in WORKLOADS or argv[3] not in ("probe", "frozen", "full"):
        sys.stderr.write(__doc__)
        return 2
    wname, threads, mode, seconds = argv[1], int(argv[2]), argv[3], float(argv[4])
    w = WORKLOADS[wname]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    p = make_params(w, gen)
    if mode == "full":
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

    def step():
        opt.zero_grad(set_to_none=True)
        for t in others:
            t.grad = None
        loss = F.cross_entropy(forward(p, x, w), y)
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
    print("torch workload=%s mode=%s threads=%d step_ms=%.2f img_per_s=%.2f peak_rss_mb=%.1f"
          % (wname, mode, threads, med * 1e3, w["batch"] / med, rss))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
