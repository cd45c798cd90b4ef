/* trainer.c: the training loop (trainer.h), in parts: set-up (data, model, adapters, optimizer), the
 * step (batch, loss and gradients), synchronisation (one collective over every trained gradient, the
 * optimizer, sharded or not), evaluation, checkpoints and outputs.
 *
 * Methods (configs/methods/): LoRA, bottleneck adapters (parallel / Houlsby / Pfeiffer), Poly, MHR,
 * MoSA (+ consistency, sparse baseline), MoSA x MHR, linear probe, full fine-tuning, and the few-shot
 * variants of pre-trained adapters (adapter.init + adapter.fewshot: finetune, z, mu). Batches are
 * grouped by task, so every run of one task is one pair of GEMMs per adapter. Parameter groups: adapter
 * weights, biases/LayerNorms (no weight decay), routing logits, head, backbone, each with its own
 * learning rate (optim.*), warmup + cosine, global norm clipping.
 *
 * Failures: whatever can fail on one rank (reading data or checkpoints, writing files) is followed by
 * tsr_dist_fail_together before the next collective, so every rank stops with the failing rank's
 * message. Writes into run.output_dir (rank 0, unless quiet): train_log.csv, checkpoints/,
 * adapters.safetensors (merged for MoSA) and model.safetensors (or backbone.safetensors), atomically. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapt_step.h"
#include "adapters/adapter_io.h"
#include "build_info.h"
#include "core/bf16.h"
#include "core/common.h"
#include "core/cpu.h"
#include "core/precision.h"
#include "model/checkpoint.h"
#include "train/evaluate.h"
#include "train/state.h"
#include "train/trainer_impl.h"

#define LOG(T, lvl, ...) tsr_logf(&(T)->ctx->log, lvl, __VA_ARGS__)
#define INFO(T, ...) LOG(T, TSR_LOG_INFO, __VA_ARGS__)
#define WARN(T, ...) LOG(T, TSR_LOG_WARN, __VA_ARGS__)

/* ---------------------------------------------------------------- set-up */

/* Which tasks, which of them this rank owns, their examples; the global example counts. */
static int setup_data(tsr_trainer *T) {
    const tsr_config *cfg = T->cfg;
    int fail = tsr_tasks_select(&T->ts, cfg, T->K, T->opts->backbone ? 1 : 0) != 0;
    if (tsr_dist_fail_together(T->comm, fail, &T->ctx->log)) return -1;
    int n = T->ntasks = T->ts.ntasks, grads = T->opts->grad_examples > 0;
    tsr_sampler_init(&T->sp, n, T->R, T->ts.weight);
    T->mine = tsr_calloc((size_t)n, sizeof(int));
    T->eval_mine = tsr_calloc((size_t)n, sizeof(int));
    for (int t = 0; t < n; t++) {
        T->mine[t] = grads ? t % T->R == T->me : tsr_sampler_owns(&T->sp, t, T->me);
        T->eval_mine[t] = grads ? T->mine[t] : tsr_sampler_first_owner(&T->sp, t) == T->me;
    }
    fail = tsr_tasks_load(&T->ts, cfg, T->mine, T->opts->want_val) != 0;
    if (tsr_dist_fail_together(T->comm, fail, &T->ctx->log)) return -1;
    for (int t = 0; t < n; t++)
        if (T->eval_mine[t]) T->sp.count[t] = tsr_tasks_count(&T->ts, TSR_SPLIT_TRAIN, t);
    tsr_dist_allreduce_sum_i64(T->comm, T->sp.count, (size_t)n);
    int64_t ntr = 0, nmine = 0;
    for (int t = 0; t < n; t++) ntr += T->sp.count[t], nmine += T->mine[t];
    INFO(T, "data: %s: %d tasks (%s), %lld training examples (%s), %d ranks (rank 0 owns %lld tasks)", cfg->data.path,
         n, T->ts.suite ? cfg->data.role : "label permutations", (long long)ntr,
         cfg->data.shots > 0 ? "k shots" : "all", T->R, (long long)nmine);
    for (int t = 0; t < n; t++)
        if (T->sp.count[t] < 1) {
            LOG(T, TSR_LOG_ERROR, "data: task %d has no training examples", t);
            return -1;
        }
    return 0;
}

/* The model, its parameters still zero: they are written by setup_weights, after the precision is set, so
 * that in bf16 the fp32 block weights are never all in memory. */
static int setup_model(tsr_trainer *T) {
    const tsr_config *cfg = T->cfg;
    tsr_vit_config vc = {(int)cfg->model.image_size, (int)cfg->model.patch_size, (int)cfg->model.channels,
                         (int)cfg->model.dim, (int)cfg->model.depth, (int)cfg->model.heads,
                         (int)cfg->model.mlp_dim, (int)cfg->model.num_classes, cfg->model.ln_eps};
    T->vc = vc;
    return tsr_vit_create(&T->m, &vc, T->B);
}

/* The backbone's weights: run.init (its classifier replaced by a zero head with run.reset_head) or random. In
 * bf16 each block weight is converted and its fp32 copy dropped as it is read (tsr_ckpt_load_vit). */
