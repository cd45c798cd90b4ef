#!/usr/bin/python3
"""Write small synthetic `results.nc` / `alignment.nc` files that follow docs/RESULTS_SCHEMA.md.

For tests of the analysis scripts only: the numbers are made up (deterministic for a given --rng-seed).

usage: /usr/bin/python3 analysis/make_synthetic.py OUT_DIR [--methods m1,m2,...] [--tasks t1,t2,...]
           [--shots 1,5,10] [--seeds 0,1,2] [--eval-steps N] [--not-run K | --none-done]
           [--drop VAR[,VAR...]] [--no-alignment] [--rng-seed S]

Writes OUT_DIR/results.nc and (unless --no-alignment) OUT_DIR/alignment.nc.
  --not-run K   leave K entries (picked deterministically) not run: status 0, fill values, and
                sweep_status = "partial"
  --none-done   no entry run (status 0 everywhere; a file the report must refuse)
  --drop VARS   omit these variables from results.nc (to test the report's error messages)
Uses Debian's python3-netcdf4 and numpy. Importable: write_results(), write_alignment().
"""
import argparse
import os
import sys

import numpy as np

DEFAULT_METHODS = ["lora", "poly", "mhr", "shared_lora", "adapter", "mosa"]
DEFAULT_TASKS = ["glyph_a", "glyph_b", "glyph_c", "glyph_d", "glyph_e"]
DEFAULT_SHOTS = [1, 5, 10]
DEFAULT_SEEDS = [0, 1, 2]

# Made-up method quality (added to the accuracy) and trainable parameter counts.
METHOD_EFFECT = {"lora": 0.00, "poly": 0.02, "mhr": 0.04, "shared_lora": 0.01, "adapter": 0.015,
                 "mosa": 0.03, "mhr_mu": 0.035, "mhr_z": 0.045}
METHOD_PARAMS = {"lora": 148_490, "poly": 160_010, "mhr": 171_530, "shared_lora": 120_842,
                 "adapter": 198_410, "mosa": 205_322, "mhr_mu": 150_026, "mhr_z": 171_530}

FILL_FLOAT = np.nan
FILL_INT = -1
FILL_STATUS = 0

PROVENANCE = {
    "Conventions": "CF-1.8",
    "source": "tessera 0.0.0-synthetic",
    "git_commit": "0000000000000000000000000000000000000000",
    "date_created": "2000-01-01T00:00:00Z",
    "world_size": np.int32(4),
    "threads_per_rank": np.int32(1),
    "blas": "synthetic",
    "mpi_library": "synthetic",
    "backbone": "vit_tiny_synthetic",
    "pretrained": "none (synthetic data)",
}


def _char_coordinate(nc, name, values):
    """A string coordinate as the schema stores it: char (name, name_strlen), _Encoding = utf-8."""
    import netCDF4
    encoded = [v.encode("utf-8") for v in values]
    strlen = max(1, max(len(e) for e in encoded))
    nc.createDimension(name, len(values))
    nc.createDimension(name + "_strlen", strlen)
    var = nc.createVariable(name, "S1", (name, name + "_strlen"))
    var._Encoding = "utf-8"
    var.set_auto_chartostring(False)
    var[:] = netCDF4.stringtochar(np.array(encoded, dtype=f"S{strlen}"))
    return var


def _int_coordinate(nc, name, values):
    nc.createDimension(name, len(values))
    var = nc.createVariable(name, "i4", (name,))
    var[:] = np.asarray(values, dtype=np.int32)
    return var


def _set_globals(nc, title, command):
    nc.setncattr("title", title)
    nc.setncattr("history", "2000-01-01T00:00:00Z " + command)
    for key, value in PROVENANCE.items():
        nc.setncattr(key, value)


def _not_run_mask(shape, not_run, rng):
    """Boolean mask, True for entries left not run; `not_run` entries, picked with `rng`."""
    total = int(np.prod(shape))
    mask = np.zeros(total, dtype=bool)
    mask[rng.permutation(total)[:min(not_run, total)]] = True
    return mask.reshape(shape)


