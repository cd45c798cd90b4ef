/* vit.c: ViT forward and backward over the layers of layers.c. */
#include "model/vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/hash.h"
#include "core/rng.h"
#include "model/layers.h"
#ifndef TSR_F64
#include "core/bf16.h"
#include "model/checkpoint.h"
#endif

/* The attached extension's module at (layer, site), or -1 (no extension or none there). */
static inline int site_module(const tsr_vit *m, int layer, int site) {
    return m->hooks ? m->hooks->find(m->hooks_ctx, layer, site) : -1;
}
/* The extension's batch order for B examples, or NULL for the caller's. */
static inline const int *batch_perm(const tsr_vit *m, int B) {
    return m->hooks ? m->hooks->batch_perm(m->hooks_ctx, B) : NULL;
}

/* the bf16 copy of a block weight at offset off, or NULL */
#define W16(base, off) ((base) ? (base) + (off) : NULL)

/* A block's linear layer, out (N, OC) = inp (N, C) W^T + b: from the bf16 copy W16 when the model holds
 * one (model.precision bf16), else fp32. */
static void block_linear_fwd(real *out, const real *inp, const real *W, const uint16_t *W16, const real *b,
                             int N, int C, int OC) {
#ifndef TSR_F64
    if (W16) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, b, sizeof(real) * (size_t)OC);
        TSR_CHECK(tsr_gemm_bf16(1, N, OC, C, inp, C, W16, C, 1, out, OC) == 0, "%s", tsr_last_error());
        return;
    }
#endif
    (void)W16;
    linear_forward(out, inp, W, b, N, C, OC);
}
/* Its backward: dinp += dout W from the bf16 copy when there is one (the weights are then frozen). */
static void block_linear_bwd(real *dinp, real *dW, real *db, const real *dout, const real *inp, const real *W,
                             const uint16_t *W16, int N, int C, int OC) {
#ifndef TSR_F64
    if (W16 && dinp) {
        TSR_CHECK(tsr_gemm_bf16(0, N, C, OC, dout, OC, W16, C, 1, dinp, C) == 0, "%s", tsr_last_error());
        dinp = NULL;
    }
#endif
    (void)W16;
    linear_backward(dinp, dW, db, dout, inp, W, N, C, OC);
}

/* ---------------------------------------------------------------- the block weights in slices */

/* Matrix k of the block weights (0 qkv, 1 proj, 2 fc1, 3 fc2): its offset in params_mem, its size per block,
 * its bf16 copy (NULL in fp32). */
static void matrix(const tsr_vit *m, int k, size_t *base, size_t *per, uint16_t **w16) {
    static const int idx[4] = {6, 8, 12, 14}; /* in param_sizes */
    const real *p[4] = {m->params.qkvw, m->params.projw, m->params.fc1w, m->params.fc2w};
    uint16_t *b16[4] = {m->qkvw16, m->projw16, m->fc1w16, m->fc2w16};
    *base = (size_t)(p[k] - m->params_mem);
    *per = m->param_sizes[idx[k]] / (size_t)m->cfg.depth;
    if (w16) *w16 = b16[k];
}

void tsr_vit_slice(const tsr_vit *m, int s, size_t *off, size_t *n) {
    int L = m->cfg.depth;
    size_t base, per;
    matrix(m, s / L, &base, &per, NULL);
    *off = base + (size_t)(s % L) * per;
    *n = per;
}

void tsr_vit_slice_name(const tsr_vit *m, int s, char *name, size_t len) {
    static const char *nm[4] = {"attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"};
    int L = m->cfg.depth;
    snprintf(name, len, "blocks.%d.%s", s % L, nm[(s / L) & 3]);
}

int tsr_vit_released(const tsr_vit *m, size_t off, size_t n) {
    if (!m->w16_mem || n == 0) return -1;
    int L = m->cfg.depth;
    for (int k = 0; k < 4; k++) {
        size_t base, per;
        matrix(m, k, &base, &per, NULL);
        if (off < base + per * (size_t)L && off + n > base) {
            size_t a = off > base ? off : base;
            return k * L + (int)((a - base) / per);
        }
    }
    return -1;
}

/* timm's initialisation of the block weights: truncated normal, std 0.02, cut at 2 std */
#define W_STD 0.02
static void block_weights_random(tsr_rng *r, real *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (real)tsr_rng_trunc_normal(r, W_STD, -2 * W_STD, 2 * W_STD);
}

void tsr_vit_slice_from_seed(const tsr_vit *m, int s, real *dst) {
    TSR_CHECK(m->w32_src == TSR_W32_SEED && m->w32_rng, "model: the block weights did not come from a seed");
    size_t off, n;
    tsr_vit_slice(m, s, &off, &n);
    tsr_rng r = m->w32_rng[s];
    block_weights_random(&r, dst, n);
}

int tsr_vit_slice_check(const tsr_vit *m, int s, const real *vals, const char *what) {
    size_t off, n;
    tsr_vit_slice(m, s, &off, &n);
    if (m->w32_hash && tsr_hash64(vals, sizeof(real) * n) == m->w32_hash[s]) return 0;
    char nm[64];
    tsr_vit_slice_name(m, s, nm, sizeof nm);
    return tsr_error("model: the fp32 values of %s are not in memory (model.precision bf16 keeps the frozen block "
                     "weights in bf16 only) and cannot be restored: %s no longer gives the values its bf16 copy was "
                     "made from (changed since the model read it, or the model's weights were changed after init or "
                     "load)", nm, what);
}