static int setup_weights(tsr_trainer *T) {
    const tsr_config *cfg = T->cfg;
    if (!cfg->run.init[0]) {
        tsr_vit_init_random(&T->m, (uint64_t)cfg->run.seed);
        INFO(T, "backbone: random initialisation (run.init is empty)");
        return 0;
    }
    int reset = cfg->run.reset_head && !T->opts->backbone;
    if (tsr_ckpt_load_vit(&T->m, cfg->run.init, reset ? 2 : T->opts->backbone ? 0 : 1) != 0)
        return tsr_error_context("run.init");
    if (reset) { /* new tasks: a zero head (the adapters start from zero updates too) */
        size_t hoff = (size_t)(T->m.params.headw - T->m.params_mem);
        memset(T->m.params_mem + hoff, 0, sizeof(float) * (T->m.num_params - hoff));
    }
    INFO(T, "backbone: %s%s", cfg->run.init, reset ? " (its classifier replaced by a zero head)" : "");
    return 0;
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

/* The adapter configuration of the adapter.* keys. */
static int adapter_config_from(const tsr_config *cfg, tsr_adapter_config *ac, int ntasks) {
    memset(ac, 0, sizeof *ac);
    if (strcmp(cfg->adapter.kind, "lora") == 0) {
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
    ac->n_tasks = ntasks;
    ac->noise = cfg->adapter.noise;
    ac->tau = cfg->adapter.tau;
    ac->layer_min = 0;
    ac->layer_max = -1;
    return 0;
}

static void sites_text(char *buf, size_t n, int mask, int lora) {
    static const char *ln[TSR_NLORA] = {"q", "k", "v", "proj", "fc1", "fc2"};
    static const char *bn[TSR_NBN] = {"parallel", "houlsby_attn", "mlp_seq"};
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < (lora ? TSR_NLORA : TSR_NBN); i++)
        if (mask & (1 << i)) o += (size_t)snprintf(buf + o, o < n ? n - o : 0, "%s%s", o ? ", " : "", lora ? ln[i] : bn[i]);
}

int tsr_train_check_init(const tsr_config *cfg) {
    if (!cfg->adapter.init[0] || strcmp(cfg->adapter.kind, "none") == 0) return 0;
    tsr_adapter_config f, c;
    int depth, dim, mlp;
    if (tsr_adapters_load_config(cfg->adapter.init, &f, &depth, &dim, &mlp) != 0) return tsr_error_context("adapter.init");
    if (adapter_config_from(cfg, &c, 1) != 0) return -1;
    char diff[2048], a[96], b[96];
    size_t o = 0;
#define DIFF(...) (o += (size_t)snprintf(diff + o, o < sizeof diff ? sizeof diff - o : 0, __VA_ARGS__))
    if (!!f.lora_sites != !!c.lora_sites) DIFF("; adapter.kind: the file holds %s, the configuration says %s",
                                               f.lora_sites ? "lora" : "bottleneck", cfg->adapter.kind);
    else if (c.lora_sites) {
        if (f.lora_sites != c.lora_sites) {
            sites_text(a, sizeof a, f.lora_sites, 1);
            sites_text(b, sizeof b, c.lora_sites, 1);
            DIFF("; adapter.lora_sites: [%s] in the file, [%s] in the configuration", a, b);
        }
        if (f.lora_rank != c.lora_rank) DIFF("; adapter.lora_rank: %d vs %d", f.lora_rank, c.lora_rank);
        if (fabs(f.lora_alpha / f.lora_rank - c.lora_alpha / c.lora_rank) > 1e-12 * fabs(c.lora_alpha / c.lora_rank))
            DIFF("; LoRA scale (adapter.lora_alpha / adapter.lora_rank): %g vs %g", f.lora_alpha / f.lora_rank,
                 c.lora_alpha / c.lora_rank);
        if (f.lora_init_peft != c.lora_init_peft)
            DIFF("; adapter.lora_init: %s vs %s", f.lora_init_peft ? "peft" : "authors", c.lora_init_peft ? "peft" : "authors");
    } else {
        if (f.bn_sites != c.bn_sites) {
            sites_text(a, sizeof a, f.bn_sites, 0);
            sites_text(b, sizeof b, c.bn_sites, 0);
            DIFF("; adapter.placement: [%s] in the file, [%s] in the configuration", a, b);
        }
        if (f.bn_dim != c.bn_dim) DIFF("; adapter.bottleneck: %d vs %d", f.bn_dim, c.bn_dim);
        if (f.bn_scale != c.bn_scale) DIFF("; adapter.scale: %g vs %g", f.bn_scale, c.bn_scale);
        if (f.bn_dropout != c.bn_dropout) DIFF("; adapter.dropout: %g vs %g", f.bn_dropout, c.bn_dropout);
        if (f.bn_relu != c.bn_relu) DIFF("; adapter.activation: %s vs %s", f.bn_relu ? "relu" : "gelu", c.bn_relu ? "relu" : "gelu");
    }
    if (f.skills != c.skills) DIFF("; adapter.skills (with adapter.routing): %d vs %d", f.skills, c.skills);
    if (f.heads != c.heads) DIFF("; adapter.heads (with adapter.routing): %d vs %d", f.heads, c.heads);
#undef DIFF
    if (!o) return 0;
    return tsr_error("adapter.init: %s was not made by this adapter configuration (file vs configuration)%s",
                     cfg->adapter.init, diff);
}

/* Adapters from a pre-trained file (adapter.init), used as adapter.fewshot says. */
static int adapters_from_file(tsr_trainer *T) {
    const tsr_config *cfg = T->cfg;
    const tsr_vit_config *vc = &T->vc;
    const char *init = cfg->adapter.init, *v = cfg->adapter.fewshot;
    tsr_adapter_config ac;
    int depth, dim, mlp;
    if (tsr_adapters_load_config(init, &ac, &depth, &dim, &mlp) != 0) return tsr_error_context("adapter.init");
    /* -1: not recorded (a peft adapter directory); its tensor shapes are checked against the model on load */
    if ((depth >= 0 && depth != vc->depth) || (dim >= 0 && dim != vc->dim) || (mlp >= 0 && mlp != vc->mlp_dim))
        return tsr_error("adapter.init: %s was made for depth %d, dim %d, mlp %d; the model has %d, %d, %d", init, depth,
                         dim, mlp, vc->depth, vc->dim, vc->mlp_dim);
    if (tsr_adapters_create(&T->pre, &ac, vc->depth, vc->dim, vc->mlp_dim, T->m.tokens, T->B) != 0)
        return tsr_error_context("adapter.init");
    T->pre.ln_eps = vc->ln_eps;
    if (tsr_adapters_load(&T->pre, init) != 0) return tsr_error_context("adapter.init");
    if (tsr_train_check_init(cfg) != 0) WARN(T, "%s", tsr_last_error());
    tsr_adapter_config nc = ac;
    nc.n_tasks = T->ntasks;
    if (strcmp(v, "mu") == 0) {
        nc.skills = 1;
        nc.noise = 0;
    }
    if (strcmp(v, "none") == 0 && ac.skills > 1 && ac.n_tasks != T->ntasks)
        return tsr_error("adapter.init: %s routes %d tasks but this run has %d (HINT: adapter.fewshot finetune or z "
                         "gives the new tasks fresh routing rows)", init, ac.n_tasks, T->ntasks);
    T->z_only = strcmp(v, "z") == 0;
    if (T->z_only && ac.skills < 2)
        return tsr_error("adapter.fewshot z trains only routing rows, but %s has no routing (skills 1)", init);
    if (tsr_adapters_create(&T->ad, &nc, vc->depth, vc->dim, vc->mlp_dim, T->m.tokens, T->B) != 0) return -1;
    if (strcmp(v, "mu") == 0) tsr_adapters_average_skills(&T->pre, &T->ad);
    else tsr_adapters_copy_skills(&T->pre, &T->ad, (uint64_t)cfg->run.seed);
    if (strcmp(v, "none") == 0 && ac.skills > 1) /* keep the learned rows */
        memcpy(T->ad.params + T->ad.off_Z, T->pre.params + T->pre.off_Z,
               sizeof(float) * (T->ad.num_params - T->ad.off_Z));
    INFO(T, "adapters: from %s (fewshot %s): the file's adapter configuration is used", init, v);
    return 0;
}

static int setup_adapters(tsr_trainer *T) {
    const tsr_config *cfg = T->cfg;
    T->use_ad = !T->opts->backbone && strcmp(cfg->adapter.kind, "none") != 0 && strcmp(cfg->adapt.mode, "probe") != 0;
    if (!T->use_ad) return 0;
    if (cfg->adapter.init[0]) {
        if (adapters_from_file(T) != 0) return -1;
    } else {
        tsr_adapter_config ac;
        if (adapter_config_from(cfg, &ac, T->ntasks) != 0) return -1;
        if (tsr_adapters_create(&T->ad, &ac, T->vc.depth, T->vc.dim, T->vc.mlp_dim, T->m.tokens, T->B) != 0) return -1;
        tsr_adapters_init(&T->ad, (uint64_t)cfg->run.seed + 1);
    }
    T->ad.ln_eps = T->vc.ln_eps;
    tsr_adapters_attach(&T->ad, &T->m);
    if (cfg->mosa.modules > 0) {
        int split = strcmp(cfg->mosa.split, "up") == 0     ? TSR_MOSA_SPLIT_UP
                    : strcmp(cfg->mosa.split, "down") == 0 ? TSR_MOSA_SPLIT_DOWN
                                                           : TSR_MOSA_SPLIT_UP | TSR_MOSA_SPLIT_DOWN;
        if (strcmp(cfg->mosa.bias, "shared") == 0) split |= TSR_MOSA_SHARE_BIAS;
        if (tsr_mosa_create(&T->mo, &T->ad, (int)cfg->mosa.modules, split, cfg->mosa.baseline, (uint64_t)cfg->run.seed) != 0)
            return -1;
        T->mop = &T->mo;
    }
    return 0;
}

/* Parameter groups: what is trained, with which learning rate and weight decay. */
static void setup_optim(tsr_trainer *T) {
    const tsr_config *cfg = T->cfg;
    const char *mode = cfg->adapt.mode;
    tsr_vit *m = &T->m;
    T->tr = TSR_VIT_ADAPTERS;
    if (strcmp(mode, "probe") == 0) T->tr = (tsr_vit_trainable){0, 0, 0, 1, 0, 0};
    if (strcmp(mode, "full") == 0 || T->opts->backbone) T->tr = TSR_VIT_FULL;
    if (!T->use_ad) T->tr.adapters = 0;
    size_t head_off = (size_t)(m->params.headw - m->params_mem);
    tsr_adamw_init(&T->om, m->num_params, 0.9, 0.999, 1e-8);
    if (T->opts->backbone) { /* tessera train: one group, train.lr and train.weight_decay */
        tsr_adamw_add_group(&T->om, 0, m->num_params, cfg->train.lr, cfg->train.weight_decay);
        T->trainable = m->num_params;
    } else {
        tsr_adamw_add_group(&T->om, head_off, m->num_params - head_off, cfg->optim.head_lr, cfg->optim.head_wd);
        T->trainable = m->num_params - head_off;
        if (T->tr.blocks) {
            tsr_adamw_add_group(&T->om, 0, head_off, cfg->optim.backbone_lr, cfg->optim.backbone_wd);
            T->trainable += head_off;
        }
    }
    if (!T->use_ad) return;
    tsr_adapters *ad = &T->ad;
    tsr_adamw_init(&T->oa, ad->num_params, 0.9, 0.999, 1e-8);
    if (!T->z_only) {
        if (ad->off_bias > 0) tsr_adamw_add_group(&T->oa, 0, ad->off_bias, cfg->optim.adapter_lr, cfg->optim.adapter_wd);
        if (ad->off_Z > ad->off_bias) tsr_adamw_add_group(&T->oa, ad->off_bias, ad->off_Z - ad->off_bias, cfg->optim.adapter_lr, 0);
        /* what is trained: the sparse baseline trains module 0's elements of its split tensors only */
        T->trainable += T->mop ? tsr_mosa_trained(T->mop, 0, ad->off_Z) : ad->off_Z;
    }
    if (ad->num_params > ad->off_Z) {
        tsr_adamw_add_group(&T->oa, ad->off_Z, ad->num_params - ad->off_Z, cfg->optim.routing_lr, cfg->optim.routing_wd);
        T->trainable += ad->num_params - ad->off_Z;
    }
    if (T->mop && T->mo.nbias) {
        tsr_adamw_init(&T->ob, T->mo.nbias, 0.9, 0.999, 1e-8);
        tsr_adamw_add_group(&T->ob, 0, T->mo.nbias, cfg->optim.adapter_lr, 0);
        T->trainable += T->mo.baseline ? T->mo.bias_row : T->mo.nbias; /* the baseline trains module 0's copy */
    }
}

/* Cut every AdamW group down to this rank's slice [soff, soff + slen) of the flat trained vector: the
 * moments of other slices are never touched (their pages are never resident). */
static void shard_groups(tsr_trainer *T) {
    size_t pk = 0;
    for (int k = 0; k < 3; k++) {
        tsr_adamw *o = T->seg_opt[k];
        if (o) {
            size_t lo = T->soff > pk ? T->soff - pk : 0;
            size_t hi = T->soff + T->slen < pk + T->lens[k] ? T->soff + T->slen - pk : T->lens[k];
            if (T->soff + T->slen <= pk || T->soff >= pk + T->lens[k]) lo = hi = 0;
            lo += T->bases[k];
            hi += T->bases[k];
            tsr_param_group g[TSR_ADAMW_MAX_GROUPS];
            int ng = o->ngroups, n2 = 0;
            memcpy(g, o->groups, sizeof g);
            for (int i = 0; i < ng; i++) {
                size_t a = g[i].offset > lo ? g[i].offset : lo;
                size_t b = g[i].offset + g[i].count < hi ? g[i].offset + g[i].count : hi;
                if (a < b) {
                    o->groups[n2] = g[i];
                    o->groups[n2].offset = a;
                    o->groups[n2++].count = b - a;
                }
            }
            o->ngroups = n2;
        }
        pk += T->lens[k];
    }
}

/* The flat vector of everything trained: model (all, or from the head on), adapters, MoSA biases. With
 * train.sync sharded, gradients are reduce-scattered, each rank updates its slice, parameters are
 * all-gathered. */
static void setup_sync(tsr_trainer *T) {
    tsr_vit *m = &T->m;
    int mb = T->ob.m != NULL;
    size_t head_off = (size_t)(m->params.headw - m->params_mem), moff = T->tr.blocks ? 0 : head_off;
    T->bases[0] = moff;
    T->lens[0] = m->num_params - moff;
    T->lens[1] = T->use_ad ? T->ad.num_params : 0;
    T->lens[2] = mb ? T->mo.nbias : 0;
    T->bufs[0] = m->grads_mem + moff;
    T->bufs[1] = T->use_ad ? T->ad.grads : NULL;
    T->bufs[2] = mb ? T->mo.bias_grads : NULL;
    T->pbufs[0] = m->params_mem + moff;
    T->pbufs[1] = T->use_ad ? T->ad.params : NULL;
    T->pbufs[2] = mb ? T->mo.bias_params : NULL;
    T->seg_opt[0] = &T->om;
    T->seg_opt[1] = T->use_ad ? &T->oa : NULL;
    T->seg_opt[2] = mb ? &T->ob : NULL;
    T->nsync = T->lens[0] + T->lens[1] + T->lens[2];
    T->sync = tsr_malloc(sizeof(float) * (T->nsync ? T->nsync : 1));
    T->sharded = T->R > 1 && strcmp(T->cfg->train.sync, "sharded") == 0;
    T->soff = 0;
    T->slen = T->nsync;
    if (T->sharded) {
        tsr_dist_slice(T->comm, T->nsync, T->me, &T->soff, &T->slen);
        shard_groups(T);
        INFO(T, "optimizer: sharded over %d ranks (rank 0 updates %zu of %zu values)", T->R, T->slen, T->nsync);
    }
}

/* model.precision: decide (tsr_precision_choose; auto measures one representative product, the qkv GEMM
 * of a batch, in fp32 and in bf16; ranks agree on the slowest figures) and make the bf16 weights. Every
 * rank calls it (collectives). 0 / -1 (failed together). */
static int setup_precision(tsr_trainer *T) {
    const tsr_config *cfg = T->cfg;
    tsr_precision_inputs in = {.mode = (tsr_precision_mode)tsr_precision_parse(cfg->model.precision),
                               .full = T->tr.blocks != 0};
    if (in.mode == TSR_PREC_FP32) return 0;
    tsr_cpu_features f;
    tsr_cpu_detect(&f);
    char note[200];
    in.cpu_bf16 = f.avx512_bf16 || f.amx_bf16;
    in.lib_bf16 = tsr_bf16_available(note, sizeof note);
    in.lib_note = note;
    int fail = 0;
    if (in.mode == TSR_PREC_AUTO) {
        /* measured once per process and shape (a sweep runs the trainer many times) */
        static int c_m, c_n, c_k;
        static double c_t32, c_t16;
        int M = T->B * T->m.tokens, N = 3 * T->vc.dim, K = T->vc.dim;
        if (M > 4096) M = 4096;
        double t32 = 0, t16 = 0;
        if (tsr_precision_needs_timing(&in)) {
            if (c_m == M && c_n == N && c_k == K) {
                t32 = c_t32, t16 = c_t16;
            } else if (tsr_bf16_time_gemm(M, N, K, 5, &t32, &t16) == 0) {
                c_m = M, c_n = N, c_k = K, c_t32 = t32, c_t16 = t16;
            } else {
                WARN(T, "model.precision auto: the bf16 product failed (%s): fp32", tsr_last_error());
                t32 = t16 = 0;
            }
        }
        in.t_fp32 = tsr_dist_allreduce_max_f64(T->comm, t32);
        in.t_bf16 = tsr_dist_allreduce_max_f64(T->comm, t16);
    }
    tsr_precision_choice ch;
    tsr_precision_choose(&in, &ch);
    if (ch.error) fail = tsr_error("%s", ch.reason) != 0;
    else if (ch.warn) WARN(T, "%s", ch.reason);
    else INFO(T, "%s", ch.reason);
    /* bf16 only when every rank chose it (an error anywhere fails all) */
    int use = !fail && ch.bf16;
    use = !tsr_dist_allreduce_max_int(T->comm, !use) && !fail;
    if (use && tsr_vit_set_precision(&T->m, 1) != 0) fail = 1;
    if (tsr_dist_fail_together(T->comm, fail, &T->ctx->log)) return -1;
    if (use) {
        size_t D = T->vc.dim, L = T->vc.depth, M = T->vc.mlp_dim;
        INFO(T, "precision: block weights qkv, proj, fc1, fc2 in bf16 (%.2f MB), stored once: their fp32 copy "
             "(%.2f MB) is not kept (checkpoints and outputs read it again from %s), products with bf16 inputs "
             "and fp32 sums", 2.0 * (double)(L * (4 * D * D + 2 * D * M)) / 1e6,
             4.0 * (double)(L * (4 * D * D + 2 * D * M)) / 1e6, cfg->run.init[0] ? "run.init" : "run.seed");
    }
    return 0;
}

/* Does this run start its (new) head from class-mean features? run.head_init prototype, or auto with
 * data.shots > 0; only for a new head (run.reset_head, or no run.init), never for tessera train or the
 * gradient pass. */
static int head_is_prototype(const tsr_trainer *T) {
    const tsr_config *cfg = T->cfg;
    if (T->opts->backbone || T->opts->grad_examples > 0) return 0;
    if (cfg->run.init[0] && !cfg->run.reset_head) return 0;
    if (strcmp(cfg->run.head_init, "prototype") == 0) return 1;
    return strcmp(cfg->run.head_init, "auto") == 0 && cfg->data.shots > 0;
}

/* Prototype initialisation of the head (docs/FEWSHOT.md). The features are what the head sees (the final
 * LayerNorm of the class token) for every training example (the support set, not augmented), with the
 * adapters as they start (merged for MoSA; routing at its initial rows). With mu_c the mean feature of
 * class c, the head is the nearest-class-mean classifier
 *   W_c = 2 mu_c / tau,  b_c = -|mu_c|^2 / tau   (logit_c(f) = (|f|^2 - |f - mu_c|^2) / tau),
 * tau = the mean squared distance between two class means (1 with fewer than two classes), so that the
 * logits do not depend on the features' scale and a support image at its own class mean starts about
 * one unit above the other classes (not a saturated softmax: the loss still has a gradient). A class
 * without training examples gets W_c = 0 and b_c = -(max|f| + max|mu|)^2 / tau, below every present
 * class's logit on every support image. Every rank computes the same head (sums all-reduced). 0 / -1. */
static int init_head_prototype(tsr_trainer *T) {
    tsr_vit *m = &T->m;
    int K = T->vc.num_classes, D = T->vc.dim, B = T->B;
    size_t per = (size_t)T->vc.channels * T->vc.image_size * T->vc.image_size;
    double *sum = tsr_calloc((size_t)K * (D + 1), sizeof(double)), *cnt = sum + (size_t)K * D;
    float *x = tsr_malloc(sizeof(float) * per * B);
    int *lab = tsr_malloc(sizeof(int) * B), *tid = tsr_malloc(sizeof(int) * B), fail = 0;
    double fmax = 0;
    tsr_adapters *ad = T->use_ad ? &T->ad : NULL;
    if (T->mop) tsr_mosa_swap_merged(T->mop, 1);
    for (int t = 0; t < T->ntasks && !fail; t++) {
        if (!T->eval_mine[t]) continue;
        int64_t n = tsr_tasks_count(&T->ts, TSR_SPLIT_TRAIN, t);
        for (int64_t s0 = 0; s0 < n && !fail; s0 += B) {
            int b = (int)(n - s0 < B ? n - s0 : B);
            for (int i = 0; i < b && !fail; i++) {
                fail = tsr_tasks_get(&T->ts, TSR_SPLIT_TRAIN, t, s0 + i, x + (size_t)i * per, &lab[i]) != 0;
                tid[i] = t;
            }
            if (fail) break;
            if (ad && tsr_adapters_begin(ad, tid, b, 0, 0, 0, NULL) != 0) tsr_fatal("%s", tsr_last_error());
            tsr_vit_forward(m, x, NULL, b); /* one task per batch: the model keeps the caller's order */
            for (int i = 0; i < b; i++) {
                if (lab[i] < 0 || lab[i] >= K) continue;
                const float *f = m->acts.lnf + (size_t)i * D;
                double *sc = sum + (size_t)lab[i] * D, f2 = 0;
                for (int j = 0; j < D; j++) sc[j] += f[j], f2 += (double)f[j] * f[j];
                cnt[lab[i]] += 1;
                if (sqrt(f2) > fmax) fmax = sqrt(f2);
            }
        }
    }
    if (T->mop) tsr_mosa_swap_merged(T->mop, 0);
    free(x);
    free(lab);
    free(tid);
    if (tsr_dist_fail_together(T->comm, fail, &T->ctx->log)) {
        free(sum);
        return -1;
    }
    tsr_dist_allreduce_sum_f64(T->comm, sum, (size_t)K * (D + 1));
    fmax = tsr_dist_allreduce_max_f64(T->comm, fmax);
    int present = 0;
    double tau = 0, pairs = 0, mumax = 0, nex = 0;
    for (int c = 0; c < K; c++) {
        if (cnt[c] <= 0) continue;
        present++;
        nex += cnt[c];
        double n2 = 0;
        for (int j = 0; j < D; j++) sum[(size_t)c * D + j] /= cnt[c], n2 += sum[(size_t)c * D + j] * sum[(size_t)c * D + j];
        if (sqrt(n2) > mumax) mumax = sqrt(n2);
    }
    for (int a = 0; a < K; a++)
        for (int c = a + 1; c < K && cnt[a] > 0; c++) {
            if (cnt[c] <= 0) continue;
            double d2 = 0;
            for (int j = 0; j < D; j++) {
                double d = sum[(size_t)a * D + j] - sum[(size_t)c * D + j];
                d2 += d * d;
            }
            tau += d2, pairs += 1;
        }
    tau = pairs > 0 ? tau / pairs : 0;
    if (!(tau > 0)) tau = 1;
    for (int c = 0; c < K; c++) {
        const double *mu = sum + (size_t)c * D;
        float *w = m->params.headw + (size_t)c * D;
        double n2 = 0;
        for (int j = 0; j < D; j++) {
            w[j] = cnt[c] > 0 ? (float)(2 * mu[j] / tau) : 0.0f;
            n2 += mu[j] * mu[j];
        }
        m->params.headb[c] = (float)(cnt[c] > 0 ? -n2 / tau : -(fmax + mumax) * (fmax + mumax) / tau);
    }
    INFO(T, "head: prototype initialisation (nearest class mean) from %.0f training examples of %d of %d classes, "
         "tau %.4g", nex, present, K, tau);
    free(sum);
    return 0;
}

static int setup(tsr_trainer *T) {
    if (setup_data(T) != 0) return -1;
    int fail = setup_model(T) != 0 || setup_adapters(T) != 0;
    if (tsr_dist_fail_together(T->comm, fail, &T->ctx->log)) return -1;
    setup_optim(T);
    if (setup_precision(T) != 0) return -1;
    fail = setup_weights(T) != 0;
    if (tsr_dist_fail_together(T->comm, fail, &T->ctx->log)) return -1;
    tsr_vit_plan_backward(&T->m, &T->tr); /* blocks below the lowest trained one keep no activations */
    if (head_is_prototype(T) && init_head_prototype(T) != 0) return -1;
    const tsr_config *cfg = T->cfg;
    INFO(T, "method: mode %s, adapter %s, routing %s%s, %d modules, trainable parameters %zu (backbone %zu)",
         T->opts->backbone ? "backbone" : cfg->adapt.mode, T->use_ad ? cfg->adapter.kind : "none",
         T->use_ad ? cfg->adapter.routing : "none", T->mop ? (cfg->mosa.baseline ? ", sparse baseline" : ", MoSA") : "",
         T->use_ad ? T->ad.n_mod : 0, T->trainable, T->m.num_params);
    setup_sync(T);
    size_t per = (size_t)T->vc.channels * T->vc.image_size * T->vc.image_size;
    T->xb = tsr_malloc(sizeof(float) * per * T->B);
    T->tmp_img = tsr_malloc(sizeof(float) * per);
    T->yb = tsr_malloc(sizeof(int) * T->B);
    T->tb = tsr_malloc(sizeof(int) * T->B);
    T->slot = tsr_malloc(sizeof(int) * T->B);
    T->exi = tsr_malloc(sizeof(int64_t) * T->B);
    T->per_task = tsr_calloc((size_t)T->ntasks, sizeof(double));
    return 0;
}

static void trainer_free(tsr_trainer *T) {
    if (T->curve) fclose(T->curve);
    free(T->best);
    free(T->sync);
    free(T->xb);
    free(T->tmp_img);
    free(T->yb);
    free(T->tb);
    free(T->slot);
    free(T->exi);
    free(T->per_task);
    free(T->mine);
    free(T->eval_mine);
    tsr_tasks_free(&T->ts);
    tsr_sampler_free(&T->sp);
    if (T->om.m) tsr_adamw_free(&T->om);
    if (T->oa.m) tsr_adamw_free(&T->oa);
    if (T->ob.m) tsr_adamw_free(&T->ob);
    if (T->mo.N) tsr_mosa_destroy(&T->mo);
    if (T->ad.params) tsr_adapters_destroy(&T->ad);
    if (T->pre.params) tsr_adapters_destroy(&T->pre);
    if (T->m.params_mem) tsr_vit_destroy(&T->m);
}

/* ---------------------------------------------------------------- the step */

/* This rank's share of the global batch of `step`; its loss gradients. Returns the summed loss, NaN
 * after a read error (tsr_error; *fail set). */
static double step_gradients(tsr_trainer *T, long step, int *Bl, int *fail) {
    const tsr_config *cfg = T->cfg;
    size_t per = (size_t)T->vc.channels * T->vc.image_size * T->vc.image_size;
    uint64_t seed = (uint64_t)cfg->run.seed;
    int n = *Bl = tsr_sampler_local(&T->sp, seed, step, T->B, T->me, T->tb, T->exi, T->slot);
    for (int i = 0; i < n; i++) {
        float *x = T->xb + (size_t)i * per;
        if (tsr_tasks_get(&T->ts, TSR_SPLIT_TRAIN, T->tb[i], T->exi[i], x, &T->yb[i]) != 0) {
            *fail = 1;
            *Bl = 0;
            break;
        }
        if (cfg->data.augment)
            tsr_augment(x, T->vc.channels, T->vc.image_size, seed, step, T->slot[i], cfg->data.flip, T->tmp_img);
    }
    tsr_vit_zero_grad_for(&T->m, &T->tr);
    if (T->use_ad) tsr_adapters_zero_grad(&T->ad);
    if (T->mop && T->mo.nbias) memset(T->mo.bias_grads, 0, sizeof(float) * T->mo.nbias);
    if (*Bl == 0) return *fail ? NAN : 0;
    double loss = tsr_adapt_loss_grad(&T->m, T->use_ad ? &T->ad : NULL, T->mop, &T->tr, T->xb, T->yb, T->tb, *Bl, step,
                                      seed, T->mop ? cfg->mosa.consistency : 0, NULL);
    return loss * *Bl;
}

/* Synchronisation and update: the local gradients (means over Bl) become shares of the global mean and
 * are summed over ranks with the loss and the failure count; global norm clipping; AdamW; sharded: the
 * updated slices to every rank. Returns the global mean loss; *nfail: ranks that failed this step. */
static double step_sync(tsr_trainer *T, int Bl, double lsum, int fail, double lrf, double *gnorm, int *nfail) {
    float *sync = T->sync;
    size_t o = 0;
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < T->lens[k]; i++) sync[o + i] = T->bufs[k][i] * (float)Bl / (float)T->B;
        o += T->lens[k];
    }
    if (T->sharded) tsr_dist_reduce_scatter_sum_f32(T->comm, sync, T->nsync);
    else tsr_dist_allreduce_sum_f32(T->comm, sync, T->nsync);
    double lg[2] = {fail ? 0 : lsum, fail};
    tsr_dist_allreduce_sum_f64(T->comm, lg, 2);
    *nfail = (int)lg[1];
    double loss = lg[0] / T->B;
    if (*nfail || !isfinite(loss)) return loss;
    o = 0;
    for (int k = 0; k < 3; k++) {
        if (T->lens[k]) memcpy(T->bufs[k], sync + o, sizeof(float) * T->lens[k]);
        o += T->lens[k];
    }
    /* global gradient norm over every trained buffer (identical on every rank) */
    double gsq = tsr_sumsq(sync + T->soff, T->slen);
    if (T->sharded) tsr_dist_allreduce_sum_f64(T->comm, &gsq, 1);
    double gn = *gnorm = sqrt(gsq), coef = tsr_clip_coef(gn, T->cfg->train.grad_clip);
    for (int k = 0; k < 3 && coef < 1.0; k++) tsr_scale(T->bufs[k], T->lens[k], coef);
    for (int k = 0; k < 3; k++)
        if (T->seg_opt[k]) tsr_adamw_step(T->seg_opt[k], T->pbufs[k] - T->bases[k], T->bufs[k] - T->bases[k], lrf);
    if (T->sharded) { /* every rank's updated slice to every rank */
        o = 0;
        for (int k = 0; k < 3; k++) {
            for (size_t i = 0; i < T->lens[k]; i++)
                if (o + i >= T->soff && o + i < T->soff + T->slen) sync[o + i] = T->pbufs[k][i];
            o += T->lens[k];
        }
        tsr_dist_allgather_f32(T->comm, sync, T->nsync);
        o = 0;
        for (int k = 0; k < 3; k++) {
            if (T->lens[k]) memcpy(T->pbufs[k], sync + o, sizeof(float) * T->lens[k]);
            o += T->lens[k];
        }
    }
    return loss;
}

