/* idx.c: IDX (MNIST / Fashion-MNIST) image and label files, gzip-compressed or plain.
 *
 * The header's counts are not trusted for allocation: the data buffer grows in blocks while it is
 * read, so a corrupt header with huge dimensions fails as "truncated" instead of allocating
 * gigabytes first. */
#define _POSIX_C_SOURCE 200809L
#include "idx.h"

#include "core/common.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* Bytes requested per gzread call and the growth step of the data buffer. */
#define READ_BLOCK ((size_t)16 << 20)
/* Upper bound on rows and cols (the dimensions are ints in tsr_idx_set). */
#define MAX_SIDE 65535u

typedef struct {
    gzFile gz;
    const char *path;
} idx_file;

/* Pick <dir>/<prefix>-<kind>.gz if it exists, else <dir>/<prefix>-<kind>. */
static int find_file(char *out, size_t cap, const char *dir, const char *prefix, const char *kind) {
    int k = snprintf(out, cap, "%s/%s-%s.gz", dir, prefix, kind);
    if (k < 0 || (size_t)k >= cap) return tsr_error("%s/%s-%s.gz: path too long", dir, prefix, kind);
    if (access(out, F_OK) == 0) return 0;
    out[k - 3] = 0; /* drop ".gz" */
    if (access(out, F_OK) == 0) return 0;
    return tsr_error("%s.gz: not found (nor the uncompressed %s)", out, out);
}

/* zlib's message without the "<path>: " that gzerror puts in front of it. */
static const char *zmsg(idx_file *f, const char *m) {
    size_t k = strlen(f->path);
    return strncmp(m, f->path, k) == 0 && m[k] == ':' && m[k + 1] == ' ' ? m + k + 2 : m;
}

/* Read up to want bytes; *got is how many arrived. -1 only on a zlib/stream error. */
static int read_some(idx_file *f, uint8_t *buf, size_t want, size_t *got) {
    *got = 0;
    while (*got < want) {
        size_t chunk = want - *got;
        if (chunk > (size_t)1 << 30) chunk = (size_t)1 << 30;
        int r = gzread(f->gz, buf + *got, (unsigned)chunk);
        if (r < 0) {
            int errnum = 0;
            const char *m = gzerror(f->gz, &errnum);
            if (errnum == Z_BUF_ERROR) break; /* the compressed stream ends early: a short read */
            m = errnum == Z_ERRNO ? strerror(errno) : zmsg(f, m);
            return tsr_error("%s: read error after %zu bytes (%s)", f->path, *got, m);
        }
        if (r == 0) break;
        *got += (size_t)r;
    }
    return 0;
}

/* The zlib reason for a short read ("" if the stream simply ended). */
static const char *short_reason(idx_file *f) {
    int errnum = 0;
    const char *m = gzerror(f->gz, &errnum);
    return errnum == Z_OK || errnum == Z_STREAM_END ? "" : zmsg(f, m);
}

static uint32_t be32(const uint8_t *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}

/* Read the magic and ndim dimensions; check the magic. */
static int read_header(idx_file *f, uint32_t magic, int ndim, uint32_t *dims, const char *what) {
    uint8_t hdr[16];
    size_t want = 4 * (size_t)(1 + ndim), got = 0;
    if (read_some(f, hdr, want, &got) != 0) return -1;
    if (got < 4)
        return tsr_error("%s: truncated: file has %zu bytes, too short for the IDX magic number", f->path,
                         got);
    uint32_t m = be32(hdr);
    if (m != magic)
        return tsr_error("%s: bad magic number 0x%08" PRIx32 " (expected 0x%08" PRIx32 " for %s)", f->path,
                         m, magic, what);
    if (got < want)
        return tsr_error("%s: truncated header: %zu of %zu bytes (%d dimensions expected)%s%s", f->path, got,
                         want, ndim, *short_reason(f) ? "; zlib: " : "", short_reason(f));
    for (int i = 0; i < ndim; i++) dims[i] = be32(hdr + 4 * (1 + i));
    return 0;
}

