/* dataset_nc.c: netCDF-4 image datasets (schema "tessera-dataset-1") and logits files.
 *
 * The schema is described by a small table of variable specifications (name, type, dimension names)
 * checked by one function. The helpers declared in the "shared with suite.c" section of dataset_nc.h
 * are also used by the multi-task schema "tessera-dataset-2" (suite.c). */
#define _POSIX_C_SOURCE 200809L
#include "dataset_nc.h"

#include "core/atomic.h"
#include "core/common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netcdf.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ limits and tuning */

/* The largest image (h*w*c bytes) accepted: one example must fit in one HDF5 chunk (< 4 GiB). */
#define MAX_IMAGE_BYTES ((size_t)1 << 30)
/* Image chunks hold at most this many examples and (when more than one example) at most this many
 * bytes, so that reading a small batch does not decompress a huge chunk. */
#define CHUNK_MAX_EXAMPLES 256
#define CHUNK_MAX_BYTES ((size_t)16 << 20)
/* Chunk length of the 1-D per-example variables (labels, split). */
#define CHUNK_1D 65536
/* Examples per block when checking labels/split on open. */
#define CHECK_BLOCK 65536
/* Bytes of raw pixels read per netCDF call in tsr_nc_dataset_read. */
#define READ_BLOCK_BYTES ((size_t)16 << 20)
/* Per-variable HDF5 chunk cache for `images` on open: room for two chunks, within these bounds. */
#define CACHE_MIN_BYTES ((size_t)16 << 20)
#define CACHE_MAX_BYTES ((size_t)256 << 20)
#define DEFLATE_LEVEL 4

/* ------------------------------------------------------------------ error helpers */

/* "<path>: <what>: <nc_strerror(st)>"; returns -1. */
int tsr_nc_err(const char *path, int st, const char *fmt, ...) {
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return tsr_error("%s: %s: %s", path, what, nc_strerror(st));
}

/* Check a netCDF call inside a function that has `path` and a `fail:` label. */
#define NC_TRY(call, ...)                                                                          \
    do {                                                                                           \
        int nc_st_ = (call);                                                                       \
        if (nc_st_ != NC_NOERR) {                                                                  \
            tsr_nc_err(path, nc_st_, __VA_ARGS__);                                                     \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

const char *tsr_nc_type_name(int t) {
    switch (t) {
    case NC_BYTE: return "NC_BYTE";
    case NC_CHAR: return "NC_CHAR";
    case NC_SHORT: return "NC_SHORT";
    case NC_INT: return "NC_INT";
    case NC_FLOAT: return "NC_FLOAT";
    case NC_DOUBLE: return "NC_DOUBLE";
    case NC_UBYTE: return "NC_UBYTE";
    case NC_USHORT: return "NC_USHORT";
    case NC_UINT: return "NC_UINT";
    case NC_INT64: return "NC_INT64";
    case NC_UINT64: return "NC_UINT64";
    case NC_STRING: return "NC_STRING";
    default: return "a user-defined type";
    }
}

const char *tsr_nc_format_name(int fmt) {
    switch (fmt) {
    case NC_FORMAT_CLASSIC: return "netCDF classic";
    case NC_FORMAT_64BIT_OFFSET: return "netCDF 64-bit offset";
    case NC_FORMAT_CDF5: return "netCDF CDF5";
    case NC_FORMAT_NETCDF4_CLASSIC: return "netCDF-4 classic model";
    case NC_FORMAT_NETCDF4: return "netCDF-4";
    default: return "an unknown format";
    }
}

/* ------------------------------------------------------------------ schema description */

#define SPEC_MAX_DIMS TSR_NC_SPEC_MAX_DIMS
typedef tsr_nc_var_spec var_spec;

static const var_spec SPEC_IMAGES = {"images", NC_UBYTE, 4, {"example", "y", "x", "channel"}, NULL};
static const var_spec SPEC_LABELS = {"labels", NC_INT, 1, {"example"}, NULL};
static const var_spec SPEC_SPLIT = {"split", NC_BYTE, 1, {"example"}, NULL};
static const var_spec SPEC_CLASS_NAMES = {"class_names", NC_CHAR, 2, {"class", NULL}, "name_strlen"};

void tsr_nc_spec_dims_text(const var_spec *s, char *buf, size_t n) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "(");
    for (int i = 0; i < s->ndims && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, "%s%s", i ? ", " : "",
                                s->dims[i] ? s->dims[i] : s->any_dim_label);
    if (off < n) snprintf(buf + off, n - off, ")");
}

/* Look up variable s->name and check its type and dimension names. *varid = -1 when absent (which
 * is an error only if `required`). On success dimlen[i] holds the dimension lengths. */
int tsr_nc_check_var(int ncid, const char *path, const tsr_nc_var_spec *s, const char *schema,
                     int required, int *varid, size_t *dimlen) {
    *varid = -1;
    char want[256];
    tsr_nc_spec_dims_text(s, want, sizeof want);
    int vid, st = nc_inq_varid(ncid, s->name, &vid);
    if (st == NC_ENOTVAR) {
        if (!required) return 0;
        return tsr_error("%s: no variable '%s' (expected %s %s, as in schema %s)", path, s->name,
                         tsr_nc_type_name(s->type), want, schema);
    }
    if (st != NC_NOERR) return tsr_nc_err(path, st, "looking up variable '%s'", s->name);
    nc_type t;
    int nd;
    int dimids[NC_MAX_VAR_DIMS];
    if ((st = nc_inq_var(ncid, vid, NULL, &t, &nd, dimids, NULL)) != NC_NOERR)
        return tsr_nc_err(path, st, "inquiring variable '%s'", s->name);
    char got[512];
    size_t off = (size_t)snprintf(got, sizeof got, "%s (", tsr_nc_type_name(t));
    int dims_ok = nd == s->ndims;
    for (int i = 0; i < nd; i++) {
        char dname[NC_MAX_NAME + 1];
        size_t len;
        if ((st = nc_inq_dim(ncid, dimids[i], dname, &len)) != NC_NOERR)
            return tsr_nc_err(path, st, "inquiring dimension %d of variable '%s'", i, s->name);
        if (off < sizeof got)
            off += (size_t)snprintf(got + off, sizeof got - off, "%s%s", i ? ", " : "", dname);
        if (i < s->ndims) {
            if (s->dims[i] && strcmp(s->dims[i], dname) != 0) dims_ok = 0;
            if (dims_ok && dimlen) dimlen[i] = len;
        }
    }
    if (off < sizeof got) snprintf(got + off, sizeof got - off, ")");
    if (t != s->type || !dims_ok)
        return tsr_error("%s: variable '%s': expected %s %s, got %s", path, s->name,
                         tsr_nc_type_name(s->type), want, got);
    *varid = vid;
    return 0;
}

