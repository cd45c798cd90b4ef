#!/usr/bin/python3
"""`tessera prepare` end to end: each suite is built by one command from Debian packages (Fashion-MNIST,
the glyph suite: >= 40 tasks of >= 10 classes), a folder of PNG class folders converts, a corrupt image
is refused naming the file, and the files open in Debian's python3-xarray / netCDF4 with the schema's
variables and provenance.

usage: test_prepare.py TESSERA_BINARY
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
passed = failed = 0


def check(cond, what):
    global passed, failed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    passed += bool(cond)
    failed += not cond


def run(args):
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)


def main():
    exe = sys.argv[1]
    import netCDF4
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "fm", "fashion-mnist.nc")
        r = run([exe, "prepare", "fashion-mnist", "--out", out])
        check(r.returncode == 0 and "1 tasks, 10 classes, 70000 examples" in r.stdout,
              "prepare fashion-mnist: " + (r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr))
        if r.returncode == 0:
            with netCDF4.Dataset(out) as d:
                check(d.tessera_schema == "tessera-dataset-2" and "dataset-fashion-mnist" in d.source,
                      f"fashion-mnist provenance: schema {d.tessera_schema}, source '{d.source}'")
                check(d["images"].dtype == np.uint8 and d["images"].shape == (70000, 28, 28, 1), "fashion-mnist images ubyte (70000, 28, 28, 1)")
        out = os.path.join(tmp, "glyphs.nc")
        r = run([exe, "prepare", "glyphs", "--out", out])
        check(r.returncode == 0, "prepare glyphs exits 0: " + (r.stdout.strip().splitlines()[-2] if r.returncode == 0 else r.stderr[-500:]))
        if r.returncode == 0:
            with netCDF4.Dataset(out) as d:
                ncls = np.array(d["task_num_classes"][:])
                check(len(ncls) >= 40 and ncls.min() >= 10, f"glyph suite: {len(ncls)} tasks, classes per task {ncls.min()}..{ncls.max()}")
                check("fonts-noto-core" in d.glyph_packages and "NotoSans" in d.glyph_fonts, "glyph provenance names the font package and files")
            import xarray as xr
            ds = xr.open_dataset(out)
            check({"images", "labels", "split", "task", "task_names", "class_names"} <= set(ds.variables),
                  f"xarray opens the glyph suite: {sorted(ds.sizes.items())}")
            ds.close()
        # a folder of PNGs: 3 classes x 4 images of different sizes, RGB
        src = os.path.join(tmp, "pngs")
        rng = np.random.default_rng(0)
        for c, name in enumerate(["cat", "dog", "emu"]):
            os.makedirs(os.path.join(src, name))
            for i in range(4):
                img = np.zeros((30 + 7 * i, 40, 3), dtype=np.float32)
                img[..., c] = 1.0
                img += rng.random(img.shape).astype(np.float32) * 0.1
                mpimg.imsave(os.path.join(src, name, f"{i}.png"), np.clip(img, 0, 1))
        out = os.path.join(tmp, "folder.nc")
        r = run([exe, "prepare", "folder", src, out, "--size", "16", "--channels", "3", "--task", "animals"])
        check(r.returncode == 0 and "1 tasks, 3 classes, 12 examples of 16x16x3" in r.stdout,
              "prepare folder: " + (r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]))
        if r.returncode == 0:
            with netCDF4.Dataset(out) as d:
                px = np.array(d["images"][:])
                lab = np.array(d["labels"][:])
                names = [str(x) for x in netCDF4.chartostring(d["class_names"][0])]
                dominant = px.reshape(12, -1, 3).mean(1).argmax(1)
                check(names[:3] == ["cat", "dog", "emu"] and (dominant == lab).all(),
                      f"folder classes {names[:3]}, each image's dominant colour is its class")
        with open(os.path.join(src, "dog", "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\nnot really")
        r = run([exe, "prepare", "folder", src, os.path.join(tmp, "bad.nc"), "--size", "16", "--task", "animals"])
        check(r.returncode != 0 and "broken.png" in r.stderr and not os.path.exists(os.path.join(tmp, "bad.nc")),
              "a corrupt PNG is refused naming it: " + (r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""))
        r = run([exe, "prepare", "glyphs", "--fonts", "/nonexistent/fonts", "--out", os.path.join(tmp, "g2.nc")])
        check(r.returncode != 0 and "/nonexistent/fonts" in r.stderr, "a missing font directory is refused naming it")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
