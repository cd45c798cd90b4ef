/* suite.h: multi-task image datasets ("suites") stored as netCDF-4 files (schema "tessera-dataset-2").
 *
 * A suite holds the examples of several classification tasks of one image size in one file:
 *   images            NC_UBYTE (example, y, x, channel)   pixels, channels last
 *   labels            NC_INT   (example)                  class index within the example's task
 *   split             NC_BYTE  (example)                  0 train, 1 val, 2 test
 *   task              NC_INT   (example)                  task index of the example
 *   task_names        NC_CHAR  (task, name_strlen)
 *   task_num_classes  NC_INT   (task)
 *   task_first        NC_INT64 (task)                     first example of the task
 *   task_count        NC_INT64 (task)                     number of examples of the task
 *   class_names       NC_CHAR  (task, class, name_strlen) class = the largest class count
 * The examples of task t are contiguous: [task_first[t], task_first[t] + task_count[t]), and the
 * ranges of all tasks tile [0, n_examples) exactly. The user documentation is docs/DATASET_SCHEMA.md.
 *
 * A file of the single-task schema "tessera-dataset-1" (dataset_nc.h) opens as a suite with one task
 * named by its task_name attribute (a file without `split` reads as all train; without `labels`,
 * labels cannot be read).
 *
 * netCDF/HDF5 are not thread-safe: use a suite from one thread at a time. Functions that can fail
 * return 0 on success and -1 on error with the message (naming the file, the variable, the task or
 * example and what was expected) in tsr_last_error(). */
#ifndef TSR_SUITE_H
#define TSR_SUITE_H

#include <stddef.h>
#include <stdint.h>

#define TSR_SUITE_SCHEMA "tessera-dataset-2"
/* Task and class names are at most TSR_NAME_MAX - 1 bytes (UTF-8), NUL-terminated. */
#define TSR_NAME_MAX 64

typedef struct {
    char path[1024];
    int ncid;    /* -1 when not open */
    int version; /* 1 or 2: the schema of the file */
    int ntasks, H, W, C, max_classes;
    int64_t n_examples;
    char (*task_names)[TSR_NAME_MAX];  /* ntasks */
    int *num_classes;                  /* ntasks */
    int64_t *first, *count;            /* ntasks */
    char (*class_names)[TSR_NAME_MAX]; /* ntasks*max_classes: class k of task t at [t*max_classes+k] */
} tsr_suite;

/* Open and validate a suite: netCDF-4 format; the tessera_schema attribute; every variable with the
 * right type and dimensions; the task ranges in bounds, non-overlapping and covering every example;
 * the task id of every example equal to the task whose range holds it; every label in
 * [0, num_classes[task]); every split in {0,1,2} (the per-example variables are read in blocks).
 * On error the file is closed and s->ncid is -1, so tsr_suite_close(s) is always safe. */
int tsr_suite_open(tsr_suite *s, const char *path);
void tsr_suite_close(tsr_suite *s);
/* Index of the task called `name`, or -1. */
int tsr_suite_find_task(const tsr_suite *s, const char *name);
/* Examples [start, start+count) of task t (indices within the task): raw pixels (count, H, W, C),
 * labels and split values. Any output may be NULL. */
int tsr_suite_read(const tsr_suite *s, int t, int64_t start, int64_t count, uint8_t *px, int *labels,
                   int8_t *split);
/* A global text attribute (title, source, license, history, date_created or any other) into buf
 * (NUL-terminated, at most n-1 bytes). Returns 1 if found, 0 if absent (buf = ""), -1 on error. */
int tsr_suite_attr(const tsr_suite *s, const char *key, char *buf, size_t n);

/* One task to write: n examples, images n*H*W*C bytes (example, y, x, channel), labels in
 * [0, num_classes), split values in {0,1,2} (NULL = all train). class_names: num_classes names, or
 * NULL for "0", "1", ... Names are non-empty and shorter than TSR_NAME_MAX bytes. */
typedef struct {
    const char *name;
    int num_classes;
    const char *const *class_names;
    int64_t n;
    const uint8_t *images;
    const int *labels;
    const int8_t *split;
} tsr_suite_task;

/* Provenance written as global attributes. NULL members are omitted; history (the command that made
 * the file) is stored as "<date_created>: <history>". nattr free key/value text attributes follow;
 * the keys written by tessera (Conventions, tessera_schema, date_created, title, source, license,
 * history) may not be among them. prov may be NULL. */
typedef struct {
    const char *title, *source, *license, *history;
    int nattr;
    const char *const *attr_keys;
    const char *const *attr_vals;
} tsr_suite_prov;

/* Write a suite atomically (<path>.tmp.<pid>, fsync, rename). Every input is validated before any
 * file is created (image size, task and class names: non-empty, short enough, task names unique;
 * labels in range; split values; attribute keys). The tasks are stored in the order given. */
int tsr_suite_write(const char *path, int H, int W, int C, int ntasks, const tsr_suite_task *tasks,
                    const tsr_suite_prov *prov);

/* Streaming writer, for data that does not fit in memory at once: open with the tasks' names,
 * classes and counts (tasks[t].images, labels and split are not used there and may be NULL), append
 * the examples in file order (all of task 0, then task 1, ...) in pieces of any size, each checked
 * like tsr_suite_write's (labels in range, split values; split NULL = train), then close, which
 * checks that every announced example was written and renames the file into place. On an append
 * error the writer stays usable; abort removes the temporary file. close and abort free the
 * writer. tsr_suite_write is open + one append per task + close. */
typedef struct tsr_suite_writer tsr_suite_writer;
int tsr_suite_writer_open(tsr_suite_writer **w, const char *path, int H, int W, int C, int ntasks,
                          const tsr_suite_task *tasks, const tsr_suite_prov *prov);
int tsr_suite_writer_append(tsr_suite_writer *w, int64_t n, const uint8_t *images, const int *labels,
                            const int8_t *split);
int tsr_suite_writer_close(tsr_suite_writer *w);
void tsr_suite_writer_abort(tsr_suite_writer *w);

#endif
