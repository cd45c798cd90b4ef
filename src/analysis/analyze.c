/* analyze.c: task gradient alignment (`tessera analyze`, analyze.h) of multi-task pre-trained adapters.
 *
 * For every method of analyze.methods (a `tessera pretrain` run in fewshot.pretrained/<method>: its
 * model.safetensors with the trained head, its adapters.safetensors): the mean loss gradient g_t of the
 * adapter (skill) parameters over the first analyze.examples training examples of each task t of the run
 * (tasks dealt to ranks t % ranks), then the task x task cosine matrix with PBLAS on a 2-D block-cyclic
 * process grid (analyze.grid, analyze.block), its eigen-decomposition (ScaLAPACK pdsyevd), the mean
 * off-diagonal alignment, and the effective rank of the learned routing matrices. Written by rank 0 to
 * analyze.results (docs/RESULTS_SCHEMA.md, alignment.nc), under a temporary name, then renamed.
 * The MHR paper's explanation of routing: it helps multi-task optimisation by making task gradients of the
 * shared parameters more aligned; this command measures exactly that. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <netcdf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "analysis/align.h"
#include "build_info.h"
#include "analysis/analyze.h"
#include "train/trainer.h"
#include "core/atomic.h"
#include "core/common.h"
#include "dist/parallel.h"
#include "io/tsr_config.h"

#define NCK(call)                                                                         \
    do {                                                                                  \
        int e_ = (call);                                                                  \
        if (e_ != NC_NOERR) {                                                             \
            tsr_error("%s: %s (%s:%d)", tmp, nc_strerror(e_), __FILE__, __LINE__);      \
            goto fail;                                                                    \
        }                                                                                 \
    } while (0)

typedef struct {
    char name[64];
    tsr_align_result a;
    double routing_eff_rank;
    size_t P;
} method_out;

/* Effective rank of the routing: for each routed module the (T, h*S) matrix of routing probabilities
 * (sigmoid of the logits), its effective rank (tsr_effective_rank); the mean over modules. */
static double routing_rank(const tsr_train_result *r) {
    if (!r->routing || r->routing_modules < 1) return NAN;
    int T = r->grad_ntasks, C = r->routing_cols;
    double *A = tsr_malloc(sizeof(double) * (size_t)T * C), sum = 0;
    for (int mod = 0; mod < r->routing_modules; mod++) {
        const float *z = r->routing + (size_t)mod * T * C;
        for (size_t i = 0; i < (size_t)T * C; i++) A[i] = 1.0 / (1.0 + exp(-(double)z[i]));
        sum += tsr_effective_rank(A, T, C);
    }
    free(A);
    return sum / r->routing_modules;
}

