/* sweep.c: few-shot sweeps (sweep.h): methods, entry configurations, the journal, the parallel loop. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "build_info.h"
#include "sweep/sweep.h"
#include "train/trainer.h"
#include "core/blas.h"
#include "core/atomic.h"
#include "core/common.h"
#include "core/hash.h"
#include "data/suite.h"
#include "dist/parallel.h"
#include "sweep/results_nc.h"
#include "io/safetensors.h"
#include "io/tsr_config.h"

/* Few-shot methods: the method configuration file (fewshot.method_dir/<file>.yaml) and, for methods
 * that start from multi-task pre-trained adapters, the pre-training run (fewshot.pretrained/<run>) and
 * how its adapters are used (adapter.fewshot). Any other name X is fewshot.method_dir/X.yaml trained
 * from scratch. */
typedef struct {
    const char *name, *file, *pretrained, *mode;
    double cost; /* relative cost of a step, to order the work (costliest first) */
} method_def;

static const method_def known_methods[] = {
    {"lora", "lora", NULL, NULL, 1.0},               /* LoRA from scratch */
    {"shared_lora", "lora", "lora", "finetune", 1.0}, /* one LoRA pre-trained on every task, fine-tuned */
    {"poly", "poly", "poly", "finetune", 1.2},        /* Poly: skills + a fresh routing row, all trained */
    {"mhr", "mhr", "mhr", "finetune", 1.2},           /* MHR: the same with multi-head routing */
    {"mhr_z", "mhr", "mhr", "z", 1.1},                /* MHR-z: only the new task's routing (and head) */
    {"mhr_mu", "mhr", "mhr", "mu", 1.0},              /* MHR-mu: the average of the skills, fine-tuned */
    {"mosa", "mosa", NULL, NULL, 2.5},                /* consistency: three forwards, two backwards */
    {"full", "full", NULL, NULL, 2.0},
    {"probe", "probe", NULL, NULL, 0.4},
};

typedef struct {
    char name[64], file[1100], init[1100], mode[16];
    double cost;
} method_spec;

static int resolve_method(const tsr_config *c, const char *name, method_spec *ms) {
    memset(ms, 0, sizeof *ms);
    snprintf(ms->name, sizeof ms->name, "%s", name);
    const method_def *d = NULL;
    for (size_t i = 0; i < sizeof known_methods / sizeof known_methods[0]; i++)
        if (strcmp(known_methods[i].name, name) == 0) d = &known_methods[i];
    snprintf(ms->file, sizeof ms->file, "%s/%s.yaml", c->fewshot.method_dir, d ? d->file : name);
    ms->cost = d ? d->cost : 1.0;
    if (access(ms->file, R_OK) != 0)
        return tsr_error("fewshot.methods: method '%s' needs %s, which cannot be read (%s); known methods: lora, "
                         "shared_lora, poly, mhr, mhr_z, mhr_mu, mosa, full, probe, or any <name> with "
                         "fewshot.method_dir/<name>.yaml",
                         name, ms->file, strerror(errno));
    if (d && d->pretrained) {
        snprintf(ms->init, sizeof ms->init, "%s/%s/adapters.safetensors", c->fewshot.pretrained, d->pretrained);
        snprintf(ms->mode, sizeof ms->mode, "%s", d->mode);
        if (access(ms->init, R_OK) != 0)
            return tsr_error("fewshot.methods: method '%s' starts from the multi-task pre-trained adapters %s, which "
                             "cannot be read (%s) (HINT: run `tessera pretrain` with configs/methods/%s.yaml and "
                             "run.output_dir %s/%s, or set fewshot.pretrained)",
                             name, ms->init, strerror(errno), d->pretrained, c->fewshot.pretrained, d->pretrained);
    }
    return 0;
}

typedef struct {
    int m, t, k, s;
    long index; /* in the full product, method-major */
} entry_id;

/* The entry's configuration: the sweep file, then the method's file, then the command line's overrides,
 * then fewshot.set lines of this method, then the entry's own keys. */
