/* grads.c: the gradient pass of the trainer (tessera analyze): per task, the mean loss gradient of the
 * adapter parameters (routing logits excluded) over the task's first grad_examples training examples,
 * at the loaded (pre-trained) adapters; no update. Task t is computed by rank t % ranks. */
#include <stdlib.h>
#include <string.h>

#include "adapters/adapt_step.h"
#include "core/common.h"
#include "train/trainer_impl.h"

/* One task's mean gradient into row (P values). 0 / -1 (read error). */
static int task_gradient(tsr_trainer *T, int t, double *row) {
    size_t P = T->ad.off_Z, per = (size_t)T->vc.channels * T->vc.image_size * T->vc.image_size;
    int64_t n = tsr_tasks_count(&T->ts, TSR_SPLIT_TRAIN, t);
    if (n > T->opts->grad_examples) n = T->opts->grad_examples;
    for (int64_t s0 = 0; s0 < n; s0 += T->B) {
        int b = (int)(n - s0 < T->B ? n - s0 : T->B);
        for (int i = 0; i < b; i++) {
            if (tsr_tasks_get(&T->ts, TSR_SPLIT_TRAIN, t, s0 + i, T->xb + (size_t)i * per, &T->yb[i]) != 0) return -1;
            T->tb[i] = t;
        }
        tsr_vit_zero_grad_for(&T->m, &T->tr);
        tsr_adapters_zero_grad(&T->ad);
        tsr_adapt_loss_grad(&T->m, &T->ad, NULL, &T->tr, T->xb, T->yb, T->tb, b, 0, (uint64_t)T->cfg->run.seed, 0, NULL);
        for (size_t j = 0; j < P; j++) row[j] += (double)T->ad.grads[j] * b / (double)n; /* mean over n */
    }
    return 0;
}

int tsr_trainer_task_grads(tsr_trainer *T, tsr_train_result *res) {
    if (!T->ts.suite || !T->use_ad || T->ad.off_Z == 0)
        return tsr_error("task gradients need a suite (data.dataset: suite) and adapters with parameters");
    size_t P = T->ad.off_Z;
    int nl = 0, li = 0;
    for (int t = 0; t < T->ntasks; t++) nl += T->mine[t];
    double *rows = tsr_calloc((size_t)(nl > 0 ? nl : 1) * P, sizeof(double));
    for (int t = 0; t < T->ntasks; t++) {
        if (!T->mine[t]) continue;
        if (task_gradient(T, t, rows + (size_t)li++ * P) != 0) {
            free(rows);
            return -1;
        }
    }
    if (!res) {
        free(rows);
        return 0;
    }
    memset(res, 0, sizeof *res);
    res->grad_rows = rows;
    res->grad_P = P;
    res->grad_ntasks = T->ntasks;
    res->trainable = T->trainable;
    const tsr_adapters *ad = &T->ad;
    size_t nz = ad->num_params - ad->off_Z, cols = (size_t)ad->cfg.heads * ad->cfg.skills;
    if (nz > 0 && ad->cfg.skills > 1) {
        res->routing = tsr_malloc(sizeof(float) * nz);
        memcpy(res->routing, ad->params + ad->off_Z, sizeof(float) * nz);
        res->routing_cols = (int)cols;
        res->routing_modules = (int)(nz / (cols * (size_t)T->ntasks));
    }
    return 0;
}
