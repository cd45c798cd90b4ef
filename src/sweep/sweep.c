/* sweep.c: few-shot sweeps (sweep.h): methods, entry configurations, the journal, the learning-rate
 * selection, the parallel loop. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adapters/peft_io.h"
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
    {"lora", "lora", NULL, NULL, 1.0},               /* LoRA from scratch (the routed module with S = 1) */
    {"shared_lora", "lora", "lora", "finetune", 1.0}, /* one LoRA pre-trained on every task, fine-tuned */
    {"poly", "poly", "poly", "finetune", 1.2},        /* Poly: skills + a fresh routing row, all trained */
    {"mhr", "mhr", "mhr", "finetune", 1.2},           /* MHR: the same with multi-head routing */
    {"mhr_z", "mhr", "mhr", "z", 1.1},                /* MHR-z: only the new task's routing (and head) */
    {"mhr_mu", "mhr", "mhr", "mu", 1.0},              /* MHR-mu: the average of the skills, fine-tuned */
    {"mosa", "mosa", NULL, NULL, 2.5},                /* consistency: three forwards, two backwards */
    {"mosa_mhr", "mosa_mhr", "mosa_mhr", "finetune", 2.8}, /* MoSA on the MoSA-pre-trained MHR skills */
    {"adapter", "adapter", NULL, NULL, 1.3},
    {"sparse", "sparse", NULL, NULL, 1.3},
    {"full", "full", NULL, NULL, 1.4},
    {"probe", "probe", NULL, NULL, 0.75},
};
#define KNOWN_NAMES "lora, shared_lora, poly, mhr, mhr_z, mhr_mu, mosa, mosa_mhr, adapter, sparse, full, probe"


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
        return tsr_error("fewshot.methods: method '%s' needs %s, which cannot be read (%s); known methods: "
                         KNOWN_NAMES ", or any <name> with fewshot.method_dir/<name>.yaml",
                         name, ms->file, strerror(errno));
    if (d && d->pretrained) {
        snprintf(ms->init, sizeof ms->init, "%s/%s/adapters.safetensors", c->fewshot.pretrained, d->pretrained);
        snprintf(ms->mode, sizeof ms->mode, "%s", d->mode);
        char peft[sizeof ms->init + 32];
        snprintf(peft, sizeof peft, "%s/%s/" TSR_PEFT_CONFIG, c->fewshot.pretrained, d->pretrained);
        if (access(ms->init, R_OK) != 0 && access(peft, R_OK) == 0) /* a Hugging Face peft directory (peft_io.h) */
            snprintf(ms->init, sizeof ms->init, "%s/%s", c->fewshot.pretrained, d->pretrained);
        if (access(ms->init, R_OK) != 0)
            return tsr_error("fewshot.methods: method '%s' starts from the multi-task pre-trained adapters %s, which "
                             "cannot be read (%s) (HINT: run `tessera pretrain` with configs/methods/%s.yaml and "
                             "run.output_dir %s/%s, or set fewshot.pretrained)",
                             name, ms->init, strerror(errno), d->pretrained, c->fewshot.pretrained, d->pretrained);
    }
    return 0;
}

/* An entry: a test entry (g < 0: task t of the sweep's tasks, shots k of fewshot.shots, seed s of
 * fewshot.seeds) or a learning-rate selection entry (g >= 0: multiplier g of fewshot.lr_grid, t, k, s index
 * the selection's tasks, shots and seeds). */
typedef struct {
    int m, t, k, s, g;
    long index; /* in the full product of its phase, method-major */
} entry_id;

/* The entry's configuration: the sweep file, then the method's file, then the command line's overrides,
 * then fewshot.set lines of this method, then the entry's own keys (role: "heldout" for test entries,
 * "val" for selection entries); then every optim.*_lr times lr_mult. */
