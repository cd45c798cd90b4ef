/* adapters.c: routed low-rank pairs (LoRA and bottleneck adapters, Poly / MHR routing). See adapters.h. */
#include "adapters/adapters.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/blas.h"
#include "core/common.h"
#include "core/rng.h"
#include "model/layers.h"

static const char *const tsr_lora_site_names[TSR_NLORA] = {"q", "k", "v", "proj", "fc1", "fc2"};
static const char *const tsr_bn_pos_names[TSR_NBN] = {"parallel", "houlsby_attn", "mlp_seq"};

#define NSLOT (TSR_NLORA + TSR_NBN)
#define RB_EPS 1.1920928955078125e-07 /* float32 machine epsilon: torch's clamp_probs */

/* The module slots are the model's sites: slot = site (LoRA sites first, then the bottleneck positions). */
#define SAME(a, b) ((int)(a) == (int)(b))
_Static_assert(SAME(TSR_LORA_Q, TSR_VIT_SITE_Q) && SAME(TSR_LORA_K, TSR_VIT_SITE_K) &&
                   SAME(TSR_LORA_V, TSR_VIT_SITE_V) && SAME(TSR_LORA_PROJ, TSR_VIT_SITE_PROJ) &&
                   SAME(TSR_LORA_FC1, TSR_VIT_SITE_FC1) && SAME(TSR_LORA_FC2, TSR_VIT_SITE_FC2),
               "LoRA sites are the model's sites");
_Static_assert(SAME(TSR_NLORA + TSR_BN_PARALLEL, TSR_VIT_SITE_PARALLEL) &&
                   SAME(TSR_NLORA + TSR_BN_HOULSBY_ATTN, TSR_VIT_SITE_HOULSBY_ATTN) &&
                   SAME(TSR_NLORA + TSR_BN_MLP_SEQ, TSR_VIT_SITE_MLP_SEQ) && SAME(NSLOT, TSR_VIT_NSITES),
               "bottleneck positions are the model's sites after the LoRA ones");
#undef SAME

int tsr_ad_find(const tsr_adapters *ad, int layer, int slot) { return ad->index[layer * NSLOT + slot]; }

int tsr_ad_lowest_layer(const tsr_adapters *ad) {
    int lo = ad->depth;
    for (int k = 0; k < ad->n_mod; k++)
        if (ad->mod[k].layer < lo) lo = ad->mod[k].layer;
    return lo;
}

static size_t comb_size(const tsr_rlp *m) {
    return 2 * (size_t)m->h * m->S + (size_t)m->din * m->r + (size_t)m->r * m->dout + (size_t)m->r + (size_t)m->dout;
}

