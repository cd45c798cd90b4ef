/* cmd_fewshot.c: `tessera fewshot CONFIG`: a few-shot adaptation sweep fanned out over MPI ranks.
 *
 * The sweep is the product methods x tasks x shots x seeds (fewshot.*); every combination is an entry:
 * an independent run of the trainer (cmd_adapt.c) on one rank (tsr_world narrowed to the rank), on one
 * held-out task, from the pre-trained checkpoint its method needs, evaluated on the validation split at
 * every evaluation point and on the test split. Ranks draw entries from a shared counter (MPI one-sided
 * fetch-and-add), costliest first, so that entries 100x apart in cost balance.
 *
 * Durability: each finished entry is written atomically to RESULTS.entries/<method>__<task>__k<K>__s<S>.st
 * (a safetensors file: curves as tensors, scalars and the entry's configuration fingerprint as metadata).
 * The netCDF results file is written by every rank in parallel under RESULTS.tmp and renamed over RESULTS
 * when every rank has closed it; a killed job leaves RESULTS as it was. Rerunning the command reads the
 * journal, skips the entries whose fingerprint matches, and runs the rest (resume).
 * --shard I/N runs only the entries with index % N == I and writes no results file (Slurm job arrays);
 * --collect runs nothing and assembles the results file from the journal. See docs/FEWSHOT.md. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "build_info.h"
#include "cmd/commands.h"
#include "train/trainer.h"
#include "core/blas.h"
#include "core/common.h"
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
    uint64_t h = 1469598103934665603ull;
    for (const char *p = text; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
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

int tsr_cmd_fewshot(int argc, char **argv) {
    int collect = 0, shard_i = -1, shard_n = 0, na = 0;
    char **args = tsr_calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 0; i < argc; i++) {
        if (i > 0 && strcmp(argv[i], "--collect") == 0) collect = 1;
        else if (i > 0 && strcmp(argv[i], "--shard") == 0 && i + 1 < argc) {
            if (sscanf(argv[++i], "%d/%d", &shard_i, &shard_n) != 2 || shard_n < 1 || shard_i < 0 || shard_i >= shard_n) {
                tsr_log(TSR_LOG_ERROR, "fewshot: --shard expects I/N with 0 <= I < N (got '%s')", argv[i]);
                free(args);
                return 2;
            }
        } else args[na++] = argv[i];
    }
    const char *cfg_path;
    int nset;
    char **sets;
    int pr = tsr_parse_config_cmdline("fewshot", "few-shot sweep over methods x tasks x shots x seeds into one netCDF "
                                      "file; rerun to resume; --shard I/N (job arrays: journal only), --collect "
                                      "(assemble the file); see docs/FEWSHOT.md", na, args, &cfg_path, &nset, &sets);
    if (pr != 0) {
        free(sets);
        free(args);
        return pr == 1 ? 0 : 2;
    }
    int rc = 1, me = tsr_world.rank, R = tsr_world.size;
    tsr_config *cfg = tsr_malloc(sizeof *cfg), *ec = tsr_malloc(sizeof *ec);
    char *cfg_text = NULL, **tasks = NULL, *methods_names[CFG_LIST_MAX];
    method_spec *ms = NULL;
    entry_id *pending = NULL;
    long *eval_steps = NULL;
    unsigned char *done = NULL;
    tsr_train_result *jres = NULL; /* rank 0: the journal's entries */
    int *jrank = NULL;
    tsr_dist_counter *counter = NULL;
    tsr_results_file rf;
    memset(&rf, 0, sizeof rf);
    rf.ncid = -1;
    char results[1100], tmp[1200], jdir[1200];

    if (!(cfg_text = tsr_run_setup(cfg, "fewshot", cfg_path, nset, sets))) goto out;
    int fail = 0;
    if (strcmp(cfg->data.dataset, "suite") != 0)
        fail = tsr_error("%s: tessera fewshot needs data.dataset: suite (got %s)", cfg_path, cfg->data.dataset);
    const cfg_string_list *tl = cfg->fewshot.tasks.n > 0 ? &cfg->fewshot.tasks : &cfg->suite.heldout;
    int M = cfg->fewshot.methods.n, T = tl->n, K = cfg->fewshot.shots.n, S = cfg->fewshot.seeds.n;
    if (!fail && (M == 0 || T == 0 || K == 0 || S == 0))
        fail = tsr_error("%s: the sweep is empty: fewshot.methods (%d), tasks (fewshot.tasks or suite.heldout: %d), "
                         "fewshot.shots (%d) and fewshot.seeds (%d) all need entries", cfg_path, M, T, K, S);
    ms = tsr_calloc((size_t)(M > 0 ? M : 1), sizeof *ms);
    tasks = tsr_calloc((size_t)(T > 0 ? T : 1), sizeof(char *));
    for (int t = 0; t < T; t++) tasks[t] = (char *)tl->v[t];
    for (int m = 0; m < M; m++) methods_names[m] = (char *)cfg->fewshot.methods.v[m];
    if (!fail) fail = dup_check("fewshot.methods", M, (const char *const *)methods_names) ||
                      dup_check(cfg->fewshot.tasks.n ? "fewshot.tasks" : "suite.heldout", T, (const char *const *)tasks);
    for (int i = 0; !fail && i < K; i++)
        for (int j = 0; j < i; j++)
            if (cfg->fewshot.shots.v[i] == cfg->fewshot.shots.v[j]) fail = tsr_error("fewshot.shots: %ld appears twice", cfg->fewshot.shots.v[i]);
    for (int i = 0; !fail && i < S; i++)
        for (int j = 0; j < i; j++)
            if (cfg->fewshot.seeds.v[i] == cfg->fewshot.seeds.v[j]) fail = tsr_error("fewshot.seeds: %ld appears twice", cfg->fewshot.seeds.v[i]);
    for (int m = 0; !fail && m < M; m++) fail = resolve_method(cfg, cfg->fewshot.methods.v[m], &ms[m]) != 0;
    if (!fail) { /* the tasks exist in the suite and have a validation split */
        tsr_suite su;
        if (tsr_suite_open(&su, cfg->data.path) != 0) fail = 1;
        else {
            for (int t = 0; !fail && t < T; t++)
                if (tsr_suite_find_task(&su, tasks[t]) < 0)
                    fail = tsr_error("%s: task '%s' is not in %s", cfg->fewshot.tasks.n ? "fewshot.tasks" : "suite.heldout",
                                     tasks[t], cfg->data.path);
            tsr_suite_close(&su);
        }
    }
    /* every method's entry configuration loads (the first task, shot count and seed stand for all) */
    long E = 0;
    for (int m = 0; !fail && m < M; m++) {
        uint64_t fp;
        char *t = entry_config(cfg_path, nset, sets, cfg, &ms[m], tasks[0], cfg->fewshot.shots.v[0],
                               cfg->fewshot.seeds.v[0], ec, &fp);
        if (!t) {
            fail = tsr_error("fewshot: method '%s' (%s): %s", ms[m].name, ms[m].file, tsr_last_error());
            break;
        }
        free(t);
        if (ec->train.steps != cfg->train.steps || ec->train.eval_every != cfg->train.eval_every)
            fail = tsr_error("fewshot: method '%s' changes train.steps or train.eval_every; every method of a sweep "
                             "must evaluate at the same steps (one eval_step axis)", ms[m].name);
    }
    if (tsr_dist_agree_fail(fail)) {
        if (fail) tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    E = (cfg->train.steps + cfg->train.eval_every - 1) / cfg->train.eval_every;
    eval_steps = tsr_calloc((size_t)E + 1, sizeof(long));
    for (long i = 0; i < E; i++) eval_steps[i] = (i + 1) * cfg->train.eval_every < cfg->train.steps ? (i + 1) * cfg->train.eval_every : cfg->train.steps;

    if (cfg->fewshot.results[0]) snprintf(results, sizeof results, "%s", cfg->fewshot.results);
    else snprintf(results, sizeof results, "%s/results.nc", cfg->run.output_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", results);
    snprintf(jdir, sizeof jdir, "%s.entries", results);
    if (tsr_dist_agree_fail(me == 0 && (tsr_mkdirs_for(results) != 0 || tsr_mkdirs(jdir) != 0))) {
        tsr_log(TSR_LOG_ERROR, "fewshot: %s", tsr_last_error());
        goto out;
    }

    /* the journal: which entries are finished (rank 0 reads it; every rank learns the mask) */
    long total = (long)M * T * K * S;
    done = tsr_calloc((size_t)total, 1);
    if (me == 0) { /* the finished entries' results stay with rank 0, which copies them into the file */
        jres = tsr_calloc((size_t)total, sizeof *jres);
        jrank = tsr_calloc((size_t)total, sizeof *jrank);
        long stale = 0, damaged = 0;
        for (long i = 0; i < total; i++) {
            int m = (int)(i / ((long)T * K * S)), t = (int)(i / ((long)K * S) % T), k = (int)(i / S % K), s = (int)(i % S);
            char jp[1600];
            journal_path(jp, sizeof jp, jdir, ms[m].name, tasks[t], cfg->fewshot.shots.v[k], cfg->fewshot.seeds.v[s]);
            if (access(jp, F_OK) != 0) continue;
            uint64_t fp;
            char *t2 = entry_config(cfg_path, nset, sets, cfg, &ms[m], tasks[t], cfg->fewshot.shots.v[k],
                                    cfg->fewshot.seeds.v[s], ec, &fp);
            free(t2);
            int got = journal_read(jp, fp, &jres[i], &jrank[i], (int)E);
            if (got == 1) done[i] = 1;
            else if (got == 0) stale++;
            else {
                damaged++;
                tsr_warn("fewshot: %s is damaged (%s): the entry runs again", jp, tsr_last_error());
            }
        }
        long nd = 0;
        for (long i = 0; i < total; i++) nd += done[i];
        tsr_info("fewshot: %d methods x %d tasks x %d shot counts x %d seeds = %ld entries; %ld finished in %s%s%ld "
                 "to run on %d ranks", M, T, K, S, total, nd, jdir, stale ? " (stale entries of another configuration "
                 "run again), " : ", ", total - nd, R);
        if (stale) tsr_warn("fewshot: %ld journal entries were made with another configuration: they run again", stale);
    }
    tsr_dist_bcast(done, (size_t)total, 0);

    /* the pending entries of this shard, costliest method first (the same list on every rank) */
    pending = tsr_malloc(sizeof(entry_id) * (size_t)total);
    long np = 0;
    int *order = tsr_malloc(sizeof(int) * (size_t)M);
    for (int m = 0; m < M; m++) order[m] = m;
    for (int i = 1; i < M; i++)
        for (int j = i; j > 0 && ms[order[j]].cost > ms[order[j - 1]].cost; j--) {
            int x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    for (int oi = 0; oi < M; oi++) {
        int m = order[oi];
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++)
                for (int s = 0; s < S; s++) {
                    long idx = (((long)m * T + t) * K + k) * S + s;
                    if (done[idx] || collect) continue;
                    if (shard_n > 0 && idx % shard_n != shard_i) continue;
                    pending[np++] = (entry_id){m, t, k, s, idx};
                }
    }
    free(order);

    const char *bl = NULL;
    char blas[256], mpilib[256], date[64], wsz[16], thr[16], hist[2048];
    tsr_blas_describe(blas, sizeof blas);
    tsr_dist_library(mpilib, sizeof mpilib);
    bl = blas;
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    snprintf(wsz, sizeof wsz, "%d", R);
    snprintf(thr, sizeof thr, "%d", tsr_world.threads);
    snprintf(hist, sizeof hist, "%s: tessera fewshot %s (%d ranks)", date, cfg_path, R);
    int write_file = shard_n == 0;
    if (write_file) {
        const char *ak[] = {"Conventions", "title", "source", "git_commit", "history", "date_created", "config",
                            "world_size", "threads_per_rank", "blas", "mpi_library", "backbone", "pretrained", "suite"};
        const char *av[] = {"CF-1.8", "tessera few-shot adaptation sweep", "tessera " TSR_VERSION, TSR_GIT_COMMIT, hist,
                            date, cfg_text, wsz, thr, bl, mpilib, cfg->run.init, cfg->fewshot.pretrained, cfg->data.path};
        tsr_results_layout L = {M, T, K, S, (int)E, (const char *const *)methods_names, (const char *const *)tasks,
                                cfg->fewshot.shots.v, cfg->fewshot.seeds.v, eval_steps, 14, ak, av};
        int cf = tsr_results_create(&rf, tmp, &L);
        if (tsr_dist_agree_fail(cf != 0)) {
            if (cf) tsr_log(TSR_LOG_ERROR, "fewshot: %s", tsr_last_error());
            goto out;
        }
        /* what the journal holds: rank 0 copies it in */
        for (long i = 0; me == 0 && i < total; i++) {
            if (!done[i]) continue;
            int m = (int)(i / ((long)T * K * S)), t = (int)(i / ((long)K * S) % T), k = (int)(i / S % K), s = (int)(i % S);
            tsr_results_entry e;
            to_entry(&jres[i], jrank[i], &e);
            if (tsr_results_put(&rf, m, t, k, s, &e) != 0) tsr_fatal("fewshot: %s", tsr_last_error());
        }
    }

    /* the dynamic loop */
    tsr_dist_install_stop_signals();
    counter = tsr_dist_counter_create(0);
    long ran = 0, failed = 0, stopped = 0;
    double t0 = tsr_time();
    for (;;) {
        if (tsr_dist_stop_flag_local()) {
            stopped = 1;
            break;
        }
        long i = tsr_dist_counter_next(counter);
        if (i >= np) break;
        entry_id id = pending[i];
        const method_spec *mm = &ms[id.m];
        long shots = cfg->fewshot.shots.v[id.k], seed = cfg->fewshot.seeds.v[id.s];
        uint64_t fp;
        int lvl = tsr_log_level;
        tsr_log_level = TSR_LOG_WARN; /* an entry's own progress lines would drown the sweep's */
        char *etext = entry_config(cfg_path, nset, sets, cfg, mm, tasks[id.t], shots, seed, ec, &fp);
        tsr_train_result r;
        memset(&r, 0, sizeof r);
        int erc = 1;
        if (etext) {
            tsr_train_opts o = {.quiet = 1, .want_val = 1};
            tsr_dist_narrow_to_self();
            int lr = tsr_log_rank;
            tsr_log_rank = me; /* warnings name the real rank */
            erc = tsr_train_run(ec, etext, &o, &r);
            tsr_log_rank = lr;
            tsr_dist_restore_world();
        }
        tsr_log_level = lvl;
        if (erc == TSR_EXIT_REQUEUE) {
            tsr_train_result_free(&r);
            free(etext);
            stopped = 1;
            break;
        }
        if (erc != 0) {
            fprintf(stderr, "tessera: fewshot [rank %d] entry %s / %s / %ld shots / seed %ld FAILED: %s\n", me, mm->name,
                    tasks[id.t], shots, seed, tsr_last_error());
            failed++;
        } else {
            char jp[1600];
            journal_path(jp, sizeof jp, jdir, mm->name, tasks[id.t], shots, seed);
            if (journal_write(jp, &r, fp, me, etext) != 0) tsr_fatal("fewshot: %s", tsr_last_error());
            if (write_file) {
                tsr_results_entry e;
                to_entry(&r, me, &e);
                if (tsr_results_put(&rf, id.m, id.t, id.k, id.s, &e) != 0) tsr_fatal("fewshot: %s", tsr_last_error());
            }
            ran++;
            fprintf(stderr, "tessera: fewshot [rank %d] %ld/%ld %-12s %-16s %3ld shots seed %ld: test %.4f, best val %.4f "
                    "(step %ld), %zu parameters, %.1f s\n", me, i + 1, np, mm->name, tasks[id.t], shots, seed,
                    r.test_accuracy_final, r.best_val_accuracy, r.best_val_step, r.trainable, r.wall_time);
        }
        tsr_train_result_free(&r);
        free(etext);
    }
    /* every rank is past the loop: count what is finished, close the file, rename it */
    int64_t cnt[3] = {ran, failed, stopped};
    tsr_dist_allreduce_sum_i64(cnt, 3);
    long ndone = 0;
    for (long i = 0; i < total; i++) ndone += done[i];
    if (!collect) {
        /* the journal is the truth: entries of this run are in it now (ran on some rank) */
        ndone += cnt[0];
    }
    if (write_file) {
        int cf = tsr_results_close(&rf, ndone, total);
        if (tsr_dist_agree_fail(cf != 0)) {
            if (cf) tsr_log(TSR_LOG_ERROR, "fewshot: %s", tsr_last_error());
            goto out;
        }
        if (me == 0 && rename(tmp, results) != 0) {
            tsr_log(TSR_LOG_ERROR, "fewshot: cannot rename %s to %s (%s)", tmp, results, strerror(errno));
            goto out;
        }
    }
    tsr_info("fewshot: %lld entries run in %.1f s (%lld failed)%s; %ld of %ld entries finished; %s%s", (long long)cnt[0],
             tsr_time() - t0, (long long)cnt[1], cnt[2] ? ", stopped by a signal" : "", ndone, total,
             write_file ? "results: " : "journal: ", write_file ? results : jdir);
    if (cnt[2]) {
        if (me == 0 && getenv("SLURM_JOB_ID")) {
            char cmd[128];
            snprintf(cmd, sizeof cmd, "scontrol requeue %s", getenv("SLURM_JOB_ID"));
            if (system(cmd) != 0) tsr_warn("could not requeue: '%s' failed", cmd);
        }
        rc = TSR_EXIT_REQUEUE;
    } else rc = cnt[1] ? 1 : 0;
out:
    if (rf.ncid >= 0) tsr_results_close(&rf, 0, 1);
    tsr_dist_counter_free(counter);
    free(pending);
    free(eval_steps);
    for (long i = 0; jres && done && i < (long)M * T * K * S; i++) tsr_train_result_free(&jres[i]);
    free(jres);
    free(jrank);
    free(done);
    free(ms);
    free(tasks);
    free(cfg_text);
    free(cfg);
    free(ec);
    free(sets);
    free(args);
    return rc;
}
