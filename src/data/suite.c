/* suite.c: multi-task datasets, schema "tessera-dataset-2" (see suite.h and docs/DATASET_SCHEMA.md).
 * The variable checks, attribute reading and atomic writing are the helpers of dataset_nc.c. */
#define _POSIX_C_SOURCE 200809L
#include "suite.h"

#include "core/common.h"
#include "data/dataset_nc.h"

#include <limits.h>
#include <netcdf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Examples per block when checking or writing the per-example variables. */
#define BLOCK_1D 65536
/* Limits that keep the metadata arrays small (they are read whole). */
#define MAX_TASKS (1 << 16)
#define MAX_CLASSES (1 << 20)
#define MAX_NAME_CELLS ((size_t)1 << 28) /* ntasks * max_classes * name_strlen bytes */

/* Check a netCDF call inside a function that has `path` and a `fail:` label. */
#define NC_TRY(call, ...)                                                                          \
    do {                                                                                           \
        int nc_st_ = (call);                                                                       \
        if (nc_st_ != NC_NOERR) {                                                                  \
            tsr_nc_err(path, nc_st_, __VA_ARGS__);                                                 \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

#define S2 TSR_SUITE_SCHEMA
static const tsr_nc_var_spec SPEC_IMAGES = {"images", NC_UBYTE, 4, {"example", "y", "x", "channel"}, NULL};
static const tsr_nc_var_spec SPEC_LABELS = {"labels", NC_INT, 1, {"example"}, NULL};
static const tsr_nc_var_spec SPEC_SPLIT = {"split", NC_BYTE, 1, {"example"}, NULL};
static const tsr_nc_var_spec SPEC_TASK = {"task", NC_INT, 1, {"example"}, NULL};
static const tsr_nc_var_spec SPEC_TASK_NAMES = {"task_names", NC_CHAR, 2, {"task", NULL}, "name_strlen"};
static const tsr_nc_var_spec SPEC_NUM_CLASSES = {"task_num_classes", NC_INT, 1, {"task"}, NULL};
static const tsr_nc_var_spec SPEC_FIRST = {"task_first", NC_INT64, 1, {"task"}, NULL};
static const tsr_nc_var_spec SPEC_COUNT = {"task_count", NC_INT64, 1, {"task"}, NULL};
static const tsr_nc_var_spec SPEC_CLASS_NAMES = {"class_names", NC_CHAR, 3, {"task", "class", NULL},
                                                 "name_strlen"};

/* ------------------------------------------------------------------ open / close */

static void free_arrays(tsr_suite *s) {
    free(s->task_names);
    free(s->num_classes);
    free(s->first);
    free(s->count);
    free(s->class_names);
    s->task_names = NULL;
    s->num_classes = NULL;
    s->first = NULL;
    s->count = NULL;
    s->class_names = NULL;
}

static void alloc_arrays(tsr_suite *s) {
    size_t nt = (size_t)s->ntasks;
    s->task_names = tsr_calloc(nt, sizeof *s->task_names);
    s->num_classes = tsr_calloc(nt, sizeof *s->num_classes);
    s->first = tsr_calloc(nt, sizeof *s->first);
    s->count = tsr_calloc(nt, sizeof *s->count);
    s->class_names = tsr_calloc(nt * (size_t)s->max_classes, sizeof *s->class_names);
}

/* Copy a fixed-width NC_CHAR name (NUL-padded; trailing blanks ignored) into out. Returns its length,
 * or -1 if it does not fit in TSR_NAME_MAX - 1 bytes. */
static int take_name(const char *src, size_t width, char out[TSR_NAME_MAX]) {
    size_t len = 0;
    while (len < width && src[len]) len++;
    while (len > 0 && src[len - 1] == ' ') len--;
    if (len >= TSR_NAME_MAX) return -1;
    memcpy(out, src, len);
    out[len] = 0;
    return (int)len;
}

/* A single-task file of schema tessera-dataset-1, through dataset_nc.c's checks. */
static int open_v1(tsr_suite *s, const char *path) {
    tsr_nc_dataset d;
    if (tsr_nc_dataset_open_unprobed(&d, path) != 0) return -1; /* tsr_suite_open probed it */
    s->version = 1;
    s->ntasks = 1;
    s->H = d.height;
    s->W = d.width;
    s->C = d.channels;
    s->n_examples = d.n_examples;
    s->max_classes = d.n_classes > 0 ? d.n_classes : 1;
    alloc_arrays(s);
    size_t tl = strlen(d.task_name);
    if (tl >= TSR_NAME_MAX) {
        tsr_warn("%s: task_name \"%s\" is longer than %d bytes; the suite reader uses its first %d",
                 path, d.task_name, TSR_NAME_MAX - 1, TSR_NAME_MAX - 1);
        tl = TSR_NAME_MAX - 1;
        while (tl > 0 && ((unsigned char)d.task_name[tl] & 0xC0) == 0x80) tl--; /* UTF-8 boundary */
    }
    memcpy(s->task_names[0], d.task_name, tl);
    s->task_names[0][tl] = 0;
    s->num_classes[0] = d.n_classes;
    s->first[0] = 0;
    s->count[0] = d.n_examples;
    for (int k = 0; k < d.n_classes; k++)
        if (tsr_nc_dataset_class_name(&d, k, s->class_names[k], TSR_NAME_MAX) != 0) {
            tsr_nc_dataset_close(&d);
            free_arrays(s);
            return -1;
        }
    s->ncid = d.ncid;
    return 0;
}

typedef struct {
    int64_t first, count;
    int t;
} range_t;

static int cmp_range(const void *a, const void *b) {
    const range_t *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->count != y->count) return x->count < y->count ? -1 : 1;
    return x->t - y->t;
}

/* Read a whole 1-D or 2-D/3-D metadata variable (small by the limits above). */
static int get_all(int ncid, int vid, const char *path, const char *name, nc_type t, void *out) {
    int st;
    switch (t) {
    case NC_INT: st = nc_get_var_int(ncid, vid, out); break;
    case NC_INT64: st = nc_get_var_longlong(ncid, vid, out); break;
    default: st = nc_get_var_text(ncid, vid, out); break;
    }
    if (st != NC_NOERR) return tsr_nc_err(path, st, "reading variable '%s'", name);
    return 0;
}

/* The checks of every example, in blocks: task id, label range, split value. */
static int check_examples(tsr_suite *s, int ncid, const range_t *sorted, int v_task, int v_lab,
                          int v_split) {
    const char *path = s->path;
    const int64_t n = s->n_examples;
    size_t block = n < BLOCK_1D ? (size_t)(n > 0 ? n : 1) : BLOCK_1D;
    int *tk = tsr_malloc(block * sizeof *tk), *lab = tsr_malloc(block * sizeof *lab);
    signed char *sp = tsr_malloc(block);
    int rc = -1, r = 0;
    for (int64_t b0 = 0; b0 < n; b0 += (int64_t)block) {
        size_t st0 = (size_t)b0, k = (size_t)(n - b0) < block ? (size_t)(n - b0) : block;
        int st;
        if ((st = nc_get_vara_int(ncid, v_task, &st0, &k, tk)) != NC_NOERR) {
            tsr_nc_err(path, st, "reading variable 'task' (examples %lld..%lld)", (long long)b0,
                       (long long)(b0 + (int64_t)k - 1));
            goto done;
        }
        if ((st = nc_get_vara_int(ncid, v_lab, &st0, &k, lab)) != NC_NOERR) {
            tsr_nc_err(path, st, "reading variable 'labels' (examples %lld..%lld)", (long long)b0,
                       (long long)(b0 + (int64_t)k - 1));
            goto done;
        }
        if ((st = nc_get_vara_schar(ncid, v_split, &st0, &k, sp)) != NC_NOERR) {
            tsr_nc_err(path, st, "reading variable 'split' (examples %lld..%lld)", (long long)b0,
                       (long long)(b0 + (int64_t)k - 1));
            goto done;
        }
        for (size_t j = 0; j < k; j++) {
            int64_t i = b0 + (int64_t)j;
            while (sorted[r].first + sorted[r].count <= i) r++; /* ranges tile [0, n) */
            int t = sorted[r].t;
            const char *tn = s->task_names[t];
            if (tk[j] != t) {
                tsr_error("%s: variable 'task': example %lld has task %d, expected %d: the example "
                          "lies in the range [%lld, %lld) of task '%s' given by task_first and "
                          "task_count",
                          path, (long long)i, tk[j], t, (long long)s->first[t],
                          (long long)(s->first[t] + s->count[t]), tn);
                goto done;
            }
            if (lab[j] < 0 || lab[j] >= s->num_classes[t]) {
                tsr_error("%s: variable 'labels': example %lld (task '%s', example %lld of the "
                          "task) has value %d, expected 0 <= label < %d (task_num_classes of the "
                          "task)",
                          path, (long long)i, tn, (long long)(i - s->first[t]), lab[j],
                          s->num_classes[t]);
                goto done;
            }
            if (sp[j] < 0 || sp[j] > 2) {
                tsr_error("%s: variable 'split': example %lld (task '%s') has value %d, expected 0 "
                          "(train), 1 (val) or 2 (test)",
                          path, (long long)i, tn, sp[j]);
                goto done;
            }
        }
    }
    rc = 0;
done:
    free(tk);
    free(lab);
    free(sp);
    return rc;
}

static int validate_v2(tsr_suite *s, int ncid) {
    const char *path = s->path;
    size_t len[TSR_NC_SPEC_MAX_DIMS] = {0};
    int v_img, v_lab, v_split, v_task, v_tn, v_nc, v_first, v_count, v_cn;
    s->version = 2;

    if (tsr_nc_check_var(ncid, path, &SPEC_IMAGES, S2, 1, &v_img, len) != 0) return -1;
    if (tsr_nc_check_image_size(path, len[1], len[2], len[3]) != 0) return -1;
    if (len[0] > (size_t)INT64_MAX)
        return tsr_error("%s: dimension 'example' is too long (%zu)", path, len[0]);
    size_t bytes;
    if (tsr_size_mul(len[0], len[1] * len[2] * len[3], &bytes) != 0 || bytes > (size_t)INT64_MAX)
        return tsr_error("%s: dimension 'example' has %zu examples of %zux%zux%zu bytes: more image data than "
                         "this machine can address; refusing the file",
                         path, len[0], len[1], len[2], len[3]);
    s->n_examples = (int64_t)len[0];
    s->H = (int)len[1];
    s->W = (int)len[2];
    s->C = (int)len[3];
    tsr_nc_tune_chunk_cache(ncid, v_img);
    if (tsr_nc_check_var(ncid, path, &SPEC_LABELS, S2, 1, &v_lab, NULL) != 0) return -1;
    if (tsr_nc_check_var(ncid, path, &SPEC_SPLIT, S2, 1, &v_split, NULL) != 0) return -1;
    if (tsr_nc_check_var(ncid, path, &SPEC_TASK, S2, 1, &v_task, NULL) != 0) return -1;

    if (tsr_nc_check_var(ncid, path, &SPEC_TASK_NAMES, S2, 1, &v_tn, len) != 0) return -1;
    size_t nt = len[0], tn_len = len[1];
    if (nt < 1 || nt > MAX_TASKS)
        return tsr_error("%s: dimension 'task' has length %zu, expected 1 to %d", path, nt,
                         MAX_TASKS);
    if (tsr_nc_check_var(ncid, path, &SPEC_NUM_CLASSES, S2, 1, &v_nc, NULL) != 0) return -1;
    if (tsr_nc_check_var(ncid, path, &SPEC_FIRST, S2, 1, &v_first, NULL) != 0) return -1;
    if (tsr_nc_check_var(ncid, path, &SPEC_COUNT, S2, 1, &v_count, NULL) != 0) return -1;
    if (tsr_nc_check_var(ncid, path, &SPEC_CLASS_NAMES, S2, 1, &v_cn, len) != 0) return -1;
    size_t ncls = len[1], cn_len = len[2];
    if (ncls < 1 || ncls > MAX_CLASSES)
        return tsr_error("%s: dimension 'class' has length %zu, expected 1 to %d (the largest "
                         "number of classes of a task)",
                         path, ncls, MAX_CLASSES);
    if (tn_len > MAX_NAME_CELLS / nt || cn_len > MAX_NAME_CELLS / nt / ncls)
        return tsr_error("%s: variables 'task_names' / 'class_names' are too large (%zu tasks, %zu "
                         "classes, names of %zu and %zu bytes)",
                         path, nt, ncls, tn_len, cn_len);
    s->ntasks = (int)nt;
    s->max_classes = (int)ncls;
    alloc_arrays(s);

    /* task names */
    size_t buf_len = nt * tn_len > nt * ncls * cn_len ? nt * tn_len : nt * ncls * cn_len;
    char *buf = tsr_malloc(buf_len + 1);
    if (tn_len > 0 && get_all(ncid, v_tn, path, "task_names", NC_CHAR, buf) != 0) goto fail;
    for (size_t t = 0; t < nt; t++) {
        int l = tn_len ? take_name(buf + t * tn_len, tn_len, s->task_names[t]) : 0;
        if (l < 0) {
            tsr_error("%s: variable 'task_names': the name of task %zu is longer than %d bytes",
                      path, t, TSR_NAME_MAX - 1);
            goto fail;
        }
        if (l == 0) {
            tsr_error("%s: variable 'task_names': task %zu has an empty name", path, t);
            goto fail;
        }
        for (size_t u = 0; u < t; u++)
            if (strcmp(s->task_names[u], s->task_names[t]) == 0) {
                tsr_error("%s: variable 'task_names': tasks %zu and %zu are both named '%s' (task "
                          "names must be unique)",
                          path, u, t, s->task_names[t]);
                goto fail;
            }
    }
    /* class counts */
    if (get_all(ncid, v_nc, path, "task_num_classes", NC_INT, s->num_classes) != 0) goto fail;
    for (size_t t = 0; t < nt; t++)
        if (s->num_classes[t] < 1 || s->num_classes[t] > s->max_classes) {
            tsr_error("%s: variable 'task_num_classes': task %zu ('%s') has %d classes, expected "
                      "1 <= num_classes <= %d (the length of dimension 'class')",
                      path, t, s->task_names[t], s->num_classes[t], s->max_classes);
            goto fail;
        }
    /* class names */
    if (cn_len > 0 && get_all(ncid, v_cn, path, "class_names", NC_CHAR, buf) != 0) goto fail;
    for (size_t t = 0; t < nt; t++)
        for (int k = 0; k < s->num_classes[t]; k++) {
            char *dst = s->class_names[t * ncls + (size_t)k];
            int l = cn_len ? take_name(buf + (t * ncls + (size_t)k) * cn_len, cn_len, dst) : 0;
            if (l < 0) {
                tsr_error("%s: variable 'class_names': class %d of task '%s' is longer than %d "
                          "bytes",
                          path, k, s->task_names[t], TSR_NAME_MAX - 1);
                goto fail;
            }
            if (l == 0) snprintf(dst, TSR_NAME_MAX, "%d", k);
        }
    free(buf);
    buf = NULL;

    /* task ranges: in bounds, then sorted by first they must tile [0, n) */
    _Static_assert(sizeof(long long) == sizeof(int64_t), "int64_t is long long");
    if (get_all(ncid, v_first, path, "task_first", NC_INT64, s->first) != 0) goto fail;
    if (get_all(ncid, v_count, path, "task_count", NC_INT64, s->count) != 0) goto fail;
    const int64_t n = s->n_examples;
    for (size_t t = 0; t < nt; t++) {
        int64_t f = s->first[t], c = s->count[t];
        if (f < 0 || c < 0 || f > n || c > n - f) {
            tsr_error("%s: variables 'task_first' and 'task_count': task %zu ('%s') has first %lld "
                      "and count %lld, outside the %lld examples (dimension 'example')",
                      path, t, s->task_names[t], (long long)f, (long long)c, (long long)n);
            goto fail;
        }
    }
    range_t *sorted = tsr_malloc((nt + 1) * sizeof *sorted);
    for (size_t t = 0; t < nt; t++) sorted[t] = (range_t){s->first[t], s->count[t], (int)t};
    qsort(sorted, nt, sizeof *sorted, cmp_range);
    int64_t pos = 0;
    int prev = -1;
    for (size_t i = 0; i < nt; i++) {
        const range_t *r = &sorted[i];
        if (r->count == 0) continue;
        if (r->first < pos) {
            tsr_error("%s: variables 'task_first' and 'task_count': the examples of tasks '%s' "
                      "[%lld, %lld) and '%s' [%lld, %lld) overlap (each example belongs to one "
                      "task)",
                      path, s->task_names[prev], (long long)s->first[prev],
                      (long long)(s->first[prev] + s->count[prev]), s->task_names[r->t],
                      (long long)r->first, (long long)(r->first + r->count));
            free(sorted);
            goto fail;
        }
        if (r->first > pos) {
            tsr_error("%s: variables 'task_first' and 'task_count': examples [%lld, %lld) belong "
                      "to no task (the task ranges must cover every example)",
                      path, (long long)pos, (long long)r->first);
            free(sorted);
            goto fail;
        }
        pos = r->first + r->count;
        prev = r->t;
    }
    if (pos < n) {
        tsr_error("%s: variables 'task_first' and 'task_count': examples [%lld, %lld) belong to "
                  "no task (the task ranges must cover every example)",
                  path, (long long)pos, (long long)n);
        free(sorted);
        goto fail;
    }
    /* the walk in check_examples uses the non-empty ranges, which now tile [0, n) */
    size_t m = 0;
    for (size_t i = 0; i < nt; i++)
        if (sorted[i].count > 0) sorted[m++] = sorted[i];
    sorted[m] = (range_t){n, INT64_MAX / 2, 0};
    int rc = check_examples(s, ncid, sorted, v_task, v_lab, v_split);
    free(sorted);
    if (rc != 0) goto fail;
    return 0;

fail:
    free(buf);
    return -1;
}

/* After a failed open: free, zero everything but the path, ncid = -1; returns -1. */
static int reset_failed(tsr_suite *s) {
    free_arrays(s);
    char keep[sizeof s->path];
    memcpy(keep, s->path, sizeof keep);
    memset(s, 0, sizeof *s);
    memcpy(s->path, keep, sizeof keep);
    s->ncid = -1;
    return -1;
}

static int suite_open_unprobed(tsr_suite *s, const char *path);

static int check_suite(const char *path) {
    tsr_suite s;
    if (suite_open_unprobed(&s, path) != 0) return -1;
    tsr_suite_close(&s);
    return 0;
}

/* The file is first opened and validated in a forked child (tsr_nc_probe): a file that crashes HDF5 is
 * refused with a message instead of taking this process (and its MPI job) down. */
int tsr_suite_open(tsr_suite *s, const char *path) {
    memset(s, 0, sizeof *s);
    s->ncid = -1;
    if (path && path[0] && tsr_nc_probe(path, check_suite) != 0) return -1;
    return suite_open_unprobed(s, path);
}

static int suite_open_unprobed(tsr_suite *s, const char *path) {
    memset(s, 0, sizeof *s);
    s->ncid = -1;
    if (!path || !path[0]) return tsr_error("suite: no file name given");
    if (strlen(path) >= sizeof s->path)
        return tsr_error("%s: file name too long (at most %zu bytes)", path, sizeof s->path - 1);
    strcpy(s->path, path);
    int ncid, found;
    if (tsr_nc_open_read(path, &ncid) != 0) return -1;
    char schema[256];
    if (tsr_nc_check_format(ncid, path) != 0 ||
        tsr_nc_get_text_att(ncid, NC_GLOBAL, path, "tessera_schema", schema, sizeof schema,
                            &found) != 0) {
        nc_close(ncid);
        return -1;
    }
    if (!found) {
        nc_close(ncid);
        return tsr_error("%s: no global attribute 'tessera_schema' (expected \"%s\" or \"%s\"); is "
                         "this a tessera dataset?",
                         path, TSR_SUITE_SCHEMA, TSR_NC_DATASET_SCHEMA);
    }
    if (strcmp(schema, TSR_NC_DATASET_SCHEMA) == 0) {
        nc_close(ncid);
        if (open_v1(s, path) != 0) return reset_failed(s);
        return 0;
    }
    if (strcmp(schema, TSR_SUITE_SCHEMA) != 0) {
        nc_close(ncid);
        return tsr_error("%s: global attribute 'tessera_schema' is \"%s\", expected \"%s\" (or "
                         "\"%s\")",
                         path, schema, TSR_SUITE_SCHEMA, TSR_NC_DATASET_SCHEMA);
    }
    if (validate_v2(s, ncid) != 0) {
        nc_close(ncid);
        return reset_failed(s);
    }
    s->ncid = ncid;
    return 0;
}

void tsr_suite_close(tsr_suite *s) {
    if (!s) return;
    tsr_nc_close_file(&s->ncid, s->path);
    free_arrays(s);
}

int tsr_suite_find_task(const tsr_suite *s, const char *name) {
    if (!s || !name || !s->task_names) return -1;
    for (int t = 0; t < s->ntasks; t++)
        if (strcmp(s->task_names[t], name) == 0) return t;
    return -1;
}

/* ------------------------------------------------------------------ reading */

int tsr_suite_read(const tsr_suite *s, int t, int64_t start, int64_t count, uint8_t *px, int *labels,
                   int8_t *split) {
    if (!s || s->ncid < 0) return tsr_error("suite: not open");
    if (t < 0 || t >= s->ntasks)
        return tsr_error("%s: task %d does not exist (the suite has %d tasks)", s->path, t,
                         s->ntasks);
    if (start < 0 || count < 0 || start > s->count[t] || count > s->count[t] - start)
        return tsr_error("%s: cannot read examples [%lld, %lld) of task '%s': it has %lld examples",
                         s->path, (long long)start, (long long)start + (long long)count,
                         s->task_names[t], (long long)s->count[t]);
    if (count == 0) return 0;
    const char *path = s->path;
    size_t s0 = (size_t)(s->first[t] + start), c0 = (size_t)count;
    int vid, st;
    if (px) {
        NC_TRY(nc_inq_varid(s->ncid, "images", &vid), "looking up variable 'images'");
        size_t sv[4] = {s0, 0, 0, 0}, cv[4] = {c0, (size_t)s->H, (size_t)s->W, (size_t)s->C};
        NC_TRY(nc_get_vara_uchar(s->ncid, vid, sv, cv, px),
               "reading variable 'images' (examples %lld..%lld of task '%s')", (long long)start,
               (long long)(start + count - 1), s->task_names[t]);
    }
    if (labels) {
        st = nc_inq_varid(s->ncid, "labels", &vid);
        if (st == NC_ENOTVAR)
            return tsr_error("%s: labels requested but the file has no 'labels' variable", path);
        NC_TRY(st, "looking up variable 'labels'");
        NC_TRY(nc_get_vara_int(s->ncid, vid, &s0, &c0, labels),
               "reading variable 'labels' (examples %lld..%lld of task '%s')", (long long)start,
               (long long)(start + count - 1), s->task_names[t]);
    }
    if (split) {
        st = nc_inq_varid(s->ncid, "split", &vid);
        if (st == NC_ENOTVAR && s->version == 1) {
            memset(split, TSR_SPLIT_TRAIN, (size_t)count); /* a v1 file without split: all train */
        } else {
            NC_TRY(st, "looking up variable 'split'");
            NC_TRY(nc_get_vara_schar(s->ncid, vid, &s0, &c0, (signed char *)split),
                   "reading variable 'split' (examples %lld..%lld of task '%s')", (long long)start,
                   (long long)(start + count - 1), s->task_names[t]);
        }
    }
    return 0;
fail:
    return -1;
}

int tsr_suite_attr(const tsr_suite *s, const char *key, char *buf, size_t n) {
    if (!s || s->ncid < 0) return tsr_error("suite: not open");
    if (!key || !buf || n == 0) return tsr_error("%s: suite_attr: no key or buffer", s->path);
    buf[0] = 0;
    nc_type t;
    size_t len;
    int st = nc_inq_att(s->ncid, NC_GLOBAL, key, &t, &len);
    if (st == NC_ENOTATT) return 0;
    if (st != NC_NOERR) return tsr_nc_err(s->path, st, "inquiring attribute '%s'", key);
    char *val = NULL;
    if (t == NC_CHAR) {
        val = tsr_malloc(len + 1);
        if (len > 0 && (st = nc_get_att_text(s->ncid, NC_GLOBAL, key, val)) != NC_NOERR) {
            free(val);
            return tsr_nc_err(s->path, st, "reading attribute '%s'", key);
        }
        val[len] = 0;
    } else if (t == NC_STRING && len == 1) {
        char *sv = NULL;
        if ((st = nc_get_att_string(s->ncid, NC_GLOBAL, key, &sv)) != NC_NOERR)
            return tsr_nc_err(s->path, st, "reading attribute '%s'", key);
        size_t l = sv ? strlen(sv) : 0;
        val = tsr_malloc(l + 1);
        if (l) memcpy(val, sv, l);
        val[l] = 0;
        nc_free_string(1, &sv);
    } else {
        return tsr_error("%s: attribute '%s' has type %s with %zu values, expected text", s->path,
                         key, tsr_nc_type_name(t), len);
    }
    snprintf(buf, n, "%s", val);
    free(val);
    return 1;
}

/* ------------------------------------------------------------------ writing */

static const char *const RESERVED[] = {"Conventions", "tessera_schema", "date_created", "title",
                                       "source",      "license",        "history"};

/* A netCDF attribute name as tessera accepts it: a letter or '_', then letters, digits, '_', '-',
 * '.', '+' or '@'. */
static int valid_key(const char *k) {
    if (!k || !k[0]) return 0;
    if (!((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= 'A' && k[0] <= 'Z') || k[0] == '_')) return 0;
    for (const char *p = k + 1; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.' || c == '+' || c == '@'))
            return 0;
    }
    return strlen(k) <= NC_MAX_NAME;
}

/* Label and split values of examples [0, n) of task `name` (n_classes classes); `base` is the index
 * of the first one within the task, for the message. */
static int check_task_values(const char *path, const char *name, int n_classes, int64_t base,
                             int64_t n, const int *labels, const int8_t *split) {
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= n_classes)
            return tsr_error("%s: refusing to write: task '%s' example %lld has label %d, "
                             "expected 0 <= label < %d (its number of classes)",
                             path, name, (long long)(base + i), labels[i], n_classes);
    if (split)
        for (int64_t i = 0; i < n; i++)
            if (split[i] < 0 || split[i] > 2)
                return tsr_error("%s: refusing to write: task '%s' example %lld has split %d, "
                                 "expected 0 (train), 1 (val) or 2 (test)",
                                 path, name, (long long)(base + i), split[i]);
    return 0;
}

