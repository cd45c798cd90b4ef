#!/usr/bin/python3
"""Plot a training curve written by `tessera train`, `adapt` or `pretrain` (RUN_DIR/train_log.csv) to a PNG.

usage: /usr/bin/python3 analysis/plot_curve.py RUN_DIR [OUT.png]
Uses Debian's python3-matplotlib. Refuses a file that lacks the expected columns.
"""
import csv
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ["step", "lr_factor", "train_loss", "grad_norm", "test_accuracy", "images_per_s"]


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    path = os.path.join(sys.argv[1], "train_log.csv")
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.join(sys.argv[1], "train_curve.png")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        print(f"plot_curve: {path}: {e.strerror}", file=sys.stderr)
        return 1
    if not rows or any(c not in rows[0] for c in COLUMNS):
        print(f"plot_curve: {path}: expected the columns {', '.join(COLUMNS)}", file=sys.stderr)
        return 1
    step = [int(r["step"]) for r in rows]
    loss = [float(r["train_loss"]) for r in rows]
    ev = [(int(r["step"]), float(r["test_accuracy"])) for r in rows if not math.isnan(float(r["test_accuracy"]))]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(step, loss)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("training loss")
    if ev:
        ax[1].plot([s for s, _ in ev], [a for _, a in ev], marker="o")
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("test accuracy")
    fig.tight_layout()
    fig.savefig(out + ".tmp.png", dpi=100)
    os.replace(out + ".tmp.png", out)
    print(f"plot_curve: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