static char *entry_config(const char *sweep_path, int nset, char **sets, const tsr_config *sw, const method_spec *ms,
                          const char *task, long shots, long seed, tsr_config *out, uint64_t *fingerprint) {
    int cap = nset + sw->fewshot.set.n + 16, n = 0;
    char **all = tsr_calloc((size_t)cap, sizeof(char *));
    char *own[16];
    int nown = 0;
    for (int i = 0; i < nset; i++) all[n++] = sets[i];
    size_t ml = strlen(ms->name);
    for (int i = 0; i < sw->fewshot.set.n; i++) {
        const char *l = sw->fewshot.set.v[i];
        if (strncmp(l, ms->name, ml) == 0 && l[ml] == ':') all[n++] = (char *)l + ml + 1;
    }
#define OWN(...) do { own[nown] = tsr_malloc(1400); snprintf(own[nown], 1400, __VA_ARGS__); all[n++] = own[nown++]; } while (0)
    OWN("data.role=heldout");
    OWN("suite.heldout=[\"%s\"]", task);
    OWN("data.shots=%ld", shots);
    OWN("run.seed=%ld", seed);
    OWN("run.checkpoint_every=0");
    OWN("data.tasks=1");
    if (ms->init[0]) {
        OWN("adapter.init=\"%s\"", ms->init);
        OWN("adapter.fewshot=%s", ms->mode);
    }
#undef OWN
    const char *paths[2] = {sweep_path, ms->file};
    int rc = tsr_config_load_files(out, paths, 2, n, all);
    for (int i = 0; i < nown; i++) free(own[i]);
    free(all);
    if (rc != 0) return NULL;
    /* the fingerprint leaves out what does not change the entry's result: the sweep's lists */
    tsr_config *fp = tsr_malloc(sizeof *fp);
    memcpy(fp, out, sizeof *fp);
    memset(&fp->fewshot, 0, sizeof fp->fewshot);
    memset(&fp->analyze, 0, sizeof fp->analyze);
    memset(fp->run.output_dir, 0, sizeof fp->run.output_dir);
    char *text = tsr_config_dump(fp);
    /* FNV-1a from a start value one digit short of the FNV offset: kept, so that journals written by
     * earlier versions still match */
    uint64_t h = tsr_hash_str_update(1469598103934665603ull, text);
    free(text);
    free(fp);
    *fingerprint = h;
    return tsr_config_dump(out);
}

static void journal_path(char *buf, size_t n, const char *dir, const char *method, const char *task, long shots,
                         long seed) {
    snprintf(buf, n, "%s/%s__%s__k%ld__s%ld.st", dir, method, task, shots, seed);
}

static int journal_write(const char *path, const tsr_train_result *r, uint64_t fp, int rank, const char *cfg_text) {
    tsr_st_writer *w = tsr_st_writer_new();
    int64_t sh[1] = {r->n_eval > 0 ? r->n_eval : 0};
    int64_t *steps = tsr_malloc(sizeof(int64_t) * (size_t)(r->n_eval + 1));
    for (int i = 0; i < r->n_eval; i++) steps[i] = r->eval_step[i];
    tsr_st_writer_add(w, "eval_step", TSR_DT_I64, 1, sh, steps);
    tsr_st_writer_add(w, "train_loss", TSR_DT_F64, 1, sh, r->train_loss);
    tsr_st_writer_add(w, "val_accuracy", TSR_DT_F64, 1, sh, r->val_accuracy);
    tsr_st_writer_add(w, "test_accuracy", TSR_DT_F64, 1, sh, r->test_accuracy);
    char v[12][40];
    snprintf(v[0], 40, "%016llx", (unsigned long long)fp);
    snprintf(v[1], 40, "%.17g", r->test_accuracy_final);
    snprintf(v[2], 40, "%.17g", r->best_val_accuracy);
    snprintf(v[3], 40, "%ld", r->best_val_step);
    snprintf(v[4], 40, "%.17g", r->test_at_best_val);
    snprintf(v[5], 40, "%.17g", r->last_loss);
    snprintf(v[6], 40, "%zu", r->trainable);
    snprintf(v[7], 40, "%.6f", r->wall_time);
    snprintf(v[8], 40, "%d", rank);
    const char *keys[9] = {"fingerprint", "test_accuracy", "best_val_accuracy", "best_val_step", "test_accuracy_at_best_val",
                           "final_train_loss", "trainable_parameters", "wall_time", "rank"};
    for (int i = 0; i < 9; i++) tsr_st_writer_meta(w, keys[i], v[i]);
    tsr_st_writer_meta(w, "config", cfg_text);
    int rc = tsr_st_writer_write(w, path);
    tsr_st_writer_free(w);
    free(steps);
    return rc;
}

