/* evaluate.h: accuracy of a model (with its adapters) per task. */
#ifndef TSR_TRAIN_EVALUATE_H
#define TSR_TRAIN_EVALUATE_H
#include <stdint.h>

#include "adapters/adapters.h"
#include "adapters/adapt_step.h"
#include "dist/parallel.h"
#include "model/vit.h"
#include "train/tasks.h"

/* The class with the largest logit (the first of equal ones). */
int tsr_argmax(const float *z, int K);
/* Accuracy of every task t with mine[t] on its first `limit` examples of a split (0: all), per_task
 * summed over c (each task evaluated by one rank); MoSA evaluates its merged adapter. Returns the mean
 * over tasks. Collective over c; a rank that cannot read an example sets *fail (tsr_error) and still
 * takes part, so the caller can make the ranks fail together. */
double tsr_evaluate(const tsr_comm *c, tsr_vit *m, tsr_adapters *ad, tsr_mosa *mo, const tsr_tasks *ts, int split,
                    const int *mine, int64_t limit, double *per_task, int *fail);
#endif