void tsr_vit_slice_commit(tsr_vit *m, int s) {
#ifdef TSR_F64
    (void)m, (void)s;
    tsr_fatal("model: bf16 weights exist in the float build only");
#else
    TSR_CHECK(m->w16_mem && m->w32_hash, "model: slice commit without a bf16 copy");
    int L = m->cfg.depth;
    size_t base, per;
    uint16_t *w16;
    matrix(m, s / L, &base, &per, &w16);
    size_t off = (size_t)(s % L) * per;
    real *p = m->params_mem + base + off;
    tsr_bf16_convert(w16 + off, p, per);
    m->w32_hash[s] = tsr_hash64(p, sizeof(real) * per);
    tsr_lazy_zero(p, sizeof(real) * per); /* stored once, in bf16 */
#endif
}

int tsr_vit_set_precision(tsr_vit *m, int bf16) {
    if (!bf16) {
        if (!m->w16_mem) return 0;
#ifndef TSR_F64
        if (tsr_ckpt_restore_fp32(m) != 0) return -1; /* the model stays in bf16 */
#endif
        tsr_lazy_free(m->w16_mem);
        m->w16_mem = m->qkvw16 = m->projw16 = m->fc1w16 = m->fc2w16 = NULL;
        return 0;
    }
#ifdef TSR_F64
    return tsr_error("model: bf16 weights exist in the float build only");
#else
    if (m->w16_mem) return 0;
    size_t n[4], total = 0;
    for (int k = 0; k < 4; k++) {
        size_t base;
        matrix(m, k, &base, &n[k], NULL);
        n[k] *= (size_t)m->cfg.depth;
        total += n[k];
    }
    /* pages resident only as slices are converted */
    m->w16_mem = tsr_lazy_alloc(sizeof(uint16_t) * total);
    uint16_t **dst[4] = {&m->qkvw16, &m->projw16, &m->fc1w16, &m->fc2w16}, *p = m->w16_mem;
    for (int k = 0; k < 4; k++) {
        *dst[k] = p;
        p += n[k];
    }
    int S = 4 * m->cfg.depth;
    if (!m->w32_hash) m->w32_hash = tsr_calloc((size_t)S, sizeof(uint64_t));
    for (int s = 0; s < S; s++) tsr_vit_slice_commit(m, s);
    return 0;
#endif
}

int tsr_vit_config_check(const tsr_vit_config *c) {
    if (c->image_size <= 0 || c->patch_size <= 0 || c->channels <= 0 || c->dim <= 0 || c->depth <= 0 ||
        c->heads <= 0 || c->mlp_dim <= 0 || c->num_classes <= 0)
        return tsr_error("model: every size must be positive (image_size %d, patch_size %d, channels %d, "
                         "dim %d, depth %d, heads %d, mlp_dim %d, num_classes %d)",
                         c->image_size, c->patch_size, c->channels, c->dim, c->depth, c->heads,
                         c->mlp_dim, c->num_classes);
    if (c->image_size % c->patch_size)
        return tsr_error("model: image_size %d is not divisible by patch_size %d", c->image_size,
                         c->patch_size);
    if (c->dim % c->heads)
        return tsr_error("model: dim %d is not divisible by heads %d", c->dim, c->heads);
    if (!(c->ln_eps >= 0 && c->ln_eps < 1)) return tsr_error("model: ln_eps %g is not in [0, 1)", c->ln_eps);
    return 0;
}

static void param_sizes(const tsr_vit_config *c, size_t *s) {
    size_t D = c->dim, L = c->depth, M = c->mlp_dim, K = c->num_classes, T = tsr_vit_tokens(c);
    size_t CPP = (size_t)c->channels * c->patch_size * c->patch_size;
    size_t v[TSR_VIT_NTENSORS] = {D * CPP, D, D, T * D, L * D, L * D, L * 3 * D * D, L * 3 * D,
                                  L * D * D, L * D, L * D, L * D, L * M * D, L * M, L * D * M, L * D,
                                  D, D, K * D, K};
    memcpy(s, v, sizeof v);
}

static void point_params(tsr_vit_params *p, real *mem, const size_t *s) {
    real **ptrs[TSR_VIT_NTENSORS] = {&p->patch_w, &p->patch_b, &p->cls, &p->pos, &p->ln1w, &p->ln1b,
                                     &p->qkvw, &p->qkvb, &p->projw, &p->projb, &p->ln2w, &p->ln2b,
                                     &p->fc1w, &p->fc1b, &p->fc2w, &p->fc2b, &p->lnfw, &p->lnfb,
                                     &p->headw, &p->headb};
    for (int i = 0; i < TSR_VIT_NTENSORS; i++) {
        *ptrs[i] = mem;
        mem += s[i];
    }
}

