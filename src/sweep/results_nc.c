/* results_nc.c: the sweep's results file, written in parallel (netCDF-4 / HDF5 over MPI-IO).
 *
 * The file is created for every rank of the world through src/dist/ncpar.h (the netCDF calls that take
 * a communicator live there). Every variable uses independent access, so each rank writes the entries
 * it ran whenever it finishes them; the file layout (dimensions, variables, fill values) and the final
 * completion attributes are collective. No compression: HDF5 applies filters only to collective writes. */
#include "sweep/results_nc.h"

#include <errno.h>
#include <math.h>
#include <netcdf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "dist/ncpar.h"
#include "dist/parallel.h"

static const char *cur_path = "";
/* netCDF reports a failed write as "NetCDF: HDF error"; the system's reason (a full disk, a quota) is left in
 * errno by the write that failed, so a call's errno is named when it says that storage failed. */
static const char *storage_errno(int e) {
    return e == ENOSPC || e == EDQUOT || e == EFBIG || e == EIO ? strerror(e) : NULL;
}
#define NC(call)                                                                                          \
    do {                                                                                                  \
        errno = 0;                                                                                        \
        int e_ = (call);                                                                                  \
        const char *s_ = e_ != NC_NOERR ? storage_errno(errno) : NULL;                                    \
        if (e_ != NC_NOERR)                                                                               \
            return tsr_error("%s: %s%s%s (%s:%d)", cur_path, nc_strerror(e_), s_ ? ": " : "", s_ ? s_ : "", \
                             __FILE__, __LINE__);                                                         \
    } while (0)

static int def_names(int ncid, const char *dim, int n, const char *const *names, int *dimid) {
    size_t w = 1;
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) > w) w = strlen(names[i]);
    char sdim[64];
    snprintf(sdim, sizeof sdim, "%s_strlen", dim);
    int ds;
    NC(nc_def_dim(ncid, dim, (size_t)n, dimid));
    NC(nc_def_dim(ncid, sdim, w, &ds));
    int dims[2] = {*dimid, ds}, v;
    NC(nc_def_var(ncid, dim, NC_CHAR, 2, dims, &v));
    NC(nc_put_att_text(ncid, v, "_Encoding", 5, "utf-8"));
    return 0;
}

static int put_names(int ncid, const char *dim, int n, const char *const *names) {
    int v, d[2];
    size_t w;
    NC(nc_inq_varid(ncid, dim, &v));
    NC(nc_inq_vardimid(ncid, v, d));
    NC(nc_inq_dimlen(ncid, d[1], &w));
    NC(tsr_ncpar_var_independent(ncid, v));
    if (tsr_world.rank != 0) return 0;
    char *buf = tsr_calloc((size_t)n * w + 1, 1);
    for (int i = 0; i < n; i++) memcpy(buf + (size_t)i * w, names[i], strlen(names[i]));
    size_t st[2] = {0, 0}, ct[2] = {(size_t)n, w};
    int e = nc_put_vara_text(ncid, v, st, ct, buf);
    free(buf);
    NC(e);
    return 0;
}

static int def_var(int ncid, const char *name, nc_type t, int nd, const int *dims, const char *longname,
                   const char *units, int *v) {
    NC(nc_def_var(ncid, name, t, nd, dims, v));
    if (t == NC_DOUBLE) {
        double fv = NAN;
        NC(nc_def_var_fill(ncid, *v, 0, &fv));
    } else if (t == NC_FLOAT) {
        float fv = NAN;
        NC(nc_def_var_fill(ncid, *v, 0, &fv));
    } else if (t == NC_INT) {
        int fv = -1;
        NC(nc_def_var_fill(ncid, *v, 0, &fv));
    } else if (t == NC_INT64) {
        long long fv = -1;
        NC(nc_def_var_fill(ncid, *v, 0, &fv));
    } else if (t == NC_BYTE) {
        signed char fv = 0;
        NC(nc_def_var_fill(ncid, *v, 0, &fv));
    }
    NC(nc_put_att_text(ncid, *v, "long_name", strlen(longname), longname));
    if (units) NC(nc_put_att_text(ncid, *v, "units", strlen(units), units));
    return 0;
}