/* Everything but the example data: image size, task and class names, counts, provenance. */
static int check_write_meta(const char *path, int H, int W, int C, int ntasks,
                            const tsr_suite_task *tasks, const tsr_suite_prov *prov) {
    if (H < 1 || W < 1 || C < 1)
        return tsr_error("%s: refusing to write: image size H=%d W=%d C=%d (each must be >= 1)",
                         path, H, W, C);
    if (tsr_nc_check_image_size(path, (size_t)H, (size_t)W, (size_t)C) != 0) return -1;
    if (ntasks < 1 || ntasks > MAX_TASKS || !tasks)
        return tsr_error("%s: refusing to write: %d tasks (expected 1 to %d)", path, ntasks,
                         MAX_TASKS);
    const size_t img = (size_t)H * (size_t)W * (size_t)C;
    int64_t total = 0;
    for (int t = 0; t < ntasks; t++) {
        const tsr_suite_task *k = &tasks[t];
        if (!k->name || !k->name[0])
            return tsr_error("%s: refusing to write: task %d has no name", path, t);
        if (strlen(k->name) >= TSR_NAME_MAX)
            return tsr_error("%s: refusing to write: the name of task %d ('%s') is longer than %d "
                             "bytes",
                             path, t, k->name, TSR_NAME_MAX - 1);
        for (int u = 0; u < t; u++)
            if (strcmp(tasks[u].name, k->name) == 0)
                return tsr_error("%s: refusing to write: tasks %d and %d are both named '%s'",
                                 path, u, t, k->name);
        if (k->num_classes < 1 || k->num_classes > MAX_CLASSES)
            return tsr_error("%s: refusing to write: task '%s' has %d classes (expected 1 to %d)",
                             path, k->name, k->num_classes, MAX_CLASSES);
        if (k->class_names)
            for (int c = 0; c < k->num_classes; c++) {
                const char *cn = k->class_names[c];
                if (!cn || !cn[0])
                    return tsr_error("%s: refusing to write: class %d of task '%s' has no name",
                                     path, c, k->name);
                if (strlen(cn) >= TSR_NAME_MAX)
                    return tsr_error("%s: refusing to write: class %d of task '%s' ('%s') has a "
                                     "name longer than %d bytes",
                                     path, c, k->name, cn, TSR_NAME_MAX - 1);
            }
        if (k->n < 0 || (uint64_t)k->n > (uint64_t)(SIZE_MAX / img) || total > INT64_MAX - k->n)
            return tsr_error("%s: refusing to write: task '%s' has %lld examples", path, k->name,
                             (long long)k->n);
        total += k->n;
    }
    if (prov) {
        if (prov->nattr < 0 || (prov->nattr > 0 && (!prov->attr_keys || !prov->attr_vals)))
            return tsr_error("%s: refusing to write: %d attributes but no key/value arrays", path,
                             prov->nattr);
        for (int i = 0; i < prov->nattr; i++) {
            const char *key = prov->attr_keys[i];
            if (!valid_key(key) || !prov->attr_vals[i])
                return tsr_error("%s: refusing to write: attribute %d has key '%s' (expected a "
                                 "letter or '_' then letters, digits, '_', '-', '.', '+', '@') or "
                                 "a NULL value",
                                 path, i, key ? key : "(null)");
            for (size_t r = 0; r < sizeof RESERVED / sizeof *RESERVED; r++)
                if (strcmp(key, RESERVED[r]) == 0)
                    return tsr_error("%s: refusing to write: attribute '%s' is written by tessera "
                                     "(give title, source, license and history as fields)",
                                     path, key);
            for (int j = 0; j < i; j++)
                if (strcmp(prov->attr_keys[j], key) == 0)
                    return tsr_error("%s: refusing to write: attribute '%s' given twice", path,
                                     key);
        }
    }
    return 0;
}