int tsr_vit_create(tsr_vit *m, const tsr_vit_config *c, int max_batch) {
    memset(m, 0, sizeof *m);
    if (tsr_vit_config_check(c) != 0) return -1;
    if (max_batch <= 0) return tsr_error("model: batch size must be positive (got %d)", max_batch);
    m->cfg = *c;
    m->max_batch = max_batch;
    m->tokens = tsr_vit_tokens(c);
    m->npatch = m->tokens - 1;
    param_sizes(c, m->param_sizes);
    m->num_params = 0;
    for (int i = 0; i < TSR_VIT_NTENSORS; i++) m->num_params += m->param_sizes[i];
    /* a mapping of its own: model.precision bf16 gives the block weights' pages back (tsr_lazy_zero) */
    m->params_mem = tsr_lazy_alloc(sizeof(real) * m->num_params);
    /* untouched until written: a step zeroes and fills only the groups it trains (tsr_vit_zero_grad_for) */
    m->grads_mem = tsr_lazy_alloc(sizeof(real) * m->num_params);
    point_params(&m->params, m->params_mem, m->param_sizes);
    point_params(&m->grads, m->grads_mem, m->param_sizes);

    size_t B = max_batch, T = m->tokens, D = c->dim, L = c->depth, M = c->mlp_dim;
    size_t K = c->num_classes, NP = m->npatch, CPP = (size_t)c->channels * c->patch_size * c->patch_size;
    size_t a[] = {
        B * NP * CPP, B * NP * D, (L + 1) * B * T * D,                    /* patches, patch_out, resid */
        B * T * D, L * B * T, L * B * T,                                  /* ln1 (one block), mean, rstd */
        L * B * T * 3 * D, L * B * T * D, L * B * T * D,                  /* qkv, atty, mid */
        L * B * T, L * B * T,                                             /* ln2 mean, rstd */
        L * B * T * M,                                                    /* fc1 */
        B * D, B * D, B, B, B * K, B * K};                                /* cls_in, lnf, logits, probs */
    real **ap[] = {&m->acts.patches, &m->acts.patch_out, &m->acts.resid, &m->acts.ln1, &m->acts.ln1_mean,
                   &m->acts.ln1_rstd, &m->acts.qkv, &m->acts.atty, &m->acts.mid,
                   &m->acts.ln2_mean, &m->acts.ln2_rstd, &m->acts.fc1,
                   &m->acts.cls_in, &m->acts.lnf, &m->acts.lnf_mean, &m->acts.lnf_rstd,
                   &m->acts.logits, &m->acts.probs};
    _Static_assert(sizeof a / sizeof a[0] == sizeof ap / sizeof ap[0], "activation size table");
    int na = (int)(sizeof a / sizeof a[0]);
    size_t total = 0;
    for (int i = 0; i < na; i++) total += (a[i] + 15) & ~(size_t)15; /* 64-byte aligned pieces */
    m->num_acts = total;
    /* untouched until written: the blocks below what the planned backward reads share block 0's slots
     * (tsr_vit_plan_backward), so the rest of theirs never becomes resident */
    m->acts_mem = tsr_lazy_alloc(sizeof(real) * total);
    real *p = m->acts_mem;
    for (int i = 0; i < na; i++) {
        *ap[i] = p;
        p += (a[i] + 15) & ~(size_t)15;
    }
    size_t sc[] = {B * T * D, B * T * D, B * T * D, B * T * D, B * T * 3 * D, B * T * M, B * T * M,
                   3 * B * D + B * K};
    real **sp[] = {&m->d_a, &m->d_b, &m->d_ln, &m->d_atty, &m->d_qkv, &m->d_fc, &m->d_fc2, &m->d_small};
    total = 0;
    for (size_t i = 0; i < sizeof sc / sizeof sc[0]; i++) total += (sc[i] + 15) & ~(size_t)15;
    m->scratch_mem = tsr_aligned_alloc(sizeof(real) * total);
    m->perm_images = tsr_aligned_alloc(sizeof(real) * B * c->channels * c->image_size * c->image_size);
    m->perm_labels = tsr_malloc(sizeof(int) * B);
    m->perm_buf = tsr_aligned_alloc(sizeof(real) * B * K);
    p = m->scratch_mem;
    for (size_t i = 0; i < sizeof sc / sizeof sc[0]; i++) {
        *sp[i] = p;
        p += (sc[i] + 15) & ~(size_t)15;
    }
    m->acts.ln2 = m->acts.ln1; /* one block's LayerNorm output, recomputed in the backward where needed */
    m->acts.gelu = m->d_fc;    /* one block's GELU output: d_fc is free in the forward, and in the backward
                                * until the GELU output has served fc2 */
    return 0;
}

void tsr_vit_destroy(tsr_vit *m) {
    tsr_lazy_free(m->params_mem);
    tsr_lazy_free(m->grads_mem);
    tsr_lazy_free(m->acts_mem);
    tsr_lazy_free(m->att_mem);
    free(m->scratch_mem);
    free(m->d_resid_all);
    free(m->perm_images);
    free(m->perm_labels);
    free(m->perm_buf);
    tsr_lazy_free(m->w16_mem);
    free(m->w32_path);
    free(m->w32_rng);
    free(m->w32_hash);
    memset(m, 0, sizeof *m);
}

void tsr_vit_keep_resid_grads(tsr_vit *m) {
    if (!m->d_resid_all)
        m->d_resid_all = tsr_aligned_alloc(sizeof(real) * (size_t)(m->cfg.depth + 1) * m->max_batch *
                                           m->tokens * m->cfg.dim);
}