static char *entry_config(const char *sweep_path, int nset, char **sets, const tsr_config *sw, const method_spec *ms,
                          const char *role, const char *task, long shots, long seed, double lr_mult, tsr_config *out,
                          uint64_t *fingerprint) {
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
    OWN("data.role=%s", role);
    OWN("suite.%s=[\"%s\"]", role, task);
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
    if (lr_mult != 1.0) {
        out->optim.adapter_lr *= lr_mult;
        out->optim.head_lr *= lr_mult;
        out->optim.routing_lr *= lr_mult;
        out->optim.backbone_lr *= lr_mult;
    }
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

int tsr_sweep_entry_config(const char *sweep_path, int nset, char **sets, const char *method, const char *task,
                           long shots, long seed, tsr_config *out) {
    tsr_config *sw = tsr_malloc(sizeof *sw);
    method_spec ms;
    uint64_t fp;
    char *text = NULL;
    if (tsr_config_load(sw, sweep_path, nset, sets) == 0 && resolve_method(sw, method, &ms) == 0)
        text = entry_config(sweep_path, nset, sets, sw, &ms, "heldout", task, shots, seed, 1.0, out, &fp);
    int rc = text ? 0 : -1;
    free(sw);
    free(text);
    return rc;
}

static void journal_path(char *buf, size_t n, const char *dir, const char *method, const char *task, long shots,
                         long seed, double lr_mult, int select) {
    if (select) snprintf(buf, n, "%s/lr__%s__%s__k%ld__s%ld__x%.6g.st", dir, method, task, shots, seed, lr_mult);
    else snprintf(buf, n, "%s/%s__%s__k%ld__s%ld.st", dir, method, task, shots, seed);
}

#define NJKEYS 10
static const char *const jkeys[NJKEYS] = {"fingerprint", "test_accuracy", "best_val_accuracy", "best_val_step",
                                          "test_accuracy_at_best_val", "final_train_loss", "trainable_parameters",
                                          "wall_time", "rank", "steps_run"};

static int journal_write(const char *path, const tsr_train_result *r, uint64_t fp, int rank, const char *cfg_text) {
    tsr_st_writer *w = tsr_st_writer_new();
    int64_t sh[1] = {r->n_eval > 0 ? r->n_eval : 0};
    int64_t *steps = tsr_malloc(sizeof(int64_t) * (size_t)(r->n_eval + 1));
    for (int i = 0; i < r->n_eval; i++) steps[i] = r->eval_step[i];
    tsr_st_writer_add(w, "eval_step", TSR_DT_I64, 1, sh, steps);
    tsr_st_writer_add(w, "train_loss", TSR_DT_F64, 1, sh, r->train_loss);
    tsr_st_writer_add(w, "val_accuracy", TSR_DT_F64, 1, sh, r->val_accuracy);
    tsr_st_writer_add(w, "test_accuracy", TSR_DT_F64, 1, sh, r->test_accuracy);
    char v[NJKEYS][40];
    snprintf(v[0], 40, "%016llx", (unsigned long long)fp);
    snprintf(v[1], 40, "%.17g", r->test_accuracy_final);
    snprintf(v[2], 40, "%.17g", r->best_val_accuracy);
    snprintf(v[3], 40, "%ld", r->best_val_step);
    snprintf(v[4], 40, "%.17g", r->test_at_best_val);
    snprintf(v[5], 40, "%.17g", r->last_loss);
    snprintf(v[6], 40, "%zu", r->trainable);
    snprintf(v[7], 40, "%.6f", r->wall_time);
    snprintf(v[8], 40, "%d", rank);
    snprintf(v[9], 40, "%ld", r->steps_run);
    for (int i = 0; i < NJKEYS; i++) tsr_st_writer_meta(w, jkeys[i], v[i]);
    tsr_st_writer_meta(w, "config", cfg_text);
    int rc = tsr_st_writer_write(w, path);
    tsr_st_writer_free(w);
    free(steps);
    return rc;
}

static int journal_read(const char *path, uint64_t fp, tsr_train_result *r, int *rank, int E);
int tsr_sweep_journal_read(const char *path, uint64_t fp, tsr_train_result *r, int *rank, int E) {
    return journal_read(path, fp, r, rank, E);
}

/* Read one journal entry; 1 = valid and matching, 0 = absent or stale (another configuration), -1 = damaged. */
static int journal_read(const char *path, uint64_t fp, tsr_train_result *r, int *rank, int E) {
    memset(r, 0, sizeof *r);
    if (access(path, F_OK) != 0) return 0;
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) return -1;
    int rc = -1;
    const char *v[NJKEYS];
    for (int i = 0; i < NJKEYS; i++)
        if (!(v[i] = tsr_st_meta(&f, jkeys[i]))) {
            /* a journal of an earlier version (no steps_run): another configuration, not damage */
            rc = i == NJKEYS - 1 ? 0 : -1;
            goto out;
        }
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
    r->steps_run = atol(v[9]);
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
    e->steps_run = r->steps_run;
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

static int dup_check_int(const char *key, const cfg_int_list *l) {
    for (int i = 0; i < l->n; i++)
        for (int j = 0; j < i; j++)
            if (l->v[i] == l->v[j]) return tsr_error("%s: %ld appears twice", key, l->v[i]);
    return 0;
}

static int in_list(const cfg_string_list *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->v[i], name) == 0) return 1;
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
    int tmp_made;            /* RESULTS.tmp was created by this run and not renamed: removed at the end */
    int rf_open;             /* every rank: the results file was created and is not known closed on every rank */
    int rf_failed;           /* a write to the results file failed on this rank (HDF5 may be in an error state) */
    int write_failed;        /* a journal or results-file write of an entry failed here (write_fail: why) */
    char write_fail[1024];
    char results[1100], tmp[1120], jdir[1120];
    /* the learning-rate selection (fewshot.lr_grid with >= 2 values): G multipliers x the selection's tasks,
     * shots and seeds; per method the mean metric of each multiplier and the chosen one */
    int G, TS, KS, SS;
    const double *grid;
    char **sel_tasks;
    const long *sel_shots, *sel_seeds;
    double *mult;            /* (M) multiplier of the test entries */
    double *sel_acc;         /* (M, G) */
    int *sel_n;              /* (M, G) */
    /* where an entry's time goes besides training (this rank; summed over ranks for the summary line):
     * journal writes (safetensors, fsync, rename, fsync of the directory) and results-file puts */
    long n_journal;
    double t_journal, t_put;
} sweep;

#define ERR(...) tsr_logf(&W->ctx->log, TSR_LOG_ERROR, __VA_ARGS__)
#define INFO(...) tsr_logf(&W->ctx->log, TSR_LOG_INFO, __VA_ARGS__)