int tsr_adapters_create(tsr_adapters *ad, const tsr_adapter_config *c, int depth, int dim, int mlp, int tokens,
                        int max_batch) {
    memset(ad, 0, sizeof *ad);
    ad->cfg = *c;
    ad->depth = depth;
    ad->dim = dim;
    ad->mlp = mlp;
    ad->tokens = tokens;
    ad->max_batch = max_batch;
    if (max_batch > TSR_AD_MAX_BATCH) return tsr_error("adapters: batch %d exceeds %d", max_batch, TSR_AD_MAX_BATCH);
    if (c->skills < 1) return tsr_error("adapter.skills: expected >= 1, got %d", c->skills);
    if (c->heads < 1) return tsr_error("adapter.heads: expected >= 1, got %d", c->heads);
    if (c->skills > 1 && c->n_tasks < 1)
        return tsr_error("adapter.skills = %d needs routing rows: adapter.n_tasks must be >= 1", c->skills);
    if (c->lora_sites && c->lora_rank < 1) return tsr_error("adapter.lora_rank: expected >= 1, got %d", c->lora_rank);
    if (c->bn_sites && c->bn_dim < 1) return tsr_error("adapter.bn_dim: expected >= 1, got %d", c->bn_dim);
    if (c->bn_dropout < 0 || c->bn_dropout >= 1)
        return tsr_error("adapter.bn_dropout: expected a value in [0, 1), got %g", c->bn_dropout);
    int lmin = c->layer_min < 0 ? 0 : c->layer_min, lmax = c->layer_max < 0 ? depth - 1 : c->layer_max;
    if (lmin > lmax || lmax >= depth)
        return tsr_error("adapter.layers: [%d, %d] is not a range of blocks of a depth-%d model", c->layer_min,
                         c->layer_max, depth);
    ad->index = tsr_malloc(sizeof(int) * (size_t)depth * NSLOT);
    for (int i = 0; i < depth * NSLOT; i++) ad->index[i] = -1;
    ad->mod = tsr_calloc((size_t)depth * NSLOT, sizeof(tsr_rlp));
    size_t off = 0;
    for (int l = lmin; l <= lmax; l++)
        for (int slot = 0; slot < NSLOT; slot++) {
            int is_lora = slot < TSR_NLORA;
            if (is_lora && !(c->lora_sites & (1 << slot))) continue;
            if (!is_lora && !(c->bn_sites & (1 << (slot - TSR_NLORA)))) continue;
            tsr_rlp *m = &ad->mod[ad->n_mod];
            m->layer = l;
            m->lora_site = is_lora ? slot : -1;
            m->bn_pos = is_lora ? -1 : slot - TSR_NLORA;
            m->din = is_lora && slot == TSR_LORA_FC2 ? mlp : dim;
            m->dout = is_lora && slot == TSR_LORA_FC1 ? mlp : dim;
            m->r = is_lora ? c->lora_rank : c->bn_dim;
            m->S = c->skills;
            m->h = c->heads;
            m->routed = c->skills > 1;
            m->has_bias = !is_lora;
            m->has_ln = !is_lora && m->bn_pos == TSR_BN_PARALLEL;
            m->scale = is_lora ? c->lora_alpha / c->lora_rank : c->bn_scale;
            if (is_lora) snprintf(m->name, sizeof m->name, "blocks.%d.lora.%s", l, tsr_lora_site_names[slot]);
            else snprintf(m->name, sizeof m->name, "blocks.%d.adapter.%s", l, tsr_bn_pos_names[m->bn_pos]);
            if (m->din % m->h || m->dout % m->h)
                return tsr_error("adapter.heads = %d must divide the widths of %s (%d -> %d)", m->h, m->name, m->din,
                                 m->dout);
            m->nA = (size_t)m->din * m->r * m->S;
            m->nB = (size_t)m->r * m->dout * m->S;
            m->nZ = m->routed ? (size_t)c->n_tasks * m->h * m->S : 0;
            ad->index[l * NSLOT + slot] = ad->n_mod++;
        }
    /* layout: every module's A and B, then every bias and LayerNorm, then every routing table, so that
     * the three parameter groups (weights, biases, routing) are three contiguous ranges */
    for (int k = 0; k < ad->n_mod; k++) {
        tsr_rlp *m = &ad->mod[k];
        m->oA = off; off += m->nA;
        m->oB = off; off += m->nB;
    }
    ad->off_bias = off;
    for (int k = 0; k < ad->n_mod; k++) {
        tsr_rlp *m = &ad->mod[k];
        m->obd = off; off += m->has_bias ? (size_t)m->S * m->r : 0;
        m->obu = off; off += m->has_bias ? (size_t)m->S * m->dout : 0;
        m->olnw = off; off += m->has_ln ? (size_t)dim : 0;
        m->olnb = off; off += m->has_ln ? (size_t)dim : 0;
    }
    ad->off_Z = off;
    for (int k = 0; k < ad->n_mod; k++) {
        tsr_rlp *m = &ad->mod[k];
        m->oZ = off; off += m->nZ;
    }
    ad->num_params = off;
    ad->params = tsr_aligned_alloc(sizeof(real) * (off ? off : 1));
    ad->grads = tsr_aligned_alloc(sizeof(real) * (off ? off : 1));
    /* combined weights per module x distinct task */
    int ndt_max = c->n_tasks > 1 ? (c->n_tasks < max_batch ? c->n_tasks : max_batch) : 1;
    ad->comb_off = tsr_malloc(sizeof(size_t) * (size_t)(ad->n_mod + 1));
    size_t co = 0;
    for (int k = 0; k < ad->n_mod; k++) {
        ad->comb_off[k] = co;
        co += comb_size(&ad->mod[k]) * (size_t)ndt_max;
    }
    ad->comb_off[ad->n_mod] = co;
    ad->comb = tsr_aligned_alloc(sizeof(real) * (co ? co : 1));
    ad->dcomb = tsr_aligned_alloc(sizeof(real) * (co ? co : 1));
    /* saved activations */
    size_t rows = (size_t)max_batch * tokens, ao = 0, rmax = 1;
    ad->act_off = tsr_malloc(sizeof(size_t) * (size_t)(ad->n_mod + 1));
    for (int k = 0; k < ad->n_mod; k++) {
        tsr_rlp *m = &ad->mod[k];
        ad->act_off[k] = ao;
        ao += rows * m->r;                                      /* hid */
        if (m->has_bias) ao += 2 * rows * m->r;                 /* act, drop */
        if (m->has_bias && !m->has_ln) ao += rows * m->din;     /* xin (sequential) */
        if (m->has_ln) ao += rows * (size_t)dim + 2 * rows;     /* ln, mean, rstd */
        if ((size_t)m->r > rmax) rmax = m->r;
    }
    ad->act_off[ad->n_mod] = ao;
    ad->acts = tsr_aligned_alloc(sizeof(real) * (ao ? ao : 1));
    ad->rmax = (int)rmax;
    ad->ln_eps = 1e-6;
    ad->scratch = tsr_aligned_alloc(sizeof(real) * rows * (2 * rmax + (size_t)dim));
    size_t nn = 0;
    for (int k = 0; k < ad->n_mod; k++) nn += ad->mod[k].nZ;
    ad->noise = tsr_aligned_alloc(sizeof(real) * (nn ? nn : 1));
    return 0;
}

