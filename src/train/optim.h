/* optim.h: AdamW over a flat parameter buffer, the warmup + cosine learning-rate schedule, and
 * global gradient-norm clipping.
 *
 * The parameters live in one flat float buffer of n elements; parameter groups are slices of it with
 * their own learning-rate multiplier and weight decay (e.g. no decay for biases and LayerNorm).
 * Elements in no group are neither updated nor counted by the gradient norm.
 *
 * Numerics follow torch.optim.AdamW and torch.nn.utils.clip_grad_norm_: the moments m and v are
 * stored in float (as torch keeps them for float32 parameters); each element's update is computed
 * in double and rounded to float once. Results do not depend on the number of OpenMP threads (the
 * gradient norm is summed in fixed blocks, then the blocks in order). */
#ifndef TSR_OPTIM_H
#define TSR_OPTIM_H

#include <stddef.h>

#define TSR_ADAMW_MAX_GROUPS 16

typedef struct {
    size_t offset, count; /* the slice [offset, offset+count) of the flat buffer */
    double lr_scale;      /* the group's lr is lr * lr_scale */
    double weight_decay;  /* decoupled: p *= 1 - lr * lr_scale * weight_decay */
} tsr_param_group;

typedef struct {
    double beta1, beta2, eps;
    int ngroups;
    tsr_param_group groups[TSR_ADAMW_MAX_GROUPS];
    float *m, *v; /* first and second moments, n each, zero at init */
    size_t n;     /* length of the flat parameter buffer */
    long t;       /* steps taken */
} tsr_adamw;

/* n = length of the flat parameter buffer. Moments start at zero and t at 0. beta1, beta2 in [0, 1),
 * eps >= 0 (checked: tsr_fatal otherwise, a programming error). */
void tsr_adamw_init(tsr_adamw *o, size_t n, double beta1, double beta2, double eps);
/* Add the slice [offset, offset+count). Fatal (programming error) if there are already
 * TSR_ADAMW_MAX_GROUPS groups, the slice exceeds n, or it overlaps an existing group. */
void tsr_adamw_add_group(tsr_adamw *o, size_t offset, size_t count, double lr_scale, double weight_decay);
/* One step with learning rate lr: t += 1, then for every element of every group, with
 * glr = lr * lr_scale:
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  mhat = m / (1-b1^t);  vhat = v / (1-b2^t)
 *   p = p (1 - glr wd) - glr mhat / (sqrt(vhat) + eps)           (torch.optim.AdamW)
 * params and grads are the flat buffers (n floats each). OpenMP parallel over elements. */
void tsr_adamw_step(tsr_adamw *o, float *params, const float *grads, double lr);
/* Free the moments and zero *o. Safe to call twice. */
void tsr_adamw_free(tsr_adamw *o);

/* Learning rate at step (counted from 0): linear warmup lr * step / warmup for step < warmup (so
 * step 0 gives 0 when warmup > 0), then cosine decay from lr at step == warmup to min_lr_ratio * lr
 * at step == total:  min + (lr - min) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2.
 * Steps past total give min_lr_ratio * lr; negative steps count as 0. If total <= warmup, the
 * schedule is the warmup followed by min_lr_ratio * lr. */
double tsr_lr_schedule(long step, long total, long warmup, double lr, double min_lr_ratio);

/* Global L2 norm of grads over the elements of o's groups (double accumulation). If max_norm > 0 and
 * the clip coefficient max_norm / (norm + 1e-6) is below 1, those elements are multiplied by it (as
 * torch.nn.utils.clip_grad_norm_, which clamps the coefficient to 1). Returns the norm before
 * clipping. A non-finite norm (inf/NaN gradients) is returned as is and grads are left unchanged, so
 * the caller can detect it and skip the step. */
double tsr_clip_grad_norm(float *grads, const tsr_adamw *o, double max_norm);
/* Its pieces, for vectors laid out otherwise (the trainer's flat synchronised vector): the sum of
 * squares (double, blocked: the same for any thread count), the clip coefficient (1: no clipping;
 * also for a non-finite norm), and x *= coef. */
double tsr_sumsq(const float *x, size_t n);
double tsr_clip_coef(double norm, double max_norm);
void tsr_scale(float *x, size_t n, double coef);

#endif
