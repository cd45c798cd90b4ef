/* trainer_impl.h: the trainer's state, shared by the parts of the loop (trainer.c) and the gradient
 * pass (grads.c). Not a public header: commands use trainer.h. */
#ifndef TSR_TRAIN_TRAINER_IMPL_H
#define TSR_TRAIN_TRAINER_IMPL_H
#include <stdio.h>

#include "adapters/adapters.h"
#include "adapters/adapt_step.h"
#include "model/vit.h"
#include "train/optim.h"
#include "train/sampler.h"
#include "train/tasks.h"
#include "train/trainer.h"

typedef struct {
    const tsr_ctx *ctx;
    const tsr_comm *comm;
    const tsr_config *cfg;
    const tsr_train_opts *opts;
    const char *cfg_text;
    int R, me, B, K, ntasks;
    /* data: tasks, ownership (mine: this rank computes slots of the task; eval_mine: evaluates it) */
    tsr_tasks ts;
    tsr_sampler sp;
    int *mine, *eval_mine;
    /* model, adapters (pre: the file they start from), MoSA */
    tsr_vit_config vc;
    tsr_vit m;
    tsr_adapters ad, pre;
    tsr_mosa mo, *mop;
    int use_ad, z_only;
    tsr_vit_trainable tr;
    /* optimizers of the model, the adapters, MoSA's bias copies; trained values */
    tsr_adamw om, oa, ob;
    size_t trainable;
    /* the flat vector of everything trained (3 segments), synchronised by one collective per step;
     * sharded: this rank updates [soff, soff + slen) */
    float *sync;
    size_t nsync, lens[3], bases[3], soff, slen;
    float *bufs[3], *pbufs[3];
    tsr_adamw *seg_opt[3];
    int sharded;
    /* the step's batch on this rank */
    float *xb, *tmp_img;
    int *yb, *tb, *slot;
    int64_t *exi;
    double *per_task;
    FILE *curve;
    /* model selection by validation (opts->want_val): the trained values (the 3 segments, nsync floats) at
     * the best validation accuracy so far, evaluations since then, and whether train.patience ended the run */
    float *best;
    int since_best, stop_early;
} tsr_trainer;

/* The gradient pass (opts->grad_examples > 0). 0 / -1 (tsr_error, this rank). */
int tsr_trainer_task_grads(tsr_trainer *T, tsr_train_result *res);
#endif