void tsr_adapters_destroy(tsr_adapters *ad) {
    free(ad->index); free(ad->mod); free(ad->params); free(ad->grads); free(ad->comb_off); free(ad->comb);
    free(ad->dcomb); free(ad->act_off); free(ad->acts); free(ad->scratch); free(ad->noise);
    memset(ad, 0, sizeof *ad);
}

void tsr_adapters_zero_grad(tsr_adapters *ad) { memset(ad->grads, 0, sizeof(real) * ad->num_params); }

void tsr_adapters_init(tsr_adapters *ad, uint64_t seed) {
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    memset(ad->params, 0, sizeof(real) * ad->num_params);
    for (int k = 0; k < ad->n_mod; k++) {
        tsr_rlp *m = &ad->mod[k];
        double bound = m->has_bias ? 1.0 / sqrt((double)m->din)
                       : ad->cfg.lora_init_peft ? 1.0 / sqrt((double)m->din / m->h) : 1.0 / sqrt(3.0 * m->din);
        for (size_t i = 0; i < m->nA; i++) ad->params[m->oA + i] = (real)((2 * tsr_rng_uniform(&r) - 1) * bound);
        for (size_t i = 0; i < m->nZ; i++) ad->params[m->oZ + i] = (real)((2 * tsr_rng_uniform(&r) - 1) * 1e-3);
        if (m->has_ln)
            for (int i = 0; i < ad->dim; i++) ad->params[m->olnw + i] = 1;
    }
}

int tsr_adapters_tensor_info(const tsr_adapters *ad, const real *p, int i, char *name, size_t len, int *ndim,
                             int64_t shape[4], real **data) {
    int n = 0;
    for (int k = 0; k < ad->n_mod; k++) {
        const tsr_rlp *m = &ad->mod[k];
        struct { const char *suf; int nd; int64_t s[4]; size_t off; int on; } t[7] = {
            {m->has_bias ? "down.A" : "A", 4, {m->h, m->S, m->din / m->h, m->r}, m->oA, 1},
            {m->has_bias ? "up.B" : "B", 4, {m->h, m->S, m->r, m->dout / m->h}, m->oB, 1},
            {"Z", 2, {ad->cfg.n_tasks, (int64_t)m->h * m->S, 0, 0}, m->oZ, m->routed},
            {"down.bias", 2, {m->S, m->r, 0, 0}, m->obd, m->has_bias},
            {"up.bias", 2, {m->S, m->dout, 0, 0}, m->obu, m->has_bias},
            {"ln.weight", 1, {ad->dim, 0, 0, 0}, m->olnw, m->has_ln},
            {"ln.bias", 1, {ad->dim, 0, 0, 0}, m->olnb, m->has_ln}};
        for (int j = 0; j < 7; j++) {
            if (!t[j].on) continue;
            if (n == i) {
                snprintf(name, len, "%s.%s", m->name, t[j].suf);
                *ndim = t[j].nd;
                memcpy(shape, t[j].s, sizeof t[j].s);
                *data = (real *)p + t[j].off;
                return 0;
            }
            n++;
        }
    }
    return i == -1 ? n : -1;
}