def write_results(path, methods=None, tasks=None, shots=None, seeds=None, eval_steps=6, not_run=0,
                  drop=(), rng_seed=1234, title="synthetic few-shot sweep"):
    """Write a synthetic results.nc; returns the accuracy array (method, task, shots, seed), NaN where not run.

    not_run: number of entries left not run, or "all".
    drop: variable names not to write (for error-path tests).
    """
    import netCDF4
    methods = list(methods or DEFAULT_METHODS)
    tasks = list(tasks or DEFAULT_TASKS)
    shots = list(shots or DEFAULT_SHOTS)
    seeds = list(seeds or DEFAULT_SEEDS)
    rng = np.random.default_rng(rng_seed)
    shape = (len(methods), len(tasks), len(shots), len(seeds))
    steps = np.linspace(0, 100 * eval_steps, eval_steps + 1)[1:].astype(np.int32)

    # Accuracy model: task difficulty + method effect + log(shots) gain + noise.
    task_base = rng.uniform(0.35, 0.65, len(tasks))
    method_eff = np.array([METHOD_EFFECT.get(m, 0.0) for m in methods])
    shot_gain = 0.08 * np.log1p(np.asarray(shots, dtype=float))
    acc = (task_base[None, :, None, None] + method_eff[:, None, None, None]
           + shot_gain[None, None, :, None] + rng.normal(0.0, 0.02, shape))
    acc = np.clip(acc, 0.0, 1.0)
    acc_best_val = np.clip(acc + rng.normal(0.0, 0.01, shape), 0.0, 1.0)
    best_val = np.clip(acc + rng.normal(0.01, 0.01, shape), 0.0, 1.0)
    best_step = steps[rng.integers(len(steps) // 2, len(steps), shape)]
    params = np.broadcast_to(np.array([METHOD_PARAMS.get(m, 100_000) for m in methods],
                                      dtype=np.int64)[:, None, None, None], shape).copy()
    wall = rng.uniform(20.0, 40.0, shape) * (1.0 + 0.1 * np.arange(len(shots)))[None, None, :, None]
    rank = rng.integers(0, int(PROVENANCE["world_size"]), shape).astype(np.int32)

    frac = (np.arange(1, len(steps) + 1) / len(steps))[None, None, None, None, :]
    train_loss = (2.3 * np.exp(-3.0 * frac) + 0.05 * (1.0 - acc[..., None])
                  + rng.normal(0.0, 0.01, shape + (len(steps),))).astype(np.float32)
    val_curve = (acc[..., None] * (1.0 - 0.6 * np.exp(-4.0 * frac))
                 + rng.normal(0.0, 0.005, shape + (len(steps),))).astype(np.float32)
    test_curve = (val_curve - 0.005).astype(np.float32)
    final_loss = train_loss[..., -1].astype(np.float64)

    if not_run == "all":
        missing = np.ones(shape, dtype=bool)
    else:
        missing = _not_run_mask(shape, int(not_run), rng)
    status = np.where(missing, 0, 1).astype(np.int8)

    def masked(a, fill):
        out = np.array(a, copy=True)
        out[missing] = fill
        return out

    tmp = path + ".tmp"
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        _char_coordinate(nc, "method", methods)
        _char_coordinate(nc, "task", tasks)
        _int_coordinate(nc, "shots", shots)
        _int_coordinate(nc, "seed", seeds)
        v = _int_coordinate(nc, "eval_step", steps)
        v.long_name = "training step after which the evaluation ran"
        dims = ("method", "task", "shots", "seed")
        curve_dims = dims + ("eval_step",)

        def put(name, dtype, dimensions, values, fill, **attrs):
            if name in drop:
                return
            var = nc.createVariable(name, dtype, dimensions, fill_value=fill)
            for key, value in attrs.items():
                var.setncattr(key, value)
            var[:] = values

        put("status", "i1", dims, status, FILL_STATUS, flag_values=np.array([0, 1], dtype=np.int8),
            flag_meanings="not_run done", long_name="entry completion state")
        put("test_accuracy", "f8", dims, masked(acc, FILL_FLOAT), FILL_FLOAT,
            long_name="test accuracy after the last step")
        put("best_val_accuracy", "f8", dims, masked(best_val, FILL_FLOAT), FILL_FLOAT)
        put("best_val_step", "i4", dims, masked(best_step, FILL_INT), FILL_INT)
        put("test_accuracy_at_best_val", "f8", dims, masked(acc_best_val, FILL_FLOAT), FILL_FLOAT)
        put("final_train_loss", "f8", dims, masked(final_loss, FILL_FLOAT), FILL_FLOAT)
        put("trainable_parameters", "i8", dims, masked(params, FILL_INT), FILL_INT)
        put("wall_time", "f8", dims, masked(wall, FILL_FLOAT), FILL_FLOAT, units="s")
        put("rank", "i4", dims, masked(rank, FILL_INT), FILL_INT)
        put("train_loss", "f4", curve_dims, masked(train_loss, np.float32(FILL_FLOAT)),
            np.float32(FILL_FLOAT))
        put("val_accuracy", "f4", curve_dims, masked(val_curve, np.float32(FILL_FLOAT)),
            np.float32(FILL_FLOAT))
        put("test_accuracy_curve", "f4", curve_dims, masked(test_curve, np.float32(FILL_FLOAT)),
            np.float32(FILL_FLOAT))

        _set_globals(nc, title, "tessera fewshot (synthetic: analysis/make_synthetic.py)")
        nc.setncattr("config", "fewshot:\n  methods: [%s]\n  shots: [%s]\n  seeds: [%s]\n" % (
            ", ".join(methods), ", ".join(map(str, shots)), ", ".join(map(str, seeds))))
        done = int(status.sum())
        nc.setncattr("sweep_status", "complete" if done == status.size else "partial")
        nc.setncattr("entries_total", np.int64(status.size))
        nc.setncattr("entries_done", np.int64(done))
    os.replace(tmp, path)
    return np.where(missing, np.nan, acc)


def write_alignment(path, methods=("poly", "mhr"), tasks=None, rng_seed=4321, parameters=4096):
    """Write a synthetic alignment.nc: cosine of random per-task gradients sharing a common direction."""
    import netCDF4
    methods = list(methods)
    tasks = list(tasks or DEFAULT_TASKS)
    rng = np.random.default_rng(rng_seed)
    n_m, n_t = len(methods), len(tasks)
    cosine = np.empty((n_m, n_t, n_t))
    evals = np.empty((n_m, n_t))
    evecs = np.empty((n_m, n_t, n_t))
    gnorm = np.empty((n_m, n_t))
    for i in range(n_m):
        common = rng.normal(size=parameters)
        g = (0.3 + 0.3 * i) * common[None, :] + rng.normal(size=(n_t, parameters))
        g *= rng.uniform(0.5, 2.0, n_t)[:, None]
        gnorm[i] = np.linalg.norm(g, axis=1)
        unit = g / gnorm[i][:, None]
        cosine[i] = unit @ unit.T
        w, v = np.linalg.eigh(cosine[i])
        order = np.argsort(w)[::-1]
        evals[i], evecs[i] = w[order], v[:, order]
    off = ~np.eye(n_t, dtype=bool)
    mean_align = np.array([cosine[i][off].mean() for i in range(n_m)])
    p = np.clip(evals, 0.0, None)
    p = p / p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    eff_rank = np.exp(entropy)
    routing = np.array([np.nan if m in ("lora", "shared_lora", "adapter") else 2.0 + i
                        for i, m in enumerate(methods)])

    tmp = path + ".tmp"
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        _char_coordinate(nc, "method", methods)
        _char_coordinate(nc, "task", tasks)
        _char_coordinate(nc, "task_b", tasks)
        _int_coordinate(nc, "component", np.arange(n_t))

        def put(name, dtype, dimensions, values, fill, **attrs):
            var = nc.createVariable(name, dtype, dimensions, fill_value=fill)
            for key, value in attrs.items():
                var.setncattr(key, value)
            var[:] = values

        put("cosine", "f8", ("method", "task", "task_b"), cosine, np.nan)
        put("eigenvalues", "f8", ("method", "component"), evals, np.nan)
        put("eigenvectors", "f8", ("method", "task", "component"), evecs, np.nan)
        put("gradient_norm", "f8", ("method", "task"), gnorm, np.nan)
        put("mean_alignment", "f8", ("method",), mean_align, np.nan)
        put("alignment_effective_rank", "f8", ("method",), eff_rank, np.nan)
        put("routing_effective_rank", "f8", ("method",), routing, np.nan)
        put("parameters", "i8", ("method",), np.full(n_m, parameters, dtype=np.int64), -1)
        _set_globals(nc, "synthetic task gradient alignment",
                     "tessera analyze (synthetic: analysis/make_synthetic.py)")
        nc.setncattr("config", "analyze:\n  methods: [%s]\n" % ", ".join(methods))
        for m in methods:
            nc.setncattr("checkpoint_" + m, f"runs/synthetic/{m}/adapter.nc")
        nc.setncattr("process_grid", "2x2")
        nc.setncattr("block_size", np.int32(2))
    os.replace(tmp, path)


def _list(text, cast=str):
    return [cast(x) for x in text.split(",") if x.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write synthetic results.nc / alignment.nc (tests only).")
    ap.add_argument("out_dir")
    ap.add_argument("--methods", type=_list, default=DEFAULT_METHODS)
    ap.add_argument("--tasks", type=_list, default=DEFAULT_TASKS)
    ap.add_argument("--shots", type=lambda s: _list(s, int), default=DEFAULT_SHOTS)
    ap.add_argument("--seeds", type=lambda s: _list(s, int), default=DEFAULT_SEEDS)
    ap.add_argument("--eval-steps", type=int, default=6)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--not-run", type=int, default=0, metavar="K")
    group.add_argument("--none-done", action="store_true")
    ap.add_argument("--drop", type=_list, default=[])
    ap.add_argument("--no-alignment", action="store_true")
    ap.add_argument("--rng-seed", type=int, default=1234)
    args = ap.parse_args(argv)
    if args.eval_steps < 1:
        ap.error("--eval-steps must be >= 1")
    os.makedirs(args.out_dir, exist_ok=True)
    results = os.path.join(args.out_dir, "results.nc")
    write_results(results, args.methods, args.tasks, args.shots, args.seeds, args.eval_steps,
                  "all" if args.none_done else args.not_run, args.drop, args.rng_seed)
    print(f"make_synthetic: wrote {results}")
    if not args.no_alignment:
        alignment = os.path.join(args.out_dir, "alignment.nc")
        write_alignment(alignment, tasks=args.tasks, rng_seed=args.rng_seed + 1)
        print(f"make_synthetic: wrote {alignment}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
