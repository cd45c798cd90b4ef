/* optim.c: AdamW (torch.optim.AdamW semantics), warmup + cosine schedule, gradient-norm clipping. */
#include "optim.h"

#include "core/common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Groups smaller than this are updated without starting an OpenMP team. */
#define OMP_MIN_ELEMS 32768
/* Elements per partial sum in the gradient norm: fixed, so the sum does not depend on threads. */
#define NORM_BLOCK 4096

void tsr_adamw_init(tsr_adamw *o, size_t n, double beta1, double beta2, double eps) {
    TSR_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps >= 0,
              "adamw: bad hyper-parameters beta1 %g beta2 %g eps %g (expected betas in [0,1), eps >= 0)",
              beta1, beta2, eps);
    memset(o, 0, sizeof *o);
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->n = n;
    /* untouched until a step writes them: only the groups' slices become resident (a head-only group over
     * a whole model's buffer costs the head's moments, not the model's) */
    o->m = tsr_lazy_alloc(n * sizeof(float));
    o->v = tsr_lazy_alloc(n * sizeof(float));
}

void tsr_adamw_add_group(tsr_adamw *o, size_t offset, size_t count, double lr_scale, double weight_decay) {
    TSR_CHECK(o->ngroups < TSR_ADAMW_MAX_GROUPS, "adamw: more than %d parameter groups",
              TSR_ADAMW_MAX_GROUPS);
    TSR_CHECK(offset <= o->n && count <= o->n - offset,
              "adamw: group [%zu, %zu) exceeds the parameter buffer of %zu elements", offset, offset + count,
              o->n);
    for (int g = 0; g < o->ngroups; g++) {
        const tsr_param_group *q = &o->groups[g];
        TSR_CHECK(count == 0 || q->count == 0 || offset + count <= q->offset || q->offset + q->count <= offset,
                  "adamw: group [%zu, %zu) overlaps group %d [%zu, %zu)", offset, offset + count, g, q->offset,
                  q->offset + q->count);
    }
    o->groups[o->ngroups++] = (tsr_param_group){offset, count, lr_scale, weight_decay};
}

void tsr_adamw_step(tsr_adamw *o, float *params, const float *grads, double lr) {
    o->t++;
    const double b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    const double bc1 = 1.0 - pow(b1, (double)o->t), bc2 = 1.0 - pow(b2, (double)o->t);
    for (int gi = 0; gi < o->ngroups; gi++) {
        const tsr_param_group *g = &o->groups[gi];
        const double glr = lr * g->lr_scale;
        const double decay = 1.0 - glr * g->weight_decay;
        float *p = params + g->offset, *m = o->m + g->offset, *v = o->v + g->offset;
        const float *gr = grads + g->offset;
        const long cnt = (long)g->count;
#pragma omp parallel for schedule(static) if (cnt >= OMP_MIN_ELEMS)
        for (long i = 0; i < cnt; i++) {
            const double gd = gr[i];
            const double mi = b1 * m[i] + (1.0 - b1) * gd;
            const double vi = b2 * v[i] + (1.0 - b2) * gd * gd;
            m[i] = (float)mi;
            v[i] = (float)vi;
            const double mhat = mi / bc1, vhat = vi / bc2;
            p[i] = (float)((double)p[i] * decay - glr * mhat / (sqrt(vhat) + eps));
        }
    }
}

void tsr_adamw_free(tsr_adamw *o) {
    if (!o) return;
    tsr_lazy_free(o->m);
    tsr_lazy_free(o->v);
    memset(o, 0, sizeof *o);
}

double tsr_lr_schedule(long step, long total, long warmup, double lr, double min_lr_ratio) {
    const double pi = 3.14159265358979323846;
    if (step < 0) step = 0;
    if (warmup < 0) warmup = 0;
    if (step < warmup) return lr * (double)step / (double)warmup;
    const double min_lr = min_lr_ratio * lr;
    if (step >= total) return min_lr; /* also every step >= warmup when total <= warmup */
    const double progress = (double)(step - warmup) / (double)(total - warmup);
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + cos(pi * progress));
}

double tsr_sumsq(const float *x, size_t n) {
    /* One partial sum per NORM_BLOCK elements, summed in order afterwards: the same result for any
     * number of threads. */
    const long nb = (long)((n + NORM_BLOCK - 1) / NORM_BLOCK);
    double *part = tsr_malloc((nb ? (size_t)nb : 1) * sizeof(double));
#pragma omp parallel for schedule(static) if (n >= OMP_MIN_ELEMS)
    for (long b = 0; b < nb; b++) {
        size_t lo = (size_t)b * NORM_BLOCK, hi = lo + NORM_BLOCK < n ? lo + NORM_BLOCK : n;
        double s = 0;
        for (size_t i = lo; i < hi; i++) s += (double)x[i] * x[i];
        part[b] = s;
    }
    double sum = 0;
    for (long b = 0; b < nb; b++) sum += part[b];
    free(part);
    return sum;
}

double tsr_clip_coef(double norm, double max_norm) {
    if (!isfinite(norm) || !(max_norm > 0)) return 1.0;
    const double coef = max_norm / (norm + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

void tsr_scale(float *x, size_t n, double coef) {
    const long cnt = (long)n;
#pragma omp parallel for schedule(static) if (cnt >= OMP_MIN_ELEMS)
    for (long i = 0; i < cnt; i++) x[i] = (float)(x[i] * coef);
}

double tsr_clip_grad_norm(float *grads, const tsr_adamw *o, double max_norm) {
    double sum = 0;
    for (int gi = 0; gi < o->ngroups; gi++) sum += tsr_sumsq(grads + o->groups[gi].offset, o->groups[gi].count);
    const double norm = sqrt(sum), coef = tsr_clip_coef(norm, max_norm);
    if (coef < 1.0)
        for (int gi = 0; gi < o->ngroups; gi++) tsr_scale(grads + o->groups[gi].offset, o->groups[gi].count, coef);
    return norm;
}
