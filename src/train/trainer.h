/* trainer.h: the one training loop of tessera. `tessera train` (full training of a backbone), `adapt`
 * and `pretrain` (parameter-efficient and multi-task training), every entry of `tessera fewshot` and
 * the gradient pass of `tessera analyze` all call tsr_train_run.
 *
 * The pieces (src/train/): tasks.c (which tasks, their examples and labels), sampler.c (the global
 * batch, task ownership, augmentation), evaluate.c (accuracy per task), state.c (training-state
 * checkpoints), optim.c (AdamW, schedule), trainer.c (set-up, step, synchronisation, evaluation,
 * checkpoint and output parts of the loop) and grads.c (per-task gradients). */
#ifndef TSR_TRAIN_TRAINER_H
#define TSR_TRAIN_TRAINER_H
#include <stddef.h>

#include "dist/parallel.h"
#include "io/tsr_config.h"

/* exit status of a run stopped by a signal after writing its checkpoint (resubmit with --resume) */
#define TSR_EXIT_REQUEUE 3

typedef struct {
    int resume;   /* continue from the newest complete checkpoint in run.output_dir/checkpoints */
    int quiet;    /* a sweep entry: no files written (curve, checkpoints, outputs) */
    int want_val; /* suites: also evaluate the validation split at every evaluation point */
    long grad_examples; /* > 0: no training; each rank computes, for the tasks t with t % ranks == rank,
                           the mean loss gradient of the adapter parameters (routing logits excluded)
                           over the task's first grad_examples training examples (tessera analyze) */
    int backbone;       /* tessera train: every weight trained with one learning rate (train.lr) and
                           weight decay (train.weight_decay), one task with the dataset's labels;
                           writes backbone.safetensors in model.naming instead of model.safetensors */
    long fault_nan_step; /* tests: the last rank's loss is NaN at this step (< 0: never) */
} tsr_train_opts;

typedef struct {
    int n_eval;                /* evaluation points (every train.eval_every steps and the last one run) */
    long *eval_step;           /* (n_eval) step after which each evaluation ran */
    double *train_loss;        /* (n_eval) mean training loss of the logging window before it */
    double *val_accuracy;      /* (n_eval) mean over tasks (NaN without want_val) */
    double *test_accuracy;     /* (n_eval) mean over tasks (first 1000 test images before the last) */
    double test_accuracy_final;  /* the last evaluation (train.eval_limit images, 0 = the whole split) */
    double best_val_accuracy;  /* best val_accuracy (the first of equal ones), its step, and the test accuracy
                                  of the parameters of that step (restored after training, train.eval_limit
                                  images) */
    long best_val_step;
    double test_at_best_val;
    long steps_run;            /* steps trained: train.steps, or fewer when train.patience stopped the run */
    double first_loss, last_loss;
    size_t trainable;          /* trained parameters (head included) */
    double wall_time;          /* seconds, set-up included */
    /* grad_examples > 0: */
    double *grad_rows;         /* (this rank's tasks in increasing t, grad_P) */
    size_t grad_P;             /* adapter parameters in each gradient */
    int grad_ntasks;           /* tasks of the run (T) */
    float *routing;            /* routed modules' logits, each (T, routing_cols), concatenated (NULL: none) */
    int routing_modules, routing_cols;
} tsr_train_result;

/* Train as configured. cfg_text: the resolved configuration (stored in outputs). res may be NULL.
 * Collective over ctx->comm (every rank of a job; one rank alone for a sweep entry); logs through
 * ctx->log. A failure on any rank (data, files, divergence) ends the run on every rank: each returns 1
 * and the failing rank's message is logged. Returns 0, TSR_EXIT_REQUEUE (stopped by a signal,
 * checkpoint written unless quiet) or 1. */
int tsr_train_run(const tsr_ctx *ctx, const tsr_config *cfg, const char *cfg_text, const tsr_train_opts *opts,
                  tsr_train_result *res);
void tsr_train_result_free(tsr_train_result *res);

/* adapter.init (a tessera adapters file) against the adapter.* keys of cfg: was it made by this adapter
 * configuration? Compared: the kind, LoRA sites, rank, scale (alpha / rank) and A initialisation, or the
 * bottleneck placement, width, scale, dropout and activation, and the skills and heads of the routing.
 * 0 when they agree (or there is no adapter.init), -1 with tsr_error naming every key that differs and
 * both values. The trainer uses the file's configuration and warns on a difference; tessera fewshot
 * refuses one (a stale pre-training run would silently be another method). */
int tsr_train_check_init(const tsr_config *cfg);
#endif
