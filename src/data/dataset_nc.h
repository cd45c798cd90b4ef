/* dataset_nc.h: image datasets and model outputs stored as netCDF-4 files (schema "tessera-dataset-1").
 *
 * The schema is documented for users in docs/DATASET_SCHEMA.md. In short, a dataset file holds
 *   images       NC_UBYTE (example, y, x, channel)   required
 *   labels       NC_INT   (example)                  optional; 0 <= label < n_classes
 *   split        NC_BYTE  (example)                  optional; 0 train, 1 val, 2 test
 *   class_names  NC_CHAR  (class, name_strlen)       optional
 * plus the global attributes tessera_schema = "tessera-dataset-1" and task_name (both required) and
 * the CF attributes Conventions, title, source, license, history, date_created.
 *
 * These functions use the serial netCDF API. netCDF/HDF5 are not thread-safe: use one dataset handle
 * from one thread at a time. All functions that can fail return 0 on success and -1 on error, with
 * the message (naming the file, variable and what was expected) in tsr_last_error(). */
#ifndef TSR_DATASET_NC_H
#define TSR_DATASET_NC_H

#include <stddef.h>
#include <stdint.h>

#define TSR_NC_DATASET_SCHEMA "tessera-dataset-1"
#define TSR_NC_LOGITS_SCHEMA "tessera-logits-1"

/* Values of the `split` variable. */
enum { TSR_SPLIT_TRAIN = 0, TSR_SPLIT_VAL = 1, TSR_SPLIT_TEST = 2 };

typedef struct {
    char path[1024];
    int ncid; /* -1 when not open */
    int64_t n_examples;
    int height, width, channels, n_classes; /* n_classes: length of the `class` dimension, 0 if absent */
    char task_name[256];
    int has_labels, has_split;
} tsr_nc_dataset;

/* Open a dataset and validate it against the schema: netCDF-4 format; the tessera_schema and
 * task_name attributes; every variable present with the right type and dimensions; labels within
 * [0, n_classes) and split values in {0,1,2} (both checked in chunks over the whole file). On error
 * the file is closed and d->ncid is -1, so tsr_nc_dataset_close(d) is always safe to call. */
int tsr_nc_dataset_open(tsr_nc_dataset *d, const char *path);
void tsr_nc_dataset_close(tsr_nc_dataset *d);
/* Close an open netCDF id (>= 0), warning with the path if that fails; sets *ncid = -1. */
void tsr_nc_close_file(int *ncid, const char *path);

/* Read examples [start, start+count) as float NCHW:
 *   out[b][c][y][x] = ((float)pixel / 255 - mean[c]) / std[c]
 * (the same float arithmetic as torchvision's ToTensor + Normalize). out holds count*C*H*W floats.
 * mean and std hold `channels` values; both NULL means no normalisation (pixel / 255). labels_out
 * (count ints) may be NULL; if it is not, the dataset must have labels. */
int tsr_nc_dataset_read(const tsr_nc_dataset *d, int64_t start, int64_t count, const float *mean,
                        const float *std, float *out, int *labels_out);

/* Helpers. Raw pixels of examples [start, start+count) in file order (example, y, x, channel). */
int tsr_nc_dataset_read_raw(const tsr_nc_dataset *d, int64_t start, int64_t count, uint8_t *out);
/* Labels / split values of examples [start, start+count); the variable must be present. */
int tsr_nc_dataset_read_labels(const tsr_nc_dataset *d, int64_t start, int64_t count, int *out);
int tsr_nc_dataset_read_split(const tsr_nc_dataset *d, int64_t start, int64_t count, int8_t *out);
/* Name of class k (0 <= k < n_classes) into buf (NUL-terminated, truncated to n-1 bytes). If the file
 * has no class_names variable the name is the decimal class index. */
int tsr_nc_dataset_class_name(const tsr_nc_dataset *d, int k, char *buf, size_t n);

/* Provenance written as global attributes. task_name is required; NULL members are omitted.
 * history is the command line that made the file; it is stored as "<date_created>: <history>". */
typedef struct {
    const char *task_name, *title, *source, *license, *history;
} tsr_nc_provenance;

/* Write a dataset atomically (path.tmp.<pid>, then rename over path). images: n*h*w*c bytes in
 * (example, y, x, channel) order. labels (n ints in [0, n_classes)) and split (n values in {0,1,2})
 * may be NULL, and then those variables are omitted. class_names: n_classes strings, or NULL.
 * The `class` dimension is written when n_classes > 0; labels require n_classes >= 1. */
int tsr_nc_dataset_write(const char *path, int64_t n, int h, int w, int c, const uint8_t *images,
                         const int *labels, const int8_t *split, int n_classes,
                         const char *const *class_names, const tsr_nc_provenance *prov);

/* Write model outputs atomically: variable `logits` NC_FLOAT (example, class), n*n_classes floats
 * row-major, and nattr global attributes given as (key, value) text pairs (for example the resolved
 * configuration, the checkpoint path, the git commit). The keys Conventions, tessera_schema and
 * date_created are written by this function and may not be given. */
int tsr_nc_write_logits(const char *path, int64_t n, int n_classes, const float *logits, int nattr,
                        const char *const *attr_keys, const char *const *attr_vals);
/* As tsr_nc_write_logits, plus the optional variable `labels` NC_INT (example) when labels != NULL
 * (n values in [0, n_classes), e.g. the true labels of the examples that were predicted). */