/* An entry's task, shots, seed and learning-rate multiplier. */
static void entry_keys(const sweep *W, entry_id e, const char **task, long *shots, long *seed, double *mult) {
    if (e.g >= 0) {
        *task = W->sel_tasks[e.t], *shots = W->sel_shots[e.k], *seed = W->sel_seeds[e.s], *mult = W->grid[e.g];
    } else {
        *task = W->tasks[e.t], *shots = W->cfg->fewshot.shots.v[e.k], *seed = W->cfg->fewshot.seeds.v[e.s];
        *mult = W->mult[e.m];
    }
}

static char *entry_text(sweep *W, entry_id e, uint64_t *fp) {
    const tsr_sweep_opts *o = W->o;
    const char *task;
    long shots, seed;
    double mult;
    entry_keys(W, e, &task, &shots, &seed, &mult);
    return entry_config(o->cfg_path, o->nset, o->sets, W->cfg, &W->ms[e.m], e.g >= 0 ? "val" : "heldout", task, shots,
                        seed, mult, W->ec, fp);
}

static void entry_journal(const sweep *W, entry_id e, char *buf, size_t n) {
    const char *task;
    long shots, seed;
    double mult;
    entry_keys(W, e, &task, &shots, &seed, &mult);
    journal_path(buf, n, W->jdir, W->ms[e.m].name, task, shots, seed, mult, e.g >= 0);
}

/* The entry of index i of a phase's product (method-major; selection: method, multiplier, task, shots, seed). */
static entry_id entry_of(const sweep *W, long i, int select) {
    entry_id e;
    e.index = i;
    if (select) {
        e.s = (int)(i % W->SS), i /= W->SS;
        e.k = (int)(i % W->KS), i /= W->KS;
        e.t = (int)(i % W->TS), i /= W->TS;
        e.g = (int)(i % W->G), e.m = (int)(i / W->G);
    } else {
        e.s = (int)(i % W->S), i /= W->S;
        e.k = (int)(i % W->K), i /= W->K;
        e.t = (int)(i % W->T), e.m = (int)(i / W->T), e.g = -1;
    }
    return e;
}

/* The learning-rate selection's lists: tasks (fewshot.lr_tasks or suite.val; never a task of the sweep,
 * of suite.heldout, or seen by pre-training), shots, seeds. 0 / -1. */
static int validate_selection(sweep *W) {
    const tsr_config *cfg = W->cfg;
    const char *path = W->o->cfg_path;
    W->grid = cfg->fewshot.lr_grid.v;
    W->G = cfg->fewshot.lr_grid.n;
    for (int i = 0; i < W->G; i++)
        for (int j = 0; j < i; j++)
            if (W->grid[i] == W->grid[j]) return tsr_error("fewshot.lr_grid: %g appears twice", W->grid[i]);
    W->mult = tsr_calloc((size_t)W->M, sizeof(double));
    for (int m = 0; m < W->M; m++) W->mult[m] = W->G == 1 ? W->grid[0] : 1.0;
    if (W->G < 2) { /* none, or one value applied to every method: nothing to choose */
        W->G = 0;
        return 0;
    }
    W->sel_acc = tsr_calloc((size_t)W->M * W->G, sizeof(double));
    W->sel_n = tsr_calloc((size_t)W->M * W->G, sizeof(int));
    const cfg_string_list *tl = cfg->fewshot.lr_tasks.n ? &cfg->fewshot.lr_tasks : &cfg->suite.val;
    const char *tkey = cfg->fewshot.lr_tasks.n ? "fewshot.lr_tasks" : "suite.val";
    const cfg_int_list *kl = cfg->fewshot.lr_shots.n ? &cfg->fewshot.lr_shots : &cfg->fewshot.shots;
    W->TS = tl->n, W->KS = kl->n, W->SS = cfg->fewshot.lr_seeds.n;
    W->sel_shots = kl->v, W->sel_seeds = cfg->fewshot.lr_seeds.v;
    if (W->TS == 0 || W->SS == 0)
        return tsr_error("%s: fewshot.lr_grid has %d multipliers but the selection has no %s: set %s", path, W->G,
                         W->TS == 0 ? "tasks" : "seeds", W->TS == 0 ? "suite.val or fewshot.lr_tasks" : "fewshot.lr_seeds");
    W->sel_tasks = tsr_calloc((size_t)W->TS, sizeof(char *));
    for (int t = 0; t < W->TS; t++) W->sel_tasks[t] = (char *)tl->v[t];
    if (dup_check(tkey, W->TS, (const char *const *)W->sel_tasks) ||
        dup_check_int(cfg->fewshot.lr_shots.n ? "fewshot.lr_shots" : "fewshot.shots", kl) ||
        dup_check_int("fewshot.lr_seeds", &cfg->fewshot.lr_seeds))
        return -1;
    for (int t = 0; t < W->TS; t++) {
        const char *n = W->sel_tasks[t];
        for (int u = 0; u < W->T; u++)
            if (strcmp(n, W->tasks[u]) == 0)
                return tsr_error("%s: '%s' is also a task of the sweep: learning rates are chosen on validation tasks, "
                                 "never on test tasks", tkey, n);
        if (in_list(&cfg->suite.heldout, n))
            return tsr_error("%s: '%s' is a held-out test task (suite.heldout): learning rates are chosen on validation "
                             "tasks (suite.val), never on test tasks", tkey, n);
        if (in_list(&cfg->suite.source, n) || in_list(&cfg->suite.train, n))
            return tsr_error("%s: '%s' was seen by pre-training (suite.%s): choose learning rates on unseen validation "
                             "tasks (suite.val)", tkey, n, in_list(&cfg->suite.source, n) ? "source" : "train");
    }
    return 0;
}