struct tsr_suite_writer {
    char path[4096], tmp[4200];
    int ncid, H, W, C, ntasks;
    int v_img, v_lab, v_split, v_task;
    int64_t total, pos; /* examples announced / appended */
    int64_t *end;       /* end[t]: one past the last example of task t */
    int *num_classes;
    char (*names)[TSR_NAME_MAX];
    int *ibuf;          /* BLOCK_1D task ids */
    signed char *bbuf;  /* BLOCK_1D zeros (split = train) */
};

static void writer_free(tsr_suite_writer *w) {
    free(w->end);
    free(w->num_classes);
    free(w->names);
    free(w->ibuf);
    free(w->bbuf);
    free(w);
}

void tsr_suite_writer_abort(tsr_suite_writer *w) {
    if (!w) return;
    if (w->ncid >= 0) nc_close(w->ncid);
    unlink(w->tmp);
    writer_free(w);
}

int tsr_suite_writer_open(tsr_suite_writer **out, const char *path, int H, int W, int C,
                          int ntasks, const tsr_suite_task *tasks, const tsr_suite_prov *prov) {
    *out = NULL;
    char tmp[4096];
    if (tsr_nc_tmp_path(path, tmp, sizeof tmp) != 0) return -1;
    if (strlen(path) >= sizeof((tsr_suite_writer *)0)->path)
        return tsr_error("%s: file name too long", path);
    if (check_write_meta(path, H, W, C, ntasks, tasks, prov) != 0) return -1;

    tsr_suite_writer *w = tsr_calloc(1, sizeof *w);
    strcpy(w->path, path);
    strcpy(w->tmp, tmp);
    w->ncid = -1;
    w->H = H;
    w->W = W;
    w->C = C;
    w->ntasks = ntasks;
    w->end = tsr_malloc((size_t)ntasks * sizeof *w->end);
    w->num_classes = tsr_malloc((size_t)ntasks * sizeof *w->num_classes);
    w->names = tsr_calloc((size_t)ntasks, sizeof *w->names);
    w->ibuf = tsr_malloc(BLOCK_1D * sizeof *w->ibuf);
    w->bbuf = tsr_calloc(BLOCK_1D, 1);
    int max_classes = 1;
    size_t name_len = 1;
    for (int t = 0; t < ntasks; t++) {
        w->total += tasks[t].n;
        w->end[t] = w->total;
        w->num_classes[t] = tasks[t].num_classes;
        strcpy(w->names[t], tasks[t].name);
        if (tasks[t].num_classes > max_classes) max_classes = tasks[t].num_classes;
        if (strlen(tasks[t].name) > name_len) name_len = strlen(tasks[t].name);
        if (tasks[t].class_names)
            for (int c = 0; c < tasks[t].num_classes; c++)
                if (strlen(tasks[t].class_names[c]) > name_len)
                    name_len = strlen(tasks[t].class_names[c]);
        if (!tasks[t].class_names) { /* "0" .. "n-1" */
            char d[16];
            size_t l = (size_t)snprintf(d, sizeof d, "%d", tasks[t].num_classes - 1);
            if (l > name_len) name_len = l;
        }
    }

    char date[64];
    tsr_nc_iso_now(date, sizeof date);
    char *history = NULL, *names = NULL;
    int ncid = -1;
    int d_ex, d_y, d_x, d_c, d_task, d_class, d_str;
    int v_tn, v_nc, v_first, v_count, v_cn;
    if (tsr_nc_create_tmp(tmp, path, &ncid) != 0) {
        writer_free(w);
        return -1;
    }
    w->ncid = ncid;
    NC_TRY(nc_def_dim(ncid, "example", NC_UNLIMITED, &d_ex), "defining dimension 'example'");
    NC_TRY(nc_def_dim(ncid, "y", (size_t)H, &d_y), "defining dimension 'y'");
    NC_TRY(nc_def_dim(ncid, "x", (size_t)W, &d_x), "defining dimension 'x'");
    NC_TRY(nc_def_dim(ncid, "channel", (size_t)C, &d_c), "defining dimension 'channel'");
    NC_TRY(nc_def_dim(ncid, "task", (size_t)ntasks, &d_task), "defining dimension 'task'");
    NC_TRY(nc_def_dim(ncid, "class", (size_t)max_classes, &d_class), "defining dimension 'class'");
    NC_TRY(nc_def_dim(ncid, "name_strlen", name_len, &d_str), "defining dimension 'name_strlen'");
    {
        int dims[4] = {d_ex, d_y, d_x, d_c};
        if (tsr_nc_def_images(ncid, path, dims, w->total, H, W, C, &w->v_img) != 0) goto fail;
    }
    {
        int vr[2] = {0, max_classes - 1};
        if (tsr_nc_def_example_var(ncid, path, "labels", NC_INT, d_ex, w->total, &w->v_lab) != 0)
            goto fail;
        if (tsr_nc_put_text(ncid, w->v_lab, path, "long_name",
                            "class label (index into the class_names of the example's task)") != 0)
            goto fail;
        NC_TRY(nc_put_att_int(ncid, w->v_lab, "valid_range", NC_INT, 2, vr),
               "writing attribute 'valid_range' of 'labels'");
    }
    if (tsr_nc_def_split(ncid, path, d_ex, w->total, &w->v_split) != 0) goto fail;
    {
        int vr[2] = {0, ntasks - 1};
        if (tsr_nc_def_example_var(ncid, path, "task", NC_INT, d_ex, w->total, &w->v_task) != 0)
            goto fail;
        if (tsr_nc_put_text(ncid, w->v_task, path, "long_name", "task index (into task_names)") !=
            0)
            goto fail;
        NC_TRY(nc_put_att_int(ncid, w->v_task, "valid_range", NC_INT, 2, vr),
               "writing attribute 'valid_range' of 'task'");
    }
    {
        int dims2[2] = {d_task, d_str}, dims3[3] = {d_task, d_class, d_str};
        NC_TRY(nc_def_var(ncid, "task_names", NC_CHAR, 2, dims2, &v_tn),
               "defining variable 'task_names'");
        if (tsr_nc_put_text(ncid, v_tn, path, "long_name", "task names") != 0) goto fail;
        NC_TRY(nc_def_var(ncid, "task_num_classes", NC_INT, 1, &d_task, &v_nc),
               "defining variable 'task_num_classes'");
        if (tsr_nc_put_text(ncid, v_nc, path, "long_name", "number of classes of the task") != 0)
            goto fail;
        NC_TRY(nc_def_var(ncid, "task_first", NC_INT64, 1, &d_task, &v_first),
               "defining variable 'task_first'");
        if (tsr_nc_put_text(ncid, v_first, path, "long_name",
                            "index of the first example of the task") != 0)
            goto fail;
        NC_TRY(nc_def_var(ncid, "task_count", NC_INT64, 1, &d_task, &v_count),
               "defining variable 'task_count'");
        if (tsr_nc_put_text(ncid, v_count, path, "long_name", "number of examples of the task") !=
            0)
            goto fail;
        NC_TRY(nc_def_var(ncid, "class_names", NC_CHAR, 3, dims3, &v_cn),
               "defining variable 'class_names'");
        if (tsr_nc_put_text(ncid, v_cn, path, "long_name", "class names of each task") != 0)
            goto fail;
    }
    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "Conventions", "CF-1.8") != 0) goto fail;
    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "tessera_schema", TSR_SUITE_SCHEMA) != 0) goto fail;
    if (prov && prov->title && tsr_nc_put_text(ncid, NC_GLOBAL, path, "title", prov->title) != 0)
        goto fail;
    if (prov && prov->source && tsr_nc_put_text(ncid, NC_GLOBAL, path, "source", prov->source) != 0)
        goto fail;
    if (prov && prov->license &&
        tsr_nc_put_text(ncid, NC_GLOBAL, path, "license", prov->license) != 0)
        goto fail;
    if (prov && prov->history) {
        size_t hl = strlen(date) + strlen(prov->history) + 3;
        history = tsr_malloc(hl);
        snprintf(history, hl, "%s: %s", date, prov->history);
        if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "history", history) != 0) goto fail;
    }
    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "date_created", date) != 0) goto fail;
    for (int i = 0; prov && i < prov->nattr; i++)
        if (tsr_nc_put_text(ncid, NC_GLOBAL, path, prov->attr_keys[i], prov->attr_vals[i]) != 0)
            goto fail;
    NC_TRY(nc_enddef(ncid), "ending define mode");

    /* per-task metadata */
    {
        long long *fi = tsr_malloc((size_t)ntasks * sizeof *fi);
        long long *co = tsr_malloc((size_t)ntasks * sizeof *co);
        for (int t = 0; t < ntasks; t++) {
            fi[t] = w->end[t] - tasks[t].n;
            co[t] = tasks[t].n;
        }
        int st1 = nc_put_var_int(ncid, v_nc, w->num_classes),
            st2 = nc_put_var_longlong(ncid, v_first, fi), st3 = nc_put_var_longlong(ncid, v_count, co);
        free(fi);
        free(co);
        NC_TRY(st1, "writing variable 'task_num_classes'");
        NC_TRY(st2, "writing variable 'task_first'");
        NC_TRY(st3, "writing variable 'task_count'");
    }
    names = tsr_calloc((size_t)ntasks * (size_t)max_classes, name_len);
    for (int t = 0; t < ntasks; t++)
        memcpy(names + (size_t)t * name_len, tasks[t].name, strlen(tasks[t].name));
    NC_TRY(nc_put_var_text(ncid, v_tn, names), "writing variable 'task_names'");
    memset(names, 0, (size_t)ntasks * (size_t)max_classes * name_len);
    for (int t = 0; t < ntasks; t++)
        for (int c = 0; c < tasks[t].num_classes; c++) {
            char d[16];
            const char *cn = d;
            if (tasks[t].class_names) cn = tasks[t].class_names[c];
            else snprintf(d, sizeof d, "%d", c);
            memcpy(names + ((size_t)t * (size_t)max_classes + (size_t)c) * name_len, cn, strlen(cn));
        }
    NC_TRY(nc_put_var_text(ncid, v_cn, names), "writing variable 'class_names'");
    free(names);
    free(history);
    *out = w;
    return 0;