/* Read a text attribute (NC_CHAR, or NC_STRING with one value) into buf. *found = 0 if absent. */
int tsr_nc_get_text_att(int ncid, int varid, const char *path, const char *name, char *buf,
                        size_t cap, int *found) {
    nc_type t;
    size_t len;
    *found = 0;
    buf[0] = 0;
    int st = nc_inq_att(ncid, varid, name, &t, &len);
    if (st == NC_ENOTATT) return 0;
    if (st != NC_NOERR) return tsr_nc_err(path, st, "inquiring attribute '%s'", name);
    if (t == NC_CHAR) {
        if (len >= cap)
            return tsr_error("%s: attribute '%s' is %zu characters long, at most %zu allowed", path,
                             name, len, cap - 1);
        if (len > 0 && (st = nc_get_att_text(ncid, varid, name, buf)) != NC_NOERR)
            return tsr_nc_err(path, st, "reading attribute '%s'", name);
        buf[len] = 0;
    } else if (t == NC_STRING && len == 1) {
        char *s = NULL;
        if ((st = nc_get_att_string(ncid, varid, name, &s)) != NC_NOERR)
            return tsr_nc_err(path, st, "reading attribute '%s'", name);
        size_t sl = s ? strlen(s) : 0;
        if (sl >= cap) {
            nc_free_string(1, &s);
            return tsr_error("%s: attribute '%s' is %zu characters long, at most %zu allowed", path,
                             name, sl, cap - 1);
        }
        if (sl) memcpy(buf, s, sl);
        buf[sl] = 0;
        nc_free_string(1, &s);
    } else {
        return tsr_error("%s: attribute '%s' has type %s with %zu values, expected text (NC_CHAR)",
                         path, name, tsr_nc_type_name(t), len);
    }
    *found = 1;
    return 0;
}

/* Check every value of the 1-D integer variable `varid` (n values) lies in [lo, hi], reading it in
 * blocks. `expected` describes the allowed values for the message. */
int tsr_nc_check_values(int ncid, int varid, const char *path, const char *name, size_t n, int lo,
                        int hi, const char *expected) {
    size_t block = n < CHECK_BLOCK ? n : CHECK_BLOCK;
    int *buf = tsr_malloc((block ? block : 1) * sizeof *buf);
    for (size_t s = 0; s < n; s += block) {
        size_t k = n - s < block ? n - s : block;
        int st = nc_get_vara_int(ncid, varid, &s, &k, buf);
        if (st != NC_NOERR) {
            free(buf);
            return tsr_nc_err(path, st, "reading variable '%s' (examples %zu..%zu)", name, s, s + k - 1);
        }
        for (size_t i = 0; i < k; i++) {
            if (buf[i] < lo || buf[i] > hi) {
                int v = buf[i];
                free(buf);
                return tsr_error("%s: variable '%s': example %zu has value %d, expected %s", path,
                                 name, s + i, v, expected);
            }
        }
    }
    free(buf);
    return 0;
}

/* Give `images` an HDF5 chunk cache large enough for two chunks, so that consecutive small batches
 * from one chunk decompress it once. Failure here only costs speed, so it is not an error. */
void tsr_nc_tune_chunk_cache(int ncid, int varid) {
    int storage;
    size_t chunks[NC_MAX_VAR_DIMS];
    if (nc_inq_var_chunking(ncid, varid, &storage, chunks) != NC_NOERR || storage != NC_CHUNKED)
        return;
    size_t bytes = 1;
    for (int i = 0; i < 4; i++)
        if (tsr_size_mul(bytes, chunks[i], &bytes) != 0) bytes = CACHE_MAX_BYTES; /* from the file: saturate */
    size_t want = 2 * bytes;
    if (want < CACHE_MIN_BYTES) want = CACHE_MIN_BYTES;
    if (want > CACHE_MAX_BYTES) want = CACHE_MAX_BYTES;
    (void)nc_set_var_chunk_cache(ncid, varid, want, 1009, 0.75f);
}

/* ------------------------------------------------------------------ open / close */

int tsr_nc_check_format(int ncid, const char *path) {
    int st, fmt;
    if ((st = nc_inq_format(ncid, &fmt)) != NC_NOERR) return tsr_nc_err(path, st, "inquiring format");
    if (fmt != NC_FORMAT_NETCDF4)
        return tsr_error("%s: is a %s file; tessera datasets must be netCDF-4 (HDF5-based, e.g. "
                         "format='NETCDF4' in netCDF4-python)",
                         path, tsr_nc_format_name(fmt));
    return 0;
}

int tsr_nc_check_image_size(const char *path, size_t y, size_t x, size_t c) {
    if (y == 0 || x == 0 || c == 0 || y > INT_MAX || x > INT_MAX || c > INT_MAX ||
        y * x > MAX_IMAGE_BYTES || y * x * c > MAX_IMAGE_BYTES)
        return tsr_error("%s: variable 'images': image size y=%zu x=%zu channel=%zu is not "
                         "supported (each must be >= 1 and y*x*channel <= %zu)",
                         path, y, x, c, MAX_IMAGE_BYTES);
    return 0;
}

int tsr_nc_open_read(const char *path, int *ncid) {
    int st = nc_open(path, NC_NOWRITE, ncid);
    if (st != NC_NOERR) {
        const char *hint = "";
        if (st == NC_ENOTNC) hint = " (not a netCDF file)";
        if (st == NC_EHDFERR) hint = " (the HDF5 layer could not read it: truncated or corrupt?)";
        *ncid = -1;
        return tsr_error("%s: cannot open dataset: %s%s", path, nc_strerror(st), hint);
    }
    return 0;
}

