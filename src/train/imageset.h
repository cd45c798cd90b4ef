/* imageset.h: a labelled image set in memory, normalised, (n, C, S, S) float; loaded from Fashion-MNIST
 * (Debian's dataset-fashion-mnist IDX files) or a tessera netCDF dataset (split 0 = train, else test). */
#ifndef TSR_IMAGESET_H
#define TSR_IMAGESET_H
#include <stdint.h>

#include "io/tsr_config.h"

typedef struct {
    int64_t n;
    int C, S;
    float *x; /* (n, C, S, S) normalised with data.mean / data.std */
    int *y;
} tsr_imageset;

/* Load the configured data (data.dataset, data.path) as train and test sets. 0 / -1 (tsr_error). */
int tsr_imageset_load(const tsr_config *cfg, tsr_imageset *train, tsr_imageset *test);
void tsr_imageset_free(tsr_imageset *d);
#endif