/* The sweep's lists, methods and tasks exist, every method's entry configuration loads, pre-trained adapters
 * match their method. 0 / -1. */
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
        dup_check(tkey, T, (const char *const *)W->tasks) || dup_check_int("fewshot.shots", &cfg->fewshot.shots) ||
        dup_check_int("fewshot.seeds", &cfg->fewshot.seeds))
        return -1;
    for (int m = 0; m < M; m++)
        if (resolve_method(cfg, cfg->fewshot.methods.v[m], &W->ms[m]) != 0) return -1;
    if (validate_selection(W) != 0) return -1;
    tsr_suite su; /* the tasks exist in the suite */
    if (tsr_suite_open(&su, cfg->data.path) != 0) return -1;
    int fail = 0;
    for (int t = 0; !fail && t < T; t++)
        if (tsr_suite_find_task(&su, W->tasks[t]) < 0)
            fail = tsr_error("%s: task '%s' is not in %s", tkey, W->tasks[t], cfg->data.path);
    for (int t = 0; !fail && t < W->TS; t++)
        if (tsr_suite_find_task(&su, W->sel_tasks[t]) < 0)
            fail = tsr_error("%s: learning-rate selection task '%s' is not in %s",
                             cfg->fewshot.lr_tasks.n ? "fewshot.lr_tasks" : "suite.val", W->sel_tasks[t], cfg->data.path);
    tsr_suite_close(&su);
    /* every method's entry configurations load (the first task, shot count and seed stand for all) */
    for (int m = 0; !fail && m < M; m++) {
        for (int sel = 0; sel < (W->G >= 2 ? 2 : 1); sel++) {
            uint64_t fp;
            entry_id e = {m, 0, 0, 0, sel ? 0 : -1, 0};
            char *t = entry_text(W, e, &fp);
            if (!t) return tsr_error("fewshot: method '%s' (%s): %s", W->ms[m].name, W->ms[m].file, tsr_last_error());
            free(t);
            if (W->ec->train.steps != cfg->train.steps || W->ec->train.eval_every != cfg->train.eval_every)
                return tsr_error("fewshot: method '%s' changes train.steps or train.eval_every; every method of a sweep "
                                 "must evaluate at the same steps (one eval_step axis)", W->ms[m].name);
            if (!sel && tsr_train_check_init(W->ec) != 0)
                return tsr_error("fewshot: method '%s': %s (HINT: run tessera pretrain again with %s, or point "
                                 "fewshot.pretrained at a run made with it)", W->ms[m].name, tsr_last_error(), W->ms[m].file);
        }
    }
    return fail ? -1 : 0;
}

/* Rank 0 reads a phase's journal: which entries are finished (their results stay with rank 0); every rank
 * learns the mask. keep: keep the results (test phase: copied into the file). Returns the entries done. */
static long scan_phase(sweep *W, int select, long total, unsigned char *done, tsr_train_result *res, int *rk) {
    long stale = 0, damaged = 0, nd = 0;
    if (W->me == 0) {
        for (long i = 0; i < total; i++) {
            entry_id e = entry_of(W, i, select);
            char jp[1600];
            entry_journal(W, e, jp, sizeof jp);
            if (access(jp, F_OK) != 0) continue;
            uint64_t fp;
            free(entry_text(W, e, &fp));
            tsr_train_result tmp;
            int trk = 0;
            int got = journal_read(jp, fp, res ? &res[i] : &tmp, rk ? &rk[i] : &trk, (int)W->E);
            if (got == 1) {
                done[i] = 1, nd++;
                if (!res) tsr_train_result_free(&tmp);
            } else if (got == 0) stale++;
            else {
                damaged++;
                tsr_logf(&W->ctx->log, TSR_LOG_WARN, "fewshot: %s is damaged (%s): the entry runs again", jp, tsr_last_error());
            }
        }
        if (stale) tsr_logf(&W->ctx->log, TSR_LOG_WARN, "fewshot: %ld %sjournal entries were made with another configuration: "
                            "they run again", stale, select ? "learning-rate selection " : "");
    }
    tsr_dist_bcast(W->comm, done, (size_t)total, 0);
    int64_t n = nd;
    tsr_dist_bcast(W->comm, &n, sizeof n, 0);
    return (long)n;
}