fail:
    free(names);
    free(history);
    tsr_suite_writer_abort(w);
    return -1;
}

int tsr_suite_writer_append(tsr_suite_writer *w, int64_t n, const uint8_t *images,
                            const int *labels, const int8_t *split) {
    if (!w || w->ncid < 0) return tsr_error("suite writer: not open");
    const char *path = w->path;
    if (n < 0 || n > w->total - w->pos)
        return tsr_error("%s: refusing to write: %lld more examples, but only %lld of the %lld "
                         "announced remain",
                         path, (long long)n, (long long)(w->total - w->pos), (long long)w->total);
    if (n == 0) return 0;
    if (!images || !labels)
        return tsr_error("%s: refusing to write: %lld examples without %s", path, (long long)n,
                         images ? "labels" : "images");
    /* check the values of each task's part first */
    int t = 0;
    while (w->end[t] <= w->pos) t++;
    for (int64_t i = 0; i < n;) {
        while (w->end[t] <= w->pos + i) t++;
        int64_t k = w->end[t] - (w->pos + i) < n - i ? w->end[t] - (w->pos + i) : n - i;
        int64_t base = w->pos + i - (t > 0 ? w->end[t - 1] : 0); /* index within the task */
        if (check_task_values(path, w->names[t], w->num_classes[t], base, k, labels + i,
                              split ? split + i : NULL) != 0)
            return -1;
        i += k;
    }
    const size_t img = (size_t)w->H * (size_t)w->W * (size_t)w->C;
    const int ncid = w->ncid;
    /* images in pieces of at most ~64 MiB per call */
    size_t per = ((size_t)64 << 20) / img;
    if (per < 1) per = 1;
    for (int64_t i = 0; i < n; i += (int64_t)per) {
        size_t cnt = (size_t)(n - i) < per ? (size_t)(n - i) : per;
        size_t sv[4] = {(size_t)(w->pos + i), 0, 0, 0};
        size_t cv[4] = {cnt, (size_t)w->H, (size_t)w->W, (size_t)w->C};
        NC_TRY(nc_put_vara_uchar(ncid, w->v_img, sv, cv, images + (size_t)i * img),
               "writing variable 'images' (examples %lld..%lld)", (long long)(w->pos + i),
               (long long)(w->pos + i + (int64_t)cnt - 1));
    }
    size_t s1 = (size_t)w->pos, c1 = (size_t)n;
    NC_TRY(nc_put_vara_int(ncid, w->v_lab, &s1, &c1, labels), "writing variable 'labels'");
    for (int64_t i = 0; i < n; i += BLOCK_1D) {
        size_t cnt = (size_t)(n - i) < BLOCK_1D ? (size_t)(n - i) : BLOCK_1D;
        size_t sb = (size_t)(w->pos + i);
        int tt = 0;
        for (size_t j = 0; j < cnt; j++) {
            while (w->end[tt] <= (int64_t)sb + (int64_t)j) tt++;
            w->ibuf[j] = tt;
        }
        NC_TRY(nc_put_vara_int(ncid, w->v_task, &sb, &cnt, w->ibuf), "writing variable 'task'");
        const signed char *sp = split ? (const signed char *)split + i : w->bbuf;
        NC_TRY(nc_put_vara_schar(ncid, w->v_split, &sb, &cnt, sp), "writing variable 'split'");
    }
    w->pos += n;
    return 0;
fail:
    return -1;
}

