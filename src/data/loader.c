/* loader.c: k-shot selection, in-memory examples and their rendering (see loader.h). */
#include "loader.h"

#include "core/common.h"
#include "core/hash.h"
#include "core/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Examples per block when scanning labels and split. */
#define SCAN_BLOCK 65536
/* Bytes of pixels read per netCDF call. */
#define READ_BYTES ((size_t)16 << 20)
/* Purpose mixed into the seed of the k-shot draw. */
#define SEED_SHOTS 0x73686f7473ull   /* "shots" */

static const char *const SPLIT_NAMES[3] = {"train", "val", "test"};

/* A seed from several words (splitmix64 chained). */
static uint64_t mix(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    uint64_t x = a, h = tsr_splitmix64(&x);
    x = h ^ b;
    h = tsr_splitmix64(&x);
    x = h ^ c;
    h = tsr_splitmix64(&x);
    x = h ^ d;
    return tsr_splitmix64(&x);
}

/* Uniform integer in [0, n) (n >= 1), without modulo bias. */
static uint64_t below(tsr_rng *r, uint64_t n) {
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    for (;;) {
        uint64_t v = tsr_rng_u64(r);
        if (v < lim) return v % n;
    }
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void free_task(tsr_loader_task *t) {
    free(t->index);
    free(t->labels);
    free(t->px);
    t->index = NULL;
    t->labels = NULL;
    t->px = NULL;
}

/* Choose the examples of task lt (split, shots) and read them. */
static int load_task(tsr_loader *l, const tsr_suite *s, tsr_loader_task *lt) {
    const int t = lt->suite_task;
    const int64_t total = s->count[t];
    const int K = lt->num_classes;
    const char *path = s->path;
    /* 1. candidates: the examples of the split, with their labels */
    int64_t cap = 1024, nc = 0;
    int64_t *cand = tsr_malloc((size_t)cap * sizeof *cand);
    int *clab = tsr_malloc((size_t)cap * sizeof *clab);
    int64_t blk = total < SCAN_BLOCK ? total : SCAN_BLOCK;
    int *lab = tsr_malloc((size_t)(blk > 0 ? blk : 1) * sizeof *lab);
    int8_t *sp = tsr_malloc((size_t)(blk > 0 ? blk : 1));
    int64_t *sel = NULL, *per_class = NULL;
    for (int64_t b0 = 0; b0 < total; b0 += blk) {
        int64_t k = total - b0 < blk ? total - b0 : blk;
        if (tsr_suite_read(s, t, b0, k, NULL, lab, sp) != 0) goto fail;
        for (int64_t j = 0; j < k; j++) {
            if (sp[j] != l->split) continue;
            if (lab[j] < 0 || lab[j] >= K) {
                tsr_error("%s: task '%s' example %lld has label %d, expected 0 <= label < %d", path,
                          lt->name, (long long)(b0 + j), lab[j], K);
                goto fail;
            }
            if (nc == cap) {
                cap *= 2;
                cand = realloc(cand, (size_t)cap * sizeof *cand);
                clab = realloc(clab, (size_t)cap * sizeof *clab);
                if (!cand || !clab) tsr_fatal("out of memory (loader candidates)");
            }
            cand[nc] = b0 + j;
            clab[nc] = lab[j];
            nc++;
        }
    }
    free(lab);
    free(sp);
    lab = NULL;
    sp = NULL;
    if (nc == 0) {
        tsr_error("%s: task '%s' has no examples in the %s split (split = %d)", path, lt->name,
                  SPLIT_NAMES[l->split], l->split);
        goto fail;
    }

    /* 2. the k-shot draw: per class, a partial Fisher-Yates shuffle of its candidates (in file
     * order) seeded by (seed, task name, class) */
    int64_t nsel = nc;
    if (l->shots > 0) {
        per_class = tsr_calloc((size_t)K, sizeof *per_class);
        for (int64_t j = 0; j < nc; j++) per_class[clab[j]]++;
        for (int c = 0; c < K; c++)
            if (per_class[c] < l->shots) {
                tsr_error("%s: task '%s': class %d ('%s') has %lld examples in the %s split, fewer "
                          "than shots = %d",
                          path, lt->name, c, s->class_names[(size_t)t * (size_t)s->max_classes + (size_t)c],
                          (long long)per_class[c], SPLIT_NAMES[l->split], l->shots);
                goto fail;
            }
        nsel = (int64_t)K * l->shots;
        sel = tsr_malloc((size_t)nsel * sizeof *sel);
        /* candidates grouped by class (a counting sort keeps the file order within a class) */
        int64_t *pool = tsr_malloc((size_t)nc * sizeof *pool), out = 0;
        int64_t *off = tsr_malloc(((size_t)K + 1) * sizeof *off);
        off[0] = 0;
        for (int c = 0; c < K; c++) off[c + 1] = off[c] + per_class[c];
        for (int64_t j = 0; j < nc; j++) pool[off[clab[j]]++] = cand[j];
        for (int c = K; c > 0; c--) off[c] = off[c - 1]; /* back to the class starts */
        off[0] = 0;
        for (int c = 0; c < K; c++) {
            int64_t m = per_class[c], *pc = pool + off[c];
            tsr_rng r;
            tsr_rng_seed(&r, mix(l->seed, lt->name_hash, SEED_SHOTS, (uint64_t)c));
            for (int64_t q = 0; q < l->shots; q++) {
                int64_t z = q + (int64_t)below(&r, (uint64_t)(m - q));
                int64_t tmp = pc[q];
                pc[q] = pc[z];
                pc[z] = tmp;
                sel[out++] = pc[q];
            }
        }
        free(off);
        free(pool);
        qsort(sel, (size_t)nsel, sizeof *sel, cmp_i64);
    } else {
        sel = cand;
        cand = NULL;
    }

    /* 3. labels of the kept examples (candidates are in ascending order) */
    lt->n = nsel;
    lt->index = sel;
    sel = NULL;
    lt->labels = tsr_malloc((size_t)nsel * sizeof *lt->labels);
    if (!cand) {
        memcpy(lt->labels, clab, (size_t)nsel * sizeof *lt->labels);
    } else {
        int64_t q = 0;
        for (int64_t j = 0; j < nc && q < nsel; j++)
            if (cand[j] == lt->index[q]) lt->labels[q++] = clab[j];
    }
    free(cand);
    free(clab);
    free(per_class);
    cand = NULL;
    clab = NULL;
    per_class = NULL;

    /* 4. pixels: windows of at most READ_BYTES from the first unread kept example to the last kept
     * example inside the window, so that a sparse draw reads little and a dense one reads in large
     * pieces */
    const size_t img = (size_t)s->H * (size_t)s->W * (size_t)s->C;
    lt->px = tsr_malloc((size_t)nsel * img);
    int64_t win = (int64_t)(READ_BYTES / img);
    if (win < 1) win = 1;
    uint8_t *wbuf = tsr_malloc((size_t)win * img);
    for (int64_t q = 0; q < nsel;) {
        int64_t a = lt->index[q], e = q;
        while (e + 1 < nsel && lt->index[e + 1] < a + win) e++;
        int64_t cnt = lt->index[e] - a + 1;
        if (tsr_suite_read(s, t, a, cnt, wbuf, NULL, NULL) != 0) {
            free(wbuf);
            goto fail;
        }
        for (; q <= e; q++)
            memcpy(lt->px + (size_t)q * img, wbuf + (size_t)(lt->index[q] - a) * img, img);
    }
    free(wbuf);
    return 0;

fail:
    free(cand);
    free(clab);
    free(lab);
    free(sp);
    free(sel);
    free(per_class);
    free_task(lt);
    return -1;
}

int tsr_loader_open(tsr_loader *l, const tsr_suite *s, const int *tasks, int ntasks,
                    const tsr_loader_opts *o) {
    memset(l, 0, sizeof *l);
    if (!s || s->ncid < 0) return tsr_error("loader: the suite is not open");
    if (!o) return tsr_error("%s: loader: no options", s->path);
    if (ntasks < 1 || !tasks) return tsr_error("%s: loader: no tasks selected", s->path);
    for (int i = 0; i < ntasks; i++) {
        if (tasks[i] < 0 || tasks[i] >= s->ntasks)
            return tsr_error("%s: loader: task index %d does not exist (the suite has %d tasks)",
                             s->path, tasks[i], s->ntasks);
        for (int j = 0; j < i; j++)
            if (tasks[j] == tasks[i])
                return tsr_error("%s: loader: task '%s' selected twice", s->path,
                                 s->task_names[tasks[i]]);
        if (s->num_classes[tasks[i]] < 1)
            return tsr_error("%s: loader: task '%s' has no classes (a file without labels?)",
                             s->path, s->task_names[tasks[i]]);
    }
    if (o->shots < 0) return tsr_error("%s: loader: shots = %d, expected >= 0", s->path, o->shots);
    if (o->split < 0 || o->split > 2)
        return tsr_error("%s: loader: split = %d, expected 0 (train), 1 (val) or 2 (test)", s->path,
                         o->split);
    int S = o->out_size;
    if (S < 0 || S > 65536)
        return tsr_error("%s: loader: out_size = %d, expected 0 (the suite's image size) or 1 to "
                         "65536",
                         s->path, S);
    if (S == 0) {
        if (s->H != s->W)
            return tsr_error("%s: loader: out_size = 0 needs square images, the suite's are %d x "
                             "%d (height x width): give out_size",
                             s->path, s->H, s->W);
        S = s->H;
    }
    if (!o->mean != !o->std)
        return tsr_error("%s: loader: mean and std must both be given or both be NULL", s->path);
    const int C = s->C;
    float *lut = tsr_malloc((size_t)C * 256 * sizeof *lut);
    for (int c = 0; c < C; c++) {
        float m = o->mean ? o->mean[c] : 0.0f, sd = o->std ? o->std[c] : 1.0f;
        if (!isfinite(m) || !isfinite(sd) || sd == 0.0f) {
            free(lut);
            return tsr_error("%s: loader: channel %d has mean %g and std %g; the std must be finite "
                             "and non-zero and the mean finite",
                             s->path, c, (double)m, (double)sd);
        }
        for (int p = 0; p < 256; p++) lut[c * 256 + p] = ((float)p / 255.0f - m) / sd;
    }
    l->lut = lut;
    l->H = s->H;
    l->W = s->W;
    l->C = C;
    l->S = S;
    l->shots = o->shots;
    l->split = o->split;
    l->seed = o->seed;
    l->t = tsr_calloc((size_t)ntasks, sizeof *l->t);
    l->ntasks = ntasks;
    for (int i = 0; i < ntasks; i++) {
        tsr_loader_task *lt = &l->t[i];
        lt->suite_task = tasks[i];
        memcpy(lt->name, s->task_names[tasks[i]], TSR_NAME_MAX);
        lt->num_classes = s->num_classes[tasks[i]];
        lt->name_hash = tsr_hash_str(lt->name);
        if (load_task(l, s, lt) != 0) {
            tsr_loader_close(l);
            return -1;
        }
    }
    return 0;
}

void tsr_loader_close(tsr_loader *l) {
    if (!l) return;
    for (int i = 0; l->t && i < l->ntasks; i++) free_task(&l->t[i]);
    free(l->t);
    free(l->lut);
    memset(l, 0, sizeof *l);
}

int64_t tsr_loader_count(const tsr_loader *l, int i) {
    if (!l || !l->t || i < 0 || i >= l->ntasks)
        return tsr_error("loader: task %d does not exist (%d selected)", i, l ? l->ntasks : 0);
    return l->t[i].n;
}

/* Example j of task lt into out (C, S, S): the H x W image centre-cropped to S x S, or centre-padded
 * with black (pixel 0) where it is smaller, normalised through the lookup table. */
static void render(const tsr_loader *l, const tsr_loader_task *lt, int64_t j, float *out) {
    const int H = l->H, W = l->W, C = l->C, S = l->S;
    const int oy = (H - S) / 2, ox = (W - S) / 2; /* negative: the image is padded */
    const uint8_t *src = lt->px + (size_t)j * (size_t)H * (size_t)W * (size_t)C;
    const size_t SS = (size_t)S * (size_t)S;
    for (int y = 0; y < S; y++) {
        int sy = y + oy;
        for (int x = 0; x < S; x++) {
            int sx = x + ox;
            float *o = out + (size_t)y * (size_t)S + (size_t)x;
            if (sy < 0 || sy >= H || sx < 0 || sx >= W) {
                for (int c = 0; c < C; c++) o[(size_t)c * SS] = l->lut[c * 256];
            } else {
                const uint8_t *p = src + ((size_t)sy * (size_t)W + (size_t)sx) * (size_t)C;
                for (int c = 0; c < C; c++) o[(size_t)c * SS] = l->lut[c * 256 + p[c]];
            }
        }
    }
}

int tsr_loader_get(const tsr_loader *l, int i, int64_t j, float *x, int *label) {
    if (!l || !l->t) return tsr_error("loader: not open");
    if (i < 0 || i >= l->ntasks)
        return tsr_error("loader: task %d does not exist (%d selected)", i, l->ntasks);
    const tsr_loader_task *lt = &l->t[i];
    if (j < 0 || j >= lt->n)
        return tsr_error("loader: task '%s' has %lld examples, example %lld requested", lt->name,
                         (long long)lt->n, (long long)j);
    if (!x) return tsr_error("loader: no output buffer");
    render(l, lt, j, x);
    if (label) *label = lt->labels[j];
    return 0;
}
