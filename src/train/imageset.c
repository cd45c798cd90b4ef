/* imageset.c: labelled image sets in memory (see imageset.h). */
#include "train/imageset.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "data/dataset_nc.h"
#include "data/idx.h"

void tsr_imageset_free(tsr_imageset *d) {
    free(d->x);
    free(d->y);
    memset(d, 0, sizeof *d);
}

/* Normalise ubyte images stored (n, y, x, channel) into (n, C, S, S) floats. */
static void normalise(tsr_imageset *d, const uint8_t *px, const int *labels, int64_t n, int S, int C,
                      const tsr_config *cfg) {
    d->n = n;
    d->C = C;
    d->S = S;
    d->x = tsr_malloc(sizeof(float) * (size_t)n * C * S * S);
    d->y = tsr_malloc(sizeof(int) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) {
        d->y[i] = labels[i];
        for (int c = 0; c < C; c++)
            for (int p = 0; p < S * S; p++)
                d->x[((size_t)i * C + c) * S * S + p] =
                    (float)(((double)px[((size_t)i * S * S + p) * C + c] / 255.0 - cfg->data.mean.v[c]) / cfg->data.std.v[c]);
    }
}

int tsr_imageset_load(const tsr_config *cfg, tsr_imageset *train, tsr_imageset *test) {
    int S = (int)cfg->model.image_size, C = (int)cfg->model.channels;
    if (strcmp(cfg->data.dataset, "fashion-mnist") == 0) {
        if (S != 28 || C != 1)
            return tsr_error("data.dataset fashion-mnist has 28x28x1 images: set model.image_size=28 and "
                             "model.channels=1 (got %d and %d)", S, C);
        const char *pre[2] = {"train", "t10k"};
        tsr_imageset *dst[2] = {train, test};
        for (int k = 0; k < 2; k++) {
            tsr_idx_set s;
            if (tsr_idx_load(&s, cfg->data.path, pre[k]) != 0) return -1;
            int *lab = tsr_malloc(sizeof(int) * (size_t)s.n);
            for (int64_t i = 0; i < s.n; i++) lab[i] = s.labels[i];
            normalise(dst[k], s.pixels, lab, s.n, S, C, cfg);
            free(lab);
            tsr_idx_free(&s);
        }
        return 0;
    }
    /* a tessera netCDF dataset: split 0 = train, 2 = test (1 = val goes to test when there is no test) */
    tsr_nc_dataset d;
    if (tsr_nc_dataset_open(&d, cfg->data.path) != 0) return -1;
    int rc = -1;
    uint8_t *px = NULL;
    int *lab = NULL;
    int8_t *split = NULL;
    if (d.height != S || d.width != S || d.channels != C) {
        tsr_error("%s: images are %dx%dx%d, the model expects %dx%dx%d (model.image_size, model.channels)",
                  cfg->data.path, d.height, d.width, d.channels, S, S, C);
        goto out;
    }
    if (!d.has_labels || !d.has_split) {
        tsr_error("%s: training needs the variables 'labels' and 'split'", cfg->data.path);
        goto out;
    }
    size_t fbytes;
    if (tsr_size_bytes(sizeof(float), d.n_examples, (size_t)S * S * C, &fbytes) != 0) {
        tsr_error("%s: dimension 'example' has %lld examples of %dx%dx%d: their float32 pixels would take more "
                  "than %zu bytes; refusing the file",
                  cfg->data.path, (long long)d.n_examples, S, S, C, (size_t)SIZE_MAX);
        goto out;
    }
    px = tsr_malloc((size_t)d.n_examples * S * S * C);
    lab = tsr_malloc(sizeof(int) * (size_t)d.n_examples);
    split = tsr_malloc((size_t)d.n_examples);
    if (tsr_nc_dataset_read_raw(&d, 0, d.n_examples, px) || tsr_nc_dataset_read_labels(&d, 0, d.n_examples, lab) ||
        tsr_nc_dataset_read_split(&d, 0, d.n_examples, split))
        goto out;
    for (int part = 0; part < 2; part++) {
        int64_t cnt = 0;
        for (int64_t i = 0; i < d.n_examples; i++) cnt += part == 0 ? split[i] == 0 : split[i] != 0;
        uint8_t *p2 = tsr_malloc((size_t)(cnt ? cnt : 1) * S * S * C);
        int *l2 = tsr_malloc(sizeof(int) * (size_t)(cnt ? cnt : 1));
        int64_t j = 0;
        for (int64_t i = 0; i < d.n_examples; i++)
            if (part == 0 ? split[i] == 0 : split[i] != 0) {
                memcpy(p2 + (size_t)j * S * S * C, px + (size_t)i * S * S * C, (size_t)S * S * C);
                l2[j++] = lab[i];
            }
        normalise(part == 0 ? train : test, p2, l2, cnt, S, C, cfg);
        free(p2);
        free(l2);
    }
    if (train->n == 0) {
        tsr_error("%s: no training examples (split == 0)", cfg->data.path);
        goto out;
    }
    if (d.n_classes > cfg->model.num_classes) {
        tsr_error("%s: %d classes but model.num_classes is %ld", cfg->data.path, d.n_classes, cfg->model.num_classes);
        goto out;
    }
    rc = 0;
out:
    free(px);
    free(lab);
    free(split);
    tsr_nc_dataset_close(&d);
    return rc;
}