/* pointers into one module's combined block for distinct task d */
typedef struct { real *z, *w, *A, *B, *bd, *bu; } comb_ptrs;
static comb_ptrs comb_at(const tsr_adapters *ad, real *base, int k, int d) {
    const tsr_rlp *m = &ad->mod[k];
    real *p = base + ad->comb_off[k] + comb_size(m) * (size_t)d;
    comb_ptrs c;
    c.z = p; p += (size_t)m->h * m->S;
    c.w = p; p += (size_t)m->h * m->S;
    c.A = p; p += (size_t)m->din * m->r;
    c.B = p; p += (size_t)m->r * m->dout;
    c.bd = p; p += m->r;
    c.bu = p;
    return c;
}

static const real *noise_of(const tsr_adapters *ad, int k) {
    size_t o = 0;
    for (int j = 0; j < k; j++) o += ad->mod[j].nZ;
    return ad->noise + o;
}

static inline double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double clampd(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

/* z for task t from Z (and noise); also returns what the backward needs in z itself */
static void routing_z(const tsr_adapters *ad, int k, int t, real *z) {
    const tsr_rlp *m = &ad->mod[k];
    int HS = m->h * m->S;
    const real *Z = ad->params + m->oZ + (size_t)t * HS;
    int noisy = ad->training && ad->cfg.noise;
    const real *u = noisy ? noise_of(ad, k) + (size_t)t * HS : NULL;
    for (int i = 0; i < HS; i++) {
        if (!noisy) {
            z[i] = (real)sigm(Z[i]);
            continue;
        }
        double p = clampd(sigm(Z[i]), RB_EPS, 1 - RB_EPS);
        double l = log(p) - log1p(-p);
        double a = (l + log((double)u[i]) - log1p(-(double)u[i])) / ad->cfg.tau;
        z[i] = (real)clampd(sigm(a), RB_EPS, 1 - RB_EPS);
    }
}

static void combine(tsr_adapters *ad, int k, int d, int t) {
    const tsr_rlp *m = &ad->mod[k];
    comb_ptrs c = comb_at(ad, ad->comb, k, d);
    int h = m->h, S = m->S, r = m->r, ih = m->din / h, oh = m->dout / h;
    const real *A = ad->params + m->oA, *B = ad->params + m->oB;
    if (m->routed) {
        routing_z(ad, k, t, c.z);
        for (int q = 0; q < h; q++) {
            double sum = 0;
            for (int s = 0; s < S; s++) sum += c.z[q * S + s];
            for (int s = 0; s < S; s++) c.w[q * S + s] = (real)(c.z[q * S + s] / (sum + 1e-12));
        }
    } else {
        for (int i = 0; i < h * S; i++) c.z[i] = c.w[i] = 1;
    }
    memset(c.A, 0, sizeof(real) * (size_t)m->din * r);
    memset(c.B, 0, sizeof(real) * (size_t)r * m->dout);
    for (int q = 0; q < h; q++)
        for (int s = 0; s < S; s++) {
            real w = c.w[q * S + s];
            const real *Aqs = A + (size_t)(q * S + s) * ih * r;
            real *At = c.A + (size_t)q * ih * r;
            for (size_t i = 0; i < (size_t)ih * r; i++) At[i] += w * Aqs[i];
            const real *Bqs = B + (size_t)(q * S + s) * r * oh;
            for (int kk = 0; kk < r; kk++)
                for (int j = 0; j < oh; j++) c.B[(size_t)kk * m->dout + q * oh + j] += w * Bqs[(size_t)kk * oh + j];
        }
    if (m->has_bias) {
        const real *bd = ad->params + m->obd, *bu = ad->params + m->obu;
        for (int kk = 0; kk < r; kk++) c.bd[kk] = 0;
        for (int s = 0; s < S; s++) {
            double wbar = 0;
            for (int q = 0; q < h; q++) wbar += c.w[q * S + s];
            wbar /= h;
            for (int kk = 0; kk < r; kk++) c.bd[kk] += (real)(wbar * bd[(size_t)s * r + kk]);
        }
        for (int q = 0; q < h; q++)
            for (int j = 0; j < oh; j++) {
                real v = 0;
                for (int s = 0; s < S; s++) v += c.w[q * S + s] * bu[(size_t)s * m->dout + q * oh + j];
                c.bu[q * oh + j] = v;
            }
    }
}

/* A seed for MoSA's consistency view `view`: view 0 (every run without MoSA's consistency loss) keeps the
 * seed as it is; view v > 0 gets an independent stream (one splitmix64 step of the seed mixed with v). */
static uint64_t view_seed(uint64_t seed, int view) {
    if (view == 0) return seed;
    uint64_t x = seed ^ (0x76696577ull /* "view" */ * (uint64_t)view);
    return tsr_splitmix64(&x);
}

int tsr_adapters_begin(tsr_adapters *ad, const int *task_ids, int B, int training, long step, uint64_t seed,
                       const real *noise) {
    if (B < 1 || B > ad->max_batch) return tsr_error("adapters: batch %d outside [1, %d]", B, ad->max_batch);
    int nt = ad->cfg.n_tasks > 0 ? ad->cfg.n_tasks : 1;
    ad->batch = B;
    ad->training = training;
    ad->step = step;
    ad->dropout_seed = seed ^ 0xd50;
    ad->nseg = ad->ndt = 0;
    int cnt[TSR_AD_MAX_BATCH];
    for (int b = 0; b < B; b++) {
        int t = task_ids ? task_ids[b] : 0;
        if (t < 0 || t >= nt) return tsr_error("adapters: task id %d of example %d is outside [0, %d)", t, b, nt);
        int d = -1;
        for (int j = 0; j < ad->ndt; j++)
            if (ad->dt_task[j] == t) d = j;
        if (d < 0) {
            d = ad->ndt++;
            ad->dt_task[d] = t;
            cnt[d] = 0;
        }
        cnt[d]++;
    }
    /* one run per distinct task, in order of first appearance; examples keep their order within a task */
    int pos = 0;
    for (int d = 0; d < ad->ndt; d++) {
        ad->seg_start[d] = pos;
        ad->seg_dt[d] = d;
        for (int b = 0; b < B; b++)
            if ((task_ids ? task_ids[b] : 0) == ad->dt_task[d]) ad->perm[pos++] = b;
    }
    ad->nseg = ad->ndt;
    ad->seg_start[ad->nseg] = B;
    ad->permuted = 0;
    for (int i = 0; i < B; i++) ad->permuted |= ad->perm[i] != i;
    int ndt_cap = ad->cfg.n_tasks > 1 ? (ad->cfg.n_tasks < ad->max_batch ? ad->cfg.n_tasks : ad->max_batch) : 1;
    TSR_CHECK(ad->ndt <= ndt_cap, "adapters: %d distinct tasks exceed capacity %d", ad->ndt, ndt_cap);
    if (training && ad->cfg.noise) {
        size_t nn = 0;
        for (int k = 0; k < ad->n_mod; k++) nn += ad->mod[k].nZ;
        if (noise) memcpy(ad->noise, noise, sizeof(real) * nn);
        else {
            tsr_rng r;
            tsr_rng_seed(&r, view_seed(seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(step + 1)), ad->view));
            for (size_t i = 0; i < nn; i++) {
                double u = tsr_rng_uniform(&r);
                ad->noise[i] = (real)(u < 1e-12 ? 1e-12 : u);
            }
        }
    }
    for (int k = 0; k < ad->n_mod; k++)
        for (int d = 0; d < ad->ndt; d++) combine(ad, k, d, ad->dt_task[d]);
    memset(ad->dcomb, 0, sizeof(real) * ad->comb_off[ad->n_mod]);
    return 0;
}