/* Read one journal entry; 1 = valid and matching, 0 = absent or stale (another configuration), -1 = damaged. */
static int journal_read(const char *path, uint64_t fp, tsr_train_result *r, int *rank, int E) {
    if (access(path, F_OK) != 0) return 0;
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) return -1;
    int rc = -1;
    const char *keys[9] = {"fingerprint", "test_accuracy", "best_val_accuracy", "best_val_step", "test_accuracy_at_best_val",
                           "final_train_loss", "trainable_parameters", "wall_time", "rank"};
    const char *v[9];
    for (int i = 0; i < 9; i++)
        if (!(v[i] = tsr_st_meta(&f, keys[i]))) goto out;
    char want[40];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)fp);
    if (strcmp(v[0], want) != 0) {
        rc = 0;
        goto out;
    }
    const tsr_st_tensor *ts = tsr_st_find(&f, "eval_step");
    if (!ts || ts->numel > E) goto out;
    int n = (int)ts->numel;
    memset(r, 0, sizeof *r);
    r->n_eval = n;
    r->eval_step = tsr_calloc((size_t)n + 1, sizeof(long));
    r->train_loss = tsr_calloc((size_t)n + 1, sizeof(double));
    r->val_accuracy = tsr_calloc((size_t)n + 1, sizeof(double));
    r->test_accuracy = tsr_calloc((size_t)n + 1, sizeof(double));
    const char *cn[3] = {"train_loss", "val_accuracy", "test_accuracy"};
    double *cd[3] = {r->train_loss, r->val_accuracy, r->test_accuracy};
    for (int c = 0; c < 3; c++) {
        const tsr_st_tensor *t = tsr_st_find(&f, cn[c]);
        if (!t || t->numel != n || tsr_st_read_f64(&f, t, cd[c], n) != 0) goto out;
    }
    r->test_accuracy_final = atof(v[1]);
    r->best_val_accuracy = atof(v[2]);
    r->best_val_step = atol(v[3]);
    r->test_at_best_val = atof(v[4]);
    r->last_loss = atof(v[5]);
    r->trainable = (size_t)atoll(v[6]);
    r->wall_time = atof(v[7]);
    *rank = atoi(v[8]);
    rc = 1;
out:
    if (rc < 0) tsr_train_result_free(r);
    tsr_st_close(&f);
    return rc;
}

static void to_entry(const tsr_train_result *r, int rank, tsr_results_entry *e) {
    e->test_accuracy = r->test_accuracy_final;
    e->best_val_accuracy = r->best_val_accuracy;
    e->best_val_step = r->best_val_step;
    e->test_at_best_val = r->test_at_best_val;
    e->final_train_loss = r->last_loss;
    e->trainable = (int64_t)r->trainable;
    e->wall_time = r->wall_time;
    e->rank = rank;
    e->n_eval = r->n_eval;
    e->curve_loss = r->train_loss;
    e->curve_val = r->val_accuracy;
    e->curve_test = r->test_accuracy;
}

static int dup_check(const char *key, int n, const char *const *names) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(names[i], names[j]) == 0) return tsr_error("%s: '%s' appears twice", key, names[i]);
    return 0;
}

typedef struct {
    const tsr_ctx *ctx;
    const tsr_comm *comm;
    const tsr_config *cfg;
    const char *cfg_text;
    const tsr_sweep_opts *o;
    int me, R, M, T, K, S, write_file;
    long E, total, np;
    method_spec *ms;
    char **tasks, *methods_names[CFG_LIST_MAX];
    tsr_config *ec;          /* an entry's configuration (scratch) */
    long *eval_steps;
    unsigned char *done;     /* (total) finished entries of the journal */
    tsr_train_result *jres;  /* rank 0: the journal's entries */
    int *jrank;
    entry_id *pending;       /* (np) entries to run, costliest method first */
    tsr_results_file rf;
    char results[1100], tmp[1120], jdir[1120];
} sweep;