void tsr_vit_store_attention(tsr_vit *m) {
    if (!m->att_mem)
        m->att_mem = tsr_lazy_alloc(sizeof(real) * (size_t)m->cfg.depth * m->max_batch * m->cfg.heads *
                                    m->tokens * m->tokens);
    m->acts.att = m->att_mem;
}

void tsr_vit_plan_backward(tsr_vit *m, const tsr_vit_trainable *tr) {
    m->plan = *tr;
    m->has_plan = 1;
}

/* The lowest block whose activations a backward with tr reads (depth: none; a probe stops at the head). */
static int lowest_read(const tsr_vit *m, const tsr_vit_trainable *tr) {
    int L = m->cfg.depth;
    int l_ext = m->hooks ? m->hooks->lowest_layer(m->hooks_ctx) : L;
    int below = tr->blocks || tr->embed || tr->input_grad;
    if (below) return 0;
    return l_ext < L ? l_ext : L;
}

void tsr_vit_zero_grad(tsr_vit *m) { memset(m->grads_mem, 0, sizeof(real) * m->num_params); }

void tsr_vit_zero_grad_for(tsr_vit *m, const tsr_vit_trainable *tr) {
    /* the groups are contiguous in the order embed (tensors 0-3), blocks (4-15), norm (16-17), head (18-19) */
    static const int first[5] = {0, 4, 16, 18, TSR_VIT_NTENSORS};
    int on[4] = {tr->embed, tr->blocks, tr->norm, tr->head};
    size_t off = 0;
    for (int g = 0; g < 4; g++) {
        size_t n = 0;
        for (int i = first[g]; i < first[g + 1]; i++) n += m->param_sizes[i];
        if (on[g]) memset(m->grads_mem + off, 0, sizeof(real) * n);
        off += n;
    }
}

void tsr_vit_init_random(tsr_vit *m, uint64_t seed) {
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    const tsr_vit_config *c = &m->cfg;
    tsr_vit_params *p = &m->params;
    tsr_lazy_zero(m->params_mem, sizeof(real) * m->num_params);
    size_t D = c->dim, L = c->depth;
#define TN(ptr, n, std) for (size_t i_ = 0; i_ < (n); i_++) (ptr)[i_] = (real)tsr_rng_trunc_normal(&r, std, -2 * (std), 2 * (std))
    TN(p->patch_w, m->param_sizes[0], 0.02);
    TN(p->cls, D, 1e-6);
    TN(p->pos, m->param_sizes[3], 0.02);
#undef TN
    /* qkv, proj, fc1, fc2 of every block: the stream continues through the slices in memory order (the four
     * stacked matrices one after the other); the state at each slice's start is kept, so that a slice can be
     * made again (tsr_vit_slice_from_seed); in bf16 each slice is converted and released once written */
    int S = 4 * (int)L;
    if (!m->w32_rng) m->w32_rng = tsr_malloc(sizeof(tsr_rng) * (size_t)S);
    for (int s = 0; s < S; s++) {
        size_t off, n;
        tsr_vit_slice(m, s, &off, &n);
        m->w32_rng[s] = r;
        block_weights_random(&r, m->params_mem + off, n);
        if (m->w16_mem) tsr_vit_slice_commit(m, s);
    }
    m->w32_src = TSR_W32_SEED;
    free(m->w32_path);
    m->w32_path = NULL;
    for (size_t i = 0; i < L * D; i++) p->ln1w[i] = p->ln2w[i] = 1;
    for (size_t i = 0; i < D; i++) p->lnfw[i] = 1;
}

