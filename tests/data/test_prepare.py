#!/usr/bin/python3
"""`tessera prepare` end to end: each suite is built by one command from Debian packages (Fashion-MNIST,
the glyph suite: >= 40 tasks of >= 10 classes; the glyph suite v2 with --roles configs/glyphs.yaml:
per-role renderings per class and split, distinct held-out test renderings, the counts in the attributes),
a folder of PNG class folders converts, a corrupt image is refused naming the file, a bad --roles file
is refused naming it, and the files open in Debian's python3-xarray / netCDF4 with the schema's
variables and provenance.

usage: test_prepare.py TESSERA_BINARY SOURCE_DIR
"""
import os
import subprocess
import sys
import tempfile

import time

import numpy as np
import yaml

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
passed = failed = 0


def check(cond, what):
    global passed, failed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    passed += bool(cond)
    failed += not cond


def run(args):
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)


def check_v2(path, roles):
    """The glyph suite v2 at path against the role lists of configs/glyphs.yaml (roles: dict)."""
    import netCDF4
    # the documented defaults (docs/GLYPHS.md): train, val, test renderings per class; every split augmented
    want = {"source": (100, 10, 10, False), "train": (40, 5, 5, False), "val": (20, 5, 10, False),
            "heldout": (20, 5, 10, False)}
    with netCDF4.Dataset(path) as d:
        d.set_auto_mask(False)
        names = [bytes(r).rstrip(b"\0").decode() for r in np.array(d["task_names"][:])]
        ncls = np.array(d["task_num_classes"][:])
        first, count = np.array(d["task_first"][:]), np.array(d["task_count"][:])
        split, labels = np.array(d["split"][:]), np.array(d["labels"][:])
        role_of = {n: r for r, lst in roles.items() for n in lst}
        check(sorted(names) == sorted(role_of), f"v2: the {len(names)} tasks are those of the four role lists")
        bad = []
        for t, n in enumerate(names):
            tr, va, te, _ = want[role_of[n]]
            sp, lab = split[first[t]:first[t] + count[t]], labels[first[t]:first[t] + count[t]]
            per = [np.bincount(lab[sp == k], minlength=ncls[t]) for k in range(3)]
            if count[t] != ncls[t] * (tr + va + te) or any((per[k] != c).any() for k, c in enumerate((tr, va, te))):
                bad.append(n)
        check(not bad, f"v2: renderings per class and split as per role in every task (wrong: {bad[:5]})")
        # v2.1: in a held-out task with one font, a class's test renderings are augmented, all distinct (v2's plain
        # ones were one image repeated), and so are its training renderings
        fonts = dict(line.split(":", 1) for line in d.glyph_task_fonts.split("\n"))
        one_font = [n for n in roles["heldout"] if len(fonts[n].split()) == 1]
        same = True
        for n in one_font:
            t = names.index(n)
            img = np.array(d["images"][first[t]:first[t] + count[t]])
            sp, lab = split[first[t]:first[t] + count[t]], labels[first[t]:first[t] + count[t]]
            for c in range(ncls[t]):
                x = img[(sp == 2) & (lab == c)]
                same &= len({r.tobytes() for r in x}) == len(x)
                y = img[(sp == 0) & (lab == c)]
                same &= not (y == y[0]).all()  # the training renderings are augmented
        check(one_font and same, f"v2.1: distinct augmented test and training renderings in the {len(one_font)} one-font "
              "held-out tasks")
        counts = d.glyph_counts
        check(d.glyph_suite_version == "2.1" and "source (46 tasks): 100 train, 10 val, 10 test" in counts
              and "heldout (23 tasks): 20 train, 5 val, 10 test renderings per class; every split augmented" in counts
              and "roles=" in d.glyph_options and "--roles" in d.history,
              "v2: version, counts per role, options and command in the attributes")
        check("fonts-noto-extra" in d.glyph_packages and "NotoSans-CondensedSemiBold.ttf" in d.glyph_fonts,
              "v2: fonts-noto-extra's weights and widths are used")


def main():
    exe, root = sys.argv[1], sys.argv[2]
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
        # the glyph suite v2: roles from configs/glyphs.yaml
        cfg = os.path.join(root, "configs", "glyphs.yaml")
        with open(cfg) as f:
            roles = yaml.safe_load(f)["suite"]
        out = os.path.join(tmp, "glyphs_v2.nc")
        t0 = time.time()
        r = run([exe, "prepare", "glyphs", "--roles", cfg, "--out", out])
        lines = r.stdout.strip().splitlines()
        check(r.returncode == 0, f"prepare glyphs --roles configs/glyphs.yaml exits 0 ({time.time() - t0:.1f} s): "
              + (lines[-2] if r.returncode == 0 and len(lines) > 1 else r.stderr[-500:]))
        if r.returncode == 0:
            check_v2(out, roles)
        # bad --roles files are refused naming the file (and the key), and nothing is written
        bad = os.path.join(tmp, "bad_roles.yaml")
        with open(bad, "w") as f:
            f.write("suite:\n  source: [latin, greek\n")
        for path, what in [(os.path.join(tmp, "none.yaml"), ["none.yaml"]), (bad, ["bad_roles.yaml", "YAML"])]:
            r = run([exe, "prepare", "glyphs", "--roles", path, "--out", os.path.join(tmp, "g3.nc")])
            check(r.returncode != 0 and all(w in r.stderr for w in what) and not os.path.exists(os.path.join(tmp, "g3.nc")),
                  "a bad --roles file is refused naming it: " + (r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""))
        with open(bad, "w") as f:
            f.write("suite:\n  source: [latin]\n  heldout: [ogham, klingon]\n")
        r = run([exe, "prepare", "glyphs", "--roles", bad, "--out", os.path.join(tmp, "g3.nc")])
        check(r.returncode != 0 and "bad_roles.yaml" in r.stderr and "suite.heldout" in r.stderr and "klingon" in r.stderr
              and not os.path.exists(os.path.join(tmp, "g3.nc")),
              "an unknown script in a role list is refused naming the file and the key: "
              + (r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""))
        r = run([exe, "prepare", "glyphs", "--counts", "source=100,10", "--roles", cfg, "--out", os.path.join(tmp, "g3.nc")])
        check(r.returncode == 2 and "--counts" in r.stderr and "source=100,10" in r.stderr, "a bad --counts is refused")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