static int validate(tsr_nc_dataset *d, int ncid) {
    const char *path = d->path;
    int st, found;
    if (tsr_nc_check_format(ncid, path) != 0) return -1;

    char schema[256];
    if (tsr_nc_get_text_att(ncid, NC_GLOBAL, path, "tessera_schema", schema, sizeof schema, &found) != 0)
        return -1;
    if (!found)
        return tsr_error("%s: no global attribute 'tessera_schema' (expected \"%s\"); is this a "
                         "tessera dataset?",
                         path, TSR_NC_DATASET_SCHEMA);
    if (strcmp(schema, TSR_NC_DATASET_SCHEMA) != 0)
        return tsr_error("%s: global attribute 'tessera_schema' is \"%s\", expected \"%s\"", path,
                         schema, TSR_NC_DATASET_SCHEMA);
    if (tsr_nc_get_text_att(ncid, NC_GLOBAL, path, "task_name", d->task_name, sizeof d->task_name,
                     &found) != 0)
        return -1;
    if (!found || !d->task_name[0])
        return tsr_error("%s: global attribute 'task_name' is missing or empty (required by %s)",
                         path, TSR_NC_DATASET_SCHEMA);

    int vid;
    size_t len[SPEC_MAX_DIMS] = {0};
    if (tsr_nc_check_var(ncid, path, &SPEC_IMAGES, TSR_NC_DATASET_SCHEMA, 1, &vid, len) != 0) return -1;
    if (tsr_nc_check_image_size(path, len[1], len[2], len[3]) != 0) return -1;
    if (len[0] > (size_t)INT64_MAX)
        return tsr_error("%s: dimension 'example' is too long (%zu)", path, len[0]);
    size_t bytes;
    if (tsr_size_mul(len[0], len[1] * len[2] * len[3], &bytes) != 0 || bytes > (size_t)INT64_MAX)
        return tsr_error("%s: dimension 'example' has %zu examples of %zux%zux%zu bytes: more image data than "
                         "this machine can address; refusing the file",
                         path, len[0], len[1], len[2], len[3]);
    d->n_examples = (int64_t)len[0];
    d->height = (int)len[1];
    d->width = (int)len[2];
    d->channels = (int)len[3];
    size_t n = len[0];
    tsr_nc_tune_chunk_cache(ncid, vid);

    int class_dim;
    st = nc_inq_dimid(ncid, "class", &class_dim);
    if (st == NC_NOERR) {
        size_t nc;
        if ((st = nc_inq_dimlen(ncid, class_dim, &nc)) != NC_NOERR)
            return tsr_nc_err(path, st, "inquiring dimension 'class'");
        if (nc > INT_MAX) return tsr_error("%s: dimension 'class' is too long (%zu)", path, nc);
        d->n_classes = (int)nc;
    } else if (st != NC_EBADDIM) {
        return tsr_nc_err(path, st, "looking up dimension 'class'");
    }

    if (tsr_nc_check_var(ncid, path, &SPEC_LABELS, TSR_NC_DATASET_SCHEMA, 0, &vid, NULL) != 0) return -1;
    if (vid >= 0) {
        if (d->n_classes < 1)
            return tsr_error("%s: variable 'labels' is present but there is no 'class' dimension "
                             "(of length n_classes >= 1) to give the number of classes",
                             path);
        char expected[96];
        snprintf(expected, sizeof expected, "0 <= label < %d (the length of dimension 'class')",
                 d->n_classes);
        if (tsr_nc_check_values(ncid, vid, path, "labels", n, 0, d->n_classes - 1, expected) != 0)
            return -1;
        d->has_labels = 1;
    }

    if (tsr_nc_check_var(ncid, path, &SPEC_SPLIT, TSR_NC_DATASET_SCHEMA, 0, &vid, NULL) != 0) return -1;
    if (vid >= 0) {
        if (tsr_nc_check_values(ncid, vid, path, "split", n, 0, 2, "0 (train), 1 (val) or 2 (test)") != 0)
            return -1;
        d->has_split = 1;
    }

    if (tsr_nc_check_var(ncid, path, &SPEC_CLASS_NAMES, TSR_NC_DATASET_SCHEMA, 0, &vid, NULL) != 0) return -1;
    return 0;
}

/* ------------------------------------------------------------------ the probe */

static int in_probe_child;
static int probe_fork(const char *path, int (*check)(const char *path));
#define TSR_NC_PROBE_SECONDS 60
/* TESSERA_NC_CHECK_SECONDS overrides the limit (tests) */
static int probe_seconds(void) {
    const char *e = getenv("TESSERA_NC_CHECK_SECONDS");
    int v = e ? atoi(e) : 0;
    return v > 0 ? v : TSR_NC_PROBE_SECONDS;
}
/* Files that passed (device, inode, size, modification time): a sweep opens its suite once per entry, and a
 * file that passed and has not changed is not checked again. */
#define PROBED_MAX 16
static struct { dev_t dev; ino_t ino; off_t size; struct timespec mtime; } probed[PROBED_MAX];
static int n_probed;

static int probed_index(const struct stat *st) {
    for (int i = 0; i < n_probed; i++)
        if (probed[i].dev == st->st_dev && probed[i].ino == st->st_ino && probed[i].size == st->st_size &&
            probed[i].mtime.tv_sec == st->st_mtim.tv_sec && probed[i].mtime.tv_nsec == st->st_mtim.tv_nsec)
            return i;
    return -1;
}