typedef struct { real *hid, *act, *drop, *xin, *ln, *mean, *rstd; } act_ptrs;
static act_ptrs acts_of(const tsr_adapters *ad, int k) {
    const tsr_rlp *m = &ad->mod[k];
    size_t rows = (size_t)ad->max_batch * ad->tokens;
    real *p = ad->acts + ad->act_off[k];
    act_ptrs a = {0};
    a.hid = p; p += rows * m->r;
    a.act = a.hid;
    if (m->has_bias) { a.act = p; p += rows * m->r; a.drop = p; p += rows * m->r; }
    if (m->has_bias && !m->has_ln) { a.xin = p; p += rows * m->din; }
    if (m->has_ln) { a.ln = p; p += rows * (size_t)ad->dim; a.mean = p; p += rows; a.rstd = p; }
    return a;
}

/* One run of consecutive examples of one task: rows [r0, r0 + n). */
static void fwd_segment(tsr_adapters *ad, int k, int sg, act_ptrs a, const real *xx, int ldxx, real *y, int ldy,
                        double p) {
    const tsr_rlp *m = &ad->mod[k];
    int T = ad->tokens, r = m->r;
    comb_ptrs c = comb_at(ad, ad->comb, k, ad->seg_dt[sg]);
    int r0 = ad->seg_start[sg] * T, n = (ad->seg_start[sg + 1] - ad->seg_start[sg]) * T;
    real *hid = a.hid + (size_t)r0 * r;
    tsr_gemm(0, 0, n, r, m->din, 1, xx + (size_t)r0 * ldxx, ldxx, c.A, r, 0, hid, r);
    const real *act = hid;
    if (m->has_bias) {
        real *ac = a.act + (size_t)r0 * r, *dr = a.drop + (size_t)r0 * r;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < r; j++) hid[(size_t)i * r + j] += c.bd[j];
        if (ad->cfg.bn_relu)
            for (size_t i = 0; i < (size_t)n * r; i++) ac[i] = hid[i] > 0 ? hid[i] : 0;
        else gelu_forward(ac, hid, (long)n * r);
        if (p > 0) { /* the mask depends on (seed, step, view, module, rows): reproducible; a recomputed
                      * forward of the same view draws the same mask, the other view an independent one */
            tsr_rng rg;
            tsr_rng_seed(&rg, view_seed(ad->dropout_seed, ad->view) ^
                                  ((uint64_t)ad->step * 1000003u + (uint64_t)k * 7919u + (uint64_t)r0));
            for (size_t i = 0; i < (size_t)n * r; i++) {
                dr[i] = tsr_rng_uniform(&rg) < p ? 0 : (real)(1 / (1 - p));
                ac[i] *= dr[i];
            }
        }
        act = ac;
    }
    real *yy = y + (size_t)r0 * ldy;
    tsr_gemm(0, 0, n, m->dout, r, (real)m->scale, act, r, c.B, m->dout, 1, yy, ldy);
    if (m->has_bias)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < m->dout; j++) yy[(size_t)i * ldy + j] += (real)m->scale * c.bu[j];
}