static int write_alignment(const char *path, const method_out *mo, int M, char **tasks, int T, const char *cfg_text,
                           int nprow, int npcol, int nb, const char *pre, int ranks) {
    char tmp[1200];
    if (tsr_atomic_tmp_path(path, tmp, sizeof tmp) != 0) return -1;
    int ncid = -1, dm, dt, dtb, dc, dms, dts, v;
    NCK(nc_create(tmp, NC_NETCDF4 | NC_CLOBBER, &ncid));
    size_t wm = 1, wt = 1;
    for (int i = 0; i < M; i++) wm = strlen(mo[i].name) > wm ? strlen(mo[i].name) : wm;
    for (int i = 0; i < T; i++) wt = strlen(tasks[i]) > wt ? strlen(tasks[i]) : wt;
    NCK(nc_def_dim(ncid, "method", (size_t)M, &dm));
    NCK(nc_def_dim(ncid, "method_strlen", wm, &dms));
    NCK(nc_def_dim(ncid, "task", (size_t)T, &dt));
    NCK(nc_def_dim(ncid, "task_strlen", wt, &dts));
    NCK(nc_def_dim(ncid, "task_b", (size_t)T, &dtb));
    NCK(nc_def_dim(ncid, "component", (size_t)T, &dc));
    int d2[2] = {dm, dms}, d3[2] = {dt, dts}, d4[2] = {dtb, dts};
    NCK(nc_def_var(ncid, "method", NC_CHAR, 2, d2, &v));
    NCK(nc_put_att_text(ncid, v, "_Encoding", 5, "utf-8"));
    NCK(nc_def_var(ncid, "task", NC_CHAR, 2, d3, &v));
    NCK(nc_put_att_text(ncid, v, "_Encoding", 5, "utf-8"));
    NCK(nc_def_var(ncid, "task_b", NC_CHAR, 2, d4, &v));
    NCK(nc_put_att_text(ncid, v, "_Encoding", 5, "utf-8"));
    struct { const char *name; int nd; int dims[3]; const char *ln; } vars[] = {
        {"cosine", 3, {dm, dt, dtb}, "cosine similarity of the tasks' mean adapter gradients"},
        {"eigenvalues", 2, {dm, dc}, "eigenvalues of the cosine matrix, descending"},
        {"eigenvectors", 3, {dm, dt, dc}, "unit eigenvectors of the cosine matrix (columns)"},
        {"gradient_norm", 2, {dm, dt}, "norm of the task's mean adapter gradient"},
        {"mean_alignment", 1, {dm}, "mean off-diagonal cosine similarity"},
        {"alignment_effective_rank", 1, {dm}, "exp(entropy) of the normalised eigenvalues"},
        {"routing_effective_rank", 1, {dm}, "mean over routed modules of the effective rank of the (task, head x skill) routing probabilities (NaN: no routing)"},
        {"parameters", 1, {dm}, "length of each gradient vector (adapter parameters, routing excluded)"},
    };
    int vid[8];
    for (int i = 0; i < 8; i++) {
        NCK(nc_def_var(ncid, vars[i].name, NC_DOUBLE, vars[i].nd, vars[i].dims, &vid[i]));
        double fv = NAN;
        NCK(nc_def_var_fill(ncid, vid[i], 0, &fv));
        NCK(nc_put_att_text(ncid, vid[i], "long_name", strlen(vars[i].ln), vars[i].ln));
    }
    char date[64], grid[32], blk[16], hist[512];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    snprintf(grid, sizeof grid, "%dx%d", nprow, npcol);
    snprintf(blk, sizeof blk, "%d", nb);
    snprintf(hist, sizeof hist, "%s: tessera analyze (%d ranks)", date, ranks);
    const char *ak[] = {"Conventions", "title", "source", "git_commit", "history", "date_created", "config",
                        "process_grid", "block_size", "pretrained"};
    const char *av[] = {"CF-1.8", "tessera task gradient alignment", "tessera " TSR_VERSION, TSR_GIT_COMMIT, hist,
                        date, cfg_text, grid, blk, pre};
    for (int i = 0; i < 10; i++) NCK(nc_put_att_text(ncid, NC_GLOBAL, ak[i], strlen(av[i]), av[i]));
    char wsz[16];
    snprintf(wsz, sizeof wsz, "%d", ranks);
    NCK(nc_put_att_text(ncid, NC_GLOBAL, "world_size", strlen(wsz), wsz));
    for (int i = 0; i < M; i++) {
        char k[128], p[1200];
        snprintf(k, sizeof k, "checkpoint_%s", mo[i].name);
        snprintf(p, sizeof p, "%s/%s/adapters.safetensors", pre, mo[i].name);
        NCK(nc_put_att_text(ncid, NC_GLOBAL, k, strlen(p), p));
    }
    NCK(nc_enddef(ncid));
    char *buf = tsr_calloc((size_t)(M > T ? M : T) * (wm > wt ? wm : wt) + 1, 1);
    for (int i = 0; i < M; i++) memcpy(buf + (size_t)i * wm, mo[i].name, strlen(mo[i].name));
    int e = nc_put_var_text(ncid, 0, buf);
    if (e == NC_NOERR) {
        memset(buf, 0, (size_t)(M > T ? M : T) * (wm > wt ? wm : wt) + 1);
        for (int i = 0; i < T; i++) memcpy(buf + (size_t)i * wt, tasks[i], strlen(tasks[i]));
        e = nc_put_var_text(ncid, 1, buf);
        if (e == NC_NOERR) e = nc_put_var_text(ncid, 2, buf);
    }
    free(buf);
    NCK(e);
    for (int i = 0; i < M; i++) {
        size_t st3[3] = {(size_t)i, 0, 0}, ct3[3] = {1, (size_t)T, (size_t)T}, st2[2] = {(size_t)i, 0},
               ct2[2] = {1, (size_t)T}, s1 = (size_t)i;
        const tsr_align_result *a = &mo[i].a;
        double prm = (double)mo[i].P;
        NCK(nc_put_vara_double(ncid, vid[0], st3, ct3, a->cosine));
        NCK(nc_put_vara_double(ncid, vid[1], st2, ct2, a->eigenvalues));
        NCK(nc_put_vara_double(ncid, vid[2], st3, ct3, a->eigenvectors));
        NCK(nc_put_vara_double(ncid, vid[3], st2, ct2, a->norms));
        NCK(nc_put_var1_double(ncid, vid[4], &s1, &a->mean_offdiag));
        NCK(nc_put_var1_double(ncid, vid[5], &s1, &a->eff_rank));
        NCK(nc_put_var1_double(ncid, vid[6], &s1, &mo[i].routing_eff_rank));
        NCK(nc_put_var1_double(ncid, vid[7], &s1, &prm));
    }
    NCK(nc_close(ncid));
    ncid = -1;
    if (tsr_atomic_rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
fail:
    if (ncid >= 0) nc_close(ncid);
    unlink(tmp);
    return -1;
}

int tsr_analyze_run(const tsr_ctx *ctx, const tsr_config *cfg, const char *cfg_text, const char *cfg_path, int nset,
                    char **sets) {
    int rc = 1, M = 0, T = 0;
    const tsr_comm *comm = ctx->comm;
    tsr_config *mc = tsr_malloc(sizeof *mc);
    char **tasks = NULL;
    method_out *mo = NULL;
    char **all = tsr_calloc((size_t)nset + 8, sizeof(char *));
    char own[4][1400];
    M = cfg->analyze.methods.n;
    if (M < 1) {
        tsr_logf(&ctx->log, TSR_LOG_ERROR, "%s: analyze.methods is empty", cfg_path);
        goto out;
    }
    int nprow = (int)(cfg->analyze.grid.n > 0 ? cfg->analyze.grid.v[0] : 0);
    int npcol = (int)(cfg->analyze.grid.n > 1 ? cfg->analyze.grid.v[1] : 0);
    if (cfg->analyze.grid.n != 2) {
        tsr_logf(&ctx->log, TSR_LOG_ERROR, "%s: analyze.grid must be [rows, cols] (got %d values)", cfg_path, cfg->analyze.grid.n);
        goto out;
    }
    int nb = (int)cfg->analyze.block;
    mo = tsr_calloc((size_t)M, sizeof *mo);
    const cfg_string_list *role = strcmp(cfg->data.role, "source") == 0    ? &cfg->suite.source
                                  : strcmp(cfg->data.role, "train") == 0   ? &cfg->suite.train
                                  : strcmp(cfg->data.role, "val") == 0     ? &cfg->suite.val
                                  : strcmp(cfg->data.role, "heldout") == 0 ? &cfg->suite.heldout
                                                                           : NULL;
    if (!role || role->n < 1) {
        tsr_logf(&ctx->log, TSR_LOG_ERROR, "%s: analyze needs data.role source, train, val or heldout with its suite list (the tasks "
                "the adapters were pre-trained on)", cfg_path);
        goto out;
    }
    T = role->n;
    tasks = tsr_calloc((size_t)T, sizeof(char *));
    for (int t = 0; t < T; t++) tasks[t] = (char *)role->v[t];
    for (int i = 0; i < M; i++) {
        const char *name = cfg->analyze.methods.v[i];
        snprintf(mo[i].name, sizeof mo[i].name, "%s", name);
        char ap[1200], mp[1200];
        snprintf(ap, sizeof ap, "%s/%s/adapters.safetensors", cfg->fewshot.pretrained, name);
        snprintf(mp, sizeof mp, "%s/%s/model.safetensors", cfg->fewshot.pretrained, name);
        int fail = access(ap, R_OK) != 0 || access(mp, R_OK) != 0;
        if (fail)
            tsr_error("analyze.methods: '%s' needs the pre-training run %s/%s (adapters.safetensors and "
                      "model.safetensors; HINT: tessera pretrain configs/methods/%s.yaml with that run.output_dir)",
                      name, cfg->fewshot.pretrained, name, name);
        if (tsr_dist_fail_together(comm, fail, &ctx->log)) goto out;
        int n = 0;
        for (int j = 0; j < nset; j++) all[n++] = sets[j];
        snprintf(own[0], sizeof own[0], "adapter.init=\"%s\"", ap);
        snprintf(own[1], sizeof own[1], "run.init=\"%s\"", mp);
        snprintf(own[2], sizeof own[2], "adapter.fewshot=none");
        snprintf(own[3], sizeof own[3], "run.reset_head=false");
        for (int j = 0; j < 4; j++) all[n++] = own[j];
        /* the method's own configuration (fewshot.method_dir/<name>.yaml) describes the adapter that
         * adapter.init holds; the analysis configuration, read after it, sets data, model and run */
        char mf[1200];
        snprintf(mf, sizeof mf, "%s/%s.yaml", cfg->fewshot.method_dir, name);
        const char *paths[2] = {mf, cfg_path};
        int own_file = access(mf, R_OK) == 0;
        if (!own_file)
            tsr_logf(&ctx->log, TSR_LOG_WARN, "analyze: no %s; method '%s' runs with the adapter keys of %s", mf, name,
                     cfg_path);
        int lc = own_file ? tsr_config_load_files(mc, paths, 2, n, all) : tsr_config_load(mc, cfg_path, n, all);
        if (tsr_dist_fail_together(comm, lc != 0, &ctx->log)) goto out;
        double t0 = tsr_time();
        tsr_train_opts o = {.quiet = 1, .grad_examples = cfg->analyze.examples, .fault_nan_step = -1};
        tsr_train_result r;
        memset(&r, 0, sizeof r);
        tsr_ctx quiet = *ctx; /* the trainer's progress lines would drown the analysis's */
        if (quiet.log.level > TSR_LOG_WARN) quiet.log.level = TSR_LOG_WARN;
        if (tsr_train_run(&quiet, mc, cfg_text, &o, &r) != 0) { /* failed on every rank, reported */
            tsr_logf(&ctx->log, TSR_LOG_ERROR, "analyze: method '%s' failed", name);
            tsr_train_result_free(&r);
            goto out;
        }
        if (r.grad_ntasks != T) {
            tsr_logf(&ctx->log, TSR_LOG_ERROR, "analyze: method '%s' ran %d tasks, expected %d", name, r.grad_ntasks, T);
            tsr_train_result_free(&r);
            goto out;
        }
        double tg = tsr_time() - t0;
        mo[i].P = r.grad_P;
        int ea = tsr_align_scalapack(T, r.grad_P, r.grad_rows, nprow, npcol, nb, &mo[i].a);
        mo[i].routing_eff_rank = routing_rank(&r);
        tsr_train_result_free(&r);
        if (ea != 0) {
            tsr_logf(&ctx->log, TSR_LOG_ERROR, "analyze: method '%s': %s", name, tsr_last_error());
            goto out;
        }
        tsr_logf(&ctx->log, TSR_LOG_INFO, "analyze: %-12s %d tasks x %zu parameters: mean alignment %.4f, spectrum effective rank %.2f, "
                 "routing effective rank %.2f (gradients %.1f s, ScaLAPACK %.2f s)", name, T, mo[i].P,
                 mo[i].a.mean_offdiag, mo[i].a.eff_rank, mo[i].routing_eff_rank, tg, tsr_time() - t0 - tg);
    }
    char path[1100];
    if (cfg->analyze.results[0]) snprintf(path, sizeof path, "%s", cfg->analyze.results);
    else snprintf(path, sizeof path, "%s/alignment.nc", cfg->run.output_dir);
    int we = 0;
    if (comm->rank == 0) {
        int gr = nprow, gc = npcol;
        if (gr == 0 && gc == 0) { /* the near-square grid tsr_align_scalapack picks */
            gr = 1;
            while ((gr + 1) * (gr + 1) <= comm->size) gr++;
            gc = comm->size / gr;
        }
        we = tsr_mkdirs_for(path) != 0 ||
             write_alignment(path, mo, M, tasks, T, cfg_text, gr, gc, nb, cfg->fewshot.pretrained, comm->size) != 0;
        if (we) tsr_error_context("analyze");
    }
    if (tsr_dist_fail_together(comm, we, &ctx->log)) goto out;
    tsr_logf(&ctx->log, TSR_LOG_INFO, "analyze: wrote %s", path);
    rc = 0;
out:
    for (int i = 0; mo && i < M; i++) tsr_align_free(&mo[i].a);
    free(mo);
    free(tasks);
    free(all);
    free(mc);
    return rc;
}