int tsr_nc_probe(const char *path, int (*check)(const char *path)) {
    if (in_probe_child) return 0;
    struct stat st;
    int have_st = stat(path, &st) == 0;
    /* only a regular file: opening a FIFO blocks until something writes to it (the job hung there), and a
     * directory was reported as "Unknown file format" */
    if (have_st && !S_ISREG(st.st_mode))
        return tsr_error("%s: not a regular file (%s): a dataset or suite is a netCDF file", path,
                         S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO" :
                         S_ISSOCK(st.st_mode) ? "a socket" : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device" : "not a file");
    const char *off = getenv("TESSERA_NC_CHECK");
    if (off && strcmp(off, "0") == 0) return 0;
    if (have_st && probed_index(&st) >= 0) return 0;
    int rc = probe_fork(path, check);
    if (rc == 0 && have_st) {
        int i = n_probed < PROBED_MAX ? n_probed++ : (int)(st.st_ino % PROBED_MAX);
        probed[i].dev = st.st_dev;
        probed[i].ino = st.st_ino;
        probed[i].size = st.st_size;
        probed[i].mtime = st.st_mtim;
    }
    return rc;
}

static int probe_fork(const char *path, int (*check)(const char *path)) {
    int fds[2];
    if (pipe(fds) != 0) {
        tsr_warn("%s: not checked in a separate process (pipe: %s)", path, strerror(errno));
        return 0;
    }
    fflush(NULL); /* nothing buffered is written twice */
    pid_t pid = fork();
    if (pid < 0) {
        tsr_warn("%s: not checked in a separate process (fork: %s)", path, strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return 0;
    }
    if (pid == 0) { /* the child: check, report, _exit (no atexit handlers, no MPI, no buffered output) */
        close(fds[0]);
        in_probe_child = 1;
        /* a crash must end the child: handlers of the parent (MPI's, a test framework's) are dropped */
        const int crash[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGSYS, SIGTRAP};
        for (size_t i = 0; i < sizeof crash / sizeof *crash; i++) signal(crash[i], SIG_DFL);
        /* HDF5 can also loop on a damaged file (a fuzzed dataset kept the check busy for over 10 s): the
         * check of a file's metadata and labels takes well under a second, so one still running after
         * TSR_NC_PROBE_SECONDS is ended by SIGALRM and the file refused */
        signal(SIGALRM, SIG_DFL);
        alarm((unsigned)probe_seconds());
        const char *sig = getenv("TESSERA_FAULT_NC_CHILD_SIGNAL");
        if (sig && atoi(sig) > 0) raise(atoi(sig));
        int rc = check(path);
        if (rc != 0) {
            const char *m = tsr_last_error();
            size_t n = strlen(m);
            while (n > 0) {
                ssize_t w = write(fds[1], m, n);
                if (w <= 0) break;
                m += w;
                n -= (size_t)w;
            }
        }
        close(fds[1]);
        _exit(rc != 0 ? 1 : 0);
    }
    close(fds[1]);
    char msg[2048];
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fds[0], msg + got, sizeof msg - 1 - got);
        if (r > 0 && (got += (size_t)r) < sizeof msg - 1) continue;
        if (r < 0 && errno == EINTR) continue;
        if (r > 0) { /* full: drain the rest */
            char sink[256];
            while (read(fds[0], sink, sizeof sink) > 0) {}
        }
        break;
    }
    msg[got] = 0;
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            tsr_warn("%s: the checking process could not be waited for (%s)", path, strerror(errno));
            return 0;
        }
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
        return tsr_error("%s: refusing the file: the netCDF/HDF5 library was still opening it after %d s in a "
                         "separate checking process (it loops on some corrupt files); the file is corrupt (HINT: "
                         "make it again, or check it with ncdump -h)", path, probe_seconds());
    if (WIFSIGNALED(status)) {
        int sg = WTERMSIG(status);
        return tsr_error("%s: refusing the file: opening it crashed the netCDF/HDF5 library (signal %d, %s) in a "
                         "separate checking process; the file is corrupt (HINT: make it again, or check it with "
                         "ncdump -h)", path, sg, strsignal(sg));
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (got > 0) return tsr_error("%s", msg);
    return tsr_error("%s: refusing the file: opening it crashed the netCDF/HDF5 library in a separate checking "
                     "process (it ended with status %d and no message; a sanitizer's report, if any, is above); the "
                     "file is corrupt", path, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static int check_dataset(const char *path) {
    tsr_nc_dataset d;
    if (tsr_nc_dataset_open_unprobed(&d, path) != 0) return -1;
    tsr_nc_dataset_close(&d);
    return 0;
}

int tsr_nc_dataset_open(tsr_nc_dataset *d, const char *path) {
    memset(d, 0, sizeof *d);
    d->ncid = -1;
    if (path && path[0] && tsr_nc_probe(path, check_dataset) != 0) return -1;
    return tsr_nc_dataset_open_unprobed(d, path);
}

int tsr_nc_dataset_open_unprobed(tsr_nc_dataset *d, const char *path) {
    memset(d, 0, sizeof *d);
    d->ncid = -1;
    if (!path || !path[0]) return tsr_error("dataset: no file name given");
    if (strlen(path) >= sizeof d->path)
        return tsr_error("%s: file name too long (at most %zu bytes)", path, sizeof d->path - 1);
    strcpy(d->path, path);
    int ncid;
    if (tsr_nc_open_read(path, &ncid) != 0) return -1;
    if (validate(d, ncid) != 0) {
        nc_close(ncid);
        char keep[sizeof d->path];
        memcpy(keep, d->path, sizeof keep);
        memset(d, 0, sizeof *d);
        memcpy(d->path, keep, sizeof keep);
        d->ncid = -1;
        return -1;
    }
    d->ncid = ncid;
    return 0;
}

void tsr_nc_close_file(int *ncid, const char *path) {
    if (*ncid >= 0) {
        int st = nc_close(*ncid);
        if (st != NC_NOERR) tsr_warn("%s: closing: %s", path, nc_strerror(st));
    }
    *ncid = -1;
}

void tsr_nc_dataset_close(tsr_nc_dataset *d) {
    if (d) tsr_nc_close_file(&d->ncid, d->path);
}

/* ------------------------------------------------------------------ reading */

static int check_range(const tsr_nc_dataset *d, int64_t start, int64_t count, const void *out) {
    if (!d || d->ncid < 0) return tsr_error("dataset: not open");
    if (start < 0 || count < 0 || start > d->n_examples || count > d->n_examples - start)
        return tsr_error("%s: cannot read examples [%lld, %lld): the file has %lld examples",
                         d->path, (long long)start, (long long)start + (long long)count,
                         (long long)d->n_examples);
    if (count > 0 && !out) return tsr_error("%s: read: no output buffer", d->path);
    return 0;
}

static int var_id(const tsr_nc_dataset *d, const char *name, int *vid) {
    int st = nc_inq_varid(d->ncid, name, vid);
    if (st == NC_ENOTVAR) return tsr_error("%s: the dataset has no '%s' variable", d->path, name);
    if (st != NC_NOERR) return tsr_nc_err(d->path, st, "looking up variable '%s'", name);
    return 0;
}

int tsr_nc_dataset_read_raw(const tsr_nc_dataset *d, int64_t start, int64_t count, uint8_t *out) {
    if (check_range(d, start, count, out) != 0) return -1;
    if (count == 0) return 0;
    int vid;
    if (var_id(d, "images", &vid) != 0) return -1;
    size_t sv[4] = {(size_t)start, 0, 0, 0};
    size_t cv[4] = {(size_t)count, (size_t)d->height, (size_t)d->width, (size_t)d->channels};
    int st = nc_get_vara_uchar(d->ncid, vid, sv, cv, out);
    if (st != NC_NOERR)
        return tsr_nc_err(d->path, st, "reading variable 'images' (examples %lld..%lld)",
                      (long long)start, (long long)(start + count - 1));
    return 0;
}

static int read_ints(const tsr_nc_dataset *d, const char *name, int64_t start, int64_t count,
                     int *iout, signed char *bout) {
    if (count == 0) return 0;
    int vid;
    if (var_id(d, name, &vid) != 0) return -1;
    size_t sv = (size_t)start, cv = (size_t)count;
    int st = iout ? nc_get_vara_int(d->ncid, vid, &sv, &cv, iout)
                  : nc_get_vara_schar(d->ncid, vid, &sv, &cv, bout);
    if (st != NC_NOERR)
        return tsr_nc_err(d->path, st, "reading variable '%s' (examples %lld..%lld)", name,
                      (long long)start, (long long)(start + count - 1));
    return 0;
}

int tsr_nc_dataset_read_labels(const tsr_nc_dataset *d, int64_t start, int64_t count, int *out) {
    if (check_range(d, start, count, out) != 0) return -1;
    if (!d->has_labels) return tsr_error("%s: the dataset has no 'labels' variable", d->path);
    return read_ints(d, "labels", start, count, out, NULL);
}

int tsr_nc_dataset_read_split(const tsr_nc_dataset *d, int64_t start, int64_t count, int8_t *out) {
    if (check_range(d, start, count, out) != 0) return -1;
    if (!d->has_split) return tsr_error("%s: the dataset has no 'split' variable", d->path);
    return read_ints(d, "split", start, count, NULL, (signed char *)out);
}

int tsr_nc_dataset_read(const tsr_nc_dataset *d, int64_t start, int64_t count, const float *mean,
                        const float *std, float *out, int *labels_out) {
    if (check_range(d, start, count, out) != 0) return -1;
    if (!mean != !std)
        return tsr_error("%s: read: mean and std must both be given or both be NULL", d->path);
    if (labels_out && !d->has_labels)
        return tsr_error("%s: labels requested but the dataset has no 'labels' variable", d->path);
    const int C = d->channels;
    /* Per-channel lookup table: the exact float expression for each of the 256 pixel values. */
    float *lut = tsr_malloc((size_t)C * 256 * sizeof *lut);
    for (int c = 0; c < C; c++) {
        float m = mean ? mean[c] : 0.0f, s = std ? std[c] : 1.0f;
        if (!isfinite(m) || !isfinite(s) || s == 0.0f) {
            free(lut);
            return tsr_error("%s: read: channel %d has mean %g and std %g; the std must be finite "
                             "and non-zero and the mean finite",
                             d->path, c, (double)m, (double)s);
        }
        for (int p = 0; p < 256; p++) lut[c * 256 + p] = ((float)p / 255.0f - m) / s;
    }
    const size_t HW = (size_t)d->height * (size_t)d->width, img = HW * (size_t)C;
    int64_t block = (int64_t)(READ_BLOCK_BYTES / img);
    if (block < 1) block = 1;
    if (block > count) block = count;
    uint8_t *raw = tsr_malloc((size_t)(block > 0 ? block : 1) * img);
    int rc = 0;
    for (int64_t b0 = 0; b0 < count && rc == 0; b0 += block) {
        int64_t k = count - b0 < block ? count - b0 : block;
        if (tsr_nc_dataset_read_raw(d, start + b0, k, raw) != 0) {
            rc = -1;
            break;
        }
        for (int64_t b = 0; b < k; b++) {
            const uint8_t *src = raw + (size_t)b * img;
            float *dst = out + (size_t)(b0 + b) * img;
            for (int c = 0; c < C; c++) {
                const float *l = lut + c * 256;
                float *dc = dst + (size_t)c * HW;
                for (size_t i = 0; i < HW; i++) dc[i] = l[src[i * (size_t)C + (size_t)c]];
            }
        }
    }
    free(raw);
    free(lut);
    if (rc == 0 && labels_out) rc = read_ints(d, "labels", start, count, labels_out, NULL);
    return rc;
}

int tsr_nc_dataset_class_name(const tsr_nc_dataset *d, int k, char *buf, size_t n) {
    if (!d || d->ncid < 0) return tsr_error("dataset: not open");
    if (!buf || n == 0) return tsr_error("%s: class_name: no buffer", d->path);
    if (k < 0 || k >= d->n_classes)
        return tsr_error("%s: class %d does not exist (n_classes = %d)", d->path, k, d->n_classes);
    int vid, st = nc_inq_varid(d->ncid, "class_names", &vid);
    if (st == NC_ENOTVAR) {
        snprintf(buf, n, "%d", k);
        return 0;
    }
    if (st != NC_NOERR) return tsr_nc_err(d->path, st, "looking up variable 'class_names'");
    int dimids[2];
    size_t slen;
    if ((st = nc_inq_vardimid(d->ncid, vid, dimids)) != NC_NOERR ||
        (st = nc_inq_dimlen(d->ncid, dimids[1], &slen)) != NC_NOERR)
        return tsr_nc_err(d->path, st, "inquiring variable 'class_names'");
    char *tmp = tsr_malloc(slen + 1);
    size_t sv[2] = {(size_t)k, 0}, cv[2] = {1, slen};
    if (slen > 0 && (st = nc_get_vara_text(d->ncid, vid, sv, cv, tmp)) != NC_NOERR) {
        free(tmp);
        return tsr_nc_err(d->path, st, "reading variable 'class_names' (class %d)", k);
    }
    tmp[slen] = 0;
    size_t len = strlen(tmp); /* stops at the NUL padding */
    while (len > 0 && tmp[len - 1] == ' ') len--;
    if (len >= n) len = n - 1;
    memcpy(buf, tmp, len);
    buf[len] = 0;
    free(tmp);
    return 0;
}

/* ------------------------------------------------------------------ writing */

void tsr_nc_iso_now(char *buf, size_t n) {
    time_t t = time(NULL);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, n, "unknown");
}

int tsr_nc_tmp_path(const char *path, char *tmp, size_t n) { return tsr_atomic_tmp_path(path, tmp, n); }

/* nc_create the temporary file. HDF5 reports a missing directory as "Permission denied", so a
 * failure also says what is wrong with the directory, if anything. */
int tsr_nc_create_tmp(const char *tmp, const char *path, int *ncid) {
    int st = nc_create(tmp, NC_NETCDF4 | NC_CLOBBER, ncid);
    if (st == NC_NOERR) return 0;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", tmp);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) slash[1] = 0;
    else *slash = 0;
    char hint[4200] = "";
    struct stat sb;
    if (stat(dir, &sb) != 0)
        snprintf(hint, sizeof hint, " (directory %s: %s)", dir, strerror(errno));
    else if (!S_ISDIR(sb.st_mode))
        snprintf(hint, sizeof hint, " (%s is not a directory)", dir);
    else if (access(dir, W_OK) != 0)
        snprintf(hint, sizeof hint, " (directory %s is not writable)", dir);
    return tsr_error("%s: creating temporary file %s: %s%s", path, tmp, nc_strerror(st), hint);
}

int tsr_nc_put_text(int ncid, int varid, const char *path, const char *name, const char *val) {
    int st = nc_put_att_text(ncid, varid, name, strlen(val), val);
    if (st != NC_NOERR) return tsr_nc_err(path, st, "writing attribute '%s'", name);
    return 0;
}

/* Close the temporary file, then fsync, rename it over path and fsync the directory (core/atomic.h).
 * On error the temporary file is removed. */
int tsr_nc_finish_atomic(int ncid, const char *tmp, const char *path) {
    int st = nc_close(ncid);
    if (st != NC_NOERR) {
        unlink(tmp);
        return tsr_nc_err(path, st, "closing temporary file %s", tmp);
    }
    if (tsr_atomic_rename(tmp, path) != 0) {
        unlink(tmp); /* gone already when only the directory's fsync failed */
        return -1;
    }
    return 0;
}

/* Define a compressed 1-D NC_INT/NC_BYTE variable over `example`. */
int tsr_nc_def_example_var(int ncid, const char *path, const char *name, int t, int dim,
                           int64_t n, int *vid) {
    size_t chunk = n < 1 ? 1 : (n > CHUNK_1D ? CHUNK_1D : (size_t)n);
    int st;
    if ((st = nc_def_var(ncid, name, t, 1, &dim, vid)) != NC_NOERR)
        return tsr_nc_err(path, st, "defining variable '%s'", name);
    if ((st = nc_def_var_chunking(ncid, *vid, NC_CHUNKED, &chunk)) != NC_NOERR)
        return tsr_nc_err(path, st, "setting chunking of variable '%s'", name);
    if ((st = nc_def_var_deflate(ncid, *vid, 1, 1, DEFLATE_LEVEL)) != NC_NOERR)
        return tsr_nc_err(path, st, "setting compression of variable '%s'", name);
    return 0;
}

size_t tsr_nc_image_chunk(size_t img_bytes, int64_t n) {
    size_t per = CHUNK_MAX_BYTES / (img_bytes ? img_bytes : 1);
    if (per < 1) per = 1;
    if (per > CHUNK_MAX_EXAMPLES) per = CHUNK_MAX_EXAMPLES;
    if (n >= 1 && (size_t)n < per) per = (size_t)n;
    return per;
}

int tsr_nc_def_images(int ncid, const char *path, const int dims[4], int64_t n, int h, int w, int c,
                      int *vid) {
    size_t img = (size_t)h * (size_t)w * (size_t)c;
    size_t chunks[4] = {tsr_nc_image_chunk(img, n), (size_t)h, (size_t)w, (size_t)c};
    static const unsigned char vr[2] = {0, 255};
    int st;
    if ((st = nc_def_var(ncid, "images", NC_UBYTE, 4, dims, vid)) != NC_NOERR)
        return tsr_nc_err(path, st, "defining variable 'images'");
    if ((st = nc_def_var_chunking(ncid, *vid, NC_CHUNKED, chunks)) != NC_NOERR)
        return tsr_nc_err(path, st, "setting chunking of variable 'images'");
    if ((st = nc_def_var_deflate(ncid, *vid, 1, 1, DEFLATE_LEVEL)) != NC_NOERR)
        return tsr_nc_err(path, st, "setting compression of variable 'images'");
    /* Every pixel is written, and 255 is a valid pixel, so no fill value. */
    if ((st = nc_def_var_fill(ncid, *vid, 1, NULL)) != NC_NOERR)
        return tsr_nc_err(path, st, "setting fill mode of 'images'");
    if (tsr_nc_put_text(ncid, *vid, path, "long_name", "image pixels") != 0) return -1;
    if (tsr_nc_put_text(ncid, *vid, path, "units", "1") != 0) return -1;
    if ((st = nc_put_att_uchar(ncid, *vid, "valid_range", NC_UBYTE, 2, vr)) != NC_NOERR)
        return tsr_nc_err(path, st, "writing attribute 'valid_range' of 'images'");
    return 0;
}

int tsr_nc_def_split(int ncid, const char *path, int dim, int64_t n, int *vid) {
    static const signed char fv[3] = {0, 1, 2};
    if (tsr_nc_def_example_var(ncid, path, "split", NC_BYTE, dim, n, vid) != 0) return -1;
    if (tsr_nc_put_text(ncid, *vid, path, "long_name", "dataset split") != 0) return -1;
    int st = nc_put_att_schar(ncid, *vid, "flag_values", NC_BYTE, 3, fv);
    if (st != NC_NOERR) return tsr_nc_err(path, st, "writing attribute 'flag_values' of 'split'");
    return tsr_nc_put_text(ncid, *vid, path, "flag_meanings", "train val test");
}

/* Define `labels` (example) with its attributes. */
int tsr_nc_def_labels(int ncid, const char *path, int dim, int64_t n, int n_classes, int *vid) {
    if (tsr_nc_def_example_var(ncid, path, "labels", NC_INT, dim, n, vid) != 0) return -1;
    int vr[2] = {0, n_classes - 1};
    if (tsr_nc_put_text(ncid, *vid, path, "long_name", "class label (index into class_names)") != 0)
        return -1;
    int st = nc_put_att_int(ncid, *vid, "valid_range", NC_INT, 2, vr);
    if (st != NC_NOERR) return tsr_nc_err(path, st, "writing attribute 'valid_range' of 'labels'");
    return 0;
}

static int check_labels_arg(const char *path, const int *labels, int64_t n, int n_classes) {
    if (!labels) return 0;
    if (n_classes < 1)
        return tsr_error("%s: refusing to write labels with n_classes = %d (need >= 1)", path,
                         n_classes);
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= n_classes)
            return tsr_error("%s: refusing to write: example %lld has label %d, expected "
                             "0 <= label < %d (n_classes)",
                             path, (long long)i, labels[i], n_classes);
    return 0;
}