/* ---------------------------------------------------------------- evaluation, checkpoints, outputs */

typedef struct {
    double t_begin, t_start, t_win, loss_win, first_loss, last_loss;
    int n_win;
    long start_step;
} run_clock;

/* The trained values (the 3 segments of the flat vector) into buf, or back from it (restore). */
static void trained_copy(tsr_trainer *T, float *buf, int restore) {
    size_t o = 0;
    for (int k = 0; k < 3; k++) {
        if (T->lens[k]) {
            if (restore) memcpy(T->pbufs[k], buf + o, sizeof(float) * T->lens[k]);
            else memcpy(buf + o, T->pbufs[k], sizeof(float) * T->lens[k]);
        }
        o += T->lens[k];
    }
}

/* Validation (first: it decides whether train.patience ends the run here) and test accuracy after `step`,
 * into the result; a better validation accuracy keeps a copy of the trained values. 0 / -1 (ranks failed
 * together). */
static int eval_point(tsr_trainer *T, long step, int last, double *acc, tsr_train_result *res, double last_loss) {
    const tsr_config *cfg = T->cfg;
    int fail = 0;
    tsr_adapters *ad = T->use_ad ? &T->ad : NULL;
    double vacc = NAN;
    if (T->ts.suite && T->opts->want_val)
        vacc = tsr_evaluate(T->comm, &T->m, ad, T->mop, &T->ts, TSR_SPLIT_VAL, T->eval_mine, 0, T->per_task, &fail);
    int better = 0;
    if (res && isfinite(vacc)) { /* the first of equal accuracies stays the best: the smaller budget */
        better = !(vacc <= res->best_val_accuracy);
        T->since_best = better ? 0 : T->since_best + 1;
        if (!last && cfg->train.patience > 0 && T->since_best >= cfg->train.patience) T->stop_early = 1;
    }
    int final = last || T->stop_early;
    int64_t lim = final ? (cfg->train.eval_limit > 0 ? cfg->train.eval_limit : 0) : 1000;
    /* train.test_every_eval false: the test split only where test_at_best_val or the final figure needs it
     * (every rank takes the same branch: vacc and `better` are the same on every rank) */
    int skip_test = res && isfinite(vacc) && !cfg->train.test_every_eval && !better && !final;
    *acc = skip_test ? NAN
                     : tsr_evaluate(T->comm, &T->m, ad, T->mop, &T->ts, TSR_SPLIT_TEST, T->eval_mine, lim, T->per_task,
                                    &fail);
    if (tsr_dist_fail_together(T->comm, fail, &T->ctx->log)) return -1;
    INFO(T, "eval  %6ld  mean test accuracy over %d tasks %.4f (%s)%s", step + 1, T->ntasks, *acc,
         final && cfg->train.eval_limit == 0 ? "full test set" : "first test images",
         isfinite(vacc) ? (better ? ", validation: best so far" : ", validation: no better") : "");
    if (!res) return 0;
    int k = res->n_eval++;
    res->eval_step[k] = step + 1;
    res->train_loss[k] = last_loss;
    res->val_accuracy[k] = vacc;
    res->test_accuracy[k] = *acc;
    if (better) {
        res->best_val_accuracy = vacc;
        res->best_val_step = step + 1;
        res->test_at_best_val = *acc; /* replaced after training by the restored parameters' accuracy */
        if (!T->best) T->best = tsr_malloc(sizeof(float) * (T->nsync ? T->nsync : 1));
        trained_copy(T, T->best, 0);
    }
    if (final) res->test_accuracy_final = *acc;
    return 0;
}

