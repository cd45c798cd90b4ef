#!/usr/bin/python3
"""Summarise a few-shot sweep (`results.nc`) and, optionally, a task alignment file (`alignment.nc`).

usage: /usr/bin/python3 analysis/report.py RESULTS.nc [--alignment ALIGNMENT.nc] --out DIR
           [--title T] [--json FILE]

Writes DIR/report.md (Markdown tables, figures referenced by relative paths) and PNG figures in DIR;
--json FILE writes the method x shots summary (mean, ci_low, ci_high, n) for machine use.
The file layout is docs/RESULTS_SCHEMA.md. Entries with status 0 (not run) are excluded.

Statistics: per method and shot count, each task's accuracy is first averaged over its done seeds, then
the mean and a 95% Student-t confidence interval are taken over tasks (n - 1 degrees of freedom). A sweep
with a single task has no spread over tasks: its interval is over seeds instead. Paired comparisons use
the same scheme on the per-entry differences of (task, shots, seed) entries done by both methods.

Exit status: 0 on success, 2 when an input file is missing, not netCDF, lacks a variable or dimension
of the schema, or has no completed entry (the message names the file and what is wrong).
Uses Debian's python3-xarray, python3-netcdf4, python3-matplotlib, numpy and scipy.
"""
import argparse
import json
import math
import os
import sys
import warnings

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401

CONFIDENCE = 0.95
ENTRY_DIMS = ("method", "task", "shots", "seed")
CURVE_DIMS = ENTRY_DIMS + ("eval_step",)

# Variables of results.nc the report reads, with the dimensions the schema gives them.
RESULTS_VARIABLES = {
    "status": ENTRY_DIMS,
    "test_accuracy": ENTRY_DIMS,
    "test_accuracy_at_best_val": ENTRY_DIMS,
    "trainable_parameters": ENTRY_DIMS,
    "wall_time": ENTRY_DIMS,
    "train_loss": CURVE_DIMS,
    "val_accuracy": CURVE_DIMS,
}
RESULTS_COORDINATES = ("method", "task", "shots", "seed", "eval_step")
# Read when present (sweeps of the v2 protocol: early stopping, learning-rate selection).
RESULTS_OPTIONAL = {"steps_run": ENTRY_DIMS, "best_val_step": ENTRY_DIMS}
LR_VARIABLES = ("adapter_lr", "head_lr", "routing_lr", "backbone_lr")

ALIGNMENT_DIMS = ("method", "task", "task_b", "component")
ALIGNMENT_VARIABLES = {
    "cosine": ("method", "task", "task_b"),
    "eigenvalues": ("method", "component"),
    "mean_alignment": ("method",),
}
ALIGNMENT_OPTIONAL = {
    "alignment_effective_rank": ("method",),
    "routing_effective_rank": ("method",),
    "parameters": ("method",),
}
ALIGNMENT_COORDINATES = ("method", "task")

METRICS = {
    "test_accuracy": "test accuracy (after the last step)",
    "test_accuracy_at_best_val": "test accuracy at the best validation evaluation",
}

# Paired comparisons (a vs b: difference a - b), shown when both methods are in the sweep.
PAIRS = [("mhr", "poly"), ("mhr", "shared_lora"), ("mhr", "lora"), ("poly", "lora"),
         ("shared_lora", "lora"), ("mhr_mu", "mhr"), ("mhr_z", "mhr"), ("mosa", "adapter"),
         ("mosa", "sparse"), ("mosa_mhr", "mhr")]

PNG_METADATA = {"Software": None}  # no version string: the same input gives the same bytes


class InputError(Exception):
    """A problem with an input file; reported on stderr with exit status 2."""


# ---------------------------------------------------------------------------------------------------
# Loading and validation


def open_netcdf(path):
    import xarray as xr
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a regular file")
    try:
        return xr.open_dataset(path, engine="netcdf4")
    except Exception as e:  # the netCDF library reports a foreign format in several ways
        raise InputError(f"{path}: not a netCDF file ({e})") from None