int tsr_nc_dataset_write(const char *path, int64_t n, int h, int w, int c, const uint8_t *images,
                         const int *labels, const int8_t *split, int n_classes,
                         const char *const *class_names, const tsr_nc_provenance *prov) {
    char tmp[4096];
    if (tsr_nc_tmp_path(path, tmp, sizeof tmp) != 0) return -1;
    /* Validate everything before creating any file. */
    if (n < 0 || h < 1 || w < 1 || c < 1)
        return tsr_error("%s: refusing to write: n=%lld h=%d w=%d c=%d (need n >= 0 and h, w, c "
                         ">= 1)",
                         path, (long long)n, h, w, c);
    const size_t img = (size_t)h * (size_t)w * (size_t)c;
    if ((size_t)h * (size_t)w > MAX_IMAGE_BYTES || img > MAX_IMAGE_BYTES)
        return tsr_error("%s: refusing to write: image of %d x %d x %d bytes is larger than %zu",
                         path, h, w, c, MAX_IMAGE_BYTES);
    if ((uint64_t)n > (uint64_t)(SIZE_MAX / img))
        return tsr_error("%s: refusing to write: %lld images do not fit in memory", path,
                         (long long)n);
    if (n > 0 && !images) return tsr_error("%s: refusing to write: no image data", path);
    if (n_classes < 0) return tsr_error("%s: refusing to write: n_classes = %d", path, n_classes);
    if (check_labels_arg(path, labels, n, n_classes) != 0) return -1;
    if (split)
        for (int64_t i = 0; i < n; i++)
            if (split[i] < 0 || split[i] > 2)
                return tsr_error("%s: refusing to write: example %lld has split %d, expected 0 "
                                 "(train), 1 (val) or 2 (test)",
                                 path, (long long)i, split[i]);
    size_t name_len = 1;
    if (class_names) {
        if (n_classes < 1)
            return tsr_error("%s: refusing to write: class_names given with n_classes = %d", path,
                             n_classes);
        for (int k = 0; k < n_classes; k++) {
            if (!class_names[k])
                return tsr_error("%s: refusing to write: class_names[%d] is NULL", path, k);
            size_t l = strlen(class_names[k]);
            if (l > name_len) name_len = l;
        }
    }
    if (!prov || !prov->task_name || !prov->task_name[0])
        return tsr_error("%s: refusing to write: no task_name in the provenance", path);
    if (strlen(prov->task_name) >= sizeof(((tsr_nc_dataset *)0)->task_name))
        return tsr_error("%s: refusing to write: task_name is longer than %zu characters", path,
                         sizeof(((tsr_nc_dataset *)0)->task_name) - 1);

    char date[64];
    tsr_nc_iso_now(date, sizeof date);
    char *names_buf = NULL, *history = NULL;
    int ncid = -1, is_open = 0;
    int d_ex, d_y, d_x, d_c, d_class = -1, d_strlen = -1;
    int v_img, v_lab = -1, v_split = -1, v_names = -1;

    if (tsr_nc_create_tmp(tmp, path, &ncid) != 0) return -1;
    is_open = 1;
    /* `example` is unlimited so that a streaming writer can append blocks of examples. */
    NC_TRY(nc_def_dim(ncid, "example", NC_UNLIMITED, &d_ex), "defining dimension 'example'");
    NC_TRY(nc_def_dim(ncid, "y", (size_t)h, &d_y), "defining dimension 'y'");
    NC_TRY(nc_def_dim(ncid, "x", (size_t)w, &d_x), "defining dimension 'x'");
    NC_TRY(nc_def_dim(ncid, "channel", (size_t)c, &d_c), "defining dimension 'channel'");
    if (n_classes > 0)
        NC_TRY(nc_def_dim(ncid, "class", (size_t)n_classes, &d_class), "defining dimension 'class'");

    {
        int dims[4] = {d_ex, d_y, d_x, d_c};
        if (tsr_nc_def_images(ncid, path, dims, n, h, w, c, &v_img) != 0) goto fail;
    }
    if (labels && tsr_nc_def_labels(ncid, path, d_ex, n, n_classes, &v_lab) != 0) goto fail;
    if (split && tsr_nc_def_split(ncid, path, d_ex, n, &v_split) != 0) goto fail;
    if (class_names) {
        NC_TRY(nc_def_dim(ncid, "name_strlen", name_len, &d_strlen),
               "defining dimension 'name_strlen'");
        int dims[2] = {d_class, d_strlen};
        NC_TRY(nc_def_var(ncid, "class_names", NC_CHAR, 2, dims, &v_names),
               "defining variable 'class_names'");
        if (tsr_nc_put_text(ncid, v_names, path, "long_name", "class names") != 0) goto fail;
    }

    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "Conventions", "CF-1.8") != 0) goto fail;
    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "tessera_schema", TSR_NC_DATASET_SCHEMA) != 0)
        goto fail;
    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "task_name", prov->task_name) != 0) goto fail;
    if (prov->title && tsr_nc_put_text(ncid, NC_GLOBAL, path, "title", prov->title) != 0) goto fail;
    if (prov->source && tsr_nc_put_text(ncid, NC_GLOBAL, path, "source", prov->source) != 0)
        goto fail;
    if (prov->license && tsr_nc_put_text(ncid, NC_GLOBAL, path, "license", prov->license) != 0)
        goto fail;
    if (prov->history) {
        size_t hl = strlen(date) + strlen(prov->history) + 3;
        history = tsr_malloc(hl);
        snprintf(history, hl, "%s: %s", date, prov->history);
        if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "history", history) != 0) goto fail;
    }
    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "date_created", date) != 0) goto fail;
    NC_TRY(nc_enddef(ncid), "ending define mode");

    if (n > 0) {
        size_t s4[4] = {0, 0, 0, 0}, c4[4] = {(size_t)n, (size_t)h, (size_t)w, (size_t)c};
        NC_TRY(nc_put_vara_uchar(ncid, v_img, s4, c4, images), "writing variable 'images'");
        size_t s1 = 0, c1 = (size_t)n;
        if (labels) NC_TRY(nc_put_vara_int(ncid, v_lab, &s1, &c1, labels), "writing 'labels'");
        if (split)
            NC_TRY(nc_put_vara_schar(ncid, v_split, &s1, &c1, (const signed char *)split),
                   "writing 'split'");
    }
    if (class_names) {
        names_buf = tsr_calloc((size_t)n_classes, name_len);
        for (int k = 0; k < n_classes; k++)
            memcpy(names_buf + (size_t)k * name_len, class_names[k], strlen(class_names[k]));
        NC_TRY(nc_put_var_text(ncid, v_names, names_buf), "writing variable 'class_names'");
    }
    free(names_buf);
    free(history);
    is_open = 0;
    return tsr_nc_finish_atomic(ncid, tmp, path);