double tsr_vit_forward(tsr_vit *m, const real *images, const int *labels, int B) {
    const tsr_vit_config *c = &m->cfg;
    TSR_CHECK(B > 0 && B <= m->max_batch, "forward: batch %d outside [1, %d]", B, m->max_batch);
    const tsr_vit_params *p = &m->params;
    tsr_vit_acts *a = &m->acts;
    int T = m->tokens, D = c->dim, H = c->heads, M = c->mlp_dim, K = c->num_classes, NP = m->npatch;
    int CPP = c->channels * c->patch_size * c->patch_size, BT = B * T;
    size_t BTD = (size_t)BT * D;
    m->batch = B;
    m->labels = labels;
    /* an extension may group the batch (the adapters: by task): run it in that order, answer in the caller's */
    const int *perm = batch_perm(m, B);
    if (perm) {
        size_t per = (size_t)c->channels * c->image_size * c->image_size;
        for (int i = 0; i < B; i++) {
            memcpy(m->perm_images + (size_t)i * per, images + (size_t)perm[i] * per, sizeof(real) * per);
            if (labels) m->perm_labels[i] = labels[perm[i]];
        }
        images = m->perm_images;
        if (labels) labels = m->perm_labels;
    }

    /* embedding: patches -> linear -> [cls; patches] + pos */
    patchify_forward(a->patches, images, B, c->channels, c->image_size, c->patch_size);
    linear_forward(a->patch_out, a->patches, p->patch_w, p->patch_b, B * NP, CPP, D);
    real *x0 = a->resid;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            real *dst = x0 + ((size_t)b * T + t) * D;
            const real *src = t == 0 ? p->cls : a->patch_out + ((size_t)b * NP + t - 1) * D;
            const real *pos = p->pos + (size_t)t * D;
            for (int d = 0; d < D; d++) dst[d] = src[d] + pos[d];
        }

    /* blocks below kept_from keep nothing for the backward: their activations go to block 0's slots */
    m->kept_from = m->has_plan ? lowest_read(m, &m->plan) : 0;
    m->kept_wg = !m->has_plan || m->plan.blocks;
    for (int l = 0; l < c->depth; l++) {
        size_t s = l < m->kept_from ? 0 : (size_t)l; /* the slot of this block's activations */
        real *x = a->resid + l * BTD, *out = a->resid + (l + 1) * BTD;
        real *ln1 = a->ln1, *ln1m = a->ln1_mean + s * BT, *ln1r = a->ln1_rstd + s * BT;
        real *qkv = a->qkv + s * BTD * 3, *att = a->att ? a->att + s * B * H * T * T : NULL;
        /* the attention output is read by the backward only for proj's weight gradient or a proj adapter */
        int keep_atty = m->kept_wg || site_module(m, l, TSR_VIT_SITE_PROJ) >= 0;
        real *atty = keep_atty ? a->atty + s * BTD : m->d_atty, *mid = a->mid + s * BTD;
        real *ln2 = a->ln2, *ln2m = a->ln2_mean + s * BT, *ln2r = a->ln2_rstd + s * BT;
        real *fc1 = a->fc1 + s * BT * M, *gl = a->gelu; /* ln1, ln2, gl: one block, recomputed in backward */
        const tsr_vit_hooks *hk = m->hooks;
        void *hc = m->hooks_ctx;
        int k;
        layernorm_forward(ln1, ln1m, ln1r, x, p->ln1w + l * D, p->ln1b + l * D, BT, D, c->ln_eps);
        block_linear_fwd(qkv, ln1, p->qkvw + (size_t)l * 3 * D * D, W16(m->qkvw16, (size_t)l * 3 * D * D), p->qkvb + (size_t)l * 3 * D, BT, D, 3 * D);
        for (int site = TSR_VIT_SITE_Q; site <= TSR_VIT_SITE_V; site++)
            if ((k = site_module(m, l, site)) >= 0) hk->forward(hc, k, qkv + (size_t)site * D, 3 * D, ln1, D);
        attention_forward(atty, att, qkv, B, T, D, H);
        block_linear_fwd(mid, atty, p->projw + (size_t)l * D * D, W16(m->projw16, (size_t)l * D * D), p->projb + (size_t)l * D, BT, D, D);
        if ((k = site_module(m, l, TSR_VIT_SITE_PROJ)) >= 0) hk->forward(hc, k, mid, D, atty, D);
        if ((k = site_module(m, l, TSR_VIT_SITE_HOULSBY_ATTN)) >= 0) hk->forward(hc, k, mid, D, mid, D);
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < BTD; i++) mid[i] += x[i];
        layernorm_forward(ln2, ln2m, ln2r, mid, p->ln2w + l * D, p->ln2b + l * D, BT, D, c->ln_eps);
        block_linear_fwd(fc1, ln2, p->fc1w + (size_t)l * M * D, W16(m->fc1w16, (size_t)l * M * D), p->fc1b + (size_t)l * M, BT, D, M);
        if ((k = site_module(m, l, TSR_VIT_SITE_FC1)) >= 0) hk->forward(hc, k, fc1, M, ln2, D);
        gelu_forward(gl, fc1, (long)BT * M);
        block_linear_fwd(out, gl, p->fc2w + (size_t)l * D * M, W16(m->fc2w16, (size_t)l * D * M), p->fc2b + (size_t)l * D, BT, M, D);
        if ((k = site_module(m, l, TSR_VIT_SITE_FC2)) >= 0) hk->forward(hc, k, out, D, gl, M);
        if ((k = site_module(m, l, TSR_VIT_SITE_MLP_SEQ)) >= 0) hk->forward(hc, k, out, D, out, D);
        if ((k = site_module(m, l, TSR_VIT_SITE_PARALLEL)) >= 0) hk->forward(hc, k, out, D, mid, D);
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < BTD; i++) out[i] += mid[i];
    }

    /* final LayerNorm on the class token (the head reads only token 0), head */
    const real *xl = a->resid + (size_t)c->depth * BTD;
    for (int b = 0; b < B; b++) memcpy(a->cls_in + (size_t)b * D, xl + (size_t)b * T * D, sizeof(real) * D);
    layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, a->cls_in, p->lnfw, p->lnfb, B, D, c->ln_eps);
    linear_forward(a->logits, a->lnf, p->headw, p->headb, B, D, K);
    double loss = softmax_xent_forward(a->probs, a->logits, labels, B, K);
    if (perm) {
        real *outs[2] = {a->logits, a->probs};
        for (int j = 0; j < 2; j++) {
            memcpy(m->perm_buf, outs[j], sizeof(real) * (size_t)B * K);
            for (int i = 0; i < B; i++)
                memcpy(outs[j] + (size_t)perm[i] * K, m->perm_buf + (size_t)i * K, sizeof(real) * K);
        }
    }
    return loss;
}