/* The pending entries of a phase and of this shard, costliest method first (the same list on every rank). */
static long pending_of(sweep *W, int select, long total, const unsigned char *done, entry_id *out) {
    int M = W->M, *order = tsr_malloc(sizeof(int) * (size_t)M);
    long np = 0, per = total / M;
    for (int m = 0; m < M; m++) order[m] = m;
    for (int i = 1; i < M; i++)
        for (int j = i; j > 0 && W->ms[order[j]].cost > W->ms[order[j - 1]].cost; j--) {
            int x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    for (int oi = 0; oi < M; oi++)
        for (long j = 0; j < per; j++) {
            long idx = (long)order[oi] * per + j;
            if (done[idx] || W->o->collect) continue;
            if (W->o->shard_n > 0 && idx % W->o->shard_n != W->o->shard_i) continue;
            out[np++] = entry_of(W, idx, select);
        }
    free(order);
    return np;
}

/* Collective: RESULTS.tmp with its provenance and the learning rates; rank 0 copies the journal's entries
 * in. 0 / -1. */
static int results_open(sweep *W) {
    const tsr_config *cfg = W->cfg;
    char blas[256], mpilib[256], date[64], wsz[16], thr[16], hist[2048], sel[4][1200];
    tsr_blas_describe(blas, sizeof blas);
    tsr_dist_library(mpilib, sizeof mpilib);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    snprintf(wsz, sizeof wsz, "%d", W->R);
    snprintf(thr, sizeof thr, "%d", W->ctx->threads);
    snprintf(hist, sizeof hist, "%s: tessera fewshot %s (%d ranks)", date, W->o->cfg_path, W->R);
    size_t o[3] = {0, 0, 0};
    sel[0][0] = sel[1][0] = sel[2][0] = 0;
    for (int t = 0; t < W->TS; t++) o[0] += (size_t)snprintf(sel[0] + o[0], o[0] < 1200 ? 1200 - o[0] : 0, "%s%s", t ? "," : "", W->sel_tasks[t]);
    for (int k = 0; k < W->KS; k++) o[1] += (size_t)snprintf(sel[1] + o[1], o[1] < 1200 ? 1200 - o[1] : 0, "%s%ld", k ? "," : "", W->sel_shots[k]);
    for (int s = 0; s < W->SS; s++) o[2] += (size_t)snprintf(sel[2] + o[2], o[2] < 1200 ? 1200 - o[2] : 0, "%s%ld", s ? "," : "", W->sel_seeds[s]);
    if (W->G >= 2)
        snprintf(sel[3], sizeof sel[3], "per method: %d multipliers x %d tasks x %d shot counts x %d seeds, the best "
                 "mean %s", W->G, W->TS, W->KS, W->SS, cfg->fewshot.lr_metric);
    else snprintf(sel[3], sizeof sel[3], "none (every method at x%g its configured learning rates)", W->M ? W->mult[0] : 1.0);
    const char *ak[] = {"Conventions", "title", "source", "git_commit", "history", "date_created", "config",
                        "world_size", "threads_per_rank", "blas", "mpi_library", "backbone", "pretrained", "suite",
                        "lr_selection", "lr_selection_tasks", "lr_selection_shots", "lr_selection_seeds",
                        "lr_selection_metric"};
    const char *av[] = {"CF-1.8", "tessera few-shot adaptation sweep", "tessera " TSR_VERSION, TSR_GIT_COMMIT, hist,
                        date, W->cfg_text, wsz, thr, blas, mpilib, cfg->run.init, cfg->fewshot.pretrained, cfg->data.path,
                        sel[3], sel[0], sel[1], sel[2], W->G >= 2 ? cfg->fewshot.lr_metric : ""};
    double *lr_eff = tsr_malloc(sizeof(double) * 4 * (size_t)W->M); /* as the test entries run them */
    for (int m = 0; m < W->M; m++) {
        uint64_t fp;
        free(entry_text(W, (entry_id){m, 0, 0, 0, -1, 0}, &fp)); /* loaded by validate: cannot fail */
        const double v[4] = {W->ec->optim.adapter_lr, W->ec->optim.head_lr, W->ec->optim.routing_lr, W->ec->optim.backbone_lr};
        for (int i = 0; i < 4; i++) lr_eff[(size_t)i * W->M + m] = v[i];
    }
    tsr_results_layout L = {W->M, W->T, W->K, W->S, (int)W->E, (const char *const *)W->methods_names,
                            (const char *const *)W->tasks, cfg->fewshot.shots.v, cfg->fewshot.seeds.v, W->eval_steps,
                            (int)(sizeof ak / sizeof ak[0]), ak, av,
                            {W->G >= 2 ? W->G : 0, W->grid, W->sel_acc, W->sel_n, W->mult,
                             {lr_eff, lr_eff + W->M, lr_eff + 2 * W->M, lr_eff + 3 * W->M}}};
    W->tmp_made = 1;
    W->rf_open = 1;
    int fail = tsr_results_create(&W->rf, W->tmp, &L) != 0;
    W->rf_failed |= fail;
    free(lr_eff);
    if (tsr_dist_fail_together(W->comm, fail, &W->ctx->log)) return -1;
    for (long i = 0; W->me == 0 && !fail && i < W->total; i++) {
        if (!W->done[i]) continue;
        entry_id e = entry_of(W, i, 0);
        tsr_results_entry re;
        to_entry(&W->jres[i], W->jrank[i], &re);
        fail = tsr_results_put(&W->rf, e.m, e.t, e.k, e.s, &re) != 0;
        W->rf_failed |= fail;
    }
    return tsr_dist_fail_together(W->comm, fail, &W->ctx->log) ? -1 : 0;
}

/* One entry on this rank alone: its configuration, the trainer, the journal and (test entries) the file.
 * Returns 0, 1 (failed, reported) or TSR_EXIT_REQUEUE. A failing journal or file write (a full disk) is
 * recorded in W->write_fail and returns 1: the loop stops every rank after its current entry and the ranks
 * then fail together (entry_writes_failed), each saying why. */
static int run_entry(sweep *W, entry_id id, long i, long np) {
    const method_spec *mm = &W->ms[id.m];
    const char *task;
    long shots, seed;
    double mult;
    entry_keys(W, id, &task, &shots, &seed, &mult);
    uint64_t fp;
    char *etext = entry_text(W, id, &fp);
    tsr_train_result r;
    memset(&r, 0, sizeof r);
    int erc = 1;
    if (etext) {
        tsr_train_opts o = {.quiet = 1, .want_val = 1, .fault_nan_step = -1};
        tsr_ctx ectx = tsr_ctx_self(TSR_LOG_WARN); /* an entry's own progress lines would drown the sweep's */
        erc = tsr_train_run(&ectx, W->ec, etext, &o, &r);
    }
    char what[64] = "";
    if (id.g >= 0) snprintf(what, sizeof what, " lr x%g", mult);
    if (erc == 0) {
        char jp[1600];
        entry_journal(W, id, jp, sizeof jp);
        double t0 = tsr_time();
        if (journal_write(jp, &r, fp, W->me, etext) != 0) goto write_failed;
        double t1 = tsr_time();
        W->t_journal += t1 - t0;
        W->n_journal++;
        if (W->write_file && id.g < 0) {
            tsr_results_entry e;
            to_entry(&r, W->me, &e);
            if (tsr_results_put(&W->rf, id.m, id.t, id.k, id.s, &e) != 0) {
                W->rf_failed = 1;
                goto write_failed;
            }
            W->t_put += tsr_time() - t1;
        }
        fprintf(stderr, "tessera: fewshot [rank %d] %s%ld/%ld %-12s %-16s %3ld shots seed %ld%s: test %.4f, best val %.4f "
                "(step %ld of %ld, test there %.4f), %zu parameters, %.1f s\n", W->me, id.g >= 0 ? "lr-select " : "",
                i + 1, np, mm->name, task, shots, seed, what, r.test_accuracy_final, r.best_val_accuracy, r.best_val_step,
                r.steps_run, r.test_at_best_val, r.trainable, r.wall_time);
    } else if (erc != TSR_EXIT_REQUEUE) {
        fprintf(stderr, "tessera: fewshot [rank %d] entry %s / %s / %ld shots / seed %ld%s FAILED: %s\n", W->me, mm->name,
                task, shots, seed, what, tsr_last_error());
    }
    tsr_train_result_free(&r);
    free(etext);
    return erc == 0 ? 0 : erc == TSR_EXIT_REQUEUE ? TSR_EXIT_REQUEUE : 1;
write_failed:
    snprintf(W->write_fail, sizeof W->write_fail, "%s", tsr_last_error());
    W->write_failed = 1;
    tsr_train_result_free(&r);
    free(etext);
    return 1;
}

/* After the loop: a journal or results-file write failed on some rank (a full disk): every rank returns 1,
 * the failing one with its message, the others naming it (collective). The entries journaled before stay. */
static int entry_writes_failed(sweep *W) {
    if (W->write_failed) tsr_error("fewshot: %s", W->write_fail);
    return tsr_dist_fail_together(W->comm, W->write_failed, &W->ctx->log);
}

/* The dynamic loop over a list of entries: drawn from a shared counter until none is left or a stop signal
 * came. cnt: entries run, failed, ranks stopped. */
static void run_entries(sweep *W, const entry_id *list, long np, int64_t cnt[3]) {
    tsr_dist_install_stop_signals();
    tsr_dist_counter *counter = tsr_dist_counter_create(0);
    for (;;) {
        if (tsr_dist_stop_flag_local()) {
            cnt[2] = 1;
            break;
        }
        long i = tsr_dist_counter_next(counter);
        if (i >= np) break;
        int erc = run_entry(W, list[i], i, np);
        if (W->write_failed) { /* no rank starts another entry: push the counter past the end */
            tsr_dist_counter_add(counter, np);
            break;
        }
        if (erc == TSR_EXIT_REQUEUE) {
            cnt[2] = 1;
            break;
        }
        cnt[erc == 0 ? 0 : 1]++;
    }
    tsr_dist_counter_free(counter);
}

/* The learning-rate selection (fewshot.lr_grid with >= 2 multipliers): every method at every multiplier on
 * the selection's tasks, shots and seeds (journaled like test entries, as RESULTS.entries/lr__*.st), then
 * per method the multiplier with the best mean fewshot.lr_metric (ties: the one nearest x1, then the
 * smaller). Collective. Returns 0 (chosen: W->mult), 1 (failed entries, or an error), TSR_EXIT_REQUEUE
 * (stopped by a signal), or 2 (this shard's part is done but other shards' entries are missing). */
static int select_lr(sweep *W) {
    const tsr_config *cfg = W->cfg;
    long total = (long)W->M * W->G * W->TS * W->KS * W->SS;
    unsigned char *done = tsr_calloc((size_t)total, 1);
    entry_id *list = tsr_malloc(sizeof(entry_id) * (size_t)total);
    long nd = scan_phase(W, 1, total, done, NULL, NULL);
    long np = pending_of(W, 1, total, done, list);
    INFO("fewshot: learning-rate selection: %d methods x %d multipliers x %d tasks (%s) x %d shot counts x %d seeds = "
         "%ld entries; %ld finished, %ld to run on %d ranks", W->M, W->G, W->TS,
         cfg->fewshot.lr_tasks.n ? "fewshot.lr_tasks" : "suite.val", W->KS, W->SS, total, nd, np, W->R);
    int64_t cnt[3] = {0, 0, 0};
    double t0 = tsr_time();
    run_entries(W, list, np, cnt);
    if (entry_writes_failed(W)) {
        free(list);
        free(done);
        return 1;
    }
    tsr_dist_allreduce_sum_i64(W->comm, cnt, 3);
    free(list);
    if (cnt[0] || cnt[1] || cnt[2])
        INFO("fewshot: learning-rate selection: %lld entries run in %.1f s (%lld failed)%s", (long long)cnt[0],
             tsr_time() - t0, (long long)cnt[1], cnt[2] ? ", stopped by a signal" : "");
    if (cnt[2]) {
        free(done);
        return TSR_EXIT_REQUEUE;
    }
    /* rank 0 reads every selection entry back from the journal (those of this run are there now) */
    int use_val = strcmp(cfg->fewshot.lr_metric, "best_val") == 0, MG = W->M * W->G;
    double *acc = W->sel_acc;
    int64_t missing = 0;
    if (W->me == 0) {
        memset(done, 0, (size_t)total);
        for (long i = 0; i < total; i++) {
            entry_id e = entry_of(W, i, 1);
            char jp[1600];
            entry_journal(W, e, jp, sizeof jp);
            uint64_t fp;
            free(entry_text(W, e, &fp));
            tsr_train_result r;
            int rk;
            if (journal_read(jp, fp, &r, &rk, (int)W->E) != 1) {
                missing++;
                continue;
            }
            double v = use_val ? r.best_val_accuracy : r.test_at_best_val;
            if (isfinite(v)) {
                acc[e.m * W->G + e.g] += v;
                W->sel_n[e.m * W->G + e.g]++;
            }
            tsr_train_result_free(&r);
        }
        for (int i = 0; i < MG; i++) acc[i] = W->sel_n[i] ? acc[i] / W->sel_n[i] : NAN;
    }
    free(done);
    tsr_dist_bcast(W->comm, acc, sizeof(double) * (size_t)MG, 0);
    tsr_dist_bcast(W->comm, W->sel_n, sizeof(int) * (size_t)MG, 0);
    tsr_dist_bcast(W->comm, &missing, sizeof missing, 0);
    if (missing) {
        if (cnt[1]) {
            ERR("fewshot: the learning-rate selection has %lld failed entries (named above): no learning rate can be "
                "chosen, so no test entry runs", (long long)cnt[1]);
            return 1;
        }
        if (W->o->collect || W->o->shard_n == 0) {
            ERR("fewshot: the learning-rate selection is incomplete (%lld of %ld entries missing from %s)%s",
                (long long)missing, total, W->jdir, W->o->collect ? ": run every shard first" : "");
            return 1;
        }
        INFO("fewshot: this shard's learning-rate selection entries are journaled; %lld of other shards are missing, so "
             "its test entries wait: run the array again once every shard has finished (journaled entries are skipped)",
             (long long)missing);
        return 2;
    }
    for (int m = 0; m < W->M; m++) {
        int best = -1;
        char line[1024];
        size_t o = 0;
        for (int g = 0; g < W->G; g++) {
            double a = acc[m * W->G + g];
            o += (size_t)snprintf(line + o, o < sizeof line ? sizeof line - o : 0, "%s x%g %.4f", g ? "," : "", W->grid[g], a);
            if (!isfinite(a)) continue;
            if (best < 0 || a > acc[m * W->G + best]) best = g;
            else if (a == acc[m * W->G + best]) { /* tie: nearer x1 (in log scale), then the smaller */
                double db = fabs(log(W->grid[best])), dg = fabs(log(W->grid[g]));
                if (dg < db || (dg == db && W->grid[g] < W->grid[best])) best = g;
            }
        }
        if (best < 0) {
            ERR("fewshot: method '%s': no learning-rate selection entry gave a finite %s", W->ms[m].name, cfg->fewshot.lr_metric);
            return 1;
        }
        W->mult[m] = W->grid[best];
        INFO("fewshot: learning rates of %-12s x%g (mean %s over %d entries:%s)", W->ms[m].name, W->mult[m],
             cfg->fewshot.lr_metric, W->sel_n[m * W->G + best], line);
    }
    return 0;
}

static void sweep_free(sweep *W) {
    if (W->rf_open) { /* every rank, after a failure agreed by all: the run ends with the file still open */
        int64_t bad = W->rf_failed;
        tsr_dist_allreduce_sum_i64(W->comm, &bad, 1);
        if (bad) {
            /* a write to it failed somewhere: closing it (here, or HDF5 when the message-passing library is
             * finalized) can deadlock the ranks in HDF5's error paths, so no rank closes it and the process ends
             * without finalizing (tsr_dist_skip_finalize). It is a temporary, removed below; the journal is
             * intact. */
            W->rf.ncid = -1;
            tsr_dist_skip_finalize();
        } else if (W->rf.ncid >= 0) {
            tsr_results_close(&W->rf, 0, 1);
        }
    }
    /* a results file that failed part-way (a full disk) is not left behind as RESULTS.tmp */
    if (W->tmp_made && W->me == 0) unlink(W->tmp);
    free(W->pending);
    free(W->eval_steps);
    for (long i = 0; W->jres && i < W->total; i++) tsr_train_result_free(&W->jres[i]);
    free(W->jres);
    free(W->jrank);
    free(W->done);
    free(W->ms);
    free(W->tasks);
    free(W->sel_tasks);
    free(W->mult);
    free(W->sel_acc);
    free(W->sel_n);
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
    long E = W->E = (cfg->train.steps + cfg->train.eval_every - 1) / cfg->train.eval_every;
    W->eval_steps = tsr_calloc((size_t)E + 1, sizeof(long));
    for (long i = 0; i < E; i++)
        W->eval_steps[i] = (i + 1) * cfg->train.eval_every < cfg->train.steps ? (i + 1) * cfg->train.eval_every : cfg->train.steps;
    if (cfg->fewshot.results[0]) snprintf(W->results, sizeof W->results, "%.1000s", cfg->fewshot.results);
    else snprintf(W->results, sizeof W->results, "%.1000s/results.nc", cfg->run.output_dir);
    snprintf(W->tmp, sizeof W->tmp, "%.1100s.tmp", W->results);
    snprintf(W->jdir, sizeof W->jdir, "%.1100s.entries", W->results);
    int rc = 1, fail = validate(W) != 0;
    if (tsr_dist_fail_together(W->comm, fail, &ctx->log)) goto out;
    fail = W->me == 0 && (tsr_mkdirs_for(W->results) != 0 || tsr_mkdirs(W->jdir) != 0);
    if (tsr_dist_fail_together(W->comm, fail, &ctx->log)) goto out;
    if (W->G >= 2) {
        int src = select_lr(W);
        if (src != 0) {
            rc = src == 2 ? 0 : src;
            goto out;
        }
    }
    /* the test entries (their configurations hold the chosen learning rates) */
    W->total = (long)W->M * W->T * W->K * W->S;
    W->done = tsr_calloc((size_t)W->total, 1);
    if (W->me == 0) {
        W->jres = tsr_calloc((size_t)W->total, sizeof *W->jres);
        W->jrank = tsr_calloc((size_t)W->total, sizeof *W->jrank);
    }
    double ts0 = tsr_time();
    long nd = scan_phase(W, 0, W->total, W->done, W->jres, W->jrank);
    double t_scan = tsr_time() - ts0;
    W->pending = tsr_malloc(sizeof(entry_id) * (size_t)W->total);
    W->np = pending_of(W, 0, W->total, W->done, W->pending);
    INFO("fewshot: %d methods x %d tasks x %d shot counts x %d seeds = %ld entries; %ld finished in %s, %ld to run on %d "
         "ranks", W->M, W->T, W->K, W->S, W->total, nd, W->jdir, W->np, W->R);
    W->write_file = o->shard_n == 0;
    double t_open = tsr_time();
    if (W->write_file && results_open(W) != 0) goto out;
    t_open = tsr_time() - t_open;
    int64_t cnt[3] = {0, 0, 0};
    double t0 = tsr_time();
    run_entries(W, W->pending, W->np, cnt);
    if (entry_writes_failed(W)) goto out;
    /* every rank is past the loop: count what is finished, close the file, rename it */
    tsr_dist_allreduce_sum_i64(W->comm, cnt, 3);
    double t_run = tsr_time() - t0; /* until the last rank finished its last entry */
    double jt[3] = {(double)W->n_journal, W->t_journal, W->t_put}; /* both phases, summed over ranks */
    tsr_dist_allreduce_sum_f64(W->comm, jt, 3);
    long ndone = 0;
    for (long i = 0; i < W->total; i++) ndone += W->done[i];
    if (!o->collect) ndone += cnt[0]; /* the journal is the truth: entries of this run are in it now */
    double t_close = tsr_time();
    if (W->write_file) {
        fail = tsr_results_close(&W->rf, ndone, W->total) != 0;
        W->rf.ncid = -1;
        W->rf_failed |= fail;
        if (!fail && W->me == 0 && tsr_atomic_rename(W->tmp, W->results) != 0) fail = tsr_error_context("fewshot");
        W->tmp_made = fail;
        if (tsr_dist_fail_together(W->comm, fail, &ctx->log)) goto out;
        W->rf_open = 0;
    }
    t_close = tsr_time() - t_close;
    INFO("fewshot: %lld entries run in %.1f s (%lld failed)%s; %ld of %ld entries finished; %s%s", (long long)cnt[0],
         tsr_time() - t0, (long long)cnt[1], cnt[2] ? ", stopped by a signal" : "", ndone, W->total,
         W->write_file ? "results: " : "journal: ", W->write_file ? W->results : W->jdir);
    /* where the time went besides training (docs/RELIABILITY.md, "Load"): the journal's cost per entry is
     * the time in journal_write (safetensors, fsync, rename, fsync of the directory) */
    long nj = (long)jt[0];
    INFO("fewshot: journal: %ld entries written, %.1f ms in all (summed over ranks), %.3f ms per entry (safetensors "
         "write, fsync, rename, fsync of the directory); %.3f ms per entry putting its result into the results file",
         nj, 1e3 * jt[1], nj ? 1e3 * jt[1] / (double)nj : 0.0, nj ? 1e3 * jt[2] / (double)nj : 0.0);
    INFO("fewshot: timing: journal read (%ld of %ld entries there) %.3f s, results file created%s %.3f s, entries "
         "%.3f s (%.3f ms per entry, wall), results file closed and renamed %.3f s", nd, W->total, t_scan,
         nd ? " with the journaled entries copied in" : "", W->write_file ? t_open : 0.0, t_run,
         cnt[0] ? 1e3 * t_run / (double)cnt[0] : 0.0, W->write_file ? t_close : 0.0);
    rc = cnt[2] ? TSR_EXIT_REQUEUE : cnt[1] ? 1 : 0;
out:
    sweep_free(W);
    return rc;
}