/* Read exactly total bytes of data into a new buffer (grown while reading), then require EOF. */
static int read_data(idx_file *f, uint64_t total, uint8_t **out) {
    uint8_t *buf = NULL;
    uint64_t have = 0;
    *out = NULL;
    while (have < total) {
        size_t step = total - have < READ_BLOCK ? (size_t)(total - have) : READ_BLOCK;
        uint8_t *nb = realloc(buf, (size_t)(have + step));
        if (!nb) {
            free(buf);
            tsr_fatal("out of memory reading %s (%" PRIu64 " bytes)", f->path, total);
        }
        buf = nb;
        size_t got = 0;
        if (read_some(f, buf + have, step, &got) != 0) {
            free(buf);
            return -1;
        }
        have += got;
        if (got < step) {
            const char *why = short_reason(f);
            free(buf);
            return tsr_error("%s: truncated: %" PRIu64 " of %" PRIu64 " data bytes present%s%s", f->path,
                             have, total, *why ? "; zlib: " : "", why);
        }
    }
    uint8_t extra;
    size_t got = 0;
    if (read_some(f, &extra, 1, &got) != 0) {
        free(buf);
        return -1;
    }
    if (got != 0) {
        free(buf);
        return tsr_error("%s: extra bytes after the %" PRIu64 " data bytes given by the header", f->path,
                         total);
    }
    if (!buf) buf = tsr_malloc(1); /* total == 0 cannot happen (dims are checked), but stay safe */
    *out = buf;
    return 0;
}

static int open_file(idx_file *f, const char *path) {
    f->path = path;
    errno = 0;
    f->gz = gzopen(path, "rb");
    if (!f->gz)
        return tsr_error("%s: cannot open (%s)", path, errno ? strerror(errno) : "zlib: out of memory");
    return 0;
}

static void close_file(idx_file *f) {
    if (f->gz) gzclose(f->gz);
    f->gz = NULL;
}

static int load_images(tsr_idx_set *s, const char *path) {
    idx_file f = {0};
    uint32_t d[3] = {0, 0, 0};
    if (open_file(&f, path) != 0) return -1;
    if (read_header(&f, TSR_IDX_MAGIC_IMAGES, 3, d, "unsigned-byte 3-D images") != 0) goto fail;
    if (d[0] == 0 || d[1] == 0 || d[2] == 0 || d[1] > MAX_SIDE || d[2] > MAX_SIDE) {
        tsr_error("%s: bad dimensions %" PRIu32 " x %" PRIu32 " x %" PRIu32
                  " (expected n >= 1 images of 1..%u x 1..%u pixels)",
                  path, d[0], d[1], d[2], MAX_SIDE, MAX_SIDE);
        goto fail;
    }
    uint64_t total = (uint64_t)d[0] * d[1] * d[2]; /* < (2^32) (2^16)^2 = 2^64: no overflow */
    if (total > (uint64_t)SIZE_MAX) {
        tsr_error("%s: %" PRIu64 " bytes of images do not fit in memory", path, total);
        goto fail;
    }
    if (read_data(&f, total, &s->pixels) != 0) goto fail;
    close_file(&f);
    s->n = d[0];
    s->rows = (int)d[1];
    s->cols = (int)d[2];
    return 0;
fail:
    close_file(&f);
    return -1;
}

static int load_labels(tsr_idx_set *s, const char *path, const char *images_path) {
    idx_file f = {0};
    uint32_t n = 0;
    if (open_file(&f, path) != 0) return -1;
    if (read_header(&f, TSR_IDX_MAGIC_LABELS, 1, &n, "unsigned-byte 1-D labels") != 0) goto fail;
    if ((int64_t)n != s->n) {
        tsr_error("%s: %" PRIu32 " labels, but %s has %" PRId64 " images (the counts must be equal)", path,
                  n, images_path, s->n);
        goto fail;
    }
    if (read_data(&f, n, &s->labels) != 0) goto fail;
    close_file(&f);
    for (uint32_t i = 0; i < n; i++)
        if (s->labels[i] >= TSR_IDX_NUM_CLASSES)
            return tsr_error("%s: label %u at index %" PRIu32 " is out of range (expected 0..%d)", path,
                             (unsigned)s->labels[i], i, TSR_IDX_NUM_CLASSES - 1);
    return 0;
fail:
    close_file(&f);
    return -1;
}

int tsr_idx_load(tsr_idx_set *s, const char *dir, const char *prefix) {
    char ipath[4096], lpath[4096];
    memset(s, 0, sizeof *s);
    if (!dir || !*dir || !prefix || !*prefix)
        return tsr_error("idx: empty directory or prefix (expected e.g. dir and \"train\" or \"t10k\")");
    if (find_file(ipath, sizeof ipath, dir, prefix, "images-idx3-ubyte") != 0) return -1;
    if (find_file(lpath, sizeof lpath, dir, prefix, "labels-idx1-ubyte") != 0) return -1;
    if (load_images(s, ipath) != 0 || load_labels(s, lpath, ipath) != 0) {
        tsr_idx_free(s);
        return -1;
    }
    return 0;
}

void tsr_idx_free(tsr_idx_set *s) {
    if (!s) return;
    free(s->pixels);
    free(s->labels);
    memset(s, 0, sizeof *s);
}