/* After training with a validation split: the parameters of the best validation evaluation come back
 * (they are the selected model: what run.output_dir's files would hold), and their test accuracy on
 * train.eval_limit images (0 = all) is test_at_best_val; when the best is the last evaluation, that
 * evaluation's figure is it. 0 / -1 (ranks failed together). */
static int restore_best(tsr_trainer *T, tsr_train_result *res) {
    if (!res || !T->best || res->best_val_step < 1 || res->n_eval < 1) return 0;
    if (res->best_val_step == res->eval_step[res->n_eval - 1]) {
        res->test_at_best_val = res->test_accuracy_final;
        return 0;
    }
    trained_copy(T, T->best, 1);
    const tsr_config *cfg = T->cfg;
    int fail = 0;
    res->test_at_best_val = tsr_evaluate(T->comm, &T->m, T->use_ad ? &T->ad : NULL, T->mop, &T->ts, TSR_SPLIT_TEST,
                                         T->eval_mine, cfg->train.eval_limit > 0 ? cfg->train.eval_limit : 0,
                                         T->per_task, &fail);
    if (tsr_dist_fail_together(T->comm, fail, &T->ctx->log)) return -1;
    INFO(T, "eval  best validation accuracy %.4f at step %ld: its parameters restored, test accuracy %.4f",
         res->best_val_accuracy, res->best_val_step, res->test_at_best_val);
    return 0;
}