static void backward_impl(tsr_vit *m, const tsr_vit_trainable *tr, const real *dlogits_in);

void tsr_vit_backward(tsr_vit *m, const tsr_vit_trainable *tr) {
    TSR_CHECK(m->labels != NULL, "backward: the last forward had no labels");
    backward_impl(m, tr, NULL);
}

void tsr_vit_backward_from(tsr_vit *m, const tsr_vit_trainable *tr, const real *dlogits) {
    backward_impl(m, tr, dlogits);
}

static void backward_impl(tsr_vit *m, const tsr_vit_trainable *tr, const real *dlogits_in) {
    const tsr_vit_config *c = &m->cfg;
    const tsr_vit_params *p = &m->params;
    tsr_vit_params *g = &m->grads;
    const tsr_vit_acts *a = &m->acts;
    int B = m->batch, T = m->tokens, D = c->dim, H = c->heads, M = c->mlp_dim, K = c->num_classes;
    int NP = m->npatch, CPP = c->channels * c->patch_size * c->patch_size, BT = B * T, L = c->depth;
    size_t BTD = (size_t)BT * D;
    real *dlogits = m->d_small, *dlnf = dlogits + (size_t)B * K, *dcls = dlnf + (size_t)B * D;

    /* how far down the gradient must go: the lowest trainable layer, or the tokens if asked */
    const tsr_vit_hooks *hk = m->hooks;
    void *hc = m->hooks_ctx;
    int l_ext = hk ? hk->lowest_layer(hc) : c->depth; /* the extension's lowest module; depth: none */
    int ext = l_ext < c->depth;
    int below = tr->blocks || tr->embed || tr->input_grad; /* must reach block 0 */
    int need_blocks = below || ext;
    int l_stop = below ? 0 : l_ext;
    TSR_CHECK(!need_blocks || !tr->blocks || m->kept_wg,
              "backward: block weight gradients, but the forward was planned without (tsr_vit_plan_backward)");
    TSR_CHECK(!need_blocks || l_stop >= m->kept_from,
              "backward: reads block %d, but the forward kept blocks from %d only (tsr_vit_plan_backward)", l_stop,
              m->kept_from);
    int need_below_head = need_blocks || tr->norm;

    memset(dlogits, 0, sizeof(real) * ((size_t)B * K + 2 * (size_t)B * D));
    if (dlogits_in) memcpy(dlogits, dlogits_in, sizeof(real) * (size_t)B * K);
    else softmax_xent_backward(dlogits, a->probs, m->labels, B, K, 1.0);
    const int *perm = batch_perm(m, B);
    if (perm) { /* the caller's order -> the internal (task-grouped) order */
        memcpy(m->perm_buf, dlogits, sizeof(real) * (size_t)B * K);
        for (int i = 0; i < B; i++) memcpy(dlogits + (size_t)i * K, m->perm_buf + (size_t)perm[i] * K, sizeof(real) * K);
    }
    linear_backward(need_below_head ? dlnf : NULL, tr->head ? g->headw : NULL, tr->head ? g->headb : NULL,
                    dlogits, a->lnf, p->headw, B, D, K);
    if (!need_below_head) return;
    layernorm_backward(need_blocks ? dcls : NULL, tr->norm ? g->lnfw : NULL, tr->norm ? g->lnfb : NULL,
                       dlnf, a->cls_in, p->lnfw, a->lnf_mean, a->lnf_rstd, B, D);
    if (!need_blocks) return;

    real *dx = m->d_a, *dmid = m->d_b; /* dx: gradient w.r.t. resid[l+1] on entry to block l */
    memset(dx, 0, sizeof(real) * BTD);
    for (int b = 0; b < B; b++) memcpy(dx + (size_t)b * T * D, dcls + (size_t)b * D, sizeof(real) * D);
    if (m->d_resid_all) memcpy(m->d_resid_all + (size_t)L * BTD, dx, sizeof(real) * BTD);

    int wg = tr->blocks;
    TSR_CHECK(!(wg && m->w16_mem), "backward: the block weights (blocks.*.attn.qkv.weight, attn.proj.weight, "
              "mlp.fc1.weight, mlp.fc2.weight) are held in bf16 only (model.precision bf16) and frozen; their "
              "gradients are not computed");
    for (int l = L - 1; l >= l_stop; l--) {
        int k;
        const real *x = a->resid + l * BTD, *mid = a->mid + l * BTD;
        real *ln1 = a->ln1, *ln1m = a->ln1_mean + (size_t)l * BT, *ln1r = a->ln1_rstd + (size_t)l * BT;
        const real *qkv = a->qkv + l * BTD * 3, *att = a->att ? a->att + (size_t)l * B * H * T * T : NULL;
        const real *atty = a->atty + l * BTD;
        real *ln2 = a->ln2, *ln2m = a->ln2_mean + (size_t)l * BT, *ln2r = a->ln2_rstd + (size_t)l * BT;
        const real *fc1 = a->fc1 + (size_t)l * BT * M;
        real *gl = a->gelu; /* recomputed below when fc2 needs its weight gradient */
        size_t oD = (size_t)l * D, oM = (size_t)l * M;

        /* MLP branch: out = mid + fc2(gelu(fc1(ln2(mid)))) [+ adapters]. GELU's output is kept for one
         * block only (saves (L-1) x B x T x M values); fc2's weight gradient and an fc2 LoRA need it. */
        /* What this block must produce. At the lowest adapted block, when nothing below needs a gradient
         * (adapter tuning), the gradient into resid[l] is not needed, nor, without adapters in the
         * attention branch, anything of that branch. */
        int need_dx = below || l > l_stop;
        int k_q = site_module(m, l, TSR_VIT_SITE_Q), k_k = site_module(m, l, TSR_VIT_SITE_K);
        int k_v = site_module(m, l, TSR_VIT_SITE_V), k_fc2 = site_module(m, l, TSR_VIT_SITE_FC2);
        int k_fc1 = site_module(m, l, TSR_VIT_SITE_FC1), k_proj = site_module(m, l, TSR_VIT_SITE_PROJ);
        int k_hou = site_module(m, l, TSR_VIT_SITE_HOULSBY_ATTN);
        int need_qkv = wg || need_dx || k_q >= 0 || k_k >= 0 || k_v >= 0;
        int attn_needs = need_qkv || k_proj >= 0 || k_hou >= 0;
        int need_dfc2 = wg || attn_needs || k_fc1 >= 0;
        if (wg || k_fc2 >= 0) gelu_forward(gl, fc1, (long)BT * M);
        memcpy(dmid, dx, sizeof(real) * BTD);
        if ((k = site_module(m, l, TSR_VIT_SITE_PARALLEL)) >= 0)
            hk->backward(hc, k, attn_needs ? dmid : NULL, D, dx, D, mid, D);
        const real *dy2 = dx; /* d (MLP output) */
        if ((k = site_module(m, l, TSR_VIT_SITE_MLP_SEQ)) >= 0) {
            memcpy(m->d_atty, dx, sizeof(real) * BTD);
            hk->backward(hc, k, m->d_atty, D, dx, D, NULL, D);
            dy2 = m->d_atty;
        }
        if (need_dfc2) {
            memset(m->d_fc2, 0, sizeof(real) * (size_t)BT * M);
            block_linear_bwd(m->d_fc2, wg ? g->fc2w + oD * M : NULL, wg ? g->fc2b + oD : NULL, dy2, gl,
                             p->fc2w + oD * M, W16(m->fc2w16, oD * M), BT, M, D);
        }
        if (k_fc2 >= 0) hk->backward(hc, k_fc2, need_dfc2 ? m->d_fc2 : NULL, M, dy2, D, gl, M);
        if (need_dfc2) {
            memset(m->d_fc, 0, sizeof(real) * (size_t)BT * M);
            gelu_backward(m->d_fc, m->d_fc2, fc1, (long)BT * M);
            /* LN2's output again (the forward's own computation: the same values; mean and rstd rewritten
             * as they were) for fc1's weight gradient or an fc1 adapter */
            if (wg || k_fc1 >= 0)
                layernorm_forward(ln2, ln2m, ln2r, mid, p->ln2w + oD, p->ln2b + oD, BT, D, c->ln_eps);
            if (attn_needs || wg) {
                memset(m->d_ln, 0, sizeof(real) * BTD);
                block_linear_bwd(attn_needs ? m->d_ln : NULL, wg ? g->fc1w + oM * D : NULL, wg ? g->fc1b + oM : NULL,
                                 m->d_fc, ln2, p->fc1w + oM * D, W16(m->fc1w16, oM * D), BT, D, M);
            }
            if (k_fc1 >= 0) hk->backward(hc, k_fc1, attn_needs ? m->d_ln : NULL, D, m->d_fc, M, ln2, D);
            if (attn_needs || wg)
                layernorm_backward(attn_needs ? dmid : NULL, wg ? g->ln2w + oD : NULL, wg ? g->ln2b + oD : NULL, m->d_ln,
                                   mid, p->ln2w + oD, ln2m, ln2r, BT, D);
        }
        if (!attn_needs) continue; /* l == l_stop: nothing below or in the attention branch is trained */

        /* attention branch: mid = x + proj(attn(qkv(ln1(x)))) [+ adapters] */
        real *dxin = dx; /* reuse: d resid[l] */
        memcpy(dxin, dmid, sizeof(real) * BTD);
        const real *dp = dmid; /* d (projected attention output) */
        if (k_hou >= 0) {
            memcpy(m->d_ln, dmid, sizeof(real) * BTD);
            hk->backward(hc, k_hou, m->d_ln, D, dmid, D, NULL, D);
            dp = m->d_ln;
        }
        if (need_qkv || wg) {
            memset(m->d_atty, 0, sizeof(real) * BTD);
            block_linear_bwd(need_qkv ? m->d_atty : NULL, wg ? g->projw + oD * D : NULL, wg ? g->projb + oD : NULL, dp,
                             atty, p->projw + oD * D, W16(m->projw16, oD * D), BT, D, D);
        }
        if (k_proj >= 0) hk->backward(hc, k_proj, need_qkv ? m->d_atty : NULL, D, dp, D, atty, D);
        if (!need_qkv) continue;
        memset(m->d_qkv, 0, sizeof(real) * BTD * 3);
        attention_backward(m->d_qkv, m->d_atty, qkv, att, B, T, D, H);
        if (wg || k_q >= 0 || k_k >= 0 || k_v >= 0) /* LN1's output again: qkv's weight gradient, q/k/v adapters */
            layernorm_forward(ln1, ln1m, ln1r, x, p->ln1w + oD, p->ln1b + oD, BT, D, c->ln_eps);
        if (need_dx || wg) {
            memset(m->d_ln, 0, sizeof(real) * BTD);
            block_linear_bwd(need_dx ? m->d_ln : NULL, wg ? g->qkvw + oD * 3 * D : NULL, wg ? g->qkvb + oD * 3 : NULL,
                             m->d_qkv, ln1, p->qkvw + oD * 3 * D, W16(m->qkvw16, oD * 3 * D), BT, D, 3 * D);
        }
        int kq[3] = {k_q, k_k, k_v};
        for (int site = 0; site < 3; site++)
            if (kq[site] >= 0)
                hk->backward(hc, kq[site], need_dx ? m->d_ln : NULL, D, m->d_qkv + (size_t)site * D, 3 * D, ln1, D);
        if (need_dx || wg)
            layernorm_backward(need_dx ? dxin : NULL, wg ? g->ln1w + oD : NULL, wg ? g->ln1b + oD : NULL, m->d_ln, x,
                               p->ln1w + oD, ln1m, ln1r, BT, D);
        if (m->d_resid_all) memcpy(m->d_resid_all + (size_t)l * BTD, dxin, sizeof(real) * BTD);
    }

    if (ext) hk->end_backward(hc);
    if (!tr->embed) return;
    /* embedding: resid[0] = [cls; patch_out] + pos */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const real *src = dx + ((size_t)b * T + t) * D;
            real *dpos = g->pos + (size_t)t * D;
            for (int d = 0; d < D; d++) dpos[d] += src[d];
            if (t == 0)
                for (int d = 0; d < D; d++) g->cls[d] += src[d];
        }
    /* d patch_out (B, NP, D) = dx rows 1..T-1 of each image; reuse d_ln as a (B*NP, D) buffer */
    for (int b = 0; b < B; b++)
        memcpy(m->d_ln + (size_t)b * NP * D, dx + ((size_t)b * T + 1) * D, sizeof(real) * (size_t)NP * D);
    linear_backward(NULL, g->patch_w, g->patch_b, m->d_ln, a->patches, p->patch_w, B * NP, CPP, D);
}

