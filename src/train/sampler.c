/* sampler.c: the global batch, task ownership and augmentation (sampler.h). */
#include "train/sampler.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/hash.h"

void tsr_sampler_init(tsr_sampler *sp, int ntasks, int nranks, const int64_t *weight) {
    memset(sp, 0, sizeof *sp);
    sp->ntasks = ntasks;
    sp->nranks = nranks;
    sp->owner0 = tsr_calloc((size_t)ntasks, sizeof(int));
    sp->nowner = tsr_calloc((size_t)ntasks, sizeof(int));
    sp->count = tsr_calloc((size_t)ntasks, sizeof(int64_t));
    if (ntasks < nranks) {
        for (int t = 0; t < ntasks; t++) {
            sp->owner0[t] = t;
            sp->nowner[t] = (nranks - t + ntasks - 1) / ntasks;
        }
        sp->stride = ntasks;
        return;
    }
    int64_t *load = tsr_calloc((size_t)nranks, sizeof(int64_t));
    int *order = tsr_malloc(sizeof(int) * (size_t)ntasks);
    for (int t = 0; t < ntasks; t++) order[t] = t;
    for (int i = 1; i < ntasks; i++) /* insertion sort by weight, descending, stable */
        for (int j = i; j > 0 && weight[order[j]] > weight[order[j - 1]]; j--) {
            int x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    for (int i = 0; i < ntasks; i++) {
        int best = 0;
        for (int r = 1; r < nranks; r++)
            if (load[r] < load[best]) best = r;
        sp->owner0[order[i]] = best;
        sp->nowner[order[i]] = 1;
        load[best] += weight[order[i]];
    }
    free(load);
    free(order);
    sp->stride = 1;
}

void tsr_sampler_free(tsr_sampler *sp) {
    free(sp->count);
    free(sp->owner0);
    free(sp->nowner);
    memset(sp, 0, sizeof *sp);
}

int tsr_sampler_owns(const tsr_sampler *sp, int t, int rank) {
    for (int k = 0; k < sp->nowner[t]; k++)
        if (sp->owner0[t] + k * sp->stride == rank) return 1;
    return 0;
}

int tsr_sampler_first_owner(const tsr_sampler *sp, int t) { return sp->owner0[t]; }

int tsr_sampler_local(const tsr_sampler *sp, uint64_t seed, long step, int G, int rank, int *task, int64_t *ex,
                      int *slot) {
    int n = 0;
    for (int j = 0; j < G; j++) {
        int t = (int)(tsr_mix3(seed, (uint64_t)step, 2 * (uint64_t)j) % (uint64_t)sp->ntasks);
        int who = sp->owner0[t] + (j % sp->nowner[t]) * sp->stride;
        if (who != rank) continue;
        task[n] = t;
        ex[n] = (int64_t)(tsr_mix3(seed, (uint64_t)step, 2 * (uint64_t)j + 1) % (uint64_t)sp->count[t]);
        slot[n++] = j;
    }
    return n;
}

void tsr_augment(float *x, int C, int S, uint64_t seed, long step, int slot, int flip, float *tmp) {
    uint64_t h = tsr_mix3(seed ^ 0xa06e, (uint64_t)step, (uint64_t)slot);
    int dy = (int)(h % 5) - 2, dx = (int)((h >> 8) % 5) - 2, fl = flip && ((h >> 16) & 1);
    for (int c = 0; c < C; c++) {
        float *img = x + (size_t)c * S * S;
        memcpy(tmp, img, sizeof(float) * (size_t)S * S);
        for (int yy = 0; yy < S; yy++)
            for (int xx = 0; xx < S; xx++) {
                int sy = yy + dy, sx = (fl ? S - 1 - xx : xx) + dx;
                if (sy < 0) sy = -sy;
                if (sy >= S) sy = 2 * S - 2 - sy;
                if (sx < 0) sx = -sx;
                if (sx >= S) sx = 2 * S - 2 - sx;
                img[yy * S + xx] = tmp[sy * S + sx];
            }
    }
}