/* Log line, evaluation, curve row at the logging and evaluation points. 0 / -1. */
static int report(tsr_trainer *T, long step, double lrf, double gn, run_clock *ck, tsr_train_result *res) {
    const tsr_config *cfg = T->cfg;
    long steps = cfg->train.steps;
    int last = step + 1 == steps, do_eval = (step + 1) % cfg->train.eval_every == 0 || last;
    if ((step + 1) % cfg->train.log_every != 0 && !do_eval) return 0;
    double now = tsr_time(), ips = ck->n_win * T->B / (now - ck->t_win), acc = NAN;
    double eta = (steps - step - 1) * (now - ck->t_start) / (step + 1 - ck->start_step);
    ck->last_loss = ck->loss_win / ck->n_win; /* reported: the mean over the last logging window */
    INFO(T, "step %6ld/%ld  loss %.4f  lr x%.3f  |g| %.3f  %7.1f img/s  ETA %4.0f s", step + 1, steps, ck->last_loss,
         lrf, gn, ips, eta);
    if (do_eval && eval_point(T, step, last, &acc, res, ck->last_loss) != 0) return -1;
    if (T->curve) {
        fprintf(T->curve, "%ld,%.6f,%.6f,%.6f,%.6f,%.2f\n", step + 1, lrf, ck->last_loss, gn, acc, ips);
        fflush(T->curve);
    }
    ck->loss_win = 0;
    ck->n_win = 0;
    ck->t_win = tsr_time();
    return 0;
}