int tsr_vit_tensor_info(const tsr_vit *m, const tsr_vit_params *p, int i, char *name, size_t name_len,
                        int *ndim, int64_t shape[4], real **data) {
    const tsr_vit_config *c = &m->cfg;
    int L = c->depth, n = 4 + 12 * L + 4;
    if (i == -1) return n;
    if (i < 0 || i >= n) return -1;
    int64_t D = c->dim, M = c->mlp_dim, K = c->num_classes, T = m->tokens, C = c->channels, P = c->patch_size;
#define SET(nm, nd, s0, s1, s2, s3, ptr)                                                           \
    do {                                                                                           \
        snprintf(name, name_len, "%s", nm);                                                        \
        *ndim = nd;                                                                                \
        shape[0] = s0; shape[1] = s1; shape[2] = s2; shape[3] = s3;                               \
        *data = ptr;                                                                               \
        return 0;                                                                                  \
    } while (0)
    switch (i) {
    case 0: SET("patch_embed.proj.weight", 4, D, C, P, P, p->patch_w);
    case 1: SET("patch_embed.proj.bias", 1, D, 0, 0, 0, p->patch_b);
    case 2: SET("cls_token", 3, 1, 1, D, 0, p->cls);
    case 3: SET("pos_embed", 3, 1, T, D, 0, p->pos);
    }
    if (i >= 4 + 12 * L) {
        switch (i - 4 - 12 * L) {
        case 0: SET("norm.weight", 1, D, 0, 0, 0, p->lnfw);
        case 1: SET("norm.bias", 1, D, 0, 0, 0, p->lnfb);
        case 2: SET("head.weight", 2, K, D, 0, 0, p->headw);
        default: SET("head.bias", 1, K, 0, 0, 0, p->headb);
        }
    }
#undef SET
    int l = (i - 4) / 12, k = (i - 4) % 12;
    static const char *suffix[12] = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                     "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                                     "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"};
    int64_t shp[12][2] = {{D, 0}, {D, 0}, {3 * D, D}, {3 * D, 0}, {D, D}, {D, 0},
                          {D, 0}, {D, 0}, {M, D},     {M, 0},     {D, M}, {D, 0}};
    real *ptrs[12] = {p->ln1w + l * D, p->ln1b + l * D, p->qkvw + l * 3 * D * D, p->qkvb + l * 3 * D,
                      p->projw + l * D * D, p->projb + l * D, p->ln2w + l * D, p->ln2b + l * D,
                      p->fc1w + l * M * D, p->fc1b + l * M, p->fc2w + l * D * M, p->fc2b + l * D};
    snprintf(name, name_len, "blocks.%d.%s", l, suffix[k]);
    *ndim = shp[k][1] ? 2 : 1;
    shape[0] = shp[k][0];
    shape[1] = shp[k][1];
    shape[2] = shape[3] = 0;
    *data = ptrs[k];
    return 0;
}