/* Small GEMMs: with several task runs, one thread per run (BLAS single-threaded inside, since OpenMP
 * nesting is off) costs far less than threading each small call; one run keeps BLAS's threads. */
void tsr_ad_forward(tsr_adapters *ad, int k, real *y, int ldy, const real *x, int ldx) {
    const tsr_rlp *m = &ad->mod[k];
    act_ptrs a = acts_of(ad, k);
    int rows = ad->batch * ad->tokens;
    const real *xx = x;
    int ldxx = ldx;
    if (m->has_ln) {
        layernorm_forward(a.ln, a.mean, a.rstd, x, ad->params + m->olnw, ad->params + m->olnb, rows, ad->dim, ad->ln_eps);
        xx = a.ln;
        ldxx = ad->dim;
    } else if (m->has_bias) { /* sequential: the input is the output it adds to: keep a copy */
        for (int i = 0; i < rows; i++) memcpy(a.xin + (size_t)i * m->din, x + (size_t)i * ldx, sizeof(real) * m->din);
        xx = a.xin;
        ldxx = m->din;
    }
    double p = m->has_bias && ad->training ? ad->cfg.bn_dropout : 0;
    if (ad->nseg > 1) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int sg = 0; sg < ad->nseg; sg++) fwd_segment(ad, k, sg, a, xx, ldxx, y, ldy, p);
    } else {
        fwd_segment(ad, k, 0, a, xx, ldxx, y, ldy, p);
    }
}

