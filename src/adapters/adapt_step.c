/* adapt_step.c: MoSA split / draw / mask / merge over an adapter set, and the adapter training step. */
#include "adapters/adapt_step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/mosa.h"
#include "core/common.h"

/* projection ids for tsr_mosa_draw: 2 per module slot (A-side, B-side) */
static int proj_id(const tsr_rlp *m, int side) {
    int slot = m->lora_site >= 0 ? m->lora_site : TSR_NLORA + m->bn_pos;
    return 2 * slot + side;
}

int tsr_mosa_create(tsr_mosa *mo, tsr_adapters *ad, int N, int split, int baseline, uint64_t seed) {
    memset(mo, 0, sizeof *mo);
    mo->N = N;
    mo->ad = ad;
    if (N == 0) return 0;
    if (N < 1 || N > TSR_MOSA_MAX_MODULES) return tsr_error("mosa.modules: expected 1..%d, got %d", TSR_MOSA_MAX_MODULES, N);
    if (!(split & (TSR_MOSA_SPLIT_UP | TSR_MOSA_SPLIT_DOWN)))
        return tsr_error("mosa.split: expected up, down or both");
    mo->split = split;
    mo->baseline = baseline;
    mo->seed = seed;
    size_t n = ad->num_params;
    mo->owner = tsr_calloc(n ? n : 1, 1);
    mo->is_split = tsr_calloc(n ? n : 1, 1);
    mo->W0 = tsr_aligned_alloc(sizeof(real) * (n ? n : 1));
    mo->dense = tsr_aligned_alloc(sizeof(real) * (n ? n : 1));
    mo->gacc = tsr_aligned_alloc(sizeof(real) * (n ? n : 1));
    memcpy(mo->W0, ad->params, sizeof(real) * n);
    mo->cur = tsr_calloc((size_t)ad->n_mod * 2, sizeof(int));
    mo->bias_off = tsr_calloc((size_t)ad->n_mod * 2, sizeof(size_t));
    size_t row = 0;
    for (int k = 0; k < ad->n_mod; k++) {
        tsr_rlp *m = &ad->mod[k];
        for (int side = 0; side < 2; side++) {
            int on = side == 0 ? (split & TSR_MOSA_SPLIT_DOWN) : (split & TSR_MOSA_SPLIT_UP);
            if (!on) continue;
            size_t off = side == 0 ? m->oA : m->oB, cnt = side == 0 ? m->nA : m->nB;
            char key[96];
            snprintf(key, sizeof key, "%s.%s", m->name, side == 0 ? "down" : "up");
            tsr_mosa_split(mo->owner + off, cnt, N, seed, tsr_mosa_key(key));
            memset(mo->is_split + off, 1, cnt);
            if (m->has_bias && !(split & TSR_MOSA_SHARE_BIAS)) {
                mo->bias_off[2 * k + side] = row + 1; /* +1: 0 means none */
                row += side == 0 ? (size_t)m->S * m->r : (size_t)m->S * m->dout;
            }
        }
    }
    mo->bias_row = row;
    mo->nbias = row * (size_t)N;
    mo->bias_params = tsr_aligned_alloc(sizeof(real) * (mo->nbias ? mo->nbias : 1));
    mo->bias_grads = tsr_aligned_alloc(sizeof(real) * (mo->nbias ? mo->nbias : 1));
    for (int k = 0; k < ad->n_mod; k++)
        for (int side = 0; side < 2; side++) {
            if (!mo->bias_off[2 * k + side]) continue;
            tsr_rlp *m = &ad->mod[k];
            size_t src = side == 0 ? m->obd : m->obu, cnt = side == 0 ? (size_t)m->S * m->r : (size_t)m->S * m->dout;
            for (int i = 0; i < N; i++)
                memcpy(mo->bias_params + (size_t)i * row + mo->bias_off[2 * k + side] - 1, ad->params + src,
                       sizeof(real) * cnt);
        }
    return 0;
}

size_t tsr_mosa_trained(const tsr_mosa *mo, size_t lo, size_t hi) {
    if (!mo || mo->N == 0) return hi - lo;
    size_t n = 0;
    for (size_t j = lo; j < hi; j++) n += !mo->is_split[j] || !mo->baseline || mo->owner[j] == 0;
    /* a bias with per-module copies is trained in bias_params: its slot in ad->params only receives them */
    for (int k = 0; k < mo->ad->n_mod; k++)
        for (int side = 0; side < 2; side++) {
            if (!mo->bias_off[2 * k + side]) continue;
            const tsr_rlp *m = &mo->ad->mod[k];
            size_t a = side == 0 ? m->obd : m->obu, c = side == 0 ? (size_t)m->S * m->r : (size_t)m->S * m->dout;
            size_t x0 = a > lo ? a : lo, x1 = a + c < hi ? a + c : hi;
            if (x0 < x1) n -= x1 - x0;
        }
    return n;
}