fail:
    if (is_open) nc_close(ncid);
    unlink(tmp);
    free(names_buf);
    free(history);
    return -1;
}

/* ------------------------------------------------------------------ logits */

static const char *const RESERVED_LOGITS_ATTS[] = {"Conventions", "tessera_schema", "date_created"};

int tsr_nc_write_logits_ex(const char *path, int64_t n, int n_classes, const float *logits,
                           const int *labels, int nattr, const char *const *attr_keys,
                           const char *const *attr_vals) {
    char tmp[4096];
    if (tsr_nc_tmp_path(path, tmp, sizeof tmp) != 0) return -1;
    if (n < 0 || n_classes < 1)
        return tsr_error("%s: refusing to write logits: n=%lld n_classes=%d (need n >= 0 and "
                         "n_classes >= 1)",
                         path, (long long)n, n_classes);
    if ((uint64_t)n > (uint64_t)(SIZE_MAX / sizeof(float) / (size_t)n_classes))
        return tsr_error("%s: refusing to write logits: %lld x %d is too large", path,
                         (long long)n, n_classes);
    if (n > 0 && !logits) return tsr_error("%s: refusing to write logits: no data", path);
    if (check_labels_arg(path, labels, n, n_classes) != 0) return -1;
    if (nattr < 0 || (nattr > 0 && (!attr_keys || !attr_vals)))
        return tsr_error("%s: refusing to write logits: %d attributes but no key/value arrays",
                         path, nattr);
    for (int i = 0; i < nattr; i++) {
        if (!attr_keys[i] || !attr_keys[i][0] || !attr_vals[i])
            return tsr_error("%s: refusing to write logits: attribute %d has a NULL or empty key, "
                             "or a NULL value",
                             path, i);
        for (size_t r = 0; r < sizeof RESERVED_LOGITS_ATTS / sizeof *RESERVED_LOGITS_ATTS; r++)
            if (strcmp(attr_keys[i], RESERVED_LOGITS_ATTS[r]) == 0)
                return tsr_error("%s: refusing to write logits: attribute '%s' is written by "
                                 "tessera and cannot be given",
                                 path, attr_keys[i]);
    }

    char date[64];
    tsr_nc_iso_now(date, sizeof date);
    int ncid = -1, is_open = 0, d_ex, d_class, v_log, v_lab = -1;
    if (tsr_nc_create_tmp(tmp, path, &ncid) != 0) return -1;
    is_open = 1;
    NC_TRY(nc_def_dim(ncid, "example", NC_UNLIMITED, &d_ex), "defining dimension 'example'");
    NC_TRY(nc_def_dim(ncid, "class", (size_t)n_classes, &d_class), "defining dimension 'class'");
    {
        int dims[2] = {d_ex, d_class};
        size_t row = (size_t)n_classes * sizeof(float);
        size_t per = CHUNK_MAX_BYTES / 16 / row; /* about 1 MiB chunks */
        if (per < 1) per = 1;
        if (per > 4096) per = 4096;
        if (n >= 1 && (size_t)n < per) per = (size_t)n;
        size_t chunks[2] = {per, (size_t)n_classes};
        NC_TRY(nc_def_var(ncid, "logits", NC_FLOAT, 2, dims, &v_log), "defining variable 'logits'");
        NC_TRY(nc_def_var_chunking(ncid, v_log, NC_CHUNKED, chunks),
               "setting chunking of variable 'logits'");
        NC_TRY(nc_def_var_deflate(ncid, v_log, 1, 1, DEFLATE_LEVEL),
               "setting compression of variable 'logits'");
        if (tsr_nc_put_text(ncid, v_log, path, "long_name", "unnormalised class scores (logits)") != 0)
            goto fail;
        if (tsr_nc_put_text(ncid, v_log, path, "units", "1") != 0) goto fail;
    }
    if (labels && tsr_nc_def_labels(ncid, path, d_ex, n, n_classes, &v_lab) != 0) goto fail;
    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "Conventions", "CF-1.8") != 0) goto fail;
    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "tessera_schema", TSR_NC_LOGITS_SCHEMA) != 0) goto fail;
    if (tsr_nc_put_text(ncid, NC_GLOBAL, path, "date_created", date) != 0) goto fail;
    for (int i = 0; i < nattr; i++)
        if (tsr_nc_put_text(ncid, NC_GLOBAL, path, attr_keys[i], attr_vals[i]) != 0) goto fail;
    NC_TRY(nc_enddef(ncid), "ending define mode");
    if (n > 0) {
        size_t s2[2] = {0, 0}, c2[2] = {(size_t)n, (size_t)n_classes};
        NC_TRY(nc_put_vara_float(ncid, v_log, s2, c2, logits), "writing variable 'logits'");
        size_t s1 = 0, c1 = (size_t)n;
        if (labels) NC_TRY(nc_put_vara_int(ncid, v_lab, &s1, &c1, labels), "writing 'labels'");
    }
    is_open = 0;
    return tsr_nc_finish_atomic(ncid, tmp, path);

fail:
    if (is_open) nc_close(ncid);
    unlink(tmp);
    return -1;
}

int tsr_nc_write_logits(const char *path, int64_t n, int n_classes, const float *logits, int nattr,
                        const char *const *attr_keys, const char *const *attr_vals) {
    return tsr_nc_write_logits_ex(path, n, n_classes, logits, NULL, nattr, attr_keys, attr_vals);
}
