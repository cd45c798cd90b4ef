/* mosa.c: MoSA masks (see mosa.h). */
#include "adapters/mosa.h"

#include <stdlib.h>

#include "core/common.h"
#include "core/hash.h"
#include "core/rng.h"

/* Domain tags so that the split stream and the draws never share a seed derivation. */
#define MOSA_TAG_SPLIT 0x4D6F53412D73706CULL /* "MoSA-spl" */
#define MOSA_TAG_DRAW 0x4D6F53412D647277ULL  /* "MoSA-drw" */

static void check_modules(int N, const char *fn) {
    TSR_CHECK(N >= 1 && N <= TSR_MOSA_MAX_MODULES, "%s: number of modules %d outside [1, %d]", fn, N,
              TSR_MOSA_MAX_MODULES);
}

/* One splitmix64 step applied to v (a bijection of the 64-bit integers). */
static uint64_t mix64(uint64_t v) {
    uint64_t x = v;
    return tsr_splitmix64(&x);
}

uint64_t tsr_mosa_key(const char *name) { return tsr_hash_str(name); }

size_t tsr_mosa_group_size(size_t n, int N, int i) {
    check_modules(N, "tsr_mosa_group_size");
    if (i < 0 || i >= N) return 0;
    size_t q = n / (size_t)N, rem = n % (size_t)N;
    return q + ((size_t)i < rem ? 1 : 0);
}

typedef struct {
    uint64_t score;
    size_t index;
} mosa_rank;

static int rank_cmp(const void *a, const void *b) {
    const mosa_rank *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index ? 1 : 0);
}

void tsr_mosa_split(uint8_t *owner, size_t n, int N, uint64_t seed, uint64_t key) {
    check_modules(N, "tsr_mosa_split");
    if (n == 0) return;
    if (N == 1) {
        for (size_t j = 0; j < n; j++) owner[j] = 0;
        return;
    }
    tsr_rng r;
    tsr_rng_seed(&r, mix64(mix64(seed ^ MOSA_TAG_SPLIT) ^ key));
    mosa_rank *rk = tsr_malloc(n * sizeof *rk);
    for (size_t j = 0; j < n; j++) {
        rk[j].score = tsr_rng_u64(&r);
        rk[j].index = j;
    }
    /* (score, index) is a total order, so the ranking does not depend on the qsort implementation. */
    qsort(rk, n, sizeof *rk, rank_cmp);
    size_t q = n / (size_t)N, rem = n % (size_t)N, big = rem * (q + 1);
    for (size_t p = 0; p < n; p++) {
        size_t g = p < big ? p / (q + 1) : rem + (p - big) / q; /* q > 0 whenever p >= big */
        owner[rk[p].index] = (uint8_t)g;
    }
    free(rk);
}

int tsr_mosa_draw(uint64_t seed, long step, int layer, int proj, int view, int N) {
    check_modules(N, "tsr_mosa_draw");
    uint64_t h = mix64(seed ^ MOSA_TAG_DRAW);
    h = mix64(h ^ (uint64_t)(int64_t)step);
    h = mix64(h ^ (uint64_t)(int64_t)layer);
    h = mix64(h ^ (uint64_t)(int64_t)proj);
    h = mix64(h ^ (uint64_t)(int64_t)view);
    /* Top 32 bits times N, shifted down: uniform up to a bias below N / 2^32. */
    return (int)(((h >> 32) * (uint64_t)N) >> 32);
}

void mosa_effective(real *eff, const real *W, const real *W0, const uint8_t *owner, size_t n, int i) {
    if (W0) {
        for (size_t j = 0; j < n; j++) eff[j] = owner[j] == i ? W[j] : W0[j];
    } else {
        for (size_t j = 0; j < n; j++) eff[j] = owner[j] == i ? W[j] : (real)0;
    }
}

void mosa_mask_grad(real *g, const uint8_t *owner, size_t n, int i) {
    for (size_t j = 0; j < n; j++)
        if (owner[j] != i) g[j] = 0;
}

void mosa_merge(real *out, const real *W, const real *W0, size_t n, int N) {
    check_modules(N, "mosa_merge");
    double inv = 1.0 / N, rest = (double)(N - 1) / N;
    if (W0) {
        for (size_t j = 0; j < n; j++) out[j] = (real)((double)W[j] * inv + (double)W0[j] * rest);
    } else {
        for (size_t j = 0; j < n; j++) out[j] = (real)((double)W[j] * inv);
    }
}

void mosa_merge_bias(real *out, const real *bias, int N, int d) {
    check_modules(N, "mosa_merge_bias");
    for (int k = 0; k < d; k++) {
        double s = 0;
        for (int i = 0; i < N; i++) s += (double)bias[(size_t)i * (size_t)d + (size_t)k];
        out[k] = (real)(s / N);
    }
}