static void bwd_segment(tsr_adapters *ad, int k, int sg, act_ptrs a, const real *xx, int ldxx, real *dxx, int lddxx,
                        const real *dy, int ldy, double p) {
    const tsr_rlp *m = &ad->mod[k];
    int T = ad->tokens, r = m->r, rows = ad->batch * T;
    comb_ptrs c = comb_at(ad, ad->comb, k, ad->seg_dt[sg]), g = comb_at(ad, ad->dcomb, k, ad->seg_dt[sg]);
    int r0 = ad->seg_start[sg] * T, n = (ad->seg_start[sg + 1] - ad->seg_start[sg]) * T;
    real *dH = ad->scratch + (size_t)r0 * r, *tmp = ad->scratch + (size_t)rows * ad->rmax + (size_t)r0 * r;
    const real *dyy = dy + (size_t)r0 * ldy;
    const real *act = (m->has_bias ? a.act : a.hid) + (size_t)r0 * r;
    tsr_gemm(1, 0, r, m->dout, n, (real)m->scale, act, r, dyy, ldy, 1, g.B, m->dout);
    tsr_gemm(0, 1, n, r, m->dout, (real)m->scale, dyy, ldy, c.B, m->dout, 0, dH, r);
    if (m->has_bias) {
        for (int i = 0; i < n; i++)
            for (int j = 0; j < m->dout; j++) g.bu[j] += (real)m->scale * dyy[(size_t)i * ldy + j];
        const real *hid = a.hid + (size_t)r0 * r, *dr = a.drop + (size_t)r0 * r;
        if (p > 0)
            for (size_t i = 0; i < (size_t)n * r; i++) dH[i] *= dr[i];
        if (ad->cfg.bn_relu) {
            for (size_t i = 0; i < (size_t)n * r; i++) dH[i] = hid[i] > 0 ? dH[i] : 0;
        } else {
            memset(tmp, 0, sizeof(real) * (size_t)n * r);
            gelu_backward(tmp, dH, hid, (long)n * r);
            memcpy(dH, tmp, sizeof(real) * (size_t)n * r);
        }
        for (int i = 0; i < n; i++)
            for (int j = 0; j < r; j++) g.bd[j] += dH[(size_t)i * r + j];
    }
    tsr_gemm(1, 0, m->din, r, n, 1, xx + (size_t)r0 * ldxx, ldxx, dH, r, 1, g.A, r);
    if (dxx) tsr_gemm(0, 1, n, m->din, r, 1, dH, r, c.A, r, 1, dxx + (size_t)r0 * lddxx, lddxx);
}

void tsr_ad_backward(tsr_adapters *ad, int k, real *dx, int ldx, const real *dy, int ldy, const real *x, int ldx_in) {
    const tsr_rlp *m = &ad->mod[k];
    act_ptrs a = acts_of(ad, k);
    int rows = ad->batch * ad->tokens;
    const real *xx = x;
    int ldxx = ldx_in;
    real *dxx = dx;
    int lddxx = ldx;
    real *dln = ad->scratch + 2 * (size_t)rows * ad->rmax;
    if (m->has_ln) {
        xx = a.ln;
        ldxx = ad->dim;
        dxx = dln;
        lddxx = ad->dim;
        memset(dln, 0, sizeof(real) * (size_t)rows * ad->dim);
    } else if (m->has_bias) {
        xx = a.xin;
        ldxx = m->din;
    }
    double p = m->has_bias && ad->training ? ad->cfg.bn_dropout : 0;
    /* one thread per distinct task: each task's combined-weight gradient has one writer */
    if (ad->ndt > 1) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int d = 0; d < ad->ndt; d++)
            for (int sg = 0; sg < ad->nseg; sg++)
                if (ad->seg_dt[sg] == d) bwd_segment(ad, k, sg, a, xx, ldxx, dxx, lddxx, dy, ldy, p);
    } else {
        for (int sg = 0; sg < ad->nseg; sg++) bwd_segment(ad, k, sg, a, xx, ldxx, dxx, lddxx, dy, ldy, p);
    }
    if (m->has_ln)
        layernorm_backward(dx, ad->grads + m->olnw, ad->grads + m->olnb, dln, x, ad->params + m->olnw, a.mean, a.rstd,
                           rows, ad->dim);
}