int tsr_suite_writer_close(tsr_suite_writer *w) {
    if (!w) return tsr_error("suite writer: not open");
    if (w->pos != w->total) {
        tsr_error("%s: refusing to finish: %lld of the %lld announced examples were written",
                  w->path, (long long)w->pos, (long long)w->total);
        tsr_suite_writer_abort(w);
        return -1;
    }
    int ncid = w->ncid;
    w->ncid = -1;
    int rc = tsr_nc_finish_atomic(ncid, w->tmp, w->path);
    writer_free(w);
    return rc;
}

int tsr_suite_write(const char *path, int H, int W, int C, int ntasks, const tsr_suite_task *tasks,
                    const tsr_suite_prov *prov) {
    /* validate everything, the example data included, before creating any file */
    if (!path || !path[0]) return tsr_error("write: no file name given");
    if (check_write_meta(path, H, W, C, ntasks, tasks, prov) != 0) return -1;
    for (int t = 0; t < ntasks; t++) {
        const tsr_suite_task *k = &tasks[t];
        if (k->n > 0 && (!k->images || !k->labels))
            return tsr_error("%s: refusing to write: task '%s' has %lld examples but no %s", path,
                             k->name, (long long)k->n, k->images ? "labels" : "images");
        if (check_task_values(path, k->name, k->num_classes, 0, k->n, k->labels, k->split) != 0)
            return -1;
    }
    tsr_suite_writer *w;
    if (tsr_suite_writer_open(&w, path, H, W, C, ntasks, tasks, prov) != 0) return -1;
    for (int t = 0; t < ntasks; t++)
        if (tsr_suite_writer_append(w, tasks[t].n, tasks[t].images, tasks[t].labels,
                                    tasks[t].split) != 0) {
            tsr_suite_writer_abort(w);
            return -1;
        }
    return tsr_suite_writer_close(w);
}