int tsr_results_create(tsr_results_file *f, const char *path, const tsr_results_layout *L) {
    memset(f, 0, sizeof *f);
    f->ncid = -1;
    cur_path = path;
    f->M = L->M, f->T = L->T, f->K = L->K, f->S = L->S, f->E = L->E;
    int ncid;
    NC(tsr_ncpar_create(path, NC_NETCDF4 | NC_CLOBBER, &ncid));
    f->ncid = ncid;
    int dm, dt, dk, ds, de, v;
    if (def_names(ncid, "method", L->M, L->methods, &dm) || def_names(ncid, "task", L->T, L->tasks, &dt)) return -1;
    NC(nc_def_dim(ncid, "shots", (size_t)L->K, &dk));
    NC(nc_def_dim(ncid, "seed", (size_t)L->S, &ds));
    NC(nc_def_dim(ncid, "eval_step", (size_t)L->E, &de));
    NC(nc_def_var(ncid, "shots", NC_INT, 1, &dk, &v));
    NC(nc_put_att_text(ncid, v, "long_name", 27, "training examples per class"));
    NC(nc_def_var(ncid, "seed", NC_INT, 1, &ds, &v));
    NC(nc_put_att_text(ncid, v, "long_name", 11, "random seed"));
    NC(nc_def_var(ncid, "eval_step", NC_INT, 1, &de, &v));
    NC(nc_put_att_text(ncid, v, "long_name", 37, "training step after which it evaluated"));
    int d4[5] = {dm, dt, dk, ds, de};
    if (def_var(ncid, "status", NC_BYTE, 4, d4, "entry state", NULL, &f->v_status)) return -1;
    signed char fl[2] = {0, 1};
    NC(nc_put_att_schar(ncid, f->v_status, "flag_values", NC_BYTE, 2, fl));
    NC(nc_put_att_text(ncid, f->v_status, "flag_meanings", 12, "not_run done"));
    if (def_var(ncid, "test_accuracy", NC_DOUBLE, 4, d4, "test accuracy after the last step", "1", &f->v_test) ||
        def_var(ncid, "best_val_accuracy", NC_DOUBLE, 4, d4, "best validation accuracy over the evaluations", "1",
                &f->v_bestval) ||
        def_var(ncid, "best_val_step", NC_INT, 4, d4, "step of the best validation accuracy", NULL, &f->v_bestval_step) ||
        def_var(ncid, "test_accuracy_at_best_val", NC_DOUBLE, 4, d4, "test accuracy at the best validation accuracy",
                "1", &f->v_test_at_best) ||
        def_var(ncid, "final_train_loss", NC_DOUBLE, 4, d4, "mean training loss over the last logging window", NULL,
                &f->v_loss) ||
        def_var(ncid, "trainable_parameters", NC_INT64, 4, d4, "parameters trained (head included)", NULL, &f->v_params) ||
        def_var(ncid, "wall_time", NC_DOUBLE, 4, d4, "time the entry took", "s", &f->v_wall) ||
        def_var(ncid, "rank", NC_INT, 4, d4, "MPI rank that ran the entry", NULL, &f->v_rank) ||
        def_var(ncid, "steps_run", NC_INT, 4, d4, "steps trained (fewer than train.steps when train.patience stopped the entry)",
                NULL, &f->v_steps_run) ||
        def_var(ncid, "train_loss", NC_FLOAT, 5, d4, "training loss curve", NULL, &f->v_curve_loss) ||
        def_var(ncid, "val_accuracy", NC_FLOAT, 5, d4, "validation accuracy curve", "1", &f->v_curve_val) ||
        def_var(ncid, "test_accuracy_curve", NC_FLOAT, 5, d4, "test accuracy curve", "1", &f->v_curve_test))
        return -1;
    /* learning rates per method: (method) and (method, lr_multiplier) */
    int dg, v_grid, v_chosen, v_lr[4], v_selacc, v_seln;
    const tsr_results_lr *lr = &L->lr;
    int G = lr->G > 0 ? lr->G : 1;
    NC(nc_def_dim(ncid, "lr_multiplier", (size_t)G, &dg));
    NC(nc_def_var(ncid, "lr_multiplier", NC_DOUBLE, 1, &dg, &v_grid));
    static const char gl[] = "learning-rate multiplier tried (fewshot.lr_grid)";
    NC(nc_put_att_text(ncid, v_grid, "long_name", sizeof gl - 1, gl));
    static const char *lrn[4] = {"adapter_lr", "head_lr", "routing_lr", "backbone_lr"};
    int d2[2] = {dm, dg};
    if (def_var(ncid, "lr_multiplier_chosen", NC_DOUBLE, 1, &dm,
                "learning-rate multiplier of the test entries (chosen on the selection tasks)", "1", &v_chosen) ||
        def_var(ncid, "lr_selection_accuracy", NC_DOUBLE, 2, d2,
                "mean selection metric (attribute lr_selection_metric) over the selection entries", "1", &v_selacc) ||
        def_var(ncid, "lr_selection_entries", NC_INT, 2, d2, "selection entries averaged", NULL, &v_seln))
        return -1;
    for (int i = 0; i < 4; i++) {
        char ln[96];
        snprintf(ln, sizeof ln, "optim.%s of the test entries (base times lr_multiplier_chosen)", lrn[i]);
        if (def_var(ncid, lrn[i], NC_DOUBLE, 1, &dm, ln, NULL, &v_lr[i])) return -1;
    }
    for (int i = 0; i < L->nattr; i++)
        NC(nc_put_att_text(ncid, NC_GLOBAL, L->attr_keys[i], strlen(L->attr_vals[i]), L->attr_vals[i]));
    NC(nc_put_att_text(ncid, NC_GLOBAL, "sweep_status", 7, "partial"));
    long long tot = (long long)L->M * L->T * L->K * L->S, zero = 0;
    NC(nc_put_att_longlong(ncid, NC_GLOBAL, "entries_total", NC_INT64, 1, &tot));
    NC(nc_put_att_longlong(ncid, NC_GLOBAL, "entries_done", NC_INT64, 1, &zero));
    NC(nc_enddef(ncid));
    int vars[] = {f->v_status, f->v_test, f->v_bestval, f->v_bestval_step, f->v_test_at_best, f->v_loss,
                  f->v_params, f->v_wall, f->v_rank, f->v_steps_run, f->v_curve_loss, f->v_curve_val, f->v_curve_test,
                  v_grid, v_chosen, v_selacc, v_seln, v_lr[0], v_lr[1], v_lr[2], v_lr[3]};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) NC(tsr_ncpar_var_independent(ncid, vars[i]));
    if (tsr_world.rank == 0) { /* the per-method values are known before any entry runs */
        size_t st[2] = {0, 0}, cm[1] = {(size_t)L->M}, cg[1] = {(size_t)G}, c2[2] = {(size_t)L->M, (size_t)G};
        double one = 1;
        NC(nc_put_vara_double(ncid, v_grid, st, cg, lr->G > 0 ? lr->grid : &one));
        if (lr->chosen) NC(nc_put_vara_double(ncid, v_chosen, st, cm, lr->chosen));
        for (int i = 0; i < 4; i++)
            if (lr->lr[i]) NC(nc_put_vara_double(ncid, v_lr[i], st, cm, lr->lr[i]));
        if (lr->G > 0 && lr->accuracy) NC(nc_put_vara_double(ncid, v_selacc, st, c2, lr->accuracy));
        if (lr->G > 0 && lr->entries) NC(nc_put_vara_int(ncid, v_seln, st, c2, lr->entries));
    }
    if (put_names(ncid, "method", L->M, L->methods) || put_names(ncid, "task", L->T, L->tasks)) return -1;
    const char *cn[3] = {"shots", "seed", "eval_step"};
    const long *cv[3] = {L->shots, L->seeds, L->eval_steps};
    int cl[3] = {L->K, L->S, L->E};
    for (int c = 0; c < 3; c++) {
        NC(nc_inq_varid(ncid, cn[c], &v));
        NC(tsr_ncpar_var_independent(ncid, v));
        if (tsr_world.rank == 0) {
            int *buf = tsr_malloc(sizeof(int) * (size_t)(cl[c] > 0 ? cl[c] : 1));
            for (int i = 0; i < cl[c]; i++) buf[i] = (int)cv[c][i];
            size_t st = 0, ct = (size_t)cl[c];
            int e = nc_put_vara_int(ncid, v, &st, &ct, buf);
            free(buf);
            NC(e);
        }
    }
    return 0;
}