/* The training state at `step` (every rank takes part: sharded moments are gathered to rank 0). */
static int checkpoint(tsr_trainer *T, long step, double first_loss) {
    if (T->sharded) /* the moments of every slice to rank 0, which writes the checkpoint */
        for (int mv = 0; mv < 2; mv++) {
            size_t o = 0;
            for (int k = 0; k < 3; k++) {
                if (T->seg_opt[k]) memcpy(T->sync + o, (mv ? T->seg_opt[k]->v : T->seg_opt[k]->m) + T->bases[k], sizeof(float) * T->lens[k]);
                o += T->lens[k];
            }
            tsr_dist_gather_f32(T->comm, T->sync, T->nsync, 0);
            o = 0;
            for (int k = 0; k < 3; k++) {
                if (T->seg_opt[k] && T->me == 0)
                    memcpy((mv ? T->seg_opt[k]->v : T->seg_opt[k]->m) + T->bases[k], T->sync + o, sizeof(float) * T->lens[k]);
                o += T->lens[k];
            }
        }
    int fail = 0;
    if (T->me == 0) {
        tsr_train_state s = {&T->m, T->use_ad ? &T->ad : NULL, T->mop, &T->om, T->use_ad ? &T->oa : NULL,
                             T->ob.m ? &T->ob : NULL};
        fail = tsr_state_save(&s, T->cfg->run.output_dir, step, (int)T->cfg->run.keep_checkpoints, first_loss,
                              T->cfg_text) != 0;
        if (!fail) INFO(T, "checkpoint: %s/checkpoints/step-%08ld", T->cfg->run.output_dir, step);
    }
    return tsr_dist_fail_together(T->comm, fail, &T->ctx->log) ? -1 : 0;
}

