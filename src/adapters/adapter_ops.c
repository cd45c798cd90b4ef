/* adapter_ops.c: arithmetic on trained adapter sets for few-shot transfer: MHR-mu skill averaging, fresh
 * routing rows, merging a LoRA into the backbone. Compiled in both precisions. See adapter_ops.h. */
#include "adapters/adapter_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/rng.h"

/* ------------------------------------------------------------------ skills */

/* dst's modules are src's (same sites, widths, rank, heads); same_S: the same skill count too. */
static void check_same_modules(const tsr_adapters *src, const tsr_adapters *dst, int same_S, const char *who) {
    TSR_CHECK(src->n_mod == dst->n_mod && src->dim == dst->dim, "%s: %d modules (dim %d) vs %d (dim %d)", who,
              src->n_mod, src->dim, dst->n_mod, dst->dim);
    for (int k = 0; k < src->n_mod; k++) {
        const tsr_rlp *a = &src->mod[k], *b = &dst->mod[k];
        TSR_CHECK(a->layer == b->layer && a->lora_site == b->lora_site && a->bn_pos == b->bn_pos && a->din == b->din &&
                      a->dout == b->dout && a->r == b->r && a->h == b->h && a->has_bias == b->has_bias &&
                      a->has_ln == b->has_ln && (!same_S || a->S == b->S),
                  "%s: module %d (%s) of the source differs from the destination's (%s)", who, k, a->name, b->name);
    }
}

void tsr_adapters_average_skills(const tsr_adapters *src, tsr_adapters *dst) {
    check_same_modules(src, dst, 0, "tsr_adapters_average_skills");
    TSR_CHECK(dst->cfg.skills == 1, "tsr_adapters_average_skills: the destination must have skills = 1 (has %d)",
              dst->cfg.skills);
    for (int k = 0; k < src->n_mod; k++) {
        const tsr_rlp *a = &src->mod[k], *b = &dst->mod[k];
        int S = a->S, h = a->h;
        size_t nA = a->nA / (size_t)(S * h), nB = a->nB / (size_t)(S * h); /* one (q, s) block */
        for (int q = 0; q < h; q++) {
            for (size_t i = 0; i < nA; i++) {
                double sum = 0;
                for (int s = 0; s < S; s++) sum += src->params[a->oA + (size_t)(q * S + s) * nA + i];
                dst->params[b->oA + (size_t)q * nA + i] = (real)(sum / S);
            }
            for (size_t i = 0; i < nB; i++) {
                double sum = 0;
                for (int s = 0; s < S; s++) sum += src->params[a->oB + (size_t)(q * S + s) * nB + i];
                dst->params[b->oB + (size_t)q * nB + i] = (real)(sum / S);
            }
        }
        if (a->has_bias) {
            for (int j = 0; j < a->r; j++) {
                double sum = 0;
                for (int s = 0; s < S; s++) sum += src->params[a->obd + (size_t)s * a->r + j];
                dst->params[b->obd + j] = (real)(sum / S);
            }
            for (int j = 0; j < a->dout; j++) {
                double sum = 0;
                for (int s = 0; s < S; s++) sum += src->params[a->obu + (size_t)s * a->dout + j];
                dst->params[b->obu + j] = (real)(sum / S);
            }
        }
        if (a->has_ln) {
            memcpy(dst->params + b->olnw, src->params + a->olnw, sizeof(real) * (size_t)src->dim);
            memcpy(dst->params + b->olnb, src->params + a->olnb, sizeof(real) * (size_t)src->dim);
        }
    }
}

void tsr_adapters_copy_skills(const tsr_adapters *src, tsr_adapters *dst, uint64_t seed) {
    check_same_modules(src, dst, 1, "tsr_adapters_copy_skills");
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    for (int k = 0; k < src->n_mod; k++) {
        const tsr_rlp *a = &src->mod[k], *b = &dst->mod[k];
        memcpy(dst->params + b->oA, src->params + a->oA, sizeof(real) * a->nA);
        memcpy(dst->params + b->oB, src->params + a->oB, sizeof(real) * a->nB);
        if (a->has_bias) {
            memcpy(dst->params + b->obd, src->params + a->obd, sizeof(real) * (size_t)a->S * a->r);
            memcpy(dst->params + b->obu, src->params + a->obu, sizeof(real) * (size_t)a->S * a->dout);
        }
        if (a->has_ln) {
            memcpy(dst->params + b->olnw, src->params + a->olnw, sizeof(real) * (size_t)src->dim);
            memcpy(dst->params + b->olnb, src->params + a->olnb, sizeof(real) * (size_t)src->dim);
        }
        for (size_t i = 0; i < b->nZ; i++) dst->params[b->oZ + i] = (real)((2 * tsr_rng_uniform(&r) - 1) * 1e-3);
    }
}

