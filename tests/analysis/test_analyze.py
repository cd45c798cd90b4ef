#!/usr/bin/python3
"""`tessera analyze` end to end (real ranks, ScaLAPACK on real process grids), on adapters pre-trained
here (tests/common/tiny_glyphs.py):
- 1 rank (grid 1x1) and 2 ranks (grids 1x2 and 2x1, block sizes 1 and 2) give the same cosine matrix,
  eigenvalues, eigenvectors (up to sign) and norms;
- the decomposition is right: numpy's eigvalsh of the written cosine matrix equals the eigenvalues, and
  V diag(lambda) V^T rebuilds the matrix; the cosine matrix is symmetric with a unit diagonal;
- the routing effective rank is NaN for LoRA (no routing) and within [1, min(tasks, heads x skills)]
  for Poly and MHR; the file opens in xarray with string coordinates;
- analysis/report.py draws the alignment heatmaps from it;
- bad input (a method without a pre-training run, a grid larger than the ranks) is refused by name.
(The distributed kernels themselves are checked against a serial LAPACK computation on the same
gradients in tests/analysis/test_align.c.)

usage: test_analyze.py TESSERA_BINARY SOURCE_DIR MPIEXEC
"""
import os
import sys

import numpy as np
import xarray as xr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from tiny_glyphs import TRAIN, check, main_wrapper, model_sets, run  # noqa: E402


def main(exe, src, mpiexec, tmp, suite, pre):
    cfg = os.path.join(src, "configs/analyze_glyphs.yaml")
    base = model_sets(suite) + ["model.num_classes=15", "data.role=train", "data.joint_labels=true",
                                "suite.train=[" + ", ".join(TRAIN) + "]", f"fewshot.pretrained={pre}",
                                "analyze.methods=[lora, poly, mhr]", "analyze.examples=7", "train.batch_size=4"]

    def analyze(n, out, extra=()):
        args = [mpiexec, "-n", str(n), "--oversubscribe", "--allow-run-as-root", exe, "analyze", cfg]
        for s in base + [f"run.output_dir={out}"] + list(extra):
            args += ["--set", s]
        return run(args)

    runs = {}
    for name, n, grid, nb in [("1x1", 1, "[1, 1]", 2), ("1x2", 2, "[1, 2]", 1), ("2x1", 2, "[2, 1]", 2),
                              ("auto", 2, "[0, 0]", 64)]:
        out = os.path.join(tmp, name)
        r = analyze(n, out, [f"analyze.grid={grid}", f"analyze.block={nb}"])
        check(r.returncode == 0, f"analyze on {n} rank(s), grid {grid}, block {nb}")
        if r.returncode:
            print(r.stderr[-3000:])
            return
        runs[name] = xr.open_dataset(os.path.join(out, "alignment.nc"))
    a = runs["1x1"]
    check(dict(a.sizes) == {"method": 3, "task": 3, "task_b": 3, "component": 3}, f"dimensions {dict(a.sizes)}")
    check(list(a.method.values) == ["lora", "poly", "mhr"] and list(a.task.values) == TRAIN,
          "method and task string coordinates")
    check(a.attrs.get("process_grid") == "1x1" and runs["2x1"].attrs.get("process_grid") == "2x1" and
          runs["auto"].attrs.get("process_grid") == "1x2", "process grid recorded")
    for name in ["1x2", "2x1", "auto"]:
        b = runs[name]
        ok = all(np.allclose(a[v].values, b[v].values, rtol=1e-9, atol=1e-10)
                 for v in ["cosine", "eigenvalues", "gradient_norm", "mean_alignment", "alignment_effective_rank"])
        va, vb = a.eigenvectors.values, b.eigenvectors.values
        sign_ok = all(np.allclose(np.abs(va[m]), np.abs(vb[m]), atol=1e-8) for m in range(3))
        check(ok and sign_ok, f"grid {name} at 2 ranks equals grid 1x1 at 1 rank")
    for m in range(3):
        c, lam, v = a.cosine.values[m], a.eigenvalues.values[m], a.eigenvectors.values[m]
        check(np.allclose(c, c.T, atol=1e-12) and np.allclose(np.diag(c), 1.0, atol=1e-12),
              f"{a.method.values[m]}: cosine matrix symmetric with unit diagonal")
        check(np.allclose(np.sort(np.linalg.eigvalsh(c))[::-1], lam, atol=1e-10) and
              np.allclose(v @ np.diag(lam) @ v.T, c, atol=1e-9) and np.all(np.diff(lam) <= 1e-12),
              f"{a.method.values[m]}: eigen-decomposition matches numpy and rebuilds the matrix")
        off = c[~np.eye(3, dtype=bool)].mean()
        check(abs(off - float(a.mean_alignment.values[m])) < 1e-12, f"{a.method.values[m]}: mean off-diagonal")
    rr = a.routing_effective_rank.values
    check(np.isnan(rr[0]) and 1 - 1e-9 <= rr[1] <= 3 + 1e-9 and 1 - 1e-9 <= rr[2] <= 3 + 1e-9,
          f"routing effective rank: NaN for LoRA, in [1, 3] for Poly and MHR ({rr})")
    check(int(a.parameters.values[0]) > 0 and int(a.parameters.values[2]) > int(a.parameters.values[0]),
          "gradient lengths: MHR's skill inventory is larger than one LoRA")

    # the report draws the heatmaps (a results file from analysis/make_synthetic.py stands in for a sweep)
    rep = os.path.join(tmp, "report")
    syn = os.path.join(tmp, "syn")
    r = run(["/usr/bin/python3", os.path.join(src, "analysis/make_synthetic.py"), "--no-alignment", syn])
    res = os.path.join(syn, "results.nc")
    if r.returncode == 0 and os.path.exists(res):
        r = run(["/usr/bin/python3", os.path.join(src, "analysis/report.py"), res, "--alignment",
                 os.path.join(tmp, "1x1", "alignment.nc"), "--out", rep])
        check(r.returncode == 0 and os.path.getsize(os.path.join(rep, "alignment_cosine.png")) > 1000,
              "report.py draws the alignment heatmaps of tessera analyze's file")
        if r.returncode:
            print(r.stderr[-2000:])
    else:
        check(False, "analysis/make_synthetic.py writes a results file: " + r.stderr[-500:])

    r = analyze(1, os.path.join(tmp, "bad"), ["analyze.methods=[lora, nosuch]"])
    check(r.returncode != 0 and "nosuch" in r.stderr, "a method without a pre-training run is named")
    r = analyze(1, os.path.join(tmp, "bad"), ["analyze.grid=[2, 2]"])
    check(r.returncode != 0 and "2x2" in r.stderr, "a grid larger than the ranks is refused")


if __name__ == "__main__":
    main_wrapper(main, "tsr_analyze_")
