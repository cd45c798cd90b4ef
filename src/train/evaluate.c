/* evaluate.c: accuracy per task (evaluate.h). */
#include "train/evaluate.h"

#include <stdlib.h>

#include "core/common.h"

int tsr_argmax(const float *z, int K) {
    int best = 0;
    for (int k = 1; k < K; k++)
        if (z[k] > z[best]) best = k;
    return best;
}

/* Correct answers of this rank's model on task t's first n examples of a split; -1 on a read error. */
static int64_t task_correct(tsr_vit *m, tsr_adapters *ad, const tsr_tasks *ts, int split, int t, int64_t n, float *x,
                            int *lab, int *tid) {
    int B = m->max_batch, K = m->cfg.num_classes;
    size_t per = (size_t)m->cfg.channels * m->cfg.image_size * m->cfg.image_size;
    int64_t correct = 0;
    for (int64_t s0 = 0; s0 < n; s0 += B) {
        int b = (int)(n - s0 < B ? n - s0 : B);
        for (int i = 0; i < b; i++) {
            if (tsr_tasks_get(ts, split, t, s0 + i, x + (size_t)i * per, &lab[i]) != 0) return -1;
            tid[i] = t;
        }
        if (ad && tsr_adapters_begin(ad, tid, b, 0, 0, 0, NULL) != 0) tsr_fatal("%s", tsr_last_error());
        tsr_vit_forward(m, x, lab, b);
        for (int i = 0; i < b; i++) correct += tsr_argmax(m->acts.logits + (size_t)i * K, K) == lab[i];
    }
    return correct;
}

double tsr_evaluate(const tsr_comm *c, tsr_vit *m, tsr_adapters *ad, tsr_mosa *mo, const tsr_tasks *ts, int split,
                    const int *mine, int64_t limit, double *per_task, int *fail) {
    int B = m->max_batch;
    size_t per = (size_t)m->cfg.channels * m->cfg.image_size * m->cfg.image_size;
    float *x = tsr_malloc(sizeof(float) * per * B);
    int *lab = tsr_malloc(sizeof(int) * B), *tid = tsr_malloc(sizeof(int) * B);
    if (mo) tsr_mosa_swap_merged(mo, 1);
    for (int t = 0; t < ts->ntasks; t++) {
        per_task[t] = 0;
        if (!mine[t] || *fail) continue;
        int64_t n = tsr_tasks_count(ts, split, t);
        if (limit > 0 && n > limit) n = limit;
        int64_t correct = task_correct(m, ad, ts, split, t, n, x, lab, tid);
        if (correct < 0) *fail = 1;
        else per_task[t] = n ? (double)correct / (double)n : 0;
    }
    if (mo) tsr_mosa_swap_merged(mo, 0);
    tsr_dist_allreduce_sum_f64(c, per_task, (size_t)ts->ntasks);
    double mean = 0;
    for (int t = 0; t < ts->ntasks; t++) mean += per_task[t];
    free(x);
    free(lab);
    free(tid);
    return mean / ts->ntasks;
}