def check_layout(ds, path, dims, variables, coordinates, kind):
    """Raise InputError naming every missing dimension / variable and every variable of wrong shape."""
    problems = []
    missing_dims = [d for d in dims if d not in ds.dims]
    if missing_dims:
        problems.append("missing dimension(s) " + ", ".join(missing_dims))
    missing_vars = [v for v in list(coordinates) + list(variables) if v not in ds.variables]
    if missing_vars:
        problems.append("missing variable(s) " + ", ".join(missing_vars))
    for name, want in variables.items():
        if name in ds.variables and set(ds[name].dims) != set(want):
            problems.append(f"variable {name} has dimensions ({', '.join(ds[name].dims)}), "
                            f"expected ({', '.join(want)})")
    if problems:
        raise InputError(f"{path}: not {kind} file of docs/RESULTS_SCHEMA.md: " + "; ".join(problems))


def names(ds, dim):
    out = []
    for v in ds[dim].values:
        out.append(v.decode("utf-8") if isinstance(v, bytes) else str(v))
    return out


class Sweep:
    """The arrays of results.nc as numpy arrays (method, task, shots, seed[, eval_step]), NaN where not done."""

    def __init__(self, path):
        ds = open_netcdf(path)
        try:
            check_layout(ds, path, CURVE_DIMS, RESULTS_VARIABLES, RESULTS_COORDINATES, "a results")
            self.path = path
            self.attrs = dict(ds.attrs)
            self.methods = names(ds, "method")
            self.tasks = names(ds, "task")
            self.shots = [int(s) for s in ds["shots"].values]
            self.seeds = [int(s) for s in ds["seed"].values]
            self.eval_steps = np.asarray(ds["eval_step"].values, dtype=float)
            status = np.asarray(ds["status"].transpose(*ENTRY_DIMS).values, dtype=float)
            self.done = np.nan_to_num(status, nan=0.0) == 1
            self.total = int(self.done.size)
            self.n_done = int(self.done.sum())
            if self.n_done == 0:
                raise InputError(f"{path}: no completed entries (status = 0 for all {self.total} entries)")
            self.data = {}
            for name, want in RESULTS_VARIABLES.items():
                if name == "status":
                    continue
                a = np.asarray(ds[name].transpose(*want).values, dtype=float)
                mask = self.done if a.ndim == 4 else self.done[..., None]
                self.data[name] = np.where(mask, a, np.nan)
            for name, want in RESULTS_OPTIONAL.items():
                if name in ds.variables and set(ds[name].dims) == set(want):
                    a = np.asarray(ds[name].transpose(*want).values, dtype=float)
                    self.data[name] = np.where(self.done, a, np.nan)
            # per method: the learning rates of the test entries and their selection (None: an older file)
            self.lr = None
            if "lr_multiplier_chosen" in ds.variables and all(v in ds.variables for v in LR_VARIABLES):
                self.lr = {v: np.asarray(ds[v].values, dtype=float) for v in LR_VARIABLES}
                self.lr["chosen"] = np.asarray(ds["lr_multiplier_chosen"].values, dtype=float)
                self.lr["grid"] = [float(g) for g in ds["lr_multiplier"].values]
                for v in ("lr_selection_accuracy", "lr_selection_entries"):
                    self.lr[v] = (np.asarray(ds[v].transpose("method", "lr_multiplier").values, dtype=float)
                                  if v in ds.variables else None)
        finally:
            ds.close()

    @property
    def single_task(self):
        return len(self.tasks) == 1

    @property
    def interval_over(self):
        return "seeds" if self.single_task else "tasks"


class Alignment:
    def __init__(self, path):
        ds = open_netcdf(path)
        try:
            check_layout(ds, path, ALIGNMENT_DIMS, ALIGNMENT_VARIABLES, ALIGNMENT_COORDINATES, "an alignment")
            self.path = path
            self.methods = names(ds, "method")
            self.tasks = names(ds, "task")
            self.cosine = np.asarray(ds["cosine"].transpose("method", "task", "task_b").values, dtype=float)
            self.eigenvalues = np.asarray(ds["eigenvalues"].transpose("method", "component").values,
                                          dtype=float)
            self.mean_alignment = np.asarray(ds["mean_alignment"].values, dtype=float)
            self.extra = {}
            for name, want in ALIGNMENT_OPTIONAL.items():
                if name in ds.variables and set(ds[name].dims) == set(want):
                    self.extra[name] = np.asarray(ds[name].values, dtype=float)
        finally:
            ds.close()