int tsr_nc_write_logits_ex(const char *path, int64_t n, int n_classes, const float *logits,
                           const int *labels, int nattr, const char *const *attr_keys,
                           const char *const *attr_vals);

/* ------------------------------------------------------------------ shared with suite.c
 * Internal helpers of the netCDF schemas, used by dataset_nc.c and suite.c (schema
 * "tessera-dataset-2"). Not a public API. `type` arguments are nc_type values (an int in netcdf.h).
 * All return 0 / -1 with tsr_error unless said otherwise. */

#define TSR_NC_SPEC_MAX_DIMS 4
/* A variable of a schema: name, type and dimension names (NULL = any name, shown as any_dim_label). */
typedef struct {
    const char *name;
    int type;
    int ndims;
    const char *dims[TSR_NC_SPEC_MAX_DIMS];
    const char *any_dim_label;
} tsr_nc_var_spec;

/* "<path>: <what>: <nc_strerror(st)>"; returns -1. */
int tsr_nc_err(const char *path, int st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
const char *tsr_nc_type_name(int type);
const char *tsr_nc_format_name(int fmt);
/* "(example, y, x, channel)" */
void tsr_nc_spec_dims_text(const tsr_nc_var_spec *s, char *buf, size_t n);
/* nc_open read-only; the message adds a hint for "not netCDF" and "truncated or corrupt". */
int tsr_nc_open_read(const char *path, int *ncid);
/* The file must be netCDF-4 (not classic, not the netCDF-4 classic model). */
int tsr_nc_check_format(int ncid, const char *path);
/* Look up variable s->name and check its type and dimension names; *varid = -1 when absent (an
 * error only if `required`; the message names `schema`). dimlen (may be NULL) gets the lengths. */
int tsr_nc_check_var(int ncid, const char *path, const tsr_nc_var_spec *s, const char *schema,
                     int required, int *varid, size_t *dimlen);
/* Text attribute (NC_CHAR, or one NC_STRING) into buf of cap bytes; *found = 0 when absent. */
int tsr_nc_get_text_att(int ncid, int varid, const char *path, const char *name, char *buf,
                        size_t cap, int *found);
/* Every value of the 1-D integer variable (n values) in [lo, hi], read in blocks; the message
 * names the variable, the first bad example and `expected`. */
int tsr_nc_check_values(int ncid, int varid, const char *path, const char *name, size_t n, int lo,
                        int hi, const char *expected);
/* Image size limits (each >= 1, y*x*channel <= 2^30). */
int tsr_nc_check_image_size(const char *path, size_t y, size_t x, size_t c);
/* Give `images` a chunk cache for two chunks (best effort, no error). */
void tsr_nc_tune_chunk_cache(int ncid, int varid);
/* Check a netCDF input from outside before this process opens it: check(path) runs in a forked child
 * (which opens and validates the file, then exits without touching MPI or anything else of the parent).
 * 0 when the child passed; -1 with the child's own message when it refused the file; -1 with "... crashed
 * the netCDF/HDF5 library (signal ...) ...; refusing the file" when the child died by a signal (HDF5 can
 * crash on a corrupt file instead of returning an error). Inside the child, and when TESSERA_NC_CHECK=0 or
 * fork fails (a warning), nothing is checked and 0 is returned. Tests: TESSERA_FAULT_NC_CHILD_SIGNAL=N
 * makes the child raise signal N. A path that is not a regular file (a directory, a FIFO, which would block
 * the open, a device) is refused first, with or without TESSERA_NC_CHECK. */
int tsr_nc_probe(const char *path, int (*check)(const char *path));
/* tsr_nc_dataset_open without the probe (for an opener that already probed the file). */
int tsr_nc_dataset_open_unprobed(tsr_nc_dataset *d, const char *path);

/* Writing. */
void tsr_nc_iso_now(char *buf, size_t n);                         /* "2025-03-01T12:00:00Z" */
int tsr_nc_tmp_path(const char *path, char *tmp, size_t n);       /* "<path>.tmp.<pid>" */
int tsr_nc_create_tmp(const char *tmp, const char *path, int *ncid); /* nc_create netCDF-4 */
/* nc_close, then tsr_atomic_rename (fsync, rename, fsync of the directory); removes tmp on error. */
int tsr_nc_finish_atomic(int ncid, const char *tmp, const char *path);
int tsr_nc_put_text(int ncid, int varid, const char *path, const char *name, const char *val);
/* Examples per chunk of `images`: min(256, n, 16 MiB / img_bytes), at least 1. */
size_t tsr_nc_image_chunk(size_t img_bytes, int64_t n);
/* Define `images` (dims = example, y, x, channel ids) chunked, deflate 4 + shuffle, no fill, with
 * its CF attributes. */
int tsr_nc_def_images(int ncid, const char *path, const int dims[4], int64_t n, int h, int w, int c,
                      int *vid);
/* Define a 1-D per-example variable (chunks of up to 65536, deflate 4 + shuffle). */
int tsr_nc_def_example_var(int ncid, const char *path, const char *name, int type, int dim,
                           int64_t n, int *vid);
/* `labels` NC_INT (example) with long_name and valid_range [0, n_classes - 1]. */
int tsr_nc_def_labels(int ncid, const char *path, int dim, int64_t n, int n_classes, int *vid);
/* `split` NC_BYTE (example) with long_name, flag_values and flag_meanings. */
int tsr_nc_def_split(int ncid, const char *path, int dim, int64_t n, int *vid);

#endif