void tsr_mosa_destroy(tsr_mosa *mo) {
    free(mo->owner); free(mo->is_split); free(mo->W0); free(mo->dense); free(mo->gacc); free(mo->cur);
    free(mo->bias_off); free(mo->bias_params); free(mo->bias_grads);
    memset(mo, 0, sizeof *mo);
}

static void bias_copy(tsr_mosa *mo, int k, int side, int module, int to_params) {
    if (!mo->bias_off[2 * k + side]) return;
    tsr_rlp *m = &mo->ad->mod[k];
    size_t dst = side == 0 ? m->obd : m->obu, cnt = side == 0 ? (size_t)m->S * m->r : (size_t)m->S * m->dout;
    real *store = mo->bias_params + (size_t)module * mo->bias_row + mo->bias_off[2 * k + side] - 1;
    if (to_params) memcpy(mo->ad->params + dst, store, sizeof(real) * cnt);
}

void tsr_mosa_begin(tsr_mosa *mo, long step, int view) {
    if (!mo || mo->N == 0) return;
    tsr_adapters *ad = mo->ad;
    TSR_CHECK(!mo->swapped, "mosa: begin while weights are swapped");
    memcpy(mo->dense, ad->params, sizeof(real) * ad->num_params);
    memcpy(mo->gacc, ad->grads, sizeof(real) * ad->num_params);
    memset(ad->grads, 0, sizeof(real) * ad->num_params);
    for (int k = 0; k < ad->n_mod; k++) {
        tsr_rlp *m = &ad->mod[k];
        for (int side = 0; side < 2; side++) {
            size_t off = side == 0 ? m->oA : m->oB, cnt = side == 0 ? m->nA : m->nB;
            if (!mo->is_split[off] && cnt) continue;
            int i = mo->baseline ? 0 : tsr_mosa_draw(mo->seed, step, m->layer, proj_id(m, side), view, mo->N);
            mo->cur[2 * k + side] = i;
            mosa_effective(ad->params + off, mo->dense + off, mo->W0 + off, mo->owner + off, cnt, i);
            bias_copy(mo, k, side, i, 1);
        }
    }
    ad->view = view; /* the view's own dropout masks (and routing noise) */
    mo->swapped = 1;
}

void tsr_mosa_end(tsr_mosa *mo) {
    if (!mo || mo->N == 0) return;
    tsr_adapters *ad = mo->ad;
    for (int k = 0; k < ad->n_mod; k++) {
        tsr_rlp *m = &ad->mod[k];
        for (int side = 0; side < 2; side++) {
            size_t off = side == 0 ? m->oA : m->oB, cnt = side == 0 ? m->nA : m->nB;
            if (!cnt || !mo->is_split[off]) continue;
            int i = mo->cur[2 * k + side];
            mosa_mask_grad(ad->grads + off, mo->owner + off, cnt, i);
            if (mo->bias_off[2 * k + side]) { /* the bias gradient belongs to module i's copy */
                size_t src = side == 0 ? m->obd : m->obu, bc = side == 0 ? (size_t)m->S * m->r : (size_t)m->S * m->dout;
                real *g = mo->bias_grads + (size_t)i * mo->bias_row + mo->bias_off[2 * k + side] - 1;
                for (size_t j = 0; j < bc; j++) {
                    g[j] += ad->grads[src + j];
                    ad->grads[src + j] = 0;
                }
            }
        }
    }
    for (size_t j = 0; j < ad->num_params; j++) ad->grads[j] += mo->gacc[j];
    memcpy(ad->params, mo->dense, sizeof(real) * ad->num_params);
    ad->view = 0;
    mo->swapped = 0;
}