/* ------------------------------------------------------------------ merge */

/* The block weight a LoRA module adds to: (dout, din) at the returned pointer. */
static real *lora_target(tsr_vit *m, const tsr_rlp *md) {
    size_t D = (size_t)m->cfg.dim, M = (size_t)m->cfg.mlp_dim, l = (size_t)md->layer;
    switch (md->lora_site) {
    case TSR_LORA_Q:
    case TSR_LORA_K:
    case TSR_LORA_V: return m->params.qkvw + l * 3 * D * D + (size_t)md->lora_site * D * D;
    case TSR_LORA_PROJ: return m->params.projw + l * D * D;
    case TSR_LORA_FC1: return m->params.fc1w + l * M * D;
    default: return m->params.fc2w + l * D * M;
    }
}

int tsr_adapters_merge_into(const tsr_adapters *ad, tsr_vit *m, int task) {
    int D = m->cfg.dim, M = m->cfg.mlp_dim, L = m->cfg.depth;
    if (ad->depth != L || ad->dim != D || ad->mlp != M)
        return tsr_error("merge: adapters built for depth %d, dim %d, mlp %d; the model has %d, %d, %d", ad->depth,
                         ad->dim, ad->mlp, L, D, M);
    for (int k = 0; k < ad->n_mod; k++)
        if (ad->mod[k].has_bias)
            return tsr_error("merge: %s is a bottleneck adapter (nonlinear): it cannot be merged into the "
                             "backbone's weights; only LoRA modules can",
                             ad->mod[k].name);
    int routed = ad->cfg.skills > 1, nt = ad->cfg.n_tasks > 0 ? ad->cfg.n_tasks : 1;
    if (task < 0 || task >= nt) return tsr_error("merge: task %d is outside [0, %d)", task, nt);
    for (int k = 0; k < ad->n_mod; k++) { /* nothing merged unless every target is in memory */
        const tsr_rlp *md = &ad->mod[k];
        int rel = tsr_vit_released(m, (size_t)(lora_target(m, md) - m->params_mem), (size_t)md->dout * md->din);
        if (rel >= 0) {
            char nm[64];
            tsr_vit_slice_name(m, rel, nm, sizeof nm);
            return tsr_error("merge: %s (%s): the model holds its frozen block weights in bf16 only (model.precision "
                             "bf16), so the fp32 weight a LoRA merge adds to is not in memory; set the model back "
                             "to fp32 (tsr_vit_set_precision(m, 0)) before merging", md->name, nm);
        }
    }
    for (int k = 0; k < ad->n_mod; k++) {
        const tsr_rlp *md = &ad->mod[k];
        int h = md->h, S = md->S, r = md->r, din = md->din, dout = md->dout, ih = din / h, oh = dout / h;
        /* evaluation-mode routing weights w (h, S) for this task */
        double *w = tsr_malloc(sizeof(double) * (size_t)h * S);
        for (int q = 0; q < h; q++) {
            double sum = 0;
            for (int s = 0; s < S; s++) {
                w[q * S + s] = routed ? 1.0 / (1.0 + exp(-(double)ad->params[md->oZ + (size_t)task * h * S + q * S + s])) : 1;
                sum += w[q * S + s];
            }
            if (routed)
                for (int s = 0; s < S; s++) w[q * S + s] /= sum + 1e-12;
        }
        /* A_t (din, r), B_t (r, dout) */
        double *At = tsr_calloc((size_t)din * r, sizeof(double)), *Bt = tsr_calloc((size_t)r * dout, sizeof(double));
        const real *A = ad->params + md->oA, *B = ad->params + md->oB;
        for (int q = 0; q < h; q++)
            for (int s = 0; s < S; s++) {
                double wq = w[q * S + s];
                const real *Aqs = A + (size_t)(q * S + s) * ih * r, *Bqs = B + (size_t)(q * S + s) * r * oh;
                for (size_t i = 0; i < (size_t)ih * r; i++) At[(size_t)q * ih * r + i] += wq * Aqs[i];
                for (int kk = 0; kk < r; kk++)
                    for (int j = 0; j < oh; j++) Bt[(size_t)kk * dout + q * oh + j] += wq * Bqs[(size_t)kk * oh + j];
            }
        real *W = lora_target(m, md);
        /* W (dout, din): W[o][i] += scale * sum_k A_t[i][k] B_t[k][o] */
        for (int o = 0; o < dout; o++)
            for (int i = 0; i < din; i++) {
                double acc = 0;
                for (int kk = 0; kk < r; kk++) acc += At[(size_t)i * r + kk] * Bt[(size_t)kk * dout + o];
                W[(size_t)o * din + i] = (real)((double)W[(size_t)o * din + i] + md->scale * acc);
            }
        free(w);
        free(At);
        free(Bt);
    }
    return 0;
}
