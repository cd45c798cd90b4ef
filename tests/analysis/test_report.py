#!/usr/bin/python3
"""analysis/report.py on synthetic files (analysis/make_synthetic.py): the report's tables and figures,
the confidence intervals against an independent computation, the partial-sweep warning, the alignment
heatmaps, deterministic output and the error cases (exit status 2 naming the file and what is missing).

usage: test_report.py REPO_ROOT
Uses Debian's python3-netcdf4, python3-xarray, python3-matplotlib, numpy and scipy; exits non-zero on
any failure.
"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Two-sided 95% Student-t quantiles t(0.975, df), from the standard table (independent of scipy).
T975 = {1: 12.706204736174705, 2: 4.302652729749464, 3: 3.182446305284263, 4: 2.7764451051977987,
        5: 2.5705818356363146}

passed = failed = 0


def check(cond, what):
    global passed, failed
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    passed += bool(cond)
    failed += not cond


def run(args):
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, timeout=300)


def read_entries(path, var):
    """(method, task, shots, seed) array of `var` read with plain netCDF4, NaN where status != 1."""
    import netCDF4
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_mask(False)
        status = np.asarray(nc["status"][:])
        values = np.asarray(nc[var][:], dtype=float)
        var = nc["method"]
        var.set_auto_chartostring(False)  # decode the char array here, not through _Encoding
        methods = [m.decode("utf-8") for m in netCDF4.chartostring(np.asarray(var[:]), encoding="bytes")]
        shots = [int(s) for s in nc["shots"][:]]
    return np.where(status == 1, values, np.nan), methods, shots


def independent_interval(samples):
    """Mean and 95% t interval from numpy and the table of t quantiles."""
    x = np.asarray([s for s in samples if not math.isnan(s)])
    n = len(x)
    mean = float(np.mean(x))
    sd = float(np.sqrt(np.sum((x - mean) ** 2) / (n - 1)))
    half = T975[n - 1] * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def task_means(task_seed):
    """Per-task mean over the seeds that are not NaN (tasks without any are dropped)."""
    out = []
    for row in task_seed:
        row = row[~np.isnan(row)]
        if row.size:
            out.append(float(row.sum() / row.size))
    return out


def png_references(report_dir, text):
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    return refs, [os.path.join(report_dir, r) for r in refs]


def check_pngs(report_dir, text, label):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    refs, paths = png_references(report_dir, text)
    check(len(refs) >= 3, f"{label}: report.md references figures ({len(refs)})")
    for ref, path in zip(refs, paths):
        check(not os.path.isabs(ref) and ref.endswith(".png"), f"{label}: {ref} is a relative PNG path")
        ok = os.path.isfile(path) and os.path.getsize(path) > len(PNG_SIGNATURE)
        if ok:
            with open(path, "rb") as f:
                ok = f.read(8) == PNG_SIGNATURE
        if ok:
            try:
                img = mpimg.imread(path)
                ok = img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
            except Exception:
                ok = False
        check(ok, f"{label}: {ref} exists and is a valid non-empty PNG")
    return refs


def check_cell(summary, method, shots, expect, label):
    got = summary[method][str(shots)]
    mean, low, high, n = expect
    ok = (got["n"] == n and abs(got["mean"] - mean) < 1e-9 and abs(got["ci_low"] - low) < 1e-9
          and abs(got["ci_high"] - high) < 1e-9)
    check(ok, f"{label}: {method}, {shots} shots: JSON mean {got['mean']:.6f} "
              f"[{got['ci_low']:.6f}, {got['ci_high']:.6f}] n={got['n']} vs independent "
              f"{mean:.6f} [{low:.6f}, {high:.6f}] n={n}")


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
    report = os.path.join(root, "analysis", "report.py")
    synth = os.path.join(root, "analysis", "make_synthetic.py")

    with tempfile.TemporaryDirectory() as tmp:
        def make(name, *extra):
            d = os.path.join(tmp, name)
            r = run([synth, d] + list(extra))
            check(r.returncode == 0, f"make_synthetic {' '.join(extra) or '(defaults)'}: exit 0 "
                                     f"{r.stderr.strip()[-300:]}")
            return d

        # --- a complete sweep with an alignment file -------------------------------------------------
        full = make("full")
        results = os.path.join(full, "results.nc")
        out = os.path.join(tmp, "report_full")
        summary_json = os.path.join(tmp, "summary.json")
        r = run([report, results, "--alignment", os.path.join(full, "alignment.nc"), "--out", out,
                 "--json", summary_json, "--title", "Synthetic sweep"])
        check(r.returncode == 0, f"report on a complete sweep exits 0 ({r.stderr.strip()[-500:]})")
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            text = f.read()
        check(text.startswith("# Synthetic sweep\n"), "--title sets the heading")
        check("Sweep status: **complete**" in text and "270/270 entries done" in text,
              "report states sweep_status and entries done/total")
        check("WARNING" not in text, "no partial warning for a complete sweep")
        check("over **tasks**" in text and "averaged over its done seeds" in text,
              "report states the interval method (seeds averaged, CI over tasks)")
        for heading in ["### `test_accuracy`", "### `test_accuracy_at_best_val`", "## Per-task test accuracy",
                        "## Cost", "## Paired comparisons", "## Training curves", "## Task gradient alignment",
                        "### Entries done / total"]:
            check(heading in text, f"report has the section {heading!r}")
        check("| method | 1 shot | 5 shots | 10 shots |" in text, "method x shots table header")
        check(re.search(r"^\| mhr \| 0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] \(n=5\) \|", text, re.M) is not None,
              "method x shots table has 'mean [low, high] (n)' cells")
        check("| task | lora | poly | mhr | shared_lora | adapter | mosa |" in text, "per-task table header")
        check(text.count("| task | lora |") == 3, "one per-task table per shot count")
        check("| lora | 148,490 |" in text, "cost table shows the median trainable parameters")
        for pair in ["mhr vs poly", "mhr vs shared_lora", "mhr vs lora", "poly vs lora", "shared_lora vs lora",
                     "mosa vs adapter"]:
            check(f"| {pair} |" in text, f"paired comparison {pair}")
        check("mhr_mu vs mhr" not in text.split("## Paired comparisons")[1].split("## Training")[0]
              .replace("None of the compared pairs", ""),
              "pairs with a method absent from the sweep are left out")
        refs = check_pngs(out, text, "complete")
        check("alignment_cosine.png" in refs and "alignment_summary.png" in refs,
              "alignment file: cosine heatmaps and mean alignment / spectrum figures referenced")
        check("| mhr |" in text.split("## Task gradient alignment")[1], "alignment table lists the methods")

        # --- 68 tasks (the study's training scripts): the alignment heatmaps stay readable -------------
        many = make("many", "--tasks", ",".join(f"script-{i:02d}" for i in range(68)), "--methods", "lora,poly,mhr")
        out_many = os.path.join(tmp, "report_many")
        r = run([report, os.path.join(many, "results.nc"), "--alignment", os.path.join(many, "alignment.nc"),
                 "--out", out_many])
        check(r.returncode == 0, f"report on 68 tasks exits 0 ({r.stderr.strip()[-500:]})")
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.image as mpimg
        png = os.path.join(out_many, "alignment_cosine.png")
        if os.path.isfile(png):
            h, w = mpimg.imread(png).shape[:2]
            check(w <= 2400 and h <= 2400, f"alignment heatmaps of 68 tasks fit 2400 px ({w} x {h}; v1 was 7336 x 2409)")
        else:
            check(False, "alignment_cosine.png written for 68 tasks")

        # The CI of one cell against numpy + the t table, from the file read with plain netCDF4.
        with open(summary_json, encoding="utf-8") as f:
            summary = json.load(f)
        check(summary["sweep_status"] == "complete" and summary["interval_over"] == "tasks"
              and summary["entries_done"] == 270, "JSON: status, interval, entry counts")
        acc, methods, shots = read_entries(results, "test_accuracy")
        i, k = methods.index("mhr"), shots.index(5)
        expect = independent_interval(task_means(acc[i, :, k, :]))
        check_cell(summary["metrics"]["test_accuracy"], "mhr", 5, expect, "complete")
        formatted = f"{expect[0]:.3f} [{expect[1]:.3f}, {expect[2]:.3f}] (n=5)"
        mhr_row = [line for line in text.split("## Few-shot accuracy")[1].splitlines() if line.startswith("| mhr |")][0]
        check(mhr_row.split(" | ")[2] == formatted, f"report.md shows the independent interval {formatted}")
        accb, _, _ = read_entries(results, "test_accuracy_at_best_val")
        expect_b = independent_interval(task_means(accb[methods.index("lora"), :, shots.index(10), :]))
        check_cell(summary["metrics"]["test_accuracy_at_best_val"], "lora", 10, expect_b, "at best val")

        # One paired cell: mhr - lora at 1 shot.
        diff = acc[methods.index("mhr"), :, 0, :] - acc[methods.index("lora"), :, 0, :]
        p_mean, p_low, p_high, p_n = independent_interval(task_means(diff))
        d = diff[~np.isnan(diff)]
        win = (np.sum(d > 0) + 0.5 * np.sum(d == 0)) / d.size
        row = [p for p in summary["paired"] if p["a"] == "mhr" and p["b"] == "lora" and p["shots"] == shots[0]]
        check(len(row) == 1 and abs(row[0]["mean_diff"] - p_mean) < 1e-9 and abs(row[0]["ci_low"] - p_low) < 1e-9
              and abs(row[0]["ci_high"] - p_high) < 1e-9 and row[0]["n"] == p_n
              and abs(row[0]["win_rate"] - win) < 1e-12, "paired mhr vs lora (1 shot) matches numpy")

        check("## Gap to the linear probe" not in text and summary["gap_to_probe"] == [],
              "no probe in the sweep: no gap-to-probe section")

        # The gap to the linear probe: every other method minus the probe, paired, with its interval.
        gp = make("gap", "--methods", "lora,mhr,probe")
        gjson = os.path.join(tmp, "gap.json")
        r = run([report, os.path.join(gp, "results.nc"), "--out", os.path.join(tmp, "report_gap"), "--json", gjson])
        check(r.returncode == 0, f"report with a probe exits 0 ({r.stderr.strip()[-300:]})")
        with open(os.path.join(tmp, "report_gap", "report.md"), encoding="utf-8") as f:
            gtext = f.read()
        with open(gjson, encoding="utf-8") as f:
            gsum = json.load(f)
        gacc, gm, gs = read_entries(os.path.join(gp, "results.nc"), "test_accuracy")
        gd = gacc[gm.index("mhr"), :, gs.index(5), :] - gacc[gm.index("probe"), :, gs.index(5), :]
        g_mean, g_low, g_high, g_n = independent_interval(task_means(gd))
        grow = [p for p in gsum["gap_to_probe"] if p["a"] == "mhr" and p["shots"] == 5]
        check("## Gap to the linear probe" in gtext and "| mhr |" in gtext.split("## Gap to the linear probe")[1]
              and len(gsum["gap_to_probe"]) == 2 * len(gs) and len(grow) == 1
              and abs(grow[0]["mean_diff"] - g_mean) < 1e-9 and abs(grow[0]["ci_low"] - g_low) < 1e-9
              and abs(grow[0]["ci_high"] - g_high) < 1e-9 and grow[0]["n"] == g_n,
              f"gap to the probe: mhr - probe at 5 shots matches numpy ({g_mean:+.4f} [{g_low:+.4f}, {g_high:+.4f}])")

        # Deterministic output: a second run gives the same bytes.
        out2 = os.path.join(tmp, "report_full_again")
        r = run([report, results, "--alignment", os.path.join(full, "alignment.nc"), "--out", out2,
                 "--title", "Synthetic sweep"])
        same = r.returncode == 0
        for name in sorted(os.listdir(out)):
            with open(os.path.join(out, name), "rb") as f1, open(os.path.join(out2, name), "rb") as f2:
                same = same and f1.read() == f2.read()
        check(same, "a second run writes byte-identical report.md and PNGs")

        # --- a partial sweep ------------------------------------------------------------------------
        part = make("partial", "--not-run", "7", "--no-alignment")
        out = os.path.join(tmp, "report_partial")
        pjson = os.path.join(tmp, "partial.json")
        r = run([report, os.path.join(part, "results.nc"), "--out", out, "--json", pjson])
        check(r.returncode == 0, "report on a partial sweep exits 0")
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            text = f.read()
        check("**WARNING: partial sweep**" in text and "263 of 270 entries" in text,
              "partial sweep: visible warning with entries_done/entries_total")
        check("Sweep status: **partial**" in text, "partial sweep: sweep_status stated")
        check("## Task gradient alignment" not in text, "no alignment section without --alignment")
        check_pngs(out, text, "partial")
        with open(pjson, encoding="utf-8") as f:
            psum = json.load(f)
        pacc, methods, shots = read_entries(os.path.join(part, "results.nc"), "test_accuracy")
        # A cell with an entry not run: the not-run entry is excluded, not counted as 0.
        cells = [(i, k) for i in range(len(methods)) for k in range(len(shots))
                 if np.isnan(pacc[i, :, k, :]).any()]
        check(len(cells) > 0, "partial sweep has a cell with an entry not run")
        i, k = cells[0]
        check_cell(psum["metrics"]["test_accuracy"], methods[i], shots[k],
                   independent_interval(task_means(pacc[i, :, k, :])), "partial")
        check(psum["metrics"]["test_accuracy"][methods[i]][str(shots[k])]["entries_done"]
              == int(np.sum(~np.isnan(pacc[i, :, k, :]))), "partial: entries_done of the cell")

        # --- one task: the interval is over seeds --------------------------------------------------
        one = make("one_task", "--tasks", "solo", "--seeds", "0,1,2,3", "--shots", "2,8",
                   "--methods", "lora,mhr,mhr_mu", "--no-alignment")
        out = os.path.join(tmp, "report_one")
        ojson = os.path.join(tmp, "one.json")
        r = run([report, os.path.join(one, "results.nc"), "--out", out, "--json", ojson])
        check(r.returncode == 0, "report on a one-task sweep exits 0")
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            text = f.read()
        check("over **seeds**" in text, "one-task sweep: report says the interval is over seeds")
        check("| mhr_mu vs mhr |" in text and "| mhr vs lora |" in text, "one-task sweep: paired comparisons")
        with open(ojson, encoding="utf-8") as f:
            osum = json.load(f)
        oacc, methods, shots = read_entries(os.path.join(one, "results.nc"), "test_accuracy")
        check(osum["interval_over"] == "seeds", "one-task sweep: JSON interval_over = seeds")
        check_cell(osum["metrics"]["test_accuracy"], "mhr", 8,
                   independent_interval(list(oacc[methods.index("mhr"), 0, shots.index(8), :])), "one task")

        # --- errors: exit 2 and a message naming the file and what is wrong ---------------------------
        def expect_error(args, words, label):
            r = run([report] + args + ["--out", os.path.join(tmp, "report_err")])
            ok = r.returncode == 2 and all(w in r.stderr for w in words)
            check(ok, f"{label}: exit 2, message names {', '.join(words)} (rc={r.returncode}: {r.stderr.strip()})")

        missing = os.path.join(tmp, "nope", "results.nc")
        expect_error([missing], [missing, "no such file"], "missing file")
        text_file = os.path.join(tmp, "notes.nc")
        with open(text_file, "w") as f:
            f.write("this is not netCDF\n")
        expect_error([text_file], [text_file, "not a netCDF file"], "not netCDF")
        dropped = make("dropped", "--drop", "test_accuracy", "--no-alignment")
        expect_error([os.path.join(dropped, "results.nc")],
                     [os.path.join(dropped, "results.nc"), "missing variable", "test_accuracy"],
                     "missing variable")
        dropped2 = make("dropped2", "--drop", "status,val_accuracy", "--no-alignment")
        expect_error([os.path.join(dropped2, "results.nc")], ["status", "val_accuracy"], "missing variables")
        none = make("none", "--none-done", "--no-alignment")
        expect_error([os.path.join(none, "results.nc")],
                     [os.path.join(none, "results.nc"), "no completed entries"], "no completed entries")
        expect_error([results, "--alignment", results],
                     ["missing dimension", "task_b", "component", "missing variable", "cosine", "eigenvalues"],
                     "results file given as alignment")
        expect_error([results, "--alignment", missing], [missing, "no such file"], "missing alignment file")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
