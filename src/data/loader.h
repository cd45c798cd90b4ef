/* loader.h: a training view of a suite (suite.h) for one rank.
 *
 * tsr_loader_open reads the selected tasks' examples of one split into memory (only those: the
 * labels and split values of a selected task are scanned in blocks, then the pixels of the chosen
 * examples are read in bounded pieces), optionally keeping exactly `shots` examples per class.
 * The k-shot draw depends only on the seed, the task NAME and the class, never on which other tasks
 * are selected, on the rank or on the number of ranks, so every rank that selects a task gets the
 * same examples of it. Within a task the kept examples are in file order: tsr_loader_get(l, i, j)
 * is the j-th of them.
 *
 * Images become (C, S, S) float tensors, S = out_size: an H x W image is centre-cropped to S x S, or
 * centre-padded with black (pixel 0) where it is smaller, then normalised exactly as
 * tsr_nc_dataset_read does: ((float)pixel / 255 - mean[c]) / std[c].
 *
 * The loader only selects and renders examples: which examples a training step uses (the sampler) and
 * their augmentation (random crop and flip) belong to the trainer (src/train/sampler.h).
 *
 * After open, the loader does not touch the suite file (the suite may be closed). Functions that
 * can fail return 0 / -1 with tsr_error (or -1 for tsr_loader_count). */
#ifndef TSR_LOADER_H
#define TSR_LOADER_H

#include <stdint.h>

#include "data/suite.h"

typedef struct {
    int shots;        /* examples per class; 0 = every example of the split */
    uint64_t seed;    /* the k-shot draw */
    int split;        /* which split to draw from: 0 train, 1 val, 2 test */
    int out_size;     /* S: the model's image size; 0 = the suite's (requires H == W) */
    const float *mean, *std; /* C values each (copied); both NULL = no normalisation (pixel/255) */
} tsr_loader_opts;

typedef struct {
    int suite_task;           /* index of the task in the suite */
    char name[TSR_NAME_MAX];
    int num_classes;
    uint64_t name_hash;       /* FNV-1a of the name: seeds the k-shot draw of this task */
    int64_t n;                /* examples kept */
    int64_t *index;           /* n: their indices within the task (ascending) */
    int *labels;              /* n */
    uint8_t *px;              /* n*H*W*C raw pixels */
} tsr_loader_task;

typedef struct {
    int ntasks;
    tsr_loader_task *t;       /* ntasks, in the order given to tsr_loader_open */
    int H, W, C, S;
    int shots, split;
    uint64_t seed;
    float *lut;               /* C*256: the normalised value of each pixel value per channel */
} tsr_loader;

/* tasks: ntasks distinct suite task indices. Errors: a task without examples in the split, a class
 * with fewer than `shots` examples (naming the task and the class), bad options. On error nothing
 * stays allocated and tsr_loader_close(l) is safe. */
int tsr_loader_open(tsr_loader *l, const tsr_suite *s, const int *tasks, int ntasks,
                    const tsr_loader_opts *o);
void tsr_loader_close(tsr_loader *l);
/* Examples of the i-th selected task, or -1 (tsr_error) if there is no such task. */
int64_t tsr_loader_count(const tsr_loader *l, int i);
/* Example j (0 .. count-1) of the i-th task, normalised (C, S, S). label may be NULL. */
int tsr_loader_get(const tsr_loader *l, int i, int64_t j, float *x, int *label);

#endif