void tsr_mosa_swap_merged(tsr_mosa *mo, int on) {
    if (!mo || mo->N == 0) return;
    tsr_adapters *ad = mo->ad;
    if (!on) {
        TSR_CHECK(mo->swapped, "mosa: restore without swap");
        memcpy(ad->params, mo->dense, sizeof(real) * ad->num_params);
        mo->swapped = 0;
        return;
    }
    TSR_CHECK(!mo->swapped, "mosa: swap while swapped");
    memcpy(mo->dense, ad->params, sizeof(real) * ad->num_params);
    for (int k = 0; k < ad->n_mod; k++) {
        tsr_rlp *m = &ad->mod[k];
        for (int side = 0; side < 2; side++) {
            size_t off = side == 0 ? m->oA : m->oB, cnt = side == 0 ? m->nA : m->nB;
            if (!cnt || !mo->is_split[off]) continue;
            if (mo->baseline) mosa_effective(ad->params + off, mo->dense + off, mo->W0 + off, mo->owner + off, cnt, 0);
            else mosa_merge(ad->params + off, mo->dense + off, mo->W0 + off, cnt, mo->N);
            if (mo->bias_off[2 * k + side]) {
                size_t dst = side == 0 ? m->obd : m->obu, bc = side == 0 ? (size_t)m->S * m->r : (size_t)m->S * m->dout;
                const real *store = mo->bias_params + mo->bias_off[2 * k + side] - 1;
                for (size_t j = 0; j < bc; j++) {
                    double s = 0;
                    int nm = mo->baseline ? 1 : mo->N;
                    for (int i = 0; i < nm; i++) s += store[(size_t)i * mo->bias_row + j];
                    ad->params[dst + j] = (real)(s / nm);
                }
            }
        }
    }
    mo->swapped = 1;
}

double tsr_adapt_loss_grad(tsr_vit *m, tsr_adapters *ad, tsr_mosa *mo, const tsr_vit_trainable *tr, const real *images,
                           const int *labels, const int *tasks, int B, long step, uint64_t seed, double consistency,
                           const real *noise) {
    int K = m->cfg.num_classes;
    int mosa = mo && mo->N > 0;
    if (!mosa || consistency <= 0) {
        if (mosa) tsr_mosa_begin(mo, step, 0);
        if (ad && tsr_adapters_begin(ad, tasks, B, 1, step, seed, noise) != 0) tsr_fatal("%s", tsr_last_error());
        double loss = tsr_vit_forward(m, images, labels, B);
        tsr_vit_backward(m, tr);
        if (mosa) tsr_mosa_end(mo);
        return loss;
    }
    /* two views: p2 first (view 1), then view 0 forward + backward, then view 1 recomputed + backward */
    real *p1 = tsr_malloc(sizeof(real) * (size_t)B * K * 3), *p2 = p1 + (size_t)B * K, *dl = p2 + (size_t)B * K;
    tsr_mosa_begin(mo, step, 1);
    if (ad && tsr_adapters_begin(ad, tasks, B, 1, step, seed, noise) != 0) tsr_fatal("%s", tsr_last_error());
    tsr_vit_forward(m, images, labels, B);
    memcpy(p2, m->acts.probs, sizeof(real) * (size_t)B * K);
    tsr_mosa_end(mo);
    tsr_mosa_begin(mo, step, 0);
    if (ad && tsr_adapters_begin(ad, tasks, B, 1, step, seed, noise) != 0) tsr_fatal("%s", tsr_last_error());
    double ce = tsr_vit_forward(m, images, labels, B);
    memcpy(p1, m->acts.probs, sizeof(real) * (size_t)B * K);
    double kl = 0;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < K; j++) {
            size_t i = (size_t)b * K + j;
            double a = p1[i] > 1e-30 ? p1[i] : 1e-30, c = p2[i] > 1e-30 ? p2[i] : 1e-30;
            kl += c * (log(c) - log(a)) + a * (log(a) - log(c));
            /* view 0: CE + consistency * d KL(sg p2 || p1) / dz1 = (p1 - p2) / B */
            dl[i] = (real)((p1[i] - (j == labels[b] ? 1 : 0)) / B + consistency * (p1[i] - p2[i]) / B);
        }
    tsr_vit_backward_from(m, tr, dl);
    tsr_mosa_end(mo);
    tsr_mosa_begin(mo, step, 1);
    if (ad && tsr_adapters_begin(ad, tasks, B, 1, step, seed, noise) != 0) tsr_fatal("%s", tsr_last_error());
    tsr_vit_forward(m, images, labels, B);
    for (size_t i = 0; i < (size_t)B * K; i++) dl[i] = (real)(consistency * (m->acts.probs[i] - p1[i]) / B);
    tsr_vit_backward_from(m, tr, dl);
    tsr_mosa_end(mo);
    free(p1);
    return ce + consistency * kl / B;
}
