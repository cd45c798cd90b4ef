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
#include "core/common.h"
#include "core/rng.h"
#include "data/imageset.h"
#include "data/loader.h"
#include "data/suite.h"
#include "dist/parallel.h"
#include "io/adapter_io.h"
#include "io/checkpoint.h"
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
                       int64_t limit, double *per_task) {
    int B = m->max_batch, K = m->cfg.num_classes;
    int64_t n = test->n < limit ? test->n : limit;
    size_t per = (size_t)test->C * test->S * test->S;
    int *lab = tsr_malloc(sizeof(int) * B), *tid = tsr_malloc(sizeof(int) * B);
    double mean = 0;
    if (mo) tsr_mosa_swap_merged(mo, 1);
    for (int t = 0; t < ts->ntasks; t++) {
        int64_t correct = 0;
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
        mean += per_task[t];
    }
    if (mo) tsr_mosa_swap_merged(mo, 0);
    free(lab);
    free(tid);
    return mean / ts->ntasks;
}

/* Tasks from a multi-task suite (data.dataset: suite): the role's task names (or every task), a
 * training loader (k shots, augmentation) and a test loader, both reading only those tasks. */
typedef struct {
    int ntasks;
    int *idx;
    tsr_loader train, test;
} suite_tasks;

static int suite_open(suite_tasks *st, const tsr_config *cfg, int K) {
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
    for (int t = 0; t < st->ntasks; t++) {
        st->idx[t] = role ? tsr_suite_find_task(&s, role->v[t]) : t;
        if (st->idx[t] < 0) {
            tsr_error("suite.%s: task '%s' is not in %s", cfg->data.role, role->v[t], cfg->data.path);
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
    float mean[16], sd[16];
    for (int c = 0; c < s.C && c < 16; c++) {
        mean[c] = (float)cfg->data.mean.v[c];
        sd[c] = (float)cfg->data.std.v[c];
    }
    tsr_loader_opts o = {(int)cfg->data.shots, (uint64_t)cfg->run.seed, 0, cfg->data.augment, cfg->data.flip,
                         (int)cfg->model.image_size, mean, sd};
    if (tsr_loader_open(&st->train, &s, st->idx, st->ntasks, &o) != 0) goto out;
    o.shots = 0;
    o.split = 2;
    o.augment = 0;
    if (tsr_loader_open(&st->test, &s, st->idx, st->ntasks, &o) != 0) goto out;
    rc = 0;
out:
    tsr_suite_close(&s);
    return rc;
}

static void suite_close(suite_tasks *st) {
    if (st->train.t) tsr_loader_close(&st->train);
    if (st->test.t) tsr_loader_close(&st->test);
    free(st->idx);
    memset(st, 0, sizeof *st);
}

static double suite_evaluate(tsr_vit *m, tsr_adapters *ad, tsr_mosa *mo, suite_tasks *st, int64_t limit,
                             double *per_task) {
    int B = m->max_batch, K = m->cfg.num_classes;
    size_t per = (size_t)m->cfg.channels * m->cfg.image_size * m->cfg.image_size;
    float *x = tsr_malloc(sizeof(float) * per * B);
    int *lab = tsr_malloc(sizeof(int) * B), *tid = tsr_malloc(sizeof(int) * B);
    double mean = 0;
    if (mo) tsr_mosa_swap_merged(mo, 1);
    for (int t = 0; t < st->ntasks; t++) {
        int64_t n = tsr_loader_count(&st->test, t), correct = 0;
        if (limit > 0 && n > limit) n = limit;
        for (int64_t s0 = 0; s0 < n; s0 += B) {
            int b = (int)(n - s0 < B ? n - s0 : B);
            for (int i = 0; i < b; i++) {
                if (tsr_loader_get(&st->test, t, s0 + i, x + (size_t)i * per, &lab[i]) != 0) tsr_fatal("%s", tsr_last_error());
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
        mean += per_task[t];
    }
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
    int pr = tsr_parse_config_cmdline("adapt", "parameter-efficient training on label-permutation tasks; see configs/methods/ and docs/ADAPTERS.md", argc, argv, &cfg_path, &nset, &sets);
    if (pr != 0) {
        free(sets);
        return pr == 1 ? 0 : 2;
    }
    int rc = 1;
    tsr_config cfg;
    char *cfg_text = NULL;
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
    int use_suite = 0;
    FILE *curve = NULL;
    char curve_tmp[1100] = "", curve_path[1100] = "", path[1100];
    double *per_task = NULL;
    float *xb = NULL;
    int *yb = NULL, *tb = NULL;

    if (!(cfg_text = tsr_run_setup(&cfg, "adapt", cfg_path, nset, sets))) goto out;
    int K = (int)cfg.model.num_classes, B = (int)cfg.train.batch_size, ntasks;
    use_suite = strcmp(cfg.data.dataset, "suite") == 0;
    if (use_suite) {
        if (suite_open(&st, &cfg, K) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        ntasks = st.ntasks;
        int64_t ntr = 0, nte = 0;
        for (int t = 0; t < ntasks; t++) ntr += tsr_loader_count(&st.train, t), nte += tsr_loader_count(&st.test, t);
        tsr_info("data: %s: %d tasks (role %s: %s%s), %lld training examples (%ld shots), %lld test", cfg.data.path,
                 ntasks, cfg.data.role, st.train.t[0].name, ntasks > 1 ? ", ..." : "", (long long)ntr, cfg.data.shots,
                 (long long)nte);
    } else {
        if (tsr_imageset_load(&cfg, &train, &test) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        tasks_build(&ts, &cfg, &train, K);
        ntasks = ts.ntasks;
        tsr_info("data: %s: %d tasks (numbers %ld..%ld, label permutations), %lld training examples per task, %lld test",
                 cfg.data.path, ts.ntasks, cfg.data.task_offset, cfg.data.task_offset + ts.ntasks - 1,
                 (long long)ts.nidx[0], (long long)test.n);
    }

    tsr_vit_config vc = {(int)cfg.model.image_size, (int)cfg.model.patch_size, (int)cfg.model.channels,
                         (int)cfg.model.dim, (int)cfg.model.depth, (int)cfg.model.heads,
                         (int)cfg.model.mlp_dim, (int)cfg.model.num_classes, cfg.model.ln_eps};
    if (tsr_vit_create(&m, &vc, B) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    if (cfg.run.init[0]) {
        if (tsr_ckpt_load_vit(&m, cfg.run.init, 1) != 0) {
            tsr_log(TSR_LOG_ERROR, "run.init: %s", tsr_last_error());
            goto out;
        }
        tsr_info("backbone: %s", cfg.run.init);
    } else {
        tsr_vit_init_random(&m, (uint64_t)cfg.run.seed);
        tsr_info("backbone: random initialisation (run.init is empty)");
    }

    /* adapters */
    int use_ad = strcmp(cfg.adapter.kind, "none") != 0 && strcmp(cfg.adapt.mode, "probe") != 0;
    int z_only = 0;
    if (use_ad) {
        tsr_adapter_config ac;
        if (cfg.adapter.init[0]) {
            int depth, dim, mlp;
            if (tsr_adapters_load_config(cfg.adapter.init, &ac, &depth, &dim, &mlp) != 0) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s", tsr_last_error());
                goto out;
            }
            if (depth != vc.depth || dim != vc.dim || mlp != vc.mlp_dim) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s was made for depth %d, dim %d, mlp %d; the model has %d, %d, %d",
                        cfg.adapter.init, depth, dim, mlp, vc.depth, vc.dim, vc.mlp_dim);
                goto out;
            }
            if (tsr_adapters_create(&pre, &ac, vc.depth, vc.dim, vc.mlp_dim, m.tokens, B) != 0) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s", tsr_last_error());
                goto out;
            }
            pre.ln_eps = vc.ln_eps;
            if (tsr_adapters_load(&pre, cfg.adapter.init) != 0) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s", tsr_last_error());
                goto out;
            }
            const char *v = cfg.adapter.fewshot;
            tsr_adapter_config nc = ac;
            nc.n_tasks = ntasks;
            if (strcmp(v, "mu") == 0) {
                nc.skills = 1;
                nc.noise = 0;
            }
            if (strcmp(v, "none") == 0 && ac.skills > 1 && ac.n_tasks != ntasks) {
                tsr_log(TSR_LOG_ERROR, "adapter.init: %s routes %d tasks but this run has %d (HINT: adapter.fewshot "
                        "finetune or z gives the new tasks fresh routing rows)", cfg.adapter.init, ac.n_tasks, ntasks);
                goto out;
            }
            if (tsr_adapters_create(&ad, &nc, vc.depth, vc.dim, vc.mlp_dim, m.tokens, B) != 0) {
                tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                goto out;
            }
            if (strcmp(v, "mu") == 0) tsr_adapters_average_skills(&pre, &ad);
            else tsr_adapters_copy_skills(&pre, &ad, (uint64_t)cfg.run.seed);
            if (strcmp(v, "none") == 0 && ac.skills > 1) /* keep the learned rows */
                memcpy(ad.params + ad.off_Z, pre.params + pre.off_Z, sizeof(float) * (ad.num_params - ad.off_Z));
            z_only = strcmp(v, "z") == 0;
            if (z_only && ac.skills < 2) {
                tsr_log(TSR_LOG_ERROR, "adapter.fewshot z trains only routing rows, but %s has no routing (skills 1)",
                        cfg.adapter.init);
                goto out;
            }
            tsr_info("adapters: from %s (fewshot %s): the file's adapter configuration is used", cfg.adapter.init, v);
        } else {
            if (adapter_config_from(&cfg, &ac) == 0) ac.n_tasks = ntasks;
            else {
                tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                goto out;
            }
            if (tsr_adapters_create(&ad, &ac, vc.depth, vc.dim, vc.mlp_dim, m.tokens, B) != 0) {
                tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                goto out;
            }
            tsr_adapters_init(&ad, (uint64_t)cfg.run.seed + 1);
        }
        ad.ln_eps = vc.ln_eps;
        m.ad = &ad;
        if (cfg.mosa.modules > 0) {
            int split = strcmp(cfg.mosa.split, "up") == 0 ? TSR_MOSA_SPLIT_UP
                        : strcmp(cfg.mosa.split, "down") == 0 ? TSR_MOSA_SPLIT_DOWN
                                                               : TSR_MOSA_SPLIT_UP | TSR_MOSA_SPLIT_DOWN;
            if (tsr_mosa_create(&mo, &ad, (int)cfg.mosa.modules, split, cfg.mosa.baseline, (uint64_t)cfg.run.seed) != 0) {
                tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
                goto out;
            }
        }
    }
    tsr_mosa *mop = mo.N > 0 ? &mo : NULL;

    /* parameter groups */
    tsr_vit_trainable tr = TSR_VIT_ADAPTERS;
    if (strcmp(cfg.adapt.mode, "probe") == 0) tr = (tsr_vit_trainable){0, 0, 0, 1, 0, 0};
    if (strcmp(cfg.adapt.mode, "full") == 0) tr = TSR_VIT_FULL;
    if (!use_ad) tr.adapters = 0;
    size_t head_off = (size_t)(m.params.headw - m.params_mem), trainable = 0;
    tsr_adamw_init(&opt_m, m.num_params, 0.9, 0.999, 1e-8);
    tsr_adamw_add_group(&opt_m, head_off, m.num_params - head_off, cfg.optim.head_lr, cfg.optim.head_wd);
    trainable += m.num_params - head_off;
    if (tr.blocks) {
        tsr_adamw_add_group(&opt_m, 0, head_off, cfg.optim.backbone_lr, cfg.optim.backbone_wd);
        trainable += head_off;
    }
    if (use_ad) {
        tsr_adamw_init(&opt_ad, ad.num_params, 0.9, 0.999, 1e-8);
        if (!z_only) {
            if (ad.off_bias > 0) tsr_adamw_add_group(&opt_ad, 0, ad.off_bias, cfg.optim.adapter_lr, cfg.optim.adapter_wd);
            if (ad.off_Z > ad.off_bias) tsr_adamw_add_group(&opt_ad, ad.off_bias, ad.off_Z - ad.off_bias, cfg.optim.adapter_lr, 0);
            trainable += ad.off_Z;
        }
        if (ad.num_params > ad.off_Z) {
            tsr_adamw_add_group(&opt_ad, ad.off_Z, ad.num_params - ad.off_Z, cfg.optim.routing_lr, cfg.optim.routing_wd);
            trainable += ad.num_params - ad.off_Z;
        }
        if (mop && mo.nbias) {
            tsr_adamw_init(&opt_mb, mo.nbias, 0.9, 0.999, 1e-8);
            tsr_adamw_add_group(&opt_mb, 0, mo.nbias, cfg.optim.adapter_lr, 0);
            trainable += mo.nbias;
        }
    }
    tsr_info("method: mode %s, adapter %s, routing %s%s, %d modules, trainable parameters %zu (backbone %zu)",
             cfg.adapt.mode, use_ad ? cfg.adapter.kind : "none", use_ad ? cfg.adapter.routing : "none",
             mop ? (cfg.mosa.baseline ? ", sparse baseline" : ", MoSA") : "", use_ad ? ad.n_mod : 0, trainable,
             m.num_params);

    snprintf(curve_path, sizeof curve_path, "%s/train_log.csv", cfg.run.output_dir);
    snprintf(curve_tmp, sizeof curve_tmp, "%s.tmp", curve_path);
    curve = fopen(curve_tmp, "w");
    if (!curve) {
        tsr_log(TSR_LOG_ERROR, "%s: cannot create (%s)", curve_tmp, strerror(errno));
        goto out;
    }
    fprintf(curve, "step,lr_factor,train_loss,grad_norm,test_accuracy,images_per_s\n");

    size_t per = (size_t)vc.channels * vc.image_size * vc.image_size;
    xb = tsr_malloc(sizeof(float) * per * B);
    yb = tsr_malloc(sizeof(int) * B);
    tb = tsr_malloc(sizeof(int) * B);
    per_task = tsr_calloc((size_t)ntasks, sizeof(double));
    tsr_rng rng;
    tsr_rng_seed(&rng, (uint64_t)cfg.run.seed ^ 0xada9);
    long steps = cfg.train.steps;
    double t_start = tsr_time(), t_win = t_start, loss_win = 0, first_loss = NAN, last_loss = NAN;
    int n_win = 0;
    for (long step = 0; step < steps; step++) {
        /* a batch sorted by task: counts per task, then examples in task order */
        int *cnt = tsr_calloc((size_t)ntasks, sizeof(int));
        for (int b = 0; b < B; b++) cnt[tsr_rng_u64(&rng) % (uint64_t)ntasks]++;
        int b = 0;
        for (int t = 0; t < ntasks; t++)
            for (int j = 0; j < cnt[t]; j++, b++) {
                tb[b] = t;
                if (use_suite) continue;
                if (ts.cursor[t] >= ts.nidx[t]) ts.cursor[t] = 0;
                int64_t e = ts.idx[t][ts.cursor[t]++];
                memcpy(xb + (size_t)b * per, train.x + (size_t)e * per, sizeof(float) * per);
                yb[b] = ts.perm[(size_t)t * K + train.y[e]];
            }
        free(cnt);
        if (use_suite && tsr_loader_batch(&st.train, tb, B, xb, yb, (uint64_t)step) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        double lrf = tsr_lr_schedule(step, steps, cfg.train.warmup_steps, 1.0, 0.0);
        tsr_vit_zero_grad(&m);
        if (use_ad) tsr_adapters_zero_grad(&ad);
        if (mop && mo.nbias) memset(mo.bias_grads, 0, sizeof(float) * mo.nbias);
        double loss = tsr_adapt_loss_grad(&m, use_ad ? &ad : NULL, mop, &tr, xb, yb, tb, B, step,
                                          (uint64_t)cfg.run.seed, mop ? cfg.mosa.consistency : 0, NULL);
        if (!isfinite(loss)) {
            tsr_log(TSR_LOG_ERROR, "adapt: loss is %g at step %ld: diverged (HINT: lower optim.*_lr)", loss, step);
            goto out;
        }
        if (step == 0) first_loss = loss;
        /* global gradient norm over every trained buffer */
        double n1 = tsr_clip_grad_norm(m.grads_mem, &opt_m, 0), n2 = use_ad ? tsr_clip_grad_norm(ad.grads, &opt_ad, 0) : 0;
        double n3 = opt_mb.m ? tsr_clip_grad_norm(mo.bias_grads, &opt_mb, 0) : 0;
        double gn = sqrt(n1 * n1 + n2 * n2 + n3 * n3);
        if (cfg.train.grad_clip > 0 && gn > cfg.train.grad_clip) {
            float s = (float)(cfg.train.grad_clip / (gn + 1e-6));
            for (size_t i = 0; i < m.num_params; i++) m.grads_mem[i] *= s;
            if (use_ad)
                for (size_t i = 0; i < ad.num_params; i++) ad.grads[i] *= s;
            if (opt_mb.m)
                for (size_t i = 0; i < mo.nbias; i++) mo.bias_grads[i] *= s;
        }
        tsr_adamw_step(&opt_m, m.params_mem, m.grads_mem, lrf);
        if (use_ad) tsr_adamw_step(&opt_ad, ad.params, ad.grads, lrf);
        if (opt_mb.m) tsr_adamw_step(&opt_mb, mo.bias_params, mo.bias_grads, lrf);
        loss_win += loss;
        n_win++;
        int last = step + 1 == steps;
        int do_eval = (step + 1) % cfg.train.eval_every == 0 || last;
        if ((step + 1) % cfg.train.log_every == 0 || do_eval) {
            double now = tsr_time(), ips = n_win * B / (now - t_win), acc = NAN;
            double eta = (steps - step - 1) * (now - t_start) / (step + 1);
            last_loss = loss_win / n_win;
            int64_t lim = last ? (cfg.train.eval_limit > 0 ? cfg.train.eval_limit : 0) : 1000;
            if (do_eval)
                acc = use_suite ? suite_evaluate(&m, use_ad ? &ad : NULL, mop, &st, lim, per_task)
                                : evaluate(&m, use_ad ? &ad : NULL, mop, &test, &ts, lim > 0 ? lim : test.n, per_task);
            tsr_info("step %6ld/%ld  loss %.4f  lr x%.3f  |g| %.3f  %7.1f img/s  ETA %4.0f s", step + 1, steps,
                     last_loss, lrf, gn, ips, eta);
            if (do_eval)
                tsr_info("eval  %6ld  mean test accuracy over %d tasks %.4f (%s)", step + 1, ntasks, acc,
                         last && cfg.train.eval_limit == 0 ? "full test set" : "first test images");
            fprintf(curve, "%ld,%.6f,%.6f,%.6f,%.6f,%.2f\n", step + 1, lrf, last_loss, gn, acc, ips);
            loss_win = 0;
            n_win = 0;
            t_win = tsr_time();
        }
    }
    if (fflush(curve) != 0 || fclose(curve) != 0 || rename(curve_tmp, curve_path) != 0) {
        curve = NULL;
        tsr_log(TSR_LOG_ERROR, "%s: cannot write (%s)", curve_path, strerror(errno));
        goto out;
    }
    curve = NULL;
    char tp[32], fl[32], ll[32];
    snprintf(tp, sizeof tp, "%zu", trainable);
    snprintf(fl, sizeof fl, "%.6f", first_loss);
    snprintf(ll, sizeof ll, "%.6f", last_loss);
    const char *keys[] = {"tessera_version", "git_commit", "config", "trainable_parameters", "first_loss", "last_loss"};
    const char *vals[] = {TSR_VERSION, TSR_GIT_COMMIT, cfg_text, tp, fl, ll};
    if (use_ad) {
        snprintf(path, sizeof path, "%s/adapters.safetensors", cfg.run.output_dir);
        if (mop) tsr_mosa_swap_merged(mop, 1); /* one dense adapter: the mean over modules */
        int w = tsr_adapters_save(&ad, path, 6, keys, vals);
        if (mop) tsr_mosa_swap_merged(mop, 0);
        if (w != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", cfg.run.output_dir);
    if (tsr_ckpt_save_vit(&m, path, TSR_NAMING_TIMM, 6, keys, vals) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    tsr_info("adapt: loss %.4f -> %.4f; wrote %s/{%smodel.safetensors,train_log.csv,config.yaml} (%.1f s)", first_loss,
             last_loss, cfg.run.output_dir, use_ad ? "adapters.safetensors," : "", tsr_time() - t_start);
    rc = 0;
out:
    if (curve) {
        fclose(curve);
        remove(curve_tmp);
    }
    free(sets); free(cfg_text); free(per_task); free(xb); free(yb); free(tb);
    tsr_imageset_free(&train);
    tsr_imageset_free(&test);
    if (ts.perm) tasks_free(&ts);
    suite_close(&st);
    if (opt_m.m) tsr_adamw_free(&opt_m);
    if (opt_ad.m) tsr_adamw_free(&opt_ad);
    if (opt_mb.m) tsr_adamw_free(&opt_mb);
    if (mo.N) tsr_mosa_destroy(&mo);
    if (ad.params) tsr_adapters_destroy(&ad);
    if (pre.params) tsr_adapters_destroy(&pre);
    if (m.params_mem) tsr_vit_destroy(&m);
    return rc;
}