#define ERR(...) tsr_logf(&W->ctx->log, TSR_LOG_ERROR, __VA_ARGS__)
#define INFO(...) tsr_logf(&W->ctx->log, TSR_LOG_INFO, __VA_ARGS__)

static char *entry_text(sweep *W, int m, int t, int k, int s, uint64_t *fp) {
    const tsr_sweep_opts *o = W->o;
    return entry_config(o->cfg_path, o->nset, o->sets, W->cfg, &W->ms[m], W->tasks[t], W->cfg->fewshot.shots.v[k],
                        W->cfg->fewshot.seeds.v[s], W->ec, fp);
}

/* The sweep's lists, methods and tasks exist, every method's entry configuration loads. 0 / -1. */
static int validate(sweep *W) {
    const tsr_config *cfg = W->cfg;
    const char *path = W->o->cfg_path;
    if (strcmp(cfg->data.dataset, "suite") != 0)
        return tsr_error("%s: tessera fewshot needs data.dataset: suite (got %s)", path, cfg->data.dataset);
    const cfg_string_list *tl = cfg->fewshot.tasks.n > 0 ? &cfg->fewshot.tasks : &cfg->suite.heldout;
    const char *tkey = cfg->fewshot.tasks.n ? "fewshot.tasks" : "suite.heldout";
    int M = W->M = cfg->fewshot.methods.n, T = W->T = tl->n, K = W->K = cfg->fewshot.shots.n, S = W->S = cfg->fewshot.seeds.n;
    W->ms = tsr_calloc((size_t)(M > 0 ? M : 1), sizeof *W->ms);
    W->tasks = tsr_calloc((size_t)(T > 0 ? T : 1), sizeof(char *));
    for (int t = 0; t < T; t++) W->tasks[t] = (char *)tl->v[t];
    for (int m = 0; m < M; m++) W->methods_names[m] = (char *)cfg->fewshot.methods.v[m];
    if (M == 0 || T == 0 || K == 0 || S == 0)
        return tsr_error("%s: the sweep is empty: fewshot.methods (%d), tasks (fewshot.tasks or suite.heldout: %d), "
                         "fewshot.shots (%d) and fewshot.seeds (%d) all need entries", path, M, T, K, S);
    if (dup_check("fewshot.methods", M, (const char *const *)W->methods_names) ||
        dup_check(tkey, T, (const char *const *)W->tasks))
        return -1;
    for (int i = 0; i < K; i++)
        for (int j = 0; j < i; j++)
            if (cfg->fewshot.shots.v[i] == cfg->fewshot.shots.v[j]) return tsr_error("fewshot.shots: %ld appears twice", cfg->fewshot.shots.v[i]);
    for (int i = 0; i < S; i++)
        for (int j = 0; j < i; j++)
            if (cfg->fewshot.seeds.v[i] == cfg->fewshot.seeds.v[j]) return tsr_error("fewshot.seeds: %ld appears twice", cfg->fewshot.seeds.v[i]);
    for (int m = 0; m < M; m++)
        if (resolve_method(cfg, cfg->fewshot.methods.v[m], &W->ms[m]) != 0) return -1;
    tsr_suite su; /* the tasks exist in the suite */
    if (tsr_suite_open(&su, cfg->data.path) != 0) return -1;
    int fail = 0;
    for (int t = 0; !fail && t < T; t++)
        if (tsr_suite_find_task(&su, W->tasks[t]) < 0)
            fail = tsr_error("%s: task '%s' is not in %s", tkey, W->tasks[t], cfg->data.path);
    tsr_suite_close(&su);
    /* every method's entry configuration loads (the first task, shot count and seed stand for all) */
    for (int m = 0; !fail && m < M; m++) {
        uint64_t fp;
        char *t = entry_text(W, m, 0, 0, 0, &fp);
        if (!t) return tsr_error("fewshot: method '%s' (%s): %s", W->ms[m].name, W->ms[m].file, tsr_last_error());
        free(t);
        if (W->ec->train.steps != cfg->train.steps || W->ec->train.eval_every != cfg->train.eval_every)
            return tsr_error("fewshot: method '%s' changes train.steps or train.eval_every; every method of a sweep "
                             "must evaluate at the same steps (one eval_step axis)", W->ms[m].name);
    }
    return fail ? -1 : 0;
}