/* adapters.safetensors (merged for MoSA) and model.safetensors, or backbone.safetensors (rank 0). */
static int write_outputs(tsr_trainer *T, double first_loss, double last_loss) {
    const tsr_config *cfg = T->cfg;
    char path[1100], tp[32], fl[32], ll[32];
    snprintf(tp, sizeof tp, "%zu", T->trainable);
    snprintf(fl, sizeof fl, "%.6f", first_loss);
    snprintf(ll, sizeof ll, "%.6f", last_loss);
    const char *keys[] = {"tessera_version", "git_commit", "config", "trainable_parameters", "first_loss", "last_loss"};
    const char *vals[] = {TSR_VERSION, TSR_GIT_COMMIT, T->cfg_text, tp, fl, ll};
    if (T->opts->backbone) {
        snprintf(path, sizeof path, "%s/backbone.safetensors", cfg->run.output_dir);
        int naming = strcmp(cfg->model.naming, "hf") == 0 ? TSR_NAMING_HF : TSR_NAMING_TIMM;
        return tsr_ckpt_save_vit(&T->m, path, naming, 6, keys, vals);
    }
    if (T->use_ad) {
        snprintf(path, sizeof path, "%s/adapters.safetensors", cfg->run.output_dir);
        if (T->mop) tsr_mosa_swap_merged(T->mop, 1); /* one dense adapter: the mean over modules */
        int w = tsr_adapters_save(&T->ad, path, 6, keys, vals);
        if (T->mop) tsr_mosa_swap_merged(T->mop, 0);
        if (w != 0) return -1;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", cfg->run.output_dir);
    return tsr_ckpt_save_vit(&T->m, path, TSR_NAMING_TIMM, 6, keys, vals);
}

/* --resume, and the curve file (rank 0). 0 / -1 (failed together). */
static int start_run(tsr_trainer *T, run_clock *ck) {
    const tsr_config *cfg = T->cfg;
    int fail = 0;
    if (T->opts->resume) {
        tsr_train_state s = {&T->m, T->use_ad ? &T->ad : NULL, T->mop, &T->om, T->use_ad ? &T->oa : NULL,
                             T->ob.m ? &T->ob : NULL};
        long got = tsr_state_load_latest(&s, cfg->run.output_dir, &ck->first_loss);
        fail = got < 0;
        ck->start_step = got > 0 ? got : 0;
        /* in bf16 the checkpoint's block weights were checked against the model's, not read (state.h) */
        if (got > 0) INFO(T, "resume: from the checkpoint of step %ld", got);
        else if (got == 0) INFO(T, "resume: no complete checkpoint in %s/checkpoints: starting at step 0", cfg->run.output_dir);
    }
    if (!fail && T->me == 0 && !T->opts->quiet) {
        char path[1100];
        snprintf(path, sizeof path, "%s/train_log.csv", cfg->run.output_dir);
        if (ck->start_step > 0) tsr_curve_keep_until(path, ck->start_step);
        T->curve = fopen(path, ck->start_step > 0 ? "a" : "w");
        if (!T->curve) fail = tsr_error("%s: cannot create (%s)", path, strerror(errno)) != 0;
        else if (ck->start_step == 0) fprintf(T->curve, "step,lr_factor,train_loss,grad_norm,test_accuracy,images_per_s\n");
    }
    return tsr_dist_fail_together(T->comm, fail, &T->ctx->log) ? -1 : 0;
}

static void result_init(tsr_train_result *res, long steps, long eval_every) {
    memset(res, 0, sizeof *res);
    size_t ne = (size_t)(steps / eval_every + 2);
    res->eval_step = tsr_calloc(ne, sizeof(long));
    res->train_loss = tsr_calloc(ne, sizeof(double));
    res->val_accuracy = tsr_calloc(ne, sizeof(double));
    res->test_accuracy = tsr_calloc(ne, sizeof(double));
    res->best_val_accuracy = res->test_at_best_val = res->test_accuracy_final = NAN;
    res->best_val_step = -1;
    res->steps_run = 0;
}

/* ---------------------------------------------------------------- the loop */

/* Steps from the start (or the resumed step) to train.steps. Returns 0, TSR_EXIT_REQUEUE or 1. */
static int loop(tsr_trainer *T, run_clock *ck, tsr_train_result *res) {
    const tsr_config *cfg = T->cfg;
    long steps = cfg->train.steps;
    tsr_dist_install_stop_signals();
    ck->t_start = ck->t_win = tsr_time();
    if (res) res->steps_run = ck->start_step;
    for (long step = ck->start_step; step < steps; step++) {
        int Bl, fail = 0, nfail;
        double lsum = step_gradients(T, step, &Bl, &fail), gn = 0;
        if (step == T->opts->fault_nan_step && T->me == T->R - 1) lsum = NAN;
        double lrf = tsr_lr_schedule(step, steps, cfg->train.warmup_steps, 1.0, 0.0);
        double loss = step_sync(T, Bl, lsum, fail, lrf, &gn, &nfail);
        if (nfail && tsr_dist_fail_together(T->comm, fail, &T->ctx->log)) return 1;
        if (!isfinite(loss)) {
            /* name a checkpoint only after verifying it (checksums, finite values): rank 0 reads them */
            char good[1400] = "";
            long gs = T->me == 0 && !T->opts->quiet ? tsr_state_last_good(cfg->run.output_dir, good, sizeof good) : 0;
            if (gs > 0)
                LOG(T, TSR_LOG_ERROR, "train: loss is %g at step %ld: diverged (HINT: lower %s); the last good "
                    "checkpoint, %s (step %ld, verified), is kept", loss, step,
                    T->opts->backbone ? "train.lr" : "optim.*_lr", good, gs);
            else
                LOG(T, TSR_LOG_ERROR, "train: loss is %g at step %ld: diverged (HINT: lower %s); %s", loss, step,
                    T->opts->backbone ? "train.lr" : "optim.*_lr",
                    T->opts->quiet ? "no checkpoint is kept" : T->me == 0 ? "no checkpoint in run.output_dir/checkpoints verifies"
                                                                   : "rank 0 names the last good checkpoint");
            return 1;
        }
        if (step == 0) ck->first_loss = loss;
        ck->loss_win += loss;
        ck->n_win++;
        if (report(T, step, lrf, gn, ck, res) != 0) return 1;
        if (res) res->steps_run = step + 1;
        if (T->stop_early) { /* train.patience: every rank saw the same validation accuracies */
            INFO(T, "train: no better validation accuracy in %ld evaluations: stopped after step %ld (best %.4f at "
                 "step %ld)", cfg->train.patience, step + 1, res ? res->best_val_accuracy : NAN,
                 res ? res->best_val_step : -1L);
            break;
        }
        int stop = tsr_dist_stop_requested(T->comm);
        if (stop && T->opts->quiet) return TSR_EXIT_REQUEUE; /* a sweep entry: abandoned, not recorded */
        int every = cfg->run.checkpoint_every > 0 && (step + 1) % cfg->run.checkpoint_every == 0;
        if (!T->opts->quiet && (every || stop) && checkpoint(T, step + 1, ck->first_loss) != 0) return 1;
        if (stop) {
            INFO(T, "train: stop signal: checkpoint of step %ld written in %s/checkpoints; resubmit with --resume",
                 step + 1, cfg->run.output_dir);
            return TSR_EXIT_REQUEUE;
        }
    }
    return 0;
}

int tsr_train_run(const tsr_ctx *ctx, const tsr_config *cfg, const char *cfg_text, const tsr_train_opts *opts,
                  tsr_train_result *res) {
    tsr_trainer T;
    memset(&T, 0, sizeof T);
    T.ctx = ctx;
    T.comm = ctx->comm;
    T.cfg = cfg;
    T.opts = opts;
    T.cfg_text = cfg_text;
    T.R = ctx->comm->size;
    T.me = ctx->comm->rank;
    T.B = (int)cfg->train.batch_size;
    T.K = (int)cfg->model.num_classes;
    run_clock ck = {.t_begin = tsr_time(), .first_loss = NAN, .last_loss = NAN};
    int rc = 1;
    if (setup(&T) != 0) goto out;
    if (opts->grad_examples > 0) {
        int fail = tsr_trainer_task_grads(&T, res) != 0;
        rc = tsr_dist_fail_together(T.comm, fail, &ctx->log) ? 1 : 0;
        goto out;
    }
    if (res) result_init(res, cfg->train.steps, cfg->train.eval_every);
    if (start_run(&T, &ck) != 0) goto out;
    rc = loop(&T, &ck, res);
    if (T.curve) {
        fclose(T.curve);
        T.curve = NULL;
    }
    if (rc != 0) goto out;
    if (restore_best(&T, res) != 0) {
        rc = 1;
        goto out;
    }
    if (res) {
        res->first_loss = ck.first_loss;
        res->last_loss = ck.last_loss;
        res->trainable = T.trainable;
        res->wall_time = tsr_time() - ck.t_begin;
    }
    if (opts->quiet) goto out;
    int fail = T.me == 0 && write_outputs(&T, ck.first_loss, ck.last_loss) != 0;
    if (tsr_dist_fail_together(T.comm, fail, &ctx->log)) {
        rc = 1;
        goto out;
    }
    INFO(&T, "train: loss %.4f -> %.4f; wrote %s/{%s,train_log.csv,config.yaml} (%.1f s)", ck.first_loss,
         ck.last_loss, cfg->run.output_dir, opts->backbone ? "backbone.safetensors" : T.use_ad ?
         "adapters.safetensors,model.safetensors" : "model.safetensors", tsr_time() - ck.t_start);
out:
    trainer_free(&T);
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