int tsr_results_put(tsr_results_file *f, int m, int t, int k, int s, const tsr_results_entry *e) {
    int ncid = f->ncid;
    size_t st[5] = {(size_t)m, (size_t)t, (size_t)k, (size_t)s, 0}, one[5] = {1, 1, 1, 1, 1};
    signed char done = 1;
    int bvs = (int)e->best_val_step, rk = e->rank, sr = (int)e->steps_run;
    long long tp = (long long)e->trainable;
    NC(nc_put_vara_schar(ncid, f->v_status, st, one, &done));
    NC(nc_put_vara_double(ncid, f->v_test, st, one, &e->test_accuracy));
    NC(nc_put_vara_double(ncid, f->v_bestval, st, one, &e->best_val_accuracy));
    NC(nc_put_vara_int(ncid, f->v_bestval_step, st, one, &bvs));
    NC(nc_put_vara_double(ncid, f->v_test_at_best, st, one, &e->test_at_best_val));
    NC(nc_put_vara_double(ncid, f->v_loss, st, one, &e->final_train_loss));
    NC(nc_put_vara_longlong(ncid, f->v_params, st, one, &tp));
    NC(nc_put_vara_double(ncid, f->v_wall, st, one, &e->wall_time));
    NC(nc_put_vara_int(ncid, f->v_rank, st, one, &rk));
    NC(nc_put_vara_int(ncid, f->v_steps_run, st, one, &sr));
    int n = e->n_eval < f->E ? e->n_eval : f->E;
    if (n > 0) {
        float *buf = tsr_malloc(sizeof(float) * (size_t)n);
        size_t ct[5] = {1, 1, 1, 1, (size_t)n};
        const double *src[3] = {e->curve_loss, e->curve_val, e->curve_test};
        int vv[3] = {f->v_curve_loss, f->v_curve_val, f->v_curve_test}, err = NC_NOERR;
        for (int c = 0; c < 3 && err == NC_NOERR; c++) {
            for (int i = 0; i < n; i++) buf[i] = (float)src[c][i];
            err = nc_put_vara_float(ncid, vv[c], st, ct, buf);
        }
        free(buf);
        NC(err);
    }
    return 0;
}

int tsr_results_close(tsr_results_file *f, long done, long total) {
    if (f->ncid < 0) return 0;
    int ncid = f->ncid;
    f->ncid = -1;
    const char *status = done == total ? "complete" : "partial";
    long long d = done;
    NC(nc_redef(ncid));
    NC(nc_put_att_text(ncid, NC_GLOBAL, "sweep_status", strlen(status), status));
    NC(nc_put_att_longlong(ncid, NC_GLOBAL, "entries_done", NC_INT64, 1, &d));
    NC(nc_enddef(ncid));
    NC(nc_close(ncid));
    (void)total;
    return 0;
}
