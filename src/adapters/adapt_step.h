/* adapt_step.h: one training step's loss and gradients for adapter tuning, with MoSA (mixture of sparse
 * adapters) as an optional training strategy over any adapter set (LoRA, bottleneck, or a routed skill
 * inventory), and the two-view consistency loss. METHODS.md, section MoSA.
 *
 * MoSA storage: every split matrix keeps ONE dense matrix W (in ad->params) whose element j holds the
 * value of the module that owns j (owner masks fixed from the seed); module i's weights are
 * W on its own elements and W0 (the initial value) elsewhere (for a zero-initialised Up: W * M_i).
 * Biases are not split: a split projection's bias has one copy per module (bias_params, trained by the
 * caller's optimizer as a separate buffer). Each step, each layer draws one module per split projection
 * (tsr_mosa_draw: a pure function of seed, step, layer, projection and view, so identical on every
 * rank); the gradient is masked to the drawn module. Merge (evaluation, export): the mean over modules.
 * Baseline "sparse adapter": module 0 only, always; evaluated as module 0 (not merged). */
#ifndef TSR_ADAPT_STEP_H
#define TSR_ADAPT_STEP_H
#include <stdint.h>

#include "adapters/adapters.h"
#include "model/vit.h"

/* Up = B (LoRA) / up.B; Down = A / down.A. TSR_MOSA_SHARE_BIAS (with either): a split projection's bias stays
 * one vector in ad->params, trained by every module, instead of one copy per module (mosa.bias shared). */
enum { TSR_MOSA_SPLIT_UP = 1, TSR_MOSA_SPLIT_DOWN = 2, TSR_MOSA_SHARE_BIAS = 4 };

typedef struct {
    int N;          /* modules (0: MoSA off) */
    int split;      /* TSR_MOSA_SPLIT_* bitmask (released code's default: shared Down, split Up) */
    int baseline;   /* fixed sparse mask: module 0 only */
    uint64_t seed;
    tsr_adapters *ad;
    uint8_t *owner;      /* (ad->num_params) module owning each element of a split tensor (0 elsewhere) */
    uint8_t *is_split;   /* (ad->num_params) 1 on elements of split tensors */
    real *W0;            /* (ad->num_params) initial values */
    real *dense;         /* (ad->num_params) the dense storage while effective weights are swapped in */
    real *gacc;          /* (ad->num_params) masked gradients accumulated over views */
    int *cur;            /* (n_mod, 2) drawn module for (A, B) of each module */
    size_t nbias;        /* per-module bias copies: for each module with a split projection's bias */
    real *bias_params, *bias_grads; /* (N, per-module bias block) */
    size_t *bias_off;    /* (n_mod, 2): offset of the (A-side bias = down.bias, B-side = up.bias) block in a module row */
    size_t bias_row;     /* values per module copy */
    int swapped;         /* effective or merged weights are in ad->params */
} tsr_mosa;

#define tsr_mosa_create TSR_R(tsr_mosa_create)
#define tsr_mosa_destroy TSR_R(tsr_mosa_destroy)
#define tsr_mosa_begin TSR_R(tsr_mosa_begin)
#define tsr_mosa_end TSR_R(tsr_mosa_end)
#define tsr_mosa_swap_merged TSR_R(tsr_mosa_swap_merged)
#define tsr_adapt_loss_grad TSR_R(tsr_adapt_loss_grad)
#define tsr_mosa_trained TSR_R(tsr_mosa_trained)

/* Split the adapters' matrices (call after the adapters are initialised: their values become W0). */
int tsr_mosa_create(tsr_mosa *mo, tsr_adapters *ad, int N, int split, int baseline, uint64_t seed);
void tsr_mosa_destroy(tsr_mosa *mo);
/* Swap in module weights for (step, view); stash the gradients so far. */
void tsr_mosa_begin(tsr_mosa *mo, long step, int view);
/* Mask this view's gradients, add the stash back, restore the dense weights. */
void tsr_mosa_end(tsr_mosa *mo);
/* Values training changes that the model uses among the adapters' parameters [lo, hi): every element except,
 * for the sparse baseline, the elements of split tensors that module 0 does not own (they keep W0), and
 * except the slots of biases with per-module copies. The copies (bias_params) are counted apart: all nbias
 * of them, or module 0's bias_row for the baseline. */
size_t tsr_mosa_trained(const tsr_mosa *mo, size_t lo, size_t hi);
/* on = 1: put the merged adapter (or the baseline's module 0) in ad->params for evaluation/export;
 * on = 0: restore the dense storage. */
void tsr_mosa_swap_merged(tsr_mosa *mo, int on);

/* One step: forward + backward for a batch; gradients accumulate into m->grads (per tr) and ad->grads
 * (and mo->bias_grads). mo may be NULL (plain training) or have N = 0. consistency > 0 (MoSA only):
 * loss = CE(z1, y) + consistency * [KL(sg p2 || p1) + KL(sg p1 || p2)], views drawn independently
 * (3 forwards, 2 backwards: the first view is recomputed). noise: fixed routing noise or NULL.
 * Returns the loss (the cross-entropy of view 1 plus the consistency term). */
double tsr_adapt_loss_grad(tsr_vit *m, tsr_adapters *ad, tsr_mosa *mo, const tsr_vit_trainable *tr, const real *images,
                           const int *labels, const int *tasks, int B, long step, uint64_t seed, double consistency,
                           const real *noise);
#endif
