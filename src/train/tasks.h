/* tasks.h: the tasks a run trains on and their examples.
 *
 * Two sources. A multi-task suite (data.dataset: suite): the tasks of data.role (suite.source / train /
 * heldout lists, or every task), read by the ranks that own them (data/loader.h: k shots, train / val /
 * test splits); with data.joint_labels task t's class c is model class label_off[t] + c. Any other
 * dataset (Fashion-MNIST, a netCDF image set): data.tasks tasks made by permuting its labels (task
 * number n = data.task_offset + t; n = 0 keeps the labels, every other number a permutation drawn from
 * n), so that one backbone and head must serve differently-labelled tasks; data.shots > 0 keeps that
 * many training examples per class and task. */
#ifndef TSR_TRAIN_TASKS_H
#define TSR_TRAIN_TASKS_H
#include <stdint.h>

#include "data/dataset_nc.h"
#include "data/loader.h"
#include "io/tsr_config.h"
#include "train/imageset.h"

/* splits: TSR_SPLIT_TRAIN, TSR_SPLIT_VAL, TSR_SPLIT_TEST (data/dataset_nc.h) */

typedef struct {
    int ntasks, K, suite;
    int64_t *weight;   /* (ntasks) examples of each task, to balance ownership */
    int *label_off;    /* (ntasks) model class of the task's class 0 */
    /* label-permutation tasks (every rank holds the whole image set) */
    tsr_imageset train, test;
    int *perm;         /* (ntasks, K) */
    int64_t **idx;     /* per task: its training examples (indices into train) */
    int64_t *nidx;
    /* suite tasks */
    int *suite_idx;    /* (ntasks) task index in the suite file */
    int *local;        /* (ntasks) index in the loaders, -1 when not loaded on this rank */
    tsr_loader ld[3];  /* per split; ld[s].t == NULL when not loaded */
} tsr_tasks;

/* Which tasks, checked against the files and the model (K = model.num_classes). ntasks_override > 0
 * replaces data.tasks for label-permutation tasks. 0 / -1 (tsr_error). */
int tsr_tasks_select(tsr_tasks *ts, const tsr_config *cfg, int K, int ntasks_override);
/* Read the examples of the tasks with mine[t] != 0 (suites; the train and test splits, and val when
 * want_val). 0 / -1 (tsr_error). */
int tsr_tasks_load(tsr_tasks *ts, const tsr_config *cfg, const int *mine, int want_val);
/* Examples of task t in a split on this rank (0 when not loaded here). */
int64_t tsr_tasks_count(const tsr_tasks *ts, int split, int t);
/* Example i of task t: x (C, S, S) normalised, *y its model class. 0 / -1 (tsr_error). */
int tsr_tasks_get(const tsr_tasks *ts, int split, int t, int64_t i, float *x, int *y);
void tsr_tasks_free(tsr_tasks *ts);
#endif
