/* cmd_adapt.c: `tessera adapt CONFIG`: parameter-efficient training on a set of tasks, one rank.
 *
 * Tasks: data.tasks tasks made from the dataset by permuting its labels (task number n = task_offset + t;
 * task 0 keeps the labels, every other number a permutation drawn from n), so that one backbone and
 * head must serve differently-labelled tasks and routing has something to learn. data.shots > 0 draws
 * that many training examples per class and task (few-shot). Batches are sorted by task, so every run
 * of one task is one pair of GEMMs per adapter (the combination is built once per task and step).
 * Methods (configs/methods/): LoRA, bottleneck adapters (parallel / Houlsby / Pfeiffer), Poly, MHR,
 * MoSA (+ consistency, sparse baseline), MoSA x MHR, linear probe, full fine-tuning, and the few-shot
 * variants of pre-trained adapters (adapter.init + adapter.fewshot: finetune, z, mu).
 * Parameter groups: adapter weights, biases/LayerNorms (no weight decay), routing logits, head,
 * backbone, each with its own learning rate (optim.*), warmup + cosine, global norm clipping.
 * Writes into run.output_dir: config.yaml, train_log.csv, adapters.safetensors (merged for MoSA) and
 * model.safetensors (the backbone with its trained head), each atomically. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/adapt_step.h"
#include "adapters/adapters.h"
#include "build_info.h"
#include "cmd/commands.h"
#include "train/trainer.h"
#include "core/common.h"
#include "core/rng.h"
#include "train/imageset.h"
#include "data/loader.h"
#include "data/suite.h"
#include "dist/parallel.h"
#include "adapters/adapter_io.h"
#include "model/checkpoint.h"
#include "io/tsr_config.h"
#include "model/vit.h"
#include "train/optim.h"

/* label permutation of task number n over K classes (n = 0: identity) */
static void task_perm(int *perm, int K, long n, uint64_t seed) {
    for (int k = 0; k < K; k++) perm[k] = k;
    if (n == 0) return;
    tsr_rng r;
    tsr_rng_seed(&r, seed * 0x9E3779B97F4A7C15ull + (uint64_t)n * 0xBF58476D1CE4E5B9ull + 17);
    for (int i = K - 1; i > 0; i--) {
        int j = (int)(tsr_rng_u64(&r) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}


static int site_mask(const cfg_string_list *l) {
    static const char *names[TSR_NLORA] = {"q", "k", "v", "proj", "fc1", "fc2"};
    int mask = 0;
    for (int i = 0; i < l->n; i++) {
        int found = 0;
        for (int s = 0; s < TSR_NLORA; s++)
            if (strcmp(l->v[i], names[s]) == 0) mask |= 1 << s, found = 1;
        if (!found) return tsr_error("adapter.lora_sites: unknown site '%s' (expected q, k, v, proj, fc1, fc2)", l->v[i]);
    }
    if (!mask) return tsr_error("adapter.lora_sites: empty (expected some of q, k, v, proj, fc1, fc2)");
    return mask;
}

static int adapter_config_from(const tsr_config *cfg, tsr_adapter_config *ac) {
    memset(ac, 0, sizeof *ac);
    int lora = strcmp(cfg->adapter.kind, "lora") == 0;
    if (lora) {
        int mask = site_mask(&cfg->adapter.lora_sites);
        if (mask < 0) return -1;
        ac->lora_sites = mask;
        ac->lora_rank = (int)cfg->adapter.lora_rank;
        ac->lora_alpha = cfg->adapter.lora_alpha;
        ac->lora_init_peft = strcmp(cfg->adapter.lora_init, "peft") == 0;
    } else {
        const char *p = cfg->adapter.placement;
        ac->bn_sites = strcmp(p, "parallel") == 0 ? 1 << TSR_BN_PARALLEL
                       : strcmp(p, "houlsby") == 0 ? (1 << TSR_BN_HOULSBY_ATTN) | (1 << TSR_BN_MLP_SEQ)
                                                   : 1 << TSR_BN_MLP_SEQ;
        ac->bn_dim = (int)cfg->adapter.bottleneck;
        ac->bn_scale = cfg->adapter.scale;
        ac->bn_dropout = cfg->adapter.dropout;
        ac->bn_relu = strcmp(cfg->adapter.activation, "relu") == 0;
    }
    int routed = strcmp(cfg->adapter.routing, "none") != 0;
    ac->skills = routed ? (int)cfg->adapter.skills : 1;
    ac->heads = strcmp(cfg->adapter.routing, "mhr") == 0 ? (int)cfg->adapter.heads : 1;
    if (routed && ac->skills < 2)
        return tsr_error("adapter.routing %s needs adapter.skills >= 2 (got %ld)", cfg->adapter.routing, cfg->adapter.skills);
    ac->n_tasks = (int)cfg->data.tasks;
    ac->noise = cfg->adapter.noise;
    ac->tau = cfg->adapter.tau;
    ac->layer_min = 0;
    ac->layer_max = -1;
    return 0;
}

typedef struct {
    int K, ntasks;
    int *perm;        /* (ntasks, K) */
    int64_t **idx;    /* per task: training example indices */
    int64_t *nidx;
    int64_t *cursor;
} task_set;

static void tasks_build(task_set *ts, const tsr_config *cfg, const tsr_imageset *train, int K) {
    ts->K = K;
    ts->ntasks = (int)cfg->data.tasks;
    ts->perm = tsr_malloc(sizeof(int) * (size_t)ts->ntasks * K);
    ts->idx = tsr_calloc((size_t)ts->ntasks, sizeof(int64_t *));
    ts->nidx = tsr_calloc((size_t)ts->ntasks, sizeof(int64_t));
    ts->cursor = tsr_calloc((size_t)ts->ntasks, sizeof(int64_t));
    for (int t = 0; t < ts->ntasks; t++) {
        long num = cfg->data.task_offset + t;
        task_perm(ts->perm + (size_t)t * K, K, num, (uint64_t)cfg->run.seed);
        ts->idx[t] = tsr_malloc(sizeof(int64_t) * (size_t)train->n);
        tsr_rng r;
        tsr_rng_seed(&r, (uint64_t)cfg->run.seed ^ (0xF5u + (uint64_t)num * 1000003u));
        int64_t *all = ts->idx[t];
        for (int64_t i = 0; i < train->n; i++) all[i] = i;
        for (int64_t i = train->n - 1; i > 0; i--) {
            int64_t j = (int64_t)(tsr_rng_u64(&r) % (uint64_t)(i + 1)), tmp = all[i];
            all[i] = all[j];
            all[j] = tmp;
        }
        if (cfg->data.shots > 0) { /* keep the first `shots` of each class in this shuffled order */
            int64_t *cnt = tsr_calloc((size_t)K, sizeof(int64_t)), n = 0;
            for (int64_t i = 0; i < train->n; i++) {
                int y = train->y[all[i]];
                if (y >= 0 && y < K && cnt[y] < cfg->data.shots) {
                    cnt[y]++;
                    all[n++] = all[i];
                }
            }
            ts->nidx[t] = n;
            free(cnt);
        } else {
            ts->nidx[t] = train->n;
        }
    }
}

static void tasks_free(task_set *ts) {
    for (int t = 0; t < ts->ntasks; t++) free(ts->idx[t]);
    free(ts->idx); free(ts->nidx); free(ts->cursor); free(ts->perm);
}

/* Accuracy per task on the first `limit` test images (labels permuted per task). */
static double evaluate(tsr_vit *m, tsr_adapters *ad, tsr_mosa *mo, const tsr_imageset *test, const task_set *ts,
                       const int *eval_mine, int64_t limit, double *per_task) {
    int B = m->max_batch, K = m->cfg.num_classes;
    int64_t n = test->n < limit ? test->n : limit;
    size_t per = (size_t)test->C * test->S * test->S;
    int *lab = tsr_malloc(sizeof(int) * B), *tid = tsr_malloc(sizeof(int) * B);
    double mean = 0;
    if (mo) tsr_mosa_swap_merged(mo, 1);
    for (int t = 0; t < ts->ntasks; t++) {
        int64_t correct = 0;
        per_task[t] = 0;
        if (!eval_mine[t]) continue;
        for (int64_t s = 0; s < n; s += B) {
            int b = (int)(n - s < B ? n - s : B);
            for (int i = 0; i < b; i++) {
                lab[i] = ts->perm[(size_t)t * K + test->y[s + i]];
                tid[i] = t;
            }
            if (ad && tsr_adapters_begin(ad, tid, b, 0, 0, 0, NULL) != 0) tsr_fatal("%s", tsr_last_error());
            tsr_vit_forward(m, test->x + (size_t)s * per, lab, b);
            for (int i = 0; i < b; i++) {
                const float *z = m->acts.logits + (size_t)i * K;
                int best = 0;
                for (int k = 1; k < K; k++)
                    if (z[k] > z[best]) best = k;
                correct += best == lab[i];
            }
        }
        per_task[t] = (double)correct / (double)n;
    }
    tsr_dist_allreduce_sum_f64(per_task, (size_t)ts->ntasks);
    for (int t = 0; t < ts->ntasks; t++) mean += per_task[t];
    if (mo) tsr_mosa_swap_merged(mo, 0);
    free(lab);
    free(tid);
    return mean / ts->ntasks;
}

/* The global batch of a step, the same on every rank and for any number of ranks: slot j draws a task
 * and an example of it from (seed, step, j) alone (with replacement). Slot j is computed by one of the
 * task's owner ranks (j modulo the number of owners), so every rank count sees the same batch. */
static uint64_t mix3(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t x = a ^ (b * 0x9E3779B97F4A7C15ull) ^ (c * 0xC2B2AE3D27D4EB4Full);
    return tsr_splitmix64(&x);
}

typedef struct {
    int ntasks, nranks;
    int64_t *count;  /* (ntasks) training examples of each task (global) */
    int *owner0, *nowner; /* task t is computed by ranks owner0[t] + k * stride (k < nowner[t]) */
    int stride;
} sampler;

/* Ownership: with at least as many tasks as ranks, tasks are dealt to ranks balancing the examples
 * (largest first, to the least loaded rank); with fewer tasks than ranks, task t is shared by the
 * ranks r with r % ntasks == t. */
static void sampler_owners(sampler *sp, int ntasks, int nranks, const int64_t *weight, int *owner_of_task) {
    sp->ntasks = ntasks;
    sp->nranks = nranks;
    sp->owner0 = tsr_calloc((size_t)ntasks, sizeof(int));
    sp->nowner = tsr_calloc((size_t)ntasks, sizeof(int));
    if (ntasks >= nranks) {
        int64_t *load = tsr_calloc((size_t)nranks, sizeof(int64_t));
        int *order = tsr_malloc(sizeof(int) * (size_t)ntasks);
        for (int t = 0; t < ntasks; t++) order[t] = t;
        for (int i = 1; i < ntasks; i++) /* insertion sort by weight, descending, stable */
            for (int j = i; j > 0 && weight[order[j]] > weight[order[j - 1]]; j--) {
                int x = order[j];
                order[j] = order[j - 1];
                order[j - 1] = x;
            }
        for (int i = 0; i < ntasks; i++) {
            int best = 0;
            for (int r = 1; r < nranks; r++)
                if (load[r] < load[best]) best = r;
            sp->owner0[order[i]] = best;
            sp->nowner[order[i]] = 1;
            load[best] += weight[order[i]];
        }
        free(load);
        free(order);
        sp->stride = 1;
    } else {
        for (int t = 0; t < ntasks; t++) {
            sp->owner0[t] = t;
            sp->nowner[t] = (nranks - t + ntasks - 1) / ntasks;
        }
        sp->stride = ntasks;
    }
    for (int t = 0; t < ntasks; t++) owner_of_task[t] = sp->owner0[t];
}

static int owns(const sampler *sp, int t, int rank) {
    for (int k = 0; k < sp->nowner[t]; k++)
        if (sp->owner0[t] + k * sp->stride == rank) return 1;
    return 0;
}

/* This rank's slots of step `step`: tasks, examples (index within the task) and global slot numbers. */
static int sampler_local(const sampler *sp, uint64_t seed, long step, int G, int rank, int *task, int64_t *ex, int *slot) {
    int n = 0;
    for (int j = 0; j < G; j++) {
        int t = (int)(mix3(seed, (uint64_t)step, 2 * (uint64_t)j) % (uint64_t)sp->ntasks);
        int who = sp->owner0[t] + (j % sp->nowner[t]) * sp->stride;
        if (who != rank) continue;
        task[n] = t;
        ex[n] = (int64_t)(mix3(seed, (uint64_t)step, 2 * (uint64_t)j + 1) % (uint64_t)sp->count[t]);
        slot[n++] = j;
    }
    return n;
}

/* Random crop (reflection padding 2) and optional horizontal flip of one (C, S, S) image, from (seed,
 * step, slot): the same on every rank. */
static void augment_one(float *x, int C, int S, uint64_t seed, long step, int slot, int flip, float *tmp) {
    uint64_t h = mix3(seed ^ 0xa06e, (uint64_t)step, (uint64_t)slot);
    int dy = (int)(h % 5) - 2, dx = (int)((h >> 8) % 5) - 2, fl = flip && ((h >> 16) & 1);
    for (int c = 0; c < C; c++) {
        float *img = x + (size_t)c * S * S;
        memcpy(tmp, img, sizeof(float) * (size_t)S * S);
        for (int yy = 0; yy < S; yy++)
            for (int xx = 0; xx < S; xx++) {
                int sy = yy + dy, sx = (fl ? S - 1 - xx : xx) + dx;
                if (sy < 0) sy = -sy;
                if (sy >= S) sy = 2 * S - 2 - sy;
                if (sx < 0) sx = -sx;
                if (sx >= S) sx = 2 * S - 2 - sx;
                img[yy * S + xx] = tmp[sy * S + sx];
            }
    }
}

/* ---------------------------------------------------------------- checkpoints
 * OUTPUT/checkpoints/step-NNNNNNNN/{state.safetensors, DONE}: parameters (model, adapters, MoSA bias
 * copies), AdamW moments and step counts, the step, the first loss. Everything else a step needs is a
 * pure function of (seed, step) (the sampler, augmentation, routing noise, dropout, MoSA draws), so a
 * resumed run continues bit for bit. Written by rank 0 into step-N.tmp, fsynced, DONE added, then
 * renamed; --resume takes the newest directory that has DONE. */
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include "io/safetensors.h"

static void fsync_path(const char *p) {
    int fd = open(p, O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static int rm_tree_ckpt(const char *dir) {
    char p[1400];
    const char *files[] = {"state.safetensors", "DONE"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    return rmdir(dir);
}

static long latest_ckpt(const char *root, long below) {
    DIR *d = opendir(root);
    if (!d) return 0;
    long best = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long n;
        char tail[8];
        if (sscanf(e->d_name, "step-%ld%7s", &n, tail) != 1) continue;
        char done[1400];
        snprintf(done, sizeof done, "%s/%s/DONE", root, e->d_name);
        if (access(done, F_OK) == 0 && n > best && n < below) best = n;
    }
    closedir(d);
    return best;
}

static int ckpt_save(const char *out, long step, int keep, const tsr_vit *m, const tsr_adapters *ad, const tsr_mosa *mo,
                     const tsr_adamw *om, const tsr_adamw *oa, const tsr_adamw *ob, double first_loss, const char *cfg_text) {
    int rc = 0;
    if (tsr_world.rank == 0) {
        char root[1100], dir[1300], tmpd[1320], p[1400];
        snprintf(root, sizeof root, "%s/checkpoints", out);
        if (tsr_mkdirs(root) != 0) return -1;
        snprintf(dir, sizeof dir, "%s/step-%08ld", root, step);
        snprintf(tmpd, sizeof tmpd, "%s.tmp", dir);
        rm_tree_ckpt(tmpd);
        if (tsr_mkdirs(tmpd) != 0) return -1;
        tsr_st_writer *w = tsr_st_writer_new();
        int64_t sh[1];
#define ADD(name, ptr, n) do { sh[0] = (int64_t)(n); tsr_st_writer_add(w, name, TSR_DT_F32, 1, sh, ptr); } while (0)
        ADD("model", m->params_mem, m->num_params);
        ADD("opt.model.m", om->m, om->n);
        ADD("opt.model.v", om->v, om->n);
        if (ad) {
            ADD("adapters", ad->params, ad->num_params);
            ADD("opt.adapters.m", oa->m, oa->n);
            ADD("opt.adapters.v", oa->v, oa->n);
        }
        if (mo && ob) {
            ADD("mosa.bias", mo->bias_params, mo->nbias);
            ADD("opt.mosa.m", ob->m, ob->n);
            ADD("opt.mosa.v", ob->v, ob->n);
        }
#undef ADD
        char v1[32], v2[32], v3[32], v4[32], v5[40];
        snprintf(v1, sizeof v1, "%ld", step);
        snprintf(v2, sizeof v2, "%ld", om->t);
        snprintf(v3, sizeof v3, "%ld", oa ? oa->t : 0L);
        snprintf(v4, sizeof v4, "%ld", ob ? ob->t : 0L);
        snprintf(v5, sizeof v5, "%.17g", first_loss);
        tsr_st_writer_meta(w, "step", v1);
        tsr_st_writer_meta(w, "opt.model.t", v2);
        tsr_st_writer_meta(w, "opt.adapters.t", v3);
        tsr_st_writer_meta(w, "opt.mosa.t", v4);
        tsr_st_writer_meta(w, "first_loss", v5);
        tsr_st_writer_meta(w, "config", cfg_text);
        snprintf(p, sizeof p, "%s/state.safetensors", tmpd);
        rc = tsr_st_writer_write(w, p);
        tsr_st_writer_free(w);
        if (rc == 0) {
            snprintf(p, sizeof p, "%s/DONE", tmpd);
            rc = tsr_write_file_atomic(p, v1, strlen(v1));
        }
        if (rc == 0) {
            fsync_path(tmpd);
            rm_tree_ckpt(dir);
            if (rename(tmpd, dir) != 0) rc = tsr_error("%s: cannot rename to %s (%s)", tmpd, dir, strerror(errno));
            fsync_path(root);
        }
        /* keep the newest `keep` complete checkpoints */
        for (long below = step + 1, kept = 0; rc == 0;) {
            long n = latest_ckpt(root, below);
            if (n <= 0) break;
            if (++kept > keep) {
                snprintf(dir, sizeof dir, "%s/step-%08ld", root, n);
                rm_tree_ckpt(dir);
            }
            below = n;
        }
        if (rc == 0) tsr_info("checkpoint: %s/step-%08ld", root, step);
    }
    return tsr_dist_agree_fail(rc != 0) ? -1 : 0;
}

static int read_vec(const tsr_st_file *f, const char *name, float *dst, size_t n) {
    const tsr_st_tensor *t = tsr_st_find(f, name);
    if (!t) return tsr_error("%s: tensor '%s' missing", f->path, name);
    if (t->numel != (int64_t)n)
        return tsr_error("%s: tensor '%s' has %lld values, this run has %zu (a checkpoint of another configuration?)",
                         f->path, name, (long long)t->numel, n);
    return tsr_st_read_f32(f, t, dst, (int64_t)n);
}

/* Returns the step of the newest complete checkpoint (0: none), or -1. */
static long ckpt_load_latest(const char *out, tsr_vit *m, tsr_adapters *ad, tsr_mosa *mo, tsr_adamw *om, tsr_adamw *oa,
                             tsr_adamw *ob, double *first_loss) {
    char root[1100], p[1400];
    snprintf(root, sizeof root, "%s/checkpoints", out);
    long step = latest_ckpt(root, 1L << 62);
    if (step == 0) return 0;
    snprintf(p, sizeof p, "%s/step-%08ld/state.safetensors", root, step);
    tsr_st_file f;
    if (tsr_st_open(&f, p) != 0) return -1;
    int bad = read_vec(&f, "model", m->params_mem, m->num_params) || read_vec(&f, "opt.model.m", om->m, om->n) ||
              read_vec(&f, "opt.model.v", om->v, om->n);
    if (!bad && ad)
        bad = read_vec(&f, "adapters", ad->params, ad->num_params) || read_vec(&f, "opt.adapters.m", oa->m, oa->n) ||
              read_vec(&f, "opt.adapters.v", oa->v, oa->n);
    if (!bad && mo && ob)
        bad = read_vec(&f, "mosa.bias", mo->bias_params, mo->nbias) || read_vec(&f, "opt.mosa.m", ob->m, ob->n) ||
              read_vec(&f, "opt.mosa.v", ob->v, ob->n);
    if (!bad) {
        const char *t1 = tsr_st_meta(&f, "opt.model.t"), *t2 = tsr_st_meta(&f, "opt.adapters.t"),
                   *t3 = tsr_st_meta(&f, "opt.mosa.t"), *fl = tsr_st_meta(&f, "first_loss");
        if (!t1 || !t2 || !t3 || !fl) bad = tsr_error("%s: metadata (opt.*.t, first_loss) missing", p) != 0;
        else {
            om->t = atol(t1);
            if (oa) oa->t = atol(t2);
            if (ob) ob->t = atol(t3);
            *first_loss = atof(fl);
        }
    }
    tsr_st_close(&f);
    return bad ? -1 : step;
}

/* Keep the curve's header and rows up to `step` (a resumed run rewrites what follows). */
static void curve_keep_until(const char *path, long step) {
    char *text;
    size_t n;
    if (tsr_read_file(path, &text, &n) != 0) return;
    size_t keep = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && text[j] != '\n') j++;
        long s = atol(text + i);
        if (i > 0 && s > step) break;
        i = j + 1;
        keep = i < n ? i : n;
    }
    tsr_write_file_atomic(path, text, keep);
    free(text);
}

/* Tasks from a multi-task suite (data.dataset: suite): the role's task names (or every task), a
 * training loader (k shots, augmentation) and a test loader, both reading only those tasks. */
typedef struct {
    int ntasks;
    int *idx;          /* suite task index of each run task */
    int64_t *weight;   /* examples of each task in the file (ownership balance) */
    int *local;        /* run task -> index in the loaders, -1 when this rank does not own it */
    int *label_off;    /* data.joint_labels: task t's class c is model class label_off[t] + c (else 0) */
    tsr_loader train, val, test;
    int loaded, want_val;
} suite_tasks;

/* Which tasks: the role's list (or every task); checked against the file and the model. */
static int suite_select(suite_tasks *st, const tsr_config *cfg, int K) {
    memset(st, 0, sizeof *st);
    tsr_suite s;
    if (tsr_suite_open(&s, cfg->data.path) != 0) return -1;
    const cfg_string_list *role = strcmp(cfg->data.role, "source") == 0    ? &cfg->suite.source
                                  : strcmp(cfg->data.role, "train") == 0   ? &cfg->suite.train
                                  : strcmp(cfg->data.role, "heldout") == 0 ? &cfg->suite.heldout
                                                                           : NULL;
    int rc = -1;
    if (role && role->n == 0) {
        tsr_error("data.role %s: the list suite.%s is empty", cfg->data.role, cfg->data.role);
        goto out;
    }
    st->ntasks = role ? role->n : s.ntasks;
    st->idx = tsr_malloc(sizeof(int) * (size_t)st->ntasks);
    st->weight = tsr_malloc(sizeof(int64_t) * (size_t)st->ntasks);
    st->local = tsr_malloc(sizeof(int) * (size_t)st->ntasks);
    st->label_off = tsr_calloc((size_t)st->ntasks, sizeof(int));
    for (int t = 0; t < st->ntasks; t++) {
        st->idx[t] = role ? tsr_suite_find_task(&s, role->v[t]) : t;
        if (st->idx[t] < 0) {
            tsr_error("suite.%s: task '%s' is not in %s", cfg->data.role, role->v[t], cfg->data.path);
            goto out;
        }
        st->weight[t] = s.count[st->idx[t]];
        if (cfg->data.joint_labels && t + 1 < st->ntasks) st->label_off[t + 1] = st->label_off[t] + s.num_classes[st->idx[t]];
        if (cfg->data.joint_labels && st->label_off[t] + s.num_classes[st->idx[t]] > K) {
            tsr_error("data.joint_labels: the %d tasks have %d classes together, model.num_classes is %d", st->ntasks,
                      st->label_off[t] + s.num_classes[st->idx[t]], K);
            goto out;
        }
        if (s.num_classes[st->idx[t]] > K) {
            tsr_error("%s: task '%s' has %d classes but model.num_classes is %d", cfg->data.path,
                      s.task_names[st->idx[t]], s.num_classes[st->idx[t]], K);
            goto out;
        }
    }
    if (s.C != cfg->model.channels) {
        tsr_error("%s: images have %d channels, model.channels is %ld", cfg->data.path, s.C, cfg->model.channels);
        goto out;
    }
    rc = 0;
out:
    tsr_suite_close(&s);
    return rc;
}

/* Read only the tasks this rank owns (mine[t] != 0): their training examples (k shots) and test split. */
static int suite_load(suite_tasks *st, const tsr_config *cfg, const int *mine) {
    tsr_suite s;
    if (tsr_suite_open(&s, cfg->data.path) != 0) return -1;
    int *sel = tsr_malloc(sizeof(int) * (size_t)st->ntasks), n = 0, rc = -1;
    for (int t = 0; t < st->ntasks; t++) {
        st->local[t] = mine[t] ? n : -1;
        if (mine[t]) sel[n++] = st->idx[t];
    }
    float mean[16], sd[16];
    for (int c = 0; c < s.C && c < 16; c++) {
        mean[c] = (float)cfg->data.mean.v[c];
        sd[c] = (float)cfg->data.std.v[c];
    }
    tsr_loader_opts o = {(int)cfg->data.shots, (uint64_t)cfg->run.seed, 0, 0, 0, (int)cfg->model.image_size, mean, sd};
    if (n > 0) {
        if (tsr_loader_open(&st->train, &s, sel, n, &o) != 0) goto out;
        o.shots = 0;
        o.split = 2;
        if (tsr_loader_open(&st->test, &s, sel, n, &o) != 0) goto out;
        o.split = 1;
        if (st->want_val && tsr_loader_open(&st->val, &s, sel, n, &o) != 0) goto out;
        st->loaded = 1;
    }
    rc = 0;
out:
    free(sel);
    tsr_suite_close(&s);
    return rc;
}

static void suite_close(suite_tasks *st) {
    if (st->train.t) tsr_loader_close(&st->train);
    if (st->test.t) tsr_loader_close(&st->test);
    if (st->val.t) tsr_loader_close(&st->val);
    free(st->idx);
    free(st->weight);
    free(st->local);
    free(st->label_off);
    memset(st, 0, sizeof *st);
}

static double suite_evaluate(tsr_vit *m, tsr_adapters *ad, tsr_mosa *mo, suite_tasks *st, tsr_loader *ld,
                             const int *eval_mine, int64_t limit, double *per_task) {
    int B = m->max_batch, K = m->cfg.num_classes;
    size_t per = (size_t)m->cfg.channels * m->cfg.image_size * m->cfg.image_size;
    float *x = tsr_malloc(sizeof(float) * per * B);
    int *lab = tsr_malloc(sizeof(int) * B), *tid = tsr_malloc(sizeof(int) * B);
    double mean = 0;
    if (mo) tsr_mosa_swap_merged(mo, 1);
    for (int t = 0; t < st->ntasks; t++) {
        per_task[t] = 0;
        if (!eval_mine[t]) continue;
        int lt = st->local[t];
        int64_t n = tsr_loader_count(ld, lt), correct = 0;
        if (limit > 0 && n > limit) n = limit;
        for (int64_t s0 = 0; s0 < n; s0 += B) {
            int b = (int)(n - s0 < B ? n - s0 : B);
            for (int i = 0; i < b; i++) {
                if (tsr_loader_get(ld, lt, s0 + i, x + (size_t)i * per, &lab[i]) != 0) tsr_fatal("%s", tsr_last_error());
                lab[i] += st->label_off[t];
                tid[i] = t;
            }
            if (ad && tsr_adapters_begin(ad, tid, b, 0, 0, 0, NULL) != 0) tsr_fatal("%s", tsr_last_error());
            tsr_vit_forward(m, x, lab, b);
            for (int i = 0; i < b; i++) {
                const float *z = m->acts.logits + (size_t)i * K;
                int best = 0;
                for (int k = 1; k < K; k++)
                    if (z[k] > z[best]) best = k;
                correct += best == lab[i];
            }
        }
        per_task[t] = n ? (double)correct / (double)n : 0;
    }
    tsr_dist_allreduce_sum_f64(per_task, (size_t)st->ntasks);
    for (int t = 0; t < st->ntasks; t++) mean += per_task[t];
    if (mo) tsr_mosa_swap_merged(mo, 0);
    free(x);
    free(lab);
    free(tid);
    return mean / st->ntasks;
}

int tsr_cmd_adapt(int argc, char **argv) {
    const char *cfg_path;
    int nset;
    char **sets;
    /* --resume: continue from the newest complete checkpoint in run.output_dir/checkpoints */
    int resume = 0, na = 0;
    char **args = tsr_calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 0; i < argc; i++) {
        if (i > 0 && strcmp(argv[i], "--resume") == 0) resume = 1;
        else args[na++] = argv[i];
    }
    argc = na;
    argv = args;
    int pr = tsr_parse_config_cmdline(argv[0], "parameter-efficient training on label-permutation tasks; see configs/methods/ and docs/ADAPTERS.md", argc, argv, &cfg_path, &nset, &sets);
    if (pr != 0) {
        free(sets);
        free(args);
        return pr == 1 ? 0 : 2;
    }
    tsr_config *cfg = tsr_malloc(sizeof *cfg);
    char *cfg_text = tsr_run_setup(cfg, argv[0], cfg_path, nset, sets);
    int rc = 1;
    if (cfg_text) {
        tsr_train_opts o = {.resume = resume};
        rc = tsr_train_run(cfg, cfg_text, &o, NULL);
    }
    free(cfg_text);
    free(cfg);
    free(sets);
    free(args);
    return rc;
}

void tsr_train_result_free(tsr_train_result *r) {
    if (!r) return;
    free(r->eval_step);
    free(r->train_loss);
    free(r->val_accuracy);
    free(r->test_accuracy);
    free(r->grad_rows);
    free(r->routing);
    memset(r, 0, sizeof *r);
}

int tsr_train_run(const tsr_config *cfg, const char *cfg_text, const tsr_train_opts *topt, tsr_train_result *res) {
    int resume = topt->resume, quiet = topt->quiet;
    double t_begin = tsr_time();
    int rc = 1;
    tsr_imageset train = {0}, test = {0};
    tsr_vit m;
    memset(&m, 0, sizeof m);
    tsr_adapters ad, pre;
    memset(&ad, 0, sizeof ad);
    memset(&pre, 0, sizeof pre);
    tsr_mosa mo;
    memset(&mo, 0, sizeof mo);
    tsr_adamw opt_m, opt_ad, opt_mb;
    memset(&opt_m, 0, sizeof opt_m);
    memset(&opt_ad, 0, sizeof opt_ad);
    memset(&opt_mb, 0, sizeof opt_mb);
    task_set ts;
    memset(&ts, 0, sizeof ts);
    suite_tasks st;
    memset(&st, 0, sizeof st);
    int use_suite = 0, *mine = NULL, *eval_mine = NULL;
    sampler sp;
    memset(&sp, 0, sizeof sp);
    FILE *curve = NULL;
    char curve_tmp[1100] = "", curve_path[1100] = "", path[1100];
    double *per_task = NULL;
    float *xb = NULL, *sync = NULL;
    int *yb = NULL, *tb = NULL;

    int K = (int)cfg->model.num_classes, B = (int)cfg->train.batch_size, ntasks;
    use_suite = strcmp(cfg->data.dataset, "suite") == 0;
    int R = tsr_world.size, me = tsr_world.rank;
    if (use_suite) {
        if (suite_select(&st, cfg, K) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        ntasks = st.ntasks;
    } else {
        if (tsr_imageset_load(cfg, &train, &test) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        tasks_build(&ts, cfg, &train, K);
        ntasks = ts.ntasks;
    }
    /* ownership of tasks by ranks, and the global example counts of the sampler */
    int *owner = tsr_malloc(sizeof(int) * (size_t)ntasks);
    mine = tsr_calloc((size_t)ntasks, sizeof(int));
    eval_mine = tsr_calloc((size_t)ntasks, sizeof(int));
    {
        int64_t *w = tsr_malloc(sizeof(int64_t) * (size_t)ntasks);
        for (int t = 0; t < ntasks; t++) w[t] = use_suite ? st.weight[t] : ts.nidx[t];
        sampler_owners(&sp, ntasks, R, w, owner);
        free(w);
    }
    for (int t = 0; t < ntasks; t++) {
        mine[t] = topt->grad_examples > 0 ? t % R == me : owns(&sp, t, me);
        eval_mine[t] = topt->grad_examples > 0 ? mine[t] : owner[t] == me;
    }
    free(owner);
    sp.count = tsr_calloc((size_t)ntasks, sizeof(int64_t));
    if (use_suite) {
        st.want_val = topt->want_val;
        if (suite_load(&st, cfg, mine) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        for (int t = 0; t < ntasks; t++)
            if (eval_mine[t]) sp.count[t] = tsr_loader_count(&st.train, st.local[t]);
    } else {
        for (int t = 0; t < ntasks; t++)
            if (eval_mine[t]) sp.count[t] = ts.nidx[t];
    }
    tsr_dist_allreduce_sum_i64(sp.count, (size_t)ntasks);
    {
        int64_t ntr = 0, nmine = 0;
        for (int t = 0; t < ntasks; t++) ntr += sp.count[t], nmine += mine[t];
        tsr_info("data: %s: %d tasks (%s), %lld training examples (%s), %d ranks (rank 0 owns %lld tasks)",
                 cfg->data.path, ntasks, use_suite ? cfg->data.role : "label permutations", (long long)ntr,
                 cfg->data.shots > 0 ? "k shots" : "all", R, (long long)nmine);
        for (int t = 0; t < ntasks; t++)
            if (sp.count[t] < 1) {
                tsr_log(TSR_LOG_ERROR, "data: task %d has no training examples", t);
                goto out;
            }
    }
    tsr_vit_config vc = {(int)cfg->model.image_size, (int)cfg->model.patch_size, (int)cfg->model.channels,
                         (int)cfg->model.dim, (int)cfg->model.depth, (int)cfg->model.heads,
                         (int)cfg->model.mlp_dim, (int)cfg->model.num_classes, cfg->model.ln_eps};
    if (tsr_vit_create(&m, &vc, B) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    if (cfg->run.init[0]) {
        if (tsr_ckpt_load_vit(&m, cfg->run.init, cfg->run.reset_head ? 2 : 1) != 0) {
            tsr_log(TSR_LOG_ERROR, "run.init: %s", tsr_last_error());
            goto out;
        }
        if (cfg->run.reset_head) { /* new tasks: a zero head (the adapters start from zero updates too) */
            size_t hoff = (size_t)(m.params.headw - m.params_mem);
            memset(m.params_mem + hoff, 0, sizeof(float) * (m.num_params - hoff));
        }
        tsr_info("backbone: %s%s", cfg->run.init, cfg->run.reset_head ? " (its classifier replaced by a zero head)" : "");
    } else {
        tsr_vit_init_random(&m, (uint64_t)cfg->run.seed);
        tsr_info("backbone: random initialisation (run.init is empty)");
    }

    /* adapters */
    int use_ad = strcmp(cfg->adapter.kind, "none") != 0 && strcmp(cfg->adapt.mode, "probe") != 0;
    int z_only = 0;
    if (use_ad) {
        tsr_adapter_config ac;
        if (cfg->adapter.init[0]) {
            int depth, dim, mlp;
            if (tsr_adapters_load_config(cfg->adapter.init, &ac, &depth, &dim, &mlp) != 0) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s", tsr_last_error());
                goto out;
            }
            if (depth != vc.depth || dim != vc.dim || mlp != vc.mlp_dim) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s was made for depth %d, dim %d, mlp %d; the model has %d, %d, %d",
                        cfg->adapter.init, depth, dim, mlp, vc.depth, vc.dim, vc.mlp_dim);
                goto out;
            }
            if (tsr_adapters_create(&pre, &ac, vc.depth, vc.dim, vc.mlp_dim, m.tokens, B) != 0) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s", tsr_last_error());
                goto out;
            }
            pre.ln_eps = vc.ln_eps;
            if (tsr_adapters_load(&pre, cfg->adapter.init) != 0) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s", tsr_last_error());
                goto out;
            }
            const char *v = cfg->adapter.fewshot;
            tsr_adapter_config nc = ac;
            nc.n_tasks = ntasks;
            if (strcmp(v, "mu") == 0) {
                nc.skills = 1;
                nc.noise = 0;
            }
            if (strcmp(v, "none") == 0 && ac.skills > 1 && ac.n_tasks != ntasks) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s routes %d tasks but this run has %d (HINT: adapter.fewshot "
                        "finetune or z gives the new tasks fresh routing rows)", cfg->adapter.init, ac.n_tasks, ntasks);
                goto out;
            }
            if (tsr_adapters_create(&ad, &nc, vc.depth, vc.dim, vc.mlp_dim, m.tokens, B) != 0) {
                tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                goto out;
            }
            if (strcmp(v, "mu") == 0) tsr_adapters_average_skills(&pre, &ad);
            else tsr_adapters_copy_skills(&pre, &ad, (uint64_t)cfg->run.seed);
            if (strcmp(v, "none") == 0 && ac.skills > 1) /* keep the learned rows */
                memcpy(ad.params + ad.off_Z, pre.params + pre.off_Z, sizeof(float) * (ad.num_params - ad.off_Z));
            z_only = strcmp(v, "z") == 0;
            if (z_only && ac.skills < 2) {
                tsr_log(TSR_LOG_ERROR, "adapter.fewshot z trains only routing rows, but %s has no routing (skills 1)",
                        cfg->adapter.init);
                goto out;
            }
            tsr_info("adapters: from %s (fewshot %s): the file's adapter configuration is used", cfg->adapter.init, v);
        } else {
            if (adapter_config_from(cfg, &ac) == 0) ac.n_tasks = ntasks;
            else {
                tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                goto out;
            }
            if (tsr_adapters_create(&ad, &ac, vc.depth, vc.dim, vc.mlp_dim, m.tokens, B) != 0) {
                tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                goto out;
            }
            tsr_adapters_init(&ad, (uint64_t)cfg->run.seed + 1);
        }
        ad.ln_eps = vc.ln_eps;
        m.ad = &ad;
        if (cfg->mosa.modules > 0) {
            int split = strcmp(cfg->mosa.split, "up") == 0 ? TSR_MOSA_SPLIT_UP
                        : strcmp(cfg->mosa.split, "down") == 0 ? TSR_MOSA_SPLIT_DOWN
                                                               : TSR_MOSA_SPLIT_UP | TSR_MOSA_SPLIT_DOWN;
            if (tsr_mosa_create(&mo, &ad, (int)cfg->mosa.modules, split, cfg->mosa.baseline, (uint64_t)cfg->run.seed) != 0) {
                tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                goto out;
            }
        }
    }
    tsr_mosa *mop = mo.N > 0 ? &mo : NULL;

    /* parameter groups */
    tsr_vit_trainable tr = TSR_VIT_ADAPTERS;
    if (strcmp(cfg->adapt.mode, "probe") == 0) tr = (tsr_vit_trainable){0, 0, 0, 1, 0, 0};
    if (strcmp(cfg->adapt.mode, "full") == 0) tr = TSR_VIT_FULL;
    if (!use_ad) tr.adapters = 0;
    size_t head_off = (size_t)(m.params.headw - m.params_mem), trainable = 0;
    tsr_adamw_init(&opt_m, m.num_params, 0.9, 0.999, 1e-8);
    tsr_adamw_add_group(&opt_m, head_off, m.num_params - head_off, cfg->optim.head_lr, cfg->optim.head_wd);
    trainable += m.num_params - head_off;
    if (tr.blocks) {
        tsr_adamw_add_group(&opt_m, 0, head_off, cfg->optim.backbone_lr, cfg->optim.backbone_wd);
        trainable += head_off;
    }
    if (use_ad) {
        tsr_adamw_init(&opt_ad, ad.num_params, 0.9, 0.999, 1e-8);
        if (!z_only) {
            if (ad.off_bias > 0) tsr_adamw_add_group(&opt_ad, 0, ad.off_bias, cfg->optim.adapter_lr, cfg->optim.adapter_wd);
            if (ad.off_Z > ad.off_bias) tsr_adamw_add_group(&opt_ad, ad.off_bias, ad.off_Z - ad.off_bias, cfg->optim.adapter_lr, 0);
            trainable += ad.off_Z;
        }
        if (ad.num_params > ad.off_Z) {
            tsr_adamw_add_group(&opt_ad, ad.off_Z, ad.num_params - ad.off_Z, cfg->optim.routing_lr, cfg->optim.routing_wd);
            trainable += ad.num_params - ad.off_Z;
        }
        if (mop && mo.nbias) {
            tsr_adamw_init(&opt_mb, mo.nbias, 0.9, 0.999, 1e-8);
            tsr_adamw_add_group(&opt_mb, 0, mo.nbias, cfg->optim.adapter_lr, 0);
            trainable += mo.nbias;
        }
    }
    tsr_info("method: mode %s, adapter %s, routing %s%s, %d modules, trainable parameters %zu (backbone %zu)",
             cfg->adapt.mode, use_ad ? cfg->adapter.kind : "none", use_ad ? cfg->adapter.routing : "none",
             mop ? (cfg->mosa.baseline ? ", sparse baseline" : ", MoSA") : "", use_ad ? ad.n_mod : 0, trainable,
             m.num_params);

    /* the flat vector of everything trained: synchronised by one all-reduce per step */
    size_t nm_sync = tr.blocks ? m.num_params : m.num_params - head_off, m_sync_off = tr.blocks ? 0 : head_off;
    size_t nsync = nm_sync + (use_ad ? ad.num_params : 0) + (opt_mb.m ? mo.nbias : 0);
    sync = tsr_malloc(sizeof(float) * (nsync ? nsync : 1));
    float *bufs[3] = {m.grads_mem + m_sync_off, use_ad ? ad.grads : NULL, opt_mb.m ? mo.bias_grads : NULL};
    size_t lens[3] = {nm_sync, use_ad ? ad.num_params : 0, opt_mb.m ? mo.nbias : 0};
    float *pbufs[3] = {m.params_mem + m_sync_off, use_ad ? ad.params : NULL, opt_mb.m ? mo.bias_params : NULL};
    tsr_adamw *opts[3] = {&opt_m, use_ad ? &opt_ad : NULL, opt_mb.m ? &opt_mb : NULL};
    size_t bases[3] = {m_sync_off, 0, 0};
    /* Sharded optimizer: rank r owns the slice [soff, soff + slen) of the flat trained vector; gradients are
     * reduce-scattered, each rank's AdamW updates (and keeps moments for) its slice only, parameters are
     * all-gathered. Implemented by cutting every AdamW group down to this rank's slice: the moments of
     * other slices are never touched (their pages are never resident). */
    int sharded = R > 1 && strcmp(cfg->train.sync, "sharded") == 0;
    size_t soff = 0, slen = nsync;
    if (sharded) {
        tsr_dist_slice(nsync, me, &soff, &slen);
        size_t pk = 0;
        for (int k = 0; k < 3; k++) {
            if (!opts[k]) {
                pk += lens[k];
                continue;
            }
            /* this rank's part of segment k, in buffer coordinates */
            size_t lo = soff > pk ? soff - pk : 0, hi = soff + slen < pk + lens[k] ? soff + slen - pk : lens[k];
            if (soff + slen <= pk || soff >= pk + lens[k]) lo = hi = 0;
            lo += bases[k];
            hi += bases[k];
            tsr_adamw *o2 = opts[k];
            tsr_param_group g[TSR_ADAMW_MAX_GROUPS];
            int ng = o2->ngroups, n2 = 0;
            memcpy(g, o2->groups, sizeof g);
            for (int i = 0; i < ng; i++) {
                size_t a = g[i].offset > lo ? g[i].offset : lo, b = g[i].offset + g[i].count < hi ? g[i].offset + g[i].count : hi;
                if (a < b) {
                    o2->groups[n2] = g[i];
                    o2->groups[n2].offset = a;
                    o2->groups[n2].count = b - a;
                    n2++;
                }
            }
            o2->ngroups = n2;
            pk += lens[k];
        }
        tsr_info("optimizer: sharded over %d ranks (rank 0 updates %zu of %zu values)", R, slen, nsync);
    }

    if (topt->grad_examples > 0) {
        if (!use_suite || !use_ad || ad.off_Z == 0) {
            tsr_log(TSR_LOG_ERROR, "task gradients need a suite (data.dataset: suite) and adapters with parameters");
            goto out;
        }
        size_t P = ad.off_Z, per = (size_t)vc.channels * vc.image_size * vc.image_size;
        int nl = 0;
        for (int t = 0; t < ntasks; t++) nl += mine[t];
        double *rows = tsr_calloc((size_t)(nl > 0 ? nl : 1) * P, sizeof(double));
        float *x = tsr_malloc(sizeof(float) * per * B);
        int *y = tsr_malloc(sizeof(int) * B), *tid = tsr_malloc(sizeof(int) * B), li = 0;
        for (int t = 0; t < ntasks; t++) {
            if (!mine[t]) continue;
            int lt = st.local[t];
            int64_t n = tsr_loader_count(&st.train, lt);
            if (n > topt->grad_examples) n = topt->grad_examples;
            double *row = rows + (size_t)li * P;
            for (int64_t s0 = 0; s0 < n; s0 += B) {
                int b = (int)(n - s0 < B ? n - s0 : B);
                for (int i = 0; i < b; i++) {
                    if (tsr_loader_get(&st.train, lt, s0 + i, x + (size_t)i * per, &y[i]) != 0) tsr_fatal("%s", tsr_last_error());
                    y[i] += st.label_off[t];
                    tid[i] = t;
                }
                tsr_vit_zero_grad(&m);
                tsr_adapters_zero_grad(&ad);
                tsr_adapt_loss_grad(&m, &ad, NULL, &tr, x, y, tid, b, 0, (uint64_t)cfg->run.seed, 0, NULL);
                for (size_t j = 0; j < P; j++) row[j] += (double)ad.grads[j] * b / (double)n; /* mean over n */
            }
            li++;
        }
        free(x);
        free(y);
        free(tid);
        if (res) {
            memset(res, 0, sizeof *res);
            res->grad_rows = rows;
            res->grad_P = P;
            res->grad_ntasks = ntasks;
            res->trainable = trainable;
            size_t nz = ad.num_params - ad.off_Z, cols = (size_t)ad.cfg.heads * ad.cfg.skills;
            if (nz > 0 && ad.cfg.skills > 1) {
                res->routing = tsr_malloc(sizeof(float) * nz);
                memcpy(res->routing, ad.params + ad.off_Z, sizeof(float) * nz);
                res->routing_cols = (int)cols;
                res->routing_modules = (int)(nz / (cols * (size_t)ntasks));
            }
        } else free(rows);
        rc = 0;
        goto out;
    }

    long steps = cfg->train.steps, start_step = 0;
    if (res) {
        memset(res, 0, sizeof *res);
        size_t ne = (size_t)(steps / cfg->train.eval_every + 2);
        res->eval_step = tsr_calloc(ne, sizeof(long));
        res->train_loss = tsr_calloc(ne, sizeof(double));
        res->val_accuracy = tsr_calloc(ne, sizeof(double));
        res->test_accuracy = tsr_calloc(ne, sizeof(double));
        res->best_val_accuracy = res->test_at_best_val = res->test_accuracy_final = NAN;
        res->best_val_step = -1;
    }
    double first_loss = NAN, last_loss = NAN;
    if (resume) {
        long got = ckpt_load_latest(cfg->run.output_dir, &m, use_ad ? &ad : NULL, mop, &opt_m, use_ad ? &opt_ad : NULL,
                                    opt_mb.m ? &opt_mb : NULL, &first_loss);
        if (got < 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        start_step = got;
        if (got > 0) tsr_info("resume: from the checkpoint of step %ld", got);
        else tsr_info("resume: no complete checkpoint in %s/checkpoints: starting at step 0", cfg->run.output_dir);
    }
    snprintf(curve_path, sizeof curve_path, "%s/train_log.csv", cfg->run.output_dir);
    snprintf(curve_tmp, sizeof curve_tmp, "%s.tmp", curve_path);
    if (me == 0 && !quiet) {
        if (start_step > 0) curve_keep_until(curve_path, start_step);
        curve = fopen(curve_path, start_step > 0 ? "a" : "w");
        if (!curve) {
            tsr_log(TSR_LOG_ERROR, "%s: cannot create (%s)", curve_path, strerror(errno));
            goto out;
        }
        if (start_step == 0) fprintf(curve, "step,lr_factor,train_loss,grad_norm,test_accuracy,images_per_s\n");
    }

    size_t per = (size_t)vc.channels * vc.image_size * vc.image_size;
    xb = tsr_malloc(sizeof(float) * per * B);
    yb = tsr_malloc(sizeof(int) * B);
    tb = tsr_malloc(sizeof(int) * B);
    int *slot = tsr_malloc(sizeof(int) * B);
    int64_t *exi = tsr_malloc(sizeof(int64_t) * B);
    float *tmp_img = tsr_malloc(sizeof(float) * per);
    per_task = tsr_calloc((size_t)ntasks, sizeof(double));
    tsr_dist_install_stop_signals();
    double t_start = tsr_time(), t_win = t_start, loss_win = 0;
    int n_win = 0, stopped = 0;

    for (long step = start_step; step < steps; step++) {
        /* this rank's share of the global batch */
        int Bl = sampler_local(&sp, (uint64_t)cfg->run.seed, step, B, me, tb, exi, slot);
        for (int i = 0; i < Bl; i++) {
            int t = tb[i];
            if (use_suite) {
                if (tsr_loader_get(&st.train, st.local[t], exi[i], xb + (size_t)i * per, &yb[i]) != 0) {
                    tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                    goto out;
                }
                yb[i] += st.label_off[t];
            } else {
                int64_t e = ts.idx[t][exi[i]];
                memcpy(xb + (size_t)i * per, train.x + (size_t)e * per, sizeof(float) * per);
                yb[i] = ts.perm[(size_t)t * K + train.y[e]];
            }
            if (cfg->data.augment)
                augment_one(xb + (size_t)i * per, vc.channels, vc.image_size, (uint64_t)cfg->run.seed, step, slot[i],
                            cfg->data.flip, tmp_img);
        }
        double lrf = tsr_lr_schedule(step, steps, cfg->train.warmup_steps, 1.0, 0.0);
        tsr_vit_zero_grad(&m);
        if (use_ad) tsr_adapters_zero_grad(&ad);
        if (mop && mo.nbias) memset(mo.bias_grads, 0, sizeof(float) * mo.nbias);
        double lsum = 0;
        if (Bl > 0) {
            double loss = tsr_adapt_loss_grad(&m, use_ad ? &ad : NULL, mop, &tr, xb, yb, tb, Bl, step,
                                              (uint64_t)cfg->run.seed, mop ? cfg->mosa.consistency : 0, NULL);
            lsum = loss * Bl;
        }
        /* fault injection for the tests: a NaN loss on the last rank at a given step */
        const char *fault = getenv("TESSERA_FAULT_NAN_STEP");
        if (fault && atol(fault) == step && me == R - 1) lsum = NAN;
        /* local mean -> share of the global mean; one all-reduce of every trained gradient and the loss */
        size_t o = 0;
        for (int k = 0; k < 3; k++) {
            for (size_t i = 0; i < lens[k]; i++) sync[o + i] = bufs[k][i] * (float)Bl / (float)B;
            o += lens[k];
        }
        if (sharded) tsr_dist_reduce_scatter_sum_f32(sync, nsync);
        else tsr_dist_allreduce_sum_f32(sync, nsync);
        double lg = lsum;
        tsr_dist_allreduce_sum_f64(&lg, 1);
        double loss = lg / B;
        o = 0;
        for (int k = 0; k < 3; k++) {
            if (lens[k]) memcpy(bufs[k], sync + o, sizeof(float) * lens[k]);
            o += lens[k];
        }
        if (!isfinite(loss)) {
            tsr_log(TSR_LOG_ERROR, "adapt: loss is %g at step %ld: diverged (HINT: lower optim.*_lr); the last good "
                    "checkpoint (if any) is kept in %s/checkpoints", loss, step, cfg->run.output_dir);
            goto out;
        }
        if (step == 0) first_loss = loss;
        /* global gradient norm over every trained buffer (identical on every rank after the all-reduce) */
        double gsq = 0;
        for (size_t i = soff; i < soff + slen; i++) gsq += (double)sync[i] * sync[i];
        if (sharded) tsr_dist_allreduce_sum_f64(&gsq, 1);
        double gn = sqrt(gsq);
        if (cfg->train.grad_clip > 0 && gn > cfg->train.grad_clip) {
            float sc = (float)(cfg->train.grad_clip / (gn + 1e-6));
            for (int k = 0; k < 3; k++)
                for (size_t i = 0; i < lens[k]; i++) bufs[k][i] *= sc;
        }
        tsr_adamw_step(&opt_m, m.params_mem, m.grads_mem, lrf);
        if (use_ad) tsr_adamw_step(&opt_ad, ad.params, ad.grads, lrf);
        if (opt_mb.m) tsr_adamw_step(&opt_mb, mo.bias_params, mo.bias_grads, lrf);
        if (sharded) { /* every rank's updated slice to every rank */
            o = 0;
            for (int k = 0; k < 3; k++) {
                for (size_t i = 0; i < lens[k]; i++)
                    if (o + i >= soff && o + i < soff + slen) sync[o + i] = pbufs[k][i];
                o += lens[k];
            }
            tsr_dist_allgather_f32(sync, nsync);
            o = 0;
            for (int k = 0; k < 3; k++) {
                if (lens[k]) memcpy(pbufs[k], sync + o, sizeof(float) * lens[k]);
                o += lens[k];
            }
        }
        loss_win += loss;
        n_win++;

        int last = step + 1 == steps;
        int do_eval = (step + 1) % cfg->train.eval_every == 0 || last;
        if ((step + 1) % cfg->train.log_every == 0 || do_eval) {
            double now = tsr_time(), ips = n_win * B / (now - t_win), acc = NAN;
            double eta = (steps - step - 1) * (now - t_start) / (step + 1 - start_step);
            int64_t lim = last ? (cfg->train.eval_limit > 0 ? cfg->train.eval_limit : 0) : 1000;
            double vacc = NAN;
            if (do_eval) {
                acc = use_suite ? suite_evaluate(&m, use_ad ? &ad : NULL, mop, &st, &st.test, eval_mine, lim, per_task)
                                : evaluate(&m, use_ad ? &ad : NULL, mop, &test, &ts, eval_mine, lim > 0 ? lim : test.n,
                                           per_task);
                if (use_suite && st.want_val)
                    vacc = suite_evaluate(&m, use_ad ? &ad : NULL, mop, &st, &st.val, eval_mine, 0, per_task);
            }
            last_loss = loss_win / n_win; /* reported: the mean over the last logging window */
            if (do_eval && res) {
                int k = res->n_eval++;
                res->eval_step[k] = step + 1;
                res->train_loss[k] = last_loss;
                res->val_accuracy[k] = vacc;
                res->test_accuracy[k] = acc;
                if (isfinite(vacc) && !(vacc <= res->best_val_accuracy)) {
                    res->best_val_accuracy = vacc;
                    res->best_val_step = step + 1;
                    res->test_at_best_val = acc;
                }
                if (last) res->test_accuracy_final = acc;
            }
            tsr_info("step %6ld/%ld  loss %.4f  lr x%.3f  |g| %.3f  %7.1f img/s  ETA %4.0f s", step + 1, steps,
                     last_loss, lrf, gn, ips, eta);
            if (do_eval)
                tsr_info("eval  %6ld  mean test accuracy over %d tasks %.4f (%s)", step + 1, ntasks, acc,
                         last && cfg->train.eval_limit == 0 ? "full test set" : "first test images");
            if (curve) {
                fprintf(curve, "%ld,%.6f,%.6f,%.6f,%.6f,%.2f\n", step + 1, lrf, loss_win / n_win, gn, acc, ips);
                fflush(curve);
            }
            loss_win = 0;
            n_win = 0;
            t_win = tsr_time();
        }
        int stop = tsr_dist_stop_requested();
        if (stop && quiet) { /* a sweep entry: abandoned, not recorded */
            stopped = 1;
            break;
        }
        if (!quiet && ((cfg->run.checkpoint_every > 0 && (step + 1) % cfg->run.checkpoint_every == 0) || stop)) {
            if (sharded) /* the moments of every slice to rank 0, which writes the checkpoint */
                for (int mv = 0; mv < 2; mv++) {
                    o = 0;
                    for (int k = 0; k < 3; k++) {
                        if (opts[k]) {
                            float *src = (mv ? opts[k]->v : opts[k]->m) + bases[k];
                            memcpy(sync + o, src, sizeof(float) * lens[k]);
                        }
                        o += lens[k];
                    }
                    tsr_dist_gather_f32(sync, nsync, 0);
                    o = 0;
                    for (int k = 0; k < 3; k++) {
                        if (opts[k] && me == 0) memcpy((mv ? opts[k]->v : opts[k]->m) + bases[k], sync + o, sizeof(float) * lens[k]);
                        o += lens[k];
                    }
                }
            if (ckpt_save(cfg->run.output_dir, step + 1, (int)cfg->run.keep_checkpoints, &m, use_ad ? &ad : NULL, mop,
                          &opt_m, use_ad ? &opt_ad : NULL, opt_mb.m ? &opt_mb : NULL, first_loss, cfg_text) != 0) {
                tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                goto out;
            }
        }
        if (stop) {
            tsr_info("adapt: stop signal: checkpoint of step %ld written in %s/checkpoints; resubmit with --resume",
                     step + 1, cfg->run.output_dir);
            stopped = 1;
            break;
        }
    }
    free(slot);
    free(exi);
    free(tmp_img);
    if (curve) {
        fclose(curve);
        curve = NULL;
    }
    if (stopped) {
        if (!quiet && me == 0 && getenv("SLURM_JOB_ID")) { /* submitit's way: requeue the job, it resumes */
            char cmd[128];
            snprintf(cmd, sizeof cmd, "scontrol requeue %s", getenv("SLURM_JOB_ID"));
            if (system(cmd) != 0) tsr_warn("could not requeue: '%s' failed", cmd);
        }
        rc = TSR_EXIT_REQUEUE;
        goto out;
    }
    if (res) {
        res->first_loss = first_loss;
        res->last_loss = last_loss;
        res->trainable = trainable;
        res->wall_time = tsr_time() - t_begin;
    }
    if (me != 0 || quiet) {
        rc = 0;
        goto out;
    }
    char tp[32], fl[32], ll[32];
    snprintf(tp, sizeof tp, "%zu", trainable);
    snprintf(fl, sizeof fl, "%.6f", first_loss);
    snprintf(ll, sizeof ll, "%.6f", last_loss);
    const char *keys[] = {"tessera_version", "git_commit", "config", "trainable_parameters", "first_loss", "last_loss"};
    const char *vals[] = {TSR_VERSION, TSR_GIT_COMMIT, cfg_text, tp, fl, ll};
    if (use_ad) {
        snprintf(path, sizeof path, "%s/adapters.safetensors", cfg->run.output_dir);
        if (mop) tsr_mosa_swap_merged(mop, 1); /* one dense adapter: the mean over modules */
        int w = tsr_adapters_save(&ad, path, 6, keys, vals);
        if (mop) tsr_mosa_swap_merged(mop, 0);
        if (w != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", cfg->run.output_dir);
    if (tsr_ckpt_save_vit(&m, path, TSR_NAMING_TIMM, 6, keys, vals) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    tsr_info("adapt: loss %.4f -> %.4f; wrote %s/{%smodel.safetensors,train_log.csv,config.yaml} (%.1f s)", first_loss,
             last_loss, cfg->run.output_dir, use_ad ? "adapters.safetensors," : "", tsr_time() - t_start);
    rc = 0;
out:
    if (curve) fclose(curve);
    free(sync);
    free(per_task); free(xb); free(yb); free(tb);
    tsr_imageset_free(&train);
    tsr_imageset_free(&test);
    if (ts.perm) tasks_free(&ts);
    suite_close(&st);
    free(mine);
    free(eval_mine);
    free(sp.count);
    free(sp.owner0);
    free(sp.nowner);
    if (opt_m.m) tsr_adamw_free(&opt_m);
    if (opt_ad.m) tsr_adamw_free(&opt_ad);
    if (opt_mb.m) tsr_adamw_free(&opt_mb);
    if (mo.N) tsr_mosa_destroy(&mo);
    if (ad.params) tsr_adapters_destroy(&ad);
    if (pre.params) tsr_adapters_destroy(&pre);
    if (m.params_mem) tsr_vit_destroy(&m);
    return rc;
}