# ---------------------------------------------------------------------------------------------------
# Statistics


def nanmean(a, axis):
    """Mean over `axis` ignoring NaN; NaN (without a warning) where every value is NaN."""
    a = np.asarray(a, dtype=float)
    count = np.sum(~np.isnan(a), axis=axis)
    total = np.nansum(a, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def t_interval(samples, confidence=CONFIDENCE):
    """Mean and Student-t confidence interval of the non-NaN samples: (mean, low, high, n).

    The interval is NaN with fewer than two samples (no spread to estimate).
    """
    from scipy import stats
    x = np.asarray(samples, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def units(task_seed, single_task):
    """The samples of the interval from a (task, seed) array: per-task means over seeds, or the seeds
    of the only task."""
    if single_task:
        return task_seed[0]
    return nanmean(task_seed, axis=1)


def summarize(sweep, metric):
    """{method: {shots: dict(mean, ci_low, ci_high, n, entries_done, entries_total)}}"""
    values = sweep.data[metric]
    out = {}
    for i, m in enumerate(sweep.methods):
        out[m] = {}
        for k, shots in enumerate(sweep.shots):
            mean, low, high, n = t_interval(units(values[i, :, k, :], sweep.single_task))
            out[m][shots] = dict(mean=mean, ci_low=low, ci_high=high, n=n,
                                 entries_done=int(sweep.done[i, :, k, :].sum()),
                                 entries_total=int(sweep.done[i, :, k, :].size))
    return out


def paired(sweep, a, b, metric="test_accuracy"):
    """Per shot count: the a - b difference over entries done by both (paired as in summarize)."""
    ia, ib = sweep.methods.index(a), sweep.methods.index(b)
    values = sweep.data[metric]
    rows = []
    for k, shots in enumerate(sweep.shots):
        diff = values[ia, :, k, :] - values[ib, :, k, :]  # NaN unless both done
        matched = ~np.isnan(diff)
        n_matched = int(matched.sum())
        mean, low, high, n = t_interval(units(diff, sweep.single_task))
        d = diff[matched]
        win = float((np.sum(d > 0) + 0.5 * np.sum(d == 0)) / n_matched) if n_matched else math.nan
        rows.append(dict(a=a, b=b, shots=shots, mean_diff=mean, ci_low=low, ci_high=high, n=n,
                         matched_entries=n_matched, win_rate=win))
    return rows


def largest_done_shots(sweep):
    """Index of the largest shot count with at least one done entry."""
    for k in sorted(range(len(sweep.shots)), key=lambda k: sweep.shots[k], reverse=True):
        if sweep.done[:, :, k, :].any():
            return k
    return len(sweep.shots) - 1


# ---------------------------------------------------------------------------------------------------
# Formatting


def fmt(x, digits=3, signed=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_interval(low, high, digits=3, signed=False):
    if math.isnan(low) or math.isnan(high):
        return "—"
    return f"[{fmt(low, digits, signed)}, {fmt(high, digits, signed)}]"


def cell(name):
    return str(name).replace("|", "\\|")


def table(header, rows, numeric=True):
    """A Markdown table; columns after the first are right-aligned when `numeric`."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---:" if numeric and i > 0 else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def shots_label(s):
    return plural(s, "shot")


def method_colors(methods):
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def save(fig, out_dir, name):
    fig.savefig(os.path.join(out_dir, name), dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return name


# ---------------------------------------------------------------------------------------------------
# Figures


def figure_accuracy_vs_shots(sweep, summaries, out_dir, colors):
    shots = np.asarray(sweep.shots, dtype=float)
    log_x = len(shots) > 2 and np.all(shots > 0)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 4.0), squeeze=False)
    n = len(sweep.methods)
    span = float(shots.max() - shots.min()) or 1.0
    for ax, metric in zip(axes[0], METRICS):
        for i, m in enumerate(sweep.methods):
            offset = (i - (n - 1) / 2.0) * 0.025  # dodge so that the error bars do not overlap
            x = shots * math.exp(offset) if log_x else shots + offset * 0.5 * span
            s = [summaries[metric][m][k] for k in sweep.shots]
            mean = np.array([c["mean"] for c in s])
            err = np.array([[c["mean"] - c["ci_low"] for c in s], [c["ci_high"] - c["mean"] for c in s]])
            ax.errorbar(x, mean, yerr=np.nan_to_num(err, nan=0.0), marker="o", capsize=3,
                        color=colors[m], label=m)
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(shots)
        ax.set_xticklabels([str(s) for s in sweep.shots])
        ax.minorticks_off()
        ax.set_xlabel("shots (training examples per class)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{metric} (mean, {int(CONFIDENCE * 100)}% CI over {sweep.interval_over})",
                     fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save(fig, out_dir, "accuracy_vs_shots.png")


def figure_per_task(sweep, out_dir, k):
    means = nanmean(sweep.data["test_accuracy"][:, :, k, :], axis=2).T  # (task, method)
    n_t, n_m = means.shape
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.9 * n_m), max(3.0, 1.2 + 0.35 * n_t)))
    im = ax.imshow(np.ma.masked_invalid(means), cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_m))
    ax.set_xticklabels(sweep.methods, rotation=45, ha="right")
    ax.set_yticks(range(n_t))
    ax.set_yticklabels(sweep.tasks, fontsize=8 if n_t > 20 else 9)
    if n_t * n_m <= 400:
        finite = means[np.isfinite(means)]
        mid = (finite.min() + finite.max()) / 2.0 if finite.size else 0.0
        for t in range(n_t):
            for j in range(n_m):
                if np.isfinite(means[t, j]):
                    ax.text(j, t, f"{means[t, j]:.3f}", ha="center", va="center", fontsize=7,
                            color="black" if means[t, j] > mid else "white")
    fig.colorbar(im, ax=ax, label="test accuracy (mean over seeds)")
    ax.set_title(f"test accuracy per task, {shots_label(sweep.shots[k])}", fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, "per_task.png")


def figure_training_curves(sweep, out_dir, colors, shot_indices):
    steps = sweep.eval_steps
    cols = len(shot_indices)
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 6.0), squeeze=False)
    for c, k in enumerate(shot_indices):
        for r, name in enumerate(("train_loss", "val_accuracy")):
            ax = axes[r][c]
            for i, m in enumerate(sweep.methods):
                curve = sweep.data[name][i, :, k, :, :]  # (task, seed, eval_step)
                mean = nanmean(nanmean(curve, axis=1), axis=0)  # seeds within a task, then tasks
                if np.isfinite(mean).any():
                    ax.plot(steps, mean, marker=".", color=colors[m], label=m)
            ax.set_xlabel("step")
            ax.set_ylabel(name.replace("_", " "))
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(shots_label(sweep.shots[k]), fontsize=10)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save(fig, out_dir, "training_curves.png")


def figure_alignment_cosine(al, out_dir):
    """One heatmap of task-gradient cosines per method, readable at a glance whatever the task count:
    panels at most 5.5 in square (the figure at most about 2000 px wide), the diagonal (always 1) masked
    so that the colour scale spans the off-diagonal values (symmetric, at the largest |cosine| over all
    methods, the same for every panel), task names only where they fit (every k-th one otherwise)."""
    n = len(al.methods)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    n_t = len(al.tasks)
    size = min(5.5, max(3.5, 1.5 + 0.3 * n_t))
    off = np.array(al.cosine, dtype=float, copy=True)
    for idx in range(n):
        np.fill_diagonal(off[idx], np.nan)
    finite = np.abs(off[np.isfinite(off)])
    vmax = float(finite.max()) if finite.size else 1.0
    vmax = max(vmax, 1e-3)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1.2, size * rows + 0.4), squeeze=False,
                             layout="constrained")
    im = None
    max_labels = 24
    step = max(1, int(np.ceil(n_t / max_labels)))
    for idx in range(rows * cols):
        ax = axes[idx // cols][idx % cols]
        if idx >= n:
            ax.axis("off")
            continue
        im = ax.imshow(off[idx], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(al.methods[idx], fontsize=11)
        if n_t <= 12:
            for s in range(n_t):
                for t in range(n_t):
                    c = off[idx, s, t]
                    if np.isfinite(c):
                        ax.text(t, s, f"{c:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if abs(c) > 0.6 * vmax else "black")
        ticks = list(range(0, n_t, step))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        fs = 8 if n_t <= 12 else 6
        ax.set_xticklabels([al.tasks[i] for i in ticks], rotation=90, fontsize=fs)
        ax.set_yticklabels([al.tasks[i] for i in ticks], fontsize=fs)
    label = "gradient cosine similarity (diagonal masked)"
    if step > 1:
        label += f"; one task name in {step}"
    fig.colorbar(im, ax=axes.ravel().tolist(), label=label, shrink=0.8)
    return save(fig, out_dir, "alignment_cosine.png")


def figure_alignment_summary(al, out_dir, colors):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    x = np.arange(len(al.methods))
    ax1.bar(x, np.nan_to_num(al.mean_alignment, nan=0.0), color=[colors[m] for m in al.methods])
    ax1.set_xticks(x)
    ax1.set_xticklabels(al.methods, rotation=45, ha="right")
    ax1.axhline(0.0, color="black", linewidth=0.8)
    ax1.set_ylabel("mean off-diagonal cosine")
    ax1.set_title("mean task gradient alignment", fontsize=10)
    comp = np.arange(1, al.eigenvalues.shape[1] + 1)
    for i, m in enumerate(al.methods):
        ax2.plot(comp, al.eigenvalues[i], marker="o", color=colors[m], label=m)
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax2.set_xlabel("component (largest first)")
    ax2.set_ylabel("eigenvalue of the cosine matrix")
    ax2.set_title("eigenvalue spectrum", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out_dir, "alignment_summary.png")


# ---------------------------------------------------------------------------------------------------
# Report


def summary_table(sweep, summary):
    header = ["method"] + [shots_label(s) for s in sweep.shots]
    rows = []
    for m in sweep.methods:
        row = [m]
        for s in sweep.shots:
            c = summary[m][s]
            if c["n"] == 0:
                row.append("—")
            else:
                row.append(f"{fmt(c['mean'])} {fmt_interval(c['ci_low'], c['ci_high'])} (n={c['n']})")
        rows.append(row)
    return table(header, rows)


def entries_table(sweep, summary):
    header = ["method"] + [shots_label(s) for s in sweep.shots]
    rows = [[m] + [f"{summary[m][s]['entries_done']}/{summary[m][s]['entries_total']}" for s in sweep.shots]
            for m in sweep.methods]
    return table(header, rows)


def per_task_table(sweep, k, metric="test_accuracy"):
    means = nanmean(sweep.data[metric][:, :, k, :], axis=2)  # (method, task)
    rows = []
    for t, task in enumerate(sweep.tasks):
        col = means[:, t]
        best = np.nanmax(col) if np.isfinite(col).any() else math.nan
        row = [task]
        for i in range(len(sweep.methods)):
            text = fmt(float(col[i]))
            row.append(f"**{text}**" if np.isfinite(col[i]) and col[i] == best else text)
        rows.append(row)
    return table(["task"] + sweep.methods, rows)


def cost_table(sweep, summary, k):
    rows = []
    steps = "steps_run" in sweep.data
    for i, m in enumerate(sweep.methods):
        params = sweep.data["trainable_parameters"][i]
        params = params[~np.isnan(params)]
        wall = sweep.data["wall_time"][i]
        wall = wall[~np.isnan(wall)]
        row = [m, f"{int(np.median(params)):,}" if params.size else "—",
               fmt(summary[m][sweep.shots[k]]["mean"]),
               fmt(float(wall.mean()), 1) if wall.size else "—"]
        if steps:
            sr = sweep.data["steps_run"][i]
            sr = sr[~np.isnan(sr)]
            row.append(fmt(float(sr.mean()), 0) if sr.size else "—")
        rows.append(row + [str(int(sweep.done[i].sum()))])
    header = ["method", "trainable parameters (median)", f"test accuracy, {shots_label(sweep.shots[k])}",
              "wall time per entry (s, mean)"] + (["steps run (mean)"] if steps else []) + ["entries done"]
    return table(header, rows)


def lr_lines(sweep):
    """The learning rates of the test entries per method and, with a selection, the mean selection accuracy of
    every multiplier tried."""
    lr = sweep.lr
    if lr is None:
        return []
    sel = lr["lr_selection_entries"] is not None and lr["lr_selection_entries"].max(initial=0) > 0
    lines = ["## Learning rates", ""]
    if sel:
        lines += [f"Chosen per method on the validation tasks ({sweep.attrs.get('lr_selection_tasks', '?')}; shots "
                  f"{sweep.attrs.get('lr_selection_shots', '?')}, seeds {sweep.attrs.get('lr_selection_seeds', '?')}): "
                  f"the multiplier of the configured rates with the best mean "
                  f"`{sweep.attrs.get('lr_selection_metric', '?')}`. Columns x...: that mean for each multiplier.", ""]
    else:
        lines += ["No selection: every method ran at its configured learning rates "
                  f"(`lr_selection`: {sweep.attrs.get('lr_selection', '?')}).", ""]
    header = ["method", "multiplier"] + list(LR_VARIABLES) + ([f"x{g:g}" for g in lr["grid"]] if sel else [])
    rows = []
    for i, m in enumerate(sweep.methods):
        row = [m, f"{lr['chosen'][i]:g}"] + [f"{lr[v][i]:.3g}" for v in LR_VARIABLES]
        if sel:
            row += [fmt(float(a)) for a in lr["lr_selection_accuracy"][i]]
        rows.append(row)
    return lines + [table(header, rows), ""]


def paired_tables(sweep, pairs_rows):
    out = []
    for k, s in enumerate(sweep.shots):
        rows = []
        for pair in pairs_rows:
            r = pair[k]
            rows.append([f"{r['a']} vs {r['b']}", fmt(r["mean_diff"], 3, True),
                         fmt_interval(r["ci_low"], r["ci_high"], 3, True), str(r["n"]),
                         str(r["matched_entries"]), fmt(r["win_rate"] * 100.0, 0) + "%"
                         if not math.isnan(r["win_rate"]) else "—"])
        out.append((s, table(["comparison (a vs b)", "mean a − b", f"{int(CONFIDENCE * 100)}% CI",
                                   f"n ({sweep.interval_over})", "matched entries", "a wins"], rows)))
    return out


def alignment_section(al, out_dir, colors):
    lines = ["## Task gradient alignment", "",
             f"Source: `{os.path.basename(al.path)}` — {plural(len(al.methods), 'method')}, "
             f"{plural(len(al.tasks), 'task')}.", ""]
    header = ["method", "mean alignment", "top eigenvalue share"]
    extra_names = [n for n in ("alignment_effective_rank", "routing_effective_rank", "parameters")
                   if n in al.extra]
    header += [n.replace("_", " ") for n in extra_names]
    rows = []
    for i, m in enumerate(al.methods):
        ev = al.eigenvalues[i]
        total = np.nansum(np.clip(ev, 0.0, None))
        share = float(ev[0] / total) if total > 0 else math.nan
        row = [m, fmt(float(al.mean_alignment[i])), fmt(share)]
        for n in extra_names:
            v = float(al.extra[n][i])
            row.append(f"{int(v):,}" if n == "parameters" and np.isfinite(v) else fmt(v, 2))
        rows.append(row)
    lines += [table(header, rows), ""]
    heat = figure_alignment_cosine(al, out_dir)
    summ = figure_alignment_summary(al, out_dir, colors)
    lines += [f"![gradient cosine similarity per method]({heat})", "",
              f"![mean alignment and eigenvalue spectrum]({summ})", ""]
    return lines


def provenance_lines(sweep):
    keys = ["source", "git_commit", "backbone", "pretrained", "world_size", "threads_per_rank", "blas",
            "mpi_library", "date_created"]
    rows = [[k, str(sweep.attrs[k])] for k in keys if k in sweep.attrs]
    return [table(["attribute", "value"], rows, numeric=False), ""] if rows else []


def build_report(sweep, alignment, out_dir, title, primary="test_accuracy"):
    # One colour per method in every figure (the alignment file may hold methods the sweep lacks).
    colors = method_colors(sweep.methods + [m for m in (alignment.methods if alignment else [])
                                            if m not in sweep.methods])
    summaries = {metric: summarize(sweep, metric) for metric in METRICS}
    status = str(sweep.attrs.get("sweep_status", "unknown"))
    attr_done = sweep.attrs.get("entries_done")
    attr_total = sweep.attrs.get("entries_total")
    shown_done = int(attr_done) if attr_done is not None else sweep.n_done
    shown_total = int(attr_total) if attr_total is not None else sweep.total

    lines = [f"# {title}", "",
             f"Source: `{os.path.basename(sweep.path)}` — {plural(len(sweep.methods), 'method')} × "
             f"{plural(len(sweep.tasks), 'task')} × {plural(len(sweep.shots), 'shot count')} × "
             f"{plural(len(sweep.seeds), 'seed')}.", "",
             f"Sweep status: **{status}** — {shown_done}/{shown_total} entries done "
             f"(`sweep_status`, `entries_done`/`entries_total`).", ""]
    if status != "complete" or sweep.n_done < sweep.total:
        lines += [f"> **WARNING: partial sweep** — only {shown_done} of {shown_total} entries are done. "
                  "Entries not run (status 0) are excluded: the numbers below cover the done entries only "
                  "and may change when the sweep completes.", ""]
    if (attr_done is not None and int(attr_done) != sweep.n_done) or \
            (attr_total is not None and int(attr_total) != sweep.total):
        lines += [f"> Note: the `status` variable counts {sweep.n_done}/{sweep.total} entries done, "
                  f"the global attributes say {shown_done}/{shown_total}; the tables use `status`.", ""]
    lines += provenance_lines(sweep)

    ci = f"{int(CONFIDENCE * 100)}%"
    if sweep.single_task:
        method_text = (f"The sweep has a single task ({sweep.tasks[0]}), so the {ci} confidence interval is "
                       "over **seeds**: mean and Student-t interval of the done seeds "
                       "(n - 1 degrees of freedom, n = done seeds).")
    else:
        method_text = (f"Method: the accuracy of each task is first averaged over its done seeds; the mean and "
                       f"the {ci} confidence interval are then taken over **tasks** (Student t, n - 1 degrees "
                       "of freedom, n = tasks with at least one done entry). Entries with status 0 are "
                       "excluded. Intervals need n >= 2 (— otherwise).")
    lines += ["## Few-shot accuracy", "", method_text, ""]
    for metric, label in METRICS.items():
        lines += [f"### `{metric}`: {label}", "", "Cells: mean [CI low, CI high] (n).", "",
                  summary_table(sweep, summaries[metric]), ""]
    lines += ["### Entries done / total per method and shot count", "",
              entries_table(sweep, summaries["test_accuracy"]), ""]
    fig = figure_accuracy_vs_shots(sweep, summaries, out_dir, colors)
    lines += [f"![accuracy vs shots]({fig})", ""]

    lines += ["## Per-task test accuracy", "",
              f"Mean `{primary}` over the done seeds of each task; the best method of each task in bold.", ""]
    for k, s in enumerate(sweep.shots):
        lines += [f"### {shots_label(s)}", "", per_task_table(sweep, k, primary), ""]
    k_big = largest_done_shots(sweep)
    fig = figure_per_task(sweep, out_dir, k_big)
    lines += [f"![per-task accuracy, {shots_label(sweep.shots[k_big])}]({fig})", ""]

    lines += ["## Cost", "",
              f"Trainable parameters (median over done entries, head included), the mean `{primary}` at the "
              "largest shot count, the mean wall time of one entry (all shot counts)"
              + (" and the mean number of steps trained (early stopping)" if "steps_run" in sweep.data else "")
              + ".", "", cost_table(sweep, summaries[primary], k_big), ""]
    lines += lr_lines(sweep)

    pair_rows = [paired(sweep, a, b, primary) for a, b in PAIRS if a in sweep.methods and b in sweep.methods]
    lines += ["## Paired comparisons", ""]
    if pair_rows:
        unit = "seeds of the single task" if sweep.single_task else "tasks, after averaging the seeds of each task"
        lines += [f"`{primary}` difference a − b over the (task, shots, seed) entries done by both methods: "
                  f"mean and {ci} Student-t interval over {unit}. \"a wins\": share of matched entries with "
                  "a > b (ties count one half).", ""]
        for s, text in paired_tables(sweep, pair_rows):
            lines += [f"### {shots_label(s)}", "", text, ""]
    else:
        lines += ["None of the compared pairs (" + ", ".join(f"{a} vs {b}" for a, b in PAIRS) +
                  ") has both methods in this sweep.", ""]

    gap_rows = [paired(sweep, m, "probe", primary) for m in sweep.methods if m != "probe"] \
        if "probe" in sweep.methods else []
    if gap_rows:
        lines += ["## Gap to the linear probe", "",
                  f"Each method's `{primary}` minus the linear probe's on the same (task, shots, seed) entries: mean "
                  f"[{ci} interval] over the {'seeds' if sweep.single_task else 'tasks'}; bold where the interval "
                  "excludes 0. The probe trains the head alone on the frozen backbone, so the gap is what training "
                  "anything else adds.", ""]
        rows = []
        for r in gap_rows:
            cells = [r[0]["a"]]
            for c in r:
                txt = f"{fmt(c['mean_diff'], 3, True)} {fmt_interval(c['ci_low'], c['ci_high'], 3, True)}"
                excl = not math.isnan(c["ci_low"]) and (c["ci_low"] > 0 or c["ci_high"] < 0)
                cells.append(f"**{txt}**" if excl else txt)
            rows.append(cells)
        lines += [table(["method − probe"] + [shots_label(s) for s in sweep.shots], rows), ""]

    if len(sweep.shots) <= 4:
        shot_indices = list(range(len(sweep.shots)))
        which = "each shot count"
    else:
        shot_indices = [k_big]
        which = f"the largest shot count ({sweep.shots[k_big]})"
    fig = figure_training_curves(sweep, out_dir, colors, shot_indices)
    lines += ["## Training curves", "",
              f"Mean over tasks (seeds averaged first) of `train_loss` and `val_accuracy` at each evaluation step, "
              f"for {which}.", "", f"![training curves]({fig})", ""]

    if alignment is not None:
        lines += alignment_section(alignment, out_dir, colors)

    json_doc = {
        "source": os.path.basename(sweep.path),
        "sweep_status": status,
        "entries_done": sweep.n_done,
        "entries_total": sweep.total,
        "confidence": CONFIDENCE,
        "interval_over": sweep.interval_over,
        "methods": sweep.methods,
        "shots": sweep.shots,
        "metrics": {metric: {m: {str(s): c for s, c in by_shots.items()} for m, by_shots in summ.items()}
                    for metric, summ in summaries.items()},
        "paired_metric": primary,
        "paired": [r for rows in pair_rows for r in rows],
        "gap_to_probe": [r for rows in gap_rows for r in rows],
    }
    return "\n".join(lines).rstrip() + "\n", json_doc


def json_safe(x):
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def main(argv=None):
    ap = argparse.ArgumentParser(description="Report on a few-shot sweep (results.nc) and task alignment.")
    ap.add_argument("results", help="results.nc of `tessera fewshot`")
    ap.add_argument("--alignment", help="alignment.nc of `tessera analyze`")
    ap.add_argument("--out", required=True, help="output directory (report.md and PNG figures)")
    ap.add_argument("--title", help="report title (default: the file's title attribute)")
    ap.add_argument("--json", help="write the method x shots summary to this JSON file")
    ap.add_argument("--metric", choices=sorted(METRICS), default="test_accuracy",
                    help="the accuracy of the per-task tables, the cost table and the paired comparisons (default "
                         "test_accuracy; the v2 protocol's outcome is test_accuracy_at_best_val: the parameters of "
                         "the step chosen on the validation split)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", category=RuntimeWarning)
    try:
        sweep = Sweep(args.results)
        alignment = Alignment(args.alignment) if args.alignment else None
    except InputError as e:
        print(f"report.py: error: {e}", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        print(f"report.py: error: {args.out}: cannot create the output directory ({e.strerror})", file=sys.stderr)
        return 2
    title = args.title or str(sweep.attrs.get("title") or "Few-shot sweep report")
    text, doc = build_report(sweep, alignment, args.out, title, args.metric)
    path = os.path.join(args.out, "report.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(f"report.py: wrote {path}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(json_safe(doc), f, indent=2, allow_nan=False)
            f.write("\n")
        print(f"report.py: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