/* Rank 0 reads the journal: which entries are finished (their results stay with rank 0, which copies
 * them into the file); every rank learns the mask. */
static void scan_journal(sweep *W) {
    long total = W->total = (long)W->M * W->T * W->K * W->S, stale = 0, damaged = 0, nd = 0;
    W->done = tsr_calloc((size_t)total, 1);
    if (W->me == 0) {
        W->jres = tsr_calloc((size_t)total, sizeof *W->jres);
        W->jrank = tsr_calloc((size_t)total, sizeof *W->jrank);
        for (long i = 0; i < total; i++) {
            int m = (int)(i / ((long)W->T * W->K * W->S)), t = (int)(i / ((long)W->K * W->S) % W->T);
            int k = (int)(i / W->S % W->K), s = (int)(i % W->S);
            char jp[1600];
            journal_path(jp, sizeof jp, W->jdir, W->ms[m].name, W->tasks[t], W->cfg->fewshot.shots.v[k],
                         W->cfg->fewshot.seeds.v[s]);
            if (access(jp, F_OK) != 0) continue;
            uint64_t fp;
            free(entry_text(W, m, t, k, s, &fp));
            int got = journal_read(jp, fp, &W->jres[i], &W->jrank[i], (int)W->E);
            if (got == 1) W->done[i] = 1, nd++;
            else if (got == 0) stale++;
            else {
                damaged++;
                tsr_logf(&W->ctx->log, TSR_LOG_WARN, "fewshot: %s is damaged (%s): the entry runs again", jp, tsr_last_error());
            }
        }
        INFO("fewshot: %d methods x %d tasks x %d shot counts x %d seeds = %ld entries; %ld finished in %s%s%ld "
             "to run on %d ranks", W->M, W->T, W->K, W->S, total, nd, W->jdir, stale ? " (stale entries of another "
             "configuration run again), " : ", ", total - nd, W->R);
        if (stale) tsr_logf(&W->ctx->log, TSR_LOG_WARN, "fewshot: %ld journal entries were made with another configuration: they run again", stale);
    }
    tsr_dist_bcast(W->comm, W->done, (size_t)total, 0);
}