void tsr_adapters_end_backward(tsr_adapters *ad) {
    for (int k = 0; k < ad->n_mod; k++) {
        const tsr_rlp *m = &ad->mod[k];
        int h = m->h, S = m->S, r = m->r, ih = m->din / h, oh = m->dout / h;
        const real *A = ad->params + m->oA, *B = ad->params + m->oB, *bd = ad->params + m->obd, *bu = ad->params + m->obu;
        real *gA = ad->grads + m->oA, *gB = ad->grads + m->oB, *gbd = ad->grads + m->obd, *gbu = ad->grads + m->obu;
        for (int d = 0; d < ad->ndt; d++) {
            comb_ptrs c = comb_at(ad, ad->comb, k, d), g = comb_at(ad, ad->dcomb, k, d);
            double dw[1024];
            TSR_CHECK(h * S <= 1024, "adapters: h*S = %d too large", h * S);
            for (int i = 0; i < h * S; i++) dw[i] = 0;
            for (int q = 0; q < h; q++)
                for (int s = 0; s < S; s++) {
                    real w = c.w[q * S + s];
                    size_t oa = (size_t)(q * S + s) * ih * r;
                    const real *dAt = g.A + (size_t)q * ih * r;
                    double acc = 0;
                    for (size_t i = 0; i < (size_t)ih * r; i++) {
                        gA[oa + i] += w * dAt[i];
                        acc += (double)dAt[i] * A[oa + i];
                    }
                    size_t ob = (size_t)(q * S + s) * r * oh;
                    for (int kk = 0; kk < r; kk++)
                        for (int j = 0; j < oh; j++) {
                            real dBt = g.B[(size_t)kk * m->dout + q * oh + j];
                            gB[ob + (size_t)kk * oh + j] += w * dBt;
                            acc += (double)dBt * B[ob + (size_t)kk * oh + j];
                        }
                    if (m->has_bias)
                        for (int j = 0; j < oh; j++) {
                            real dbu = g.bu[q * oh + j];
                            gbu[(size_t)s * m->dout + q * oh + j] += w * dbu;
                            acc += (double)dbu * bu[(size_t)s * m->dout + q * oh + j];
                        }
                    dw[q * S + s] += acc;
                }
            if (m->has_bias)
                for (int s = 0; s < S; s++) {
                    double wbar = 0, acc = 0;
                    for (int q = 0; q < h; q++) wbar += c.w[q * S + s];
                    wbar /= h;
                    for (int kk = 0; kk < r; kk++) {
                        gbd[(size_t)s * r + kk] += (real)(wbar * g.bd[kk]);
                        acc += (double)g.bd[kk] * bd[(size_t)s * r + kk];
                    }
                    for (int q = 0; q < h; q++) dw[q * S + s] += acc / h;
                }
            if (!m->routed) continue;
            /* w = z / (sum z + 1e-12) per head -> dz; z -> dZ */
            int t = ad->dt_task[d], HS = h * S, noisy = ad->training && ad->cfg.noise;
            const real *Z = ad->params + m->oZ + (size_t)t * HS;
            real *gZ = ad->grads + m->oZ + (size_t)t * HS;
            const real *u = noisy ? noise_of(ad, k) + (size_t)t * HS : NULL;
            for (int q = 0; q < h; q++) {
                double sum = 1e-12, dot = 0;
                for (int s = 0; s < S; s++) sum += c.z[q * S + s];
                for (int s = 0; s < S; s++) dot += dw[q * S + s] * c.z[q * S + s];
                for (int s = 0; s < S; s++) {
                    int i = q * S + s;
                    double dz = dw[i] / sum - dot / (sum * sum), dZ;
                    if (!noisy) {
                        double z = sigm(Z[i]);
                        dZ = dz * z * (1 - z);
                    } else {
                        double p = sigm(Z[i]), pc = clampd(p, RB_EPS, 1 - RB_EPS);
                        double l = log(pc) - log1p(-pc);
                        double a = (l + log((double)u[i]) - log1p(-(double)u[i])) / ad->cfg.tau, z0 = sigm(a);
                        double dz0 = (z0 >= RB_EPS && z0 <= 1 - RB_EPS) ? dz : 0;
                        double dl = dz0 * z0 * (1 - z0) / ad->cfg.tau;
                        double dpc = dl * (1 / pc + 1 / (1 - pc));
                        double dp = (p >= RB_EPS && p <= 1 - RB_EPS) ? dpc : 0;
                        dZ = dp * p * (1 - p);
                    }
                    gZ[i] += (real)dZ;
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ the model's hooks */

static int hook_find(const void *ctx, int layer, int site) {
    const tsr_adapters *ad = ctx;
    return ad->index[layer * NSLOT + site];
}
static void hook_forward(void *ctx, int k, real *y, int ldy, const real *x, int ldx) {
    tsr_ad_forward(ctx, k, y, ldy, x, ldx);
}
static void hook_backward(void *ctx, int k, real *dx, int ldx, const real *dy, int ldy, const real *x, int ldx_in) {
    tsr_ad_backward(ctx, k, dx, ldx, dy, ldy, x, ldx_in);
}
static int hook_lowest_layer(const void *ctx) { return tsr_ad_lowest_layer(ctx); }
static const int *hook_batch_perm(const void *ctx, int B) {
    const tsr_adapters *ad = ctx;
    return ad->permuted && ad->batch == B ? ad->perm : NULL;
}
static void hook_end_backward(void *ctx) { tsr_adapters_end_backward(ctx); }

static const tsr_vit_hooks adapter_hooks = {hook_find, hook_forward, hook_backward, hook_lowest_layer,
                                            hook_batch_perm, hook_end_backward};

void tsr_adapters_attach(tsr_adapters *ad, tsr_vit *m) {
    m->hooks = ad ? &adapter_hooks : NULL;
    m->hooks_ctx = ad;
}
