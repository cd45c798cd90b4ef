/* sampler.h: the global batch of a step, the same on every rank and for any number of ranks.
 *
 * Slot j of step s draws a task and an example of it from (seed, s, j) alone (with replacement). Slot j
 * is computed by one of the task's owner ranks (j modulo the number of owners), so every rank count
 * sees the same batch. Ownership: with at least as many tasks as ranks, tasks are dealt to ranks
 * balancing their examples (largest first, to the least loaded rank); with fewer tasks than ranks,
 * task t is shared by the ranks r with r % ntasks == t. */
#ifndef TSR_TRAIN_SAMPLER_H
#define TSR_TRAIN_SAMPLER_H
#include <stdint.h>

typedef struct {
    int ntasks, nranks;
    int64_t *count;       /* (ntasks) training examples of each task (global; set by the caller) */
    int *owner0, *nowner; /* task t is computed by ranks owner0[t] + k * stride (k < nowner[t]) */
    int stride;
} tsr_sampler;

/* weight: (ntasks) examples of each task. count is allocated (zeros). */
void tsr_sampler_init(tsr_sampler *sp, int ntasks, int nranks, const int64_t *weight);
void tsr_sampler_free(tsr_sampler *sp);
/* Whether rank computes slots of task t; the first owner evaluates the task. */
int tsr_sampler_owns(const tsr_sampler *sp, int t, int rank);
int tsr_sampler_first_owner(const tsr_sampler *sp, int t);
/* This rank's slots of step `step` out of G: tasks, examples (index within the task) and global slot
 * numbers. Returns how many. */
int tsr_sampler_local(const tsr_sampler *sp, uint64_t seed, long step, int G, int rank, int *task, int64_t *ex,
                      int *slot);
/* Random crop (reflection padding 2) and optional horizontal flip of one (C, S, S) image, from (seed,
 * step, slot): the same on every rank. tmp: S*S floats. */
void tsr_augment(float *x, int C, int S, uint64_t seed, long step, int slot, int flip, float *tmp);
#endif
