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

#endif