/* The pending entries of this shard, costliest method first (the same list on every rank). */
static void pending_list(sweep *W) {
    int M = W->M, *order = tsr_malloc(sizeof(int) * (size_t)M);
    W->pending = tsr_malloc(sizeof(entry_id) * (size_t)W->total);
    W->np = 0;
    for (int m = 0; m < M; m++) order[m] = m;
    for (int i = 1; i < M; i++)
        for (int j = i; j > 0 && W->ms[order[j]].cost > W->ms[order[j - 1]].cost; j--) {
            int x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    for (int oi = 0; oi < M; oi++)
        for (int t = 0, m = order[oi]; t < W->T; t++)
            for (int k = 0; k < W->K; k++)
                for (int s = 0; s < W->S; s++) {
                    long idx = (((long)m * W->T + t) * W->K + k) * W->S + s;
                    if (W->done[idx] || W->o->collect) continue;
                    if (W->o->shard_n > 0 && idx % W->o->shard_n != W->o->shard_i) continue;
                    W->pending[W->np++] = (entry_id){m, t, k, s, idx};
                }
    free(order);
}

/* Collective: RESULTS.tmp with its provenance; rank 0 copies the journal's entries in. 0 / -1. */
static int results_open(sweep *W) {
    const tsr_config *cfg = W->cfg;
    char blas[256], mpilib[256], date[64], wsz[16], thr[16], hist[2048];
    tsr_blas_describe(blas, sizeof blas);
    tsr_dist_library(mpilib, sizeof mpilib);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    snprintf(wsz, sizeof wsz, "%d", W->R);
    snprintf(thr, sizeof thr, "%d", W->ctx->threads);
    snprintf(hist, sizeof hist, "%s: tessera fewshot %s (%d ranks)", date, W->o->cfg_path, W->R);
    const char *ak[] = {"Conventions", "title", "source", "git_commit", "history", "date_created", "config",
                        "world_size", "threads_per_rank", "blas", "mpi_library", "backbone", "pretrained", "suite"};
    const char *av[] = {"CF-1.8", "tessera few-shot adaptation sweep", "tessera " TSR_VERSION, TSR_GIT_COMMIT, hist,
                        date, W->cfg_text, wsz, thr, blas, mpilib, cfg->run.init, cfg->fewshot.pretrained, cfg->data.path};
    tsr_results_layout L = {W->M, W->T, W->K, W->S, (int)W->E, (const char *const *)W->methods_names,
                            (const char *const *)W->tasks, cfg->fewshot.shots.v, cfg->fewshot.seeds.v, W->eval_steps, 14,
                            ak, av};
    int fail = tsr_results_create(&W->rf, W->tmp, &L) != 0;
    if (tsr_dist_fail_together(W->comm, fail, &W->ctx->log)) return -1;
    for (long i = 0; W->me == 0 && !fail && i < W->total; i++) {
        if (!W->done[i]) continue;
        int m = (int)(i / ((long)W->T * W->K * W->S)), t = (int)(i / ((long)W->K * W->S) % W->T);
        int k = (int)(i / W->S % W->K), s = (int)(i % W->S);
        tsr_results_entry e;
        to_entry(&W->jres[i], W->jrank[i], &e);
        fail = tsr_results_put(&W->rf, m, t, k, s, &e) != 0;
    }
    return tsr_dist_fail_together(W->comm, fail, &W->ctx->log) ? -1 : 0;
}

/* One entry on this rank alone: its configuration, the trainer, the journal and the file. Returns 0,
 * 1 (failed, reported) or TSR_EXIT_REQUEUE. A failing journal or file write is fatal for the job (every
 * rank is stopped by tsr_fatal's abort hook) since ranks are not at a common point here. */
static int run_entry(sweep *W, long i) {
    entry_id id = W->pending[i];
    const method_spec *mm = &W->ms[id.m];
    long shots = W->cfg->fewshot.shots.v[id.k], seed = W->cfg->fewshot.seeds.v[id.s];
    uint64_t fp;
    char *etext = entry_text(W, id.m, id.t, id.k, id.s, &fp);
    tsr_train_result r;
    memset(&r, 0, sizeof r);
    int erc = 1;
    if (etext) {
        tsr_train_opts o = {.quiet = 1, .want_val = 1, .fault_nan_step = -1};
        tsr_ctx ectx = tsr_ctx_self(TSR_LOG_WARN); /* an entry's own progress lines would drown the sweep's */
        erc = tsr_train_run(&ectx, W->ec, etext, &o, &r);
    }
    if (erc == 0) {
        char jp[1600];
        journal_path(jp, sizeof jp, W->jdir, mm->name, W->tasks[id.t], shots, seed);
        if (journal_write(jp, &r, fp, W->me, etext) != 0) tsr_fatal("fewshot: %s", tsr_last_error());
        if (W->write_file) {
            tsr_results_entry e;
            to_entry(&r, W->me, &e);
            if (tsr_results_put(&W->rf, id.m, id.t, id.k, id.s, &e) != 0) tsr_fatal("fewshot: %s", tsr_last_error());
        }
        fprintf(stderr, "tessera: fewshot [rank %d] %ld/%ld %-12s %-16s %3ld shots seed %ld: test %.4f, best val %.4f "
                "(step %ld), %zu parameters, %.1f s\n", W->me, i + 1, W->np, mm->name, W->tasks[id.t], shots, seed,
                r.test_accuracy_final, r.best_val_accuracy, r.best_val_step, r.trainable, r.wall_time);
    } else if (erc != TSR_EXIT_REQUEUE) {
        fprintf(stderr, "tessera: fewshot [rank %d] entry %s / %s / %ld shots / seed %ld FAILED: %s\n", W->me, mm->name,
                W->tasks[id.t], shots, seed, tsr_last_error());
    }
    tsr_train_result_free(&r);
    free(etext);
    return erc == 0 ? 0 : erc == TSR_EXIT_REQUEUE ? TSR_EXIT_REQUEUE : 1;
}

/* The dynamic loop: entries drawn from the shared counter until none is left or a stop signal came.
 * cnt: entries run, failed, ranks stopped. */
static void run_entries(sweep *W, int64_t cnt[3]) {
    tsr_dist_install_stop_signals();
    tsr_dist_counter *counter = tsr_dist_counter_create(0);
    for (;;) {
        if (tsr_dist_stop_flag_local()) {
            cnt[2] = 1;
            break;
        }
        long i = tsr_dist_counter_next(counter);
        if (i >= W->np) break;
        int erc = run_entry(W, i);
        if (erc == TSR_EXIT_REQUEUE) {
            cnt[2] = 1;
            break;
        }
        cnt[erc == 0 ? 0 : 1]++;
    }
    tsr_dist_counter_free(counter);
}

static void sweep_free(sweep *W) {
    if (W->rf.ncid >= 0) tsr_results_close(&W->rf, 0, 1);
    free(W->pending);
    free(W->eval_steps);
    for (long i = 0; W->jres && i < W->total; i++) tsr_train_result_free(&W->jres[i]);
    free(W->jres);
    free(W->jrank);
    free(W->done);
    free(W->ms);
    free(W->tasks);
    free(W->ec);
}

int tsr_sweep_run(const tsr_ctx *ctx, const tsr_config *cfg, const char *cfg_text, const tsr_sweep_opts *o) {
    sweep sw, *W = &sw;
    memset(W, 0, sizeof *W);
    W->ctx = ctx;
    W->comm = ctx->comm;
    W->cfg = cfg;
    W->cfg_text = cfg_text;
    W->o = o;
    W->me = ctx->comm->rank;
    W->R = ctx->comm->size;
    W->rf.ncid = -1;
    W->ec = tsr_malloc(sizeof *W->ec);
    int rc = 1, fail = validate(W) != 0;
    if (tsr_dist_fail_together(W->comm, fail, &ctx->log)) goto out;
    long E = W->E = (cfg->train.steps + cfg->train.eval_every - 1) / cfg->train.eval_every;
    W->eval_steps = tsr_calloc((size_t)E + 1, sizeof(long));
    for (long i = 0; i < E; i++)
        W->eval_steps[i] = (i + 1) * cfg->train.eval_every < cfg->train.steps ? (i + 1) * cfg->train.eval_every : cfg->train.steps;
    if (cfg->fewshot.results[0]) snprintf(W->results, sizeof W->results, "%.1000s", cfg->fewshot.results);
    else snprintf(W->results, sizeof W->results, "%.1000s/results.nc", cfg->run.output_dir);
    snprintf(W->tmp, sizeof W->tmp, "%.1100s.tmp", W->results);
    snprintf(W->jdir, sizeof W->jdir, "%.1100s.entries", W->results);
    fail = W->me == 0 && (tsr_mkdirs_for(W->results) != 0 || tsr_mkdirs(W->jdir) != 0);
    if (tsr_dist_fail_together(W->comm, fail, &ctx->log)) goto out;
    scan_journal(W);
    pending_list(W);
    W->write_file = o->shard_n == 0;
    if (W->write_file && results_open(W) != 0) goto out;
    int64_t cnt[3] = {0, 0, 0};
    double t0 = tsr_time();
    run_entries(W, cnt);
    /* every rank is past the loop: count what is finished, close the file, rename it */
    tsr_dist_allreduce_sum_i64(W->comm, cnt, 3);
    long ndone = 0;
    for (long i = 0; i < W->total; i++) ndone += W->done[i];
    if (!o->collect) ndone += cnt[0]; /* the journal is the truth: entries of this run are in it now */
    if (W->write_file) {
        fail = tsr_results_close(&W->rf, ndone, W->total) != 0;
        W->rf.ncid = -1;
        if (!fail && W->me == 0 && tsr_atomic_rename(W->tmp, W->results) != 0) fail = tsr_error_context("fewshot");
        if (tsr_dist_fail_together(W->comm, fail, &ctx->log)) goto out;
    }
    INFO("fewshot: %lld entries run in %.1f s (%lld failed)%s; %ld of %ld entries finished; %s%s", (long long)cnt[0],
         tsr_time() - t0, (long long)cnt[1], cnt[2] ? ", stopped by a signal" : "", ndone, W->total,
         W->write_file ? "results: " : "journal: ", W->write_file ? W->results : W->jdir);
    rc = cnt[2] ? TSR_EXIT_REQUEUE : cnt[1] ? 1 : 0;
out:
    sweep_free(W);
    return rc;
}
