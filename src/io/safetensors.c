/* safetensors.c: safetensors reader (the file mapped, fully validated) and atomic writer. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* madvise */
#include "io/safetensors.h"

#include "core/atomic.h"
#include "core/common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* ------------------------------------------------------------------ dtypes */

static const char *const dt_names[TSR_DT_COUNT] = {"F32", "F16", "BF16", "F64", "I64",
                                                   "I32", "I16", "I8",   "U8",  "BOOL"};
static const size_t dt_sizes[TSR_DT_COUNT] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};

const char *tsr_dtype_name(tsr_dtype dt) {
    return ((unsigned)dt < TSR_DT_COUNT) ? dt_names[dt] : "?";
}

size_t tsr_dtype_size(tsr_dtype dt) { return ((unsigned)dt < TSR_DT_COUNT) ? dt_sizes[dt] : 0; }

int tsr_dtype_from_name(const char *name, tsr_dtype *dt) {
    for (int i = 0; i < TSR_DT_COUNT; i++)
        if (strcmp(name, dt_names[i]) == 0) {
            *dt = (tsr_dtype)i;
            return 0;
        }
    return -1;
}

static int dt_is_float(tsr_dtype dt) {
    return dt == TSR_DT_F32 || dt == TSR_DT_F16 || dt == TSR_DT_BF16 || dt == TSR_DT_F64;
}

/* "[96, 32]" (or "[]" for a scalar) into buf. */
static const char *fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = 0;
    buf[0] = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

/* numel of a shape; -1 if the product overflows int64. Dims must be >= 0. */
static int64_t shape_numel(int ndim, const int64_t *shape) {
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) return 0;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] > INT64_MAX / n) return -1;
        n *= shape[i];
    }
    return n;
}

/* ------------------------------------------------------------------ scalar conversions */

static float f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* IEEE binary16 -> binary32, exact for every input (subnormals, inf, nan payloads kept). */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign; /* +-0 */
    } else {
        /* subnormal: man * 2^-24; normalise so the leading 1 reaches bit 10 */
        int e = -14;
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        man &= 0x3ffu;
        bits = sign | ((uint32_t)(e + 127) << 23) | (man << 13);
    }
    return f32_from_bits(bits);
}

static float bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

/* ------------------------------------------------------------------ reader */

void tsr_st_close(tsr_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    if (f->mapped) munmap(f->buf, f->size);
    else free(f->buf);
    free(f->path);
    memset(f, 0, sizeof *f);
}

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = tsr_malloc(n);
    memcpy(p, s, n);
    return p;
}

/* Read a JSON integer >= 0 into *out; 0 ok, -1 if not a non-negative integer. */
static int json_nonneg(const json_t *v, int64_t *out) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0) return -1;
    *out = (int64_t)x;
    return 0;
}

/* Parse one tensor entry into t (relative offsets; name set by caller). data_len = size of the
 * data region. On error tsr_error is set with the path and tensor name. */
static int parse_entry(const char *path, const char *name, json_t *v, uint64_t data_len,
                       tsr_st_tensor *t) {
    if (!json_is_object(v))
        return tsr_error("%s: tensor '%s': header entry is not an object", path, name);

    json_t *jdt = json_object_get(v, "dtype");
    if (!jdt) return tsr_error("%s: tensor '%s': missing \"dtype\"", path, name);
    if (!json_is_string(jdt)) return tsr_error("%s: tensor '%s': \"dtype\" is not a string", path, name);
    if (tsr_dtype_from_name(json_string_value(jdt), &t->dtype) != 0)
        return tsr_error("%s: tensor '%s': unknown dtype '%s' (supported: F32 F16 BF16 F64 I64 I32 "
                         "I16 I8 U8 BOOL)",
                         path, name, json_string_value(jdt));

    json_t *js = json_object_get(v, "shape");
    if (!js) return tsr_error("%s: tensor '%s': missing \"shape\"", path, name);
    if (!json_is_array(js))
        return tsr_error("%s: tensor '%s': \"shape\" is not an array of non-negative integers", path,
                         name);
    size_t nd = json_array_size(js);
    if (nd > TSR_ST_MAX_DIMS)
        return tsr_error("%s: tensor '%s': \"shape\" has %zu dims, at most %d supported", path, name,
                         nd, TSR_ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++)
        if (json_nonneg(json_array_get(js, i), &t->shape[i]) != 0)
            return tsr_error("%s: tensor '%s': \"shape\" element %zu is not a non-negative integer",
                             path, name, i);
    t->numel = shape_numel(t->ndim, t->shape);
    char sb[256];
    if (t->numel < 0)
        return tsr_error("%s: tensor '%s': element count of shape %s overflows", path, name,
                         fmt_shape(sb, sizeof sb, t->ndim, t->shape));

    json_t *jo = json_object_get(v, "data_offsets");
    if (!jo) return tsr_error("%s: tensor '%s': missing \"data_offsets\"", path, name);
    int64_t b, e;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || json_nonneg(json_array_get(jo, 0), &b) ||
        json_nonneg(json_array_get(jo, 1), &e))
        return tsr_error("%s: tensor '%s': \"data_offsets\" is not [begin, end] with two "
                         "non-negative integers",
                         path, name);
    if (b > e)
        return tsr_error("%s: tensor '%s': \"data_offsets\" begin %" PRId64 " > end %" PRId64, path,
                         name, b, e);
    if ((uint64_t)e > data_len)
        return tsr_error("%s: tensor '%s': data_offsets end %" PRId64 " is beyond the data region "
                         "(%" PRIu64 " bytes; truncated file?)",
                         path, name, e, data_len);
    size_t ds = tsr_dtype_size(t->dtype);
    if (t->numel > INT64_MAX / (int64_t)ds)
        return tsr_error("%s: tensor '%s': byte size of shape %s overflows", path, name,
                         fmt_shape(sb, sizeof sb, t->ndim, t->shape));
    uint64_t need = (uint64_t)t->numel * ds;
    if ((uint64_t)(e - b) != need)
        return tsr_error("%s: tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] span %" PRIu64
                         " bytes but shape %s of %s needs %" PRIu64 " bytes",
                         path, name, b, e, (uint64_t)(e - b),
                         fmt_shape(sb, sizeof sb, t->ndim, t->shape), tsr_dtype_name(t->dtype),
                         need);
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e;
    return 0;
}

static int parse_metadata(const char *path, json_t *m, tsr_st_file *f) {
    if (!json_is_object(m))
        return tsr_error("%s: \"__metadata__\" is not an object of string values", path);
    size_t cnt = json_object_size(m);
    f->meta_keys = tsr_calloc(cnt, sizeof(char *));
    f->meta_vals = tsr_calloc(cnt, sizeof(char *));
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        if (!json_is_string(v))
            return tsr_error("%s: \"__metadata__\" value for key '%s' is not a string", path, k);
        f->meta_keys[f->nmeta] = dupstr(k);
        f->meta_vals[f->nmeta] = dupstr(json_string_value(v));
        f->nmeta++;
    }
    return 0;
}

static int cmp_by_begin(const void *a, const void *b) {
    const tsr_st_tensor *x = *(const tsr_st_tensor *const *)a, *y = *(const tsr_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Non-empty tensors must occupy disjoint byte ranges (empty ones occupy nothing). */
static int check_overlaps(const tsr_st_file *f) {
    if (f->n < 2) return 0;
    const tsr_st_tensor **ord = tsr_malloc((size_t)f->n * sizeof *ord);
    int m = 0;
    for (int i = 0; i < f->n; i++)
        if (f->t[i].end > f->t[i].begin) ord[m++] = &f->t[i];
    qsort(ord, (size_t)m, sizeof *ord, cmp_by_begin);
    int rc = 0;
    const tsr_st_tensor *far = NULL; /* the tensor reaching furthest so far */
    for (int i = 0; i < m; i++) {
        if (far && ord[i]->begin < far->end) {
            rc = tsr_error("%s: tensors '%s' (data_offsets [%" PRIu64 ", %" PRIu64
                           "]) and '%s' ([%" PRIu64 ", %" PRIu64 "]) overlap",
                           f->path, far->name, far->begin, far->end, ord[i]->name, ord[i]->begin,
                           ord[i]->end);
            break;
        }
        if (!far || ord[i]->end > far->end) far = ord[i];
    }
    free(ord);
    return rc;
}

/* ------------------------------------------------------------------ checksums
 *
 * Files tessera writes carry TSR_ST_CRC_KEY in "__metadata__" (the first key there): a string of n + 1
 * CRC-32 values (zlib), 8 lowercase hex digits each, separated by one space. The first covers the 8-byte
 * length and the whole header as written, with this value's digits read as '0'; the others cover
 * each tensor's data bytes, tensors taken in the order of their data offsets (the order written). */

static uint32_t crc_bytes(uint32_t crc, const uint8_t *p, uint64_t n) {
    while (n > 0) {
        size_t k = n > ((uint64_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
        crc = (uint32_t)crc32_z(crc, p, k);
        p += k;
        n -= k;
    }
    return crc;
}

/* 8 hex digits at p into *v; 0 / -1. */
static int parse_hex8(const char *p, uint32_t *v) {
    uint32_t x = 0;
    for (int i = 0; i < 8; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        x = (x << 4) | (uint32_t)d;
    }
    *v = x;
    return 0;
}

static int verify_checksums(tsr_st_file *f, uint64_t hlen) {
    const char *val = tsr_st_meta(f, TSR_ST_CRC_KEY);
    f->checksummed = 0;
    if (!val) return 0; /* files of other tools, and tessera's from before checksums: the caller decides */
    size_t vl = strlen(val), want = (size_t)(f->n + 1) * 9 - 1;
    if (vl != want)
        return tsr_error("%s: metadata '%s' is %zu characters long, expected %zu (%d CRC-32 values: the header "
                         "and %d tensors); the header is corrupt",
                         f->path, TSR_ST_CRC_KEY, vl, want, f->n + 1, f->n);
    uint32_t *crc = tsr_malloc((size_t)(f->n + 1) * sizeof *crc);
    int rc = 0;
    for (int i = 0; i <= f->n && rc == 0; i++)
        if (parse_hex8(val + 9 * (size_t)i, &crc[i]) != 0 || (i < f->n && val[9 * (size_t)i + 8] != ' '))
            rc = tsr_error("%s: metadata '%s' is not %d space-separated 8-digit hex CRC-32 values; the header is "
                           "corrupt", f->path, TSR_ST_CRC_KEY, f->n + 1);
    /* the header, with the value's characters as '0' */
    if (rc == 0) {
        static const char key[] = "\"" TSR_ST_CRC_KEY "\":\"";
        const char *h = (const char *)f->buf + 8, *at = NULL;
        for (uint64_t i = 0; i + sizeof key - 1 + vl <= hlen; i++)
            if (memcmp(h + i, key, sizeof key - 1) == 0) {
                at = h + i + sizeof key - 1;
                break;
            }
        if (!at || memcmp(at, val, vl) != 0) {
            rc = tsr_error("%s: metadata '%s' is not written as tessera writes it; the header cannot be "
                           "verified (rewritten by another tool?)", f->path, TSR_ST_CRC_KEY);
        } else {
            uint64_t pre = (uint64_t)(at - (const char *)f->buf);
            char *zeros = tsr_malloc(vl);
            memset(zeros, '0', vl);
            for (int i = 0; i < f->n; i++) zeros[9 * (size_t)i + 8] = ' ';
            uint32_t c = crc_bytes(0, f->buf, pre);
            c = crc_bytes(c, (const uint8_t *)zeros, vl);
            c = crc_bytes(c, f->buf + pre + vl, 8 + hlen - pre - vl);
            free(zeros);
            if (c != crc[0])
                rc = tsr_error("%s: the header (tensor table and metadata) fails its checksum (CRC-32 %08x, "
                               "recorded %08x): the file is corrupt", f->path, c, crc[0]);
        }
    }
    /* each tensor's bytes, in data order; pages are given back as soon as they are summed */
    if (rc == 0 && f->n > 0) {
        const tsr_st_tensor **ord = tsr_malloc((size_t)f->n * sizeof *ord);
        for (int i = 0; i < f->n; i++) ord[i] = &f->t[i];
        qsort(ord, (size_t)f->n, sizeof *ord, cmp_by_begin);
        for (int i = 0; i < f->n && rc == 0; i++) {
            const tsr_st_tensor *t = ord[i];
            uint32_t c = crc_bytes(0, f->buf + t->begin, t->end - t->begin);
            tsr_st_drop(f, t);
            if (c != crc[i + 1])
                rc = tsr_error("%s: tensor '%s' fails its checksum (CRC-32 %08x, recorded %08x): the file is "
                               "corrupt", f->path, t->name, c, crc[i + 1]);
        }
        free(ord);
    }
    free(crc);
    if (rc == 0) f->checksummed = 1;
    return rc;
}

/* The file's bytes into f->buf / f->size: mapped read-only (pages become resident only where read), or
 * read into memory when it cannot be mapped (an empty file, a file system without mmap). */
static int map_file(tsr_st_file *f, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return tsr_error("%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return tsr_error("%s: cannot open (%s)", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return tsr_error("%s: not a regular file", path);
    }
    void *p = st.st_size > 0 ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd); /* a mapping outlives its descriptor */
    if (p != MAP_FAILED) {
        f->buf = p;
        f->size = (size_t)st.st_size;
        f->mapped = 1;
        return 0;
    }
    char *raw = NULL;
    if (tsr_read_file(path, &raw, &f->size) != 0) return -1;
    f->buf = (uint8_t *)raw;
    return 0;
}

static int open_impl(tsr_st_file *f, const char *path) {
    f->path = dupstr(path);
    if (map_file(f, path) != 0) return -1;
    size_t size = f->size;
    if (size < 8)
        return tsr_error("%s: file is %zu bytes, too short for a safetensors header (need at least "
                         "8)",
                         path, size);
    uint64_t hlen;
    memcpy(&hlen, f->buf, 8);
    if (hlen > size - 8)
        return tsr_error("%s: header length %" PRIu64 " is larger than the rest of the file (%zu "
                         "bytes; truncated or not a safetensors file?)",
                         path, hlen, size - 8);
    uint64_t data_off = 8 + hlen, data_len = size - data_off;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->buf + 8, (size_t)hlen,
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root)
        return tsr_error("%s: header is not valid JSON: %s (line %d, column %d, header byte %d)",
                         path, jerr.text, jerr.line, jerr.column, jerr.position);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = tsr_error("%s: header is not a JSON object", path);
        goto done;
    }
    size_t cnt = json_object_size(root);
    if (cnt > (size_t)INT32_MAX) {
        rc = tsr_error("%s: too many header entries (%zu)", path, cnt);
        goto done;
    }
    f->t = tsr_calloc(cnt, sizeof *f->t);
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (strcmp(k, "__metadata__") == 0) {
            if ((rc = parse_metadata(path, v, f)) != 0) goto done;
            continue;
        }
        tsr_st_tensor *t = &f->t[f->n];
        if ((rc = parse_entry(path, k, v, data_len, t)) != 0) goto done;
        t->name = dupstr(k);
        f->n++;
    }
    for (int i = 0; i < f->n; i++) {
        f->t[i].begin += data_off;
        f->t[i].end += data_off;
    }
    rc = check_overlaps(f);
    if (rc == 0) rc = verify_checksums(f, hlen);
done:
    json_decref(root);
    return rc;
}

int tsr_st_open(tsr_st_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    if (open_impl(f, path) != 0) {
        tsr_st_close(f);
        return -1;
    }
    return 0;
}

const tsr_st_tensor *tsr_st_find(const tsr_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}

const char *tsr_st_meta(const tsr_st_file *f, const char *key) {
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

const void *tsr_st_data(const tsr_st_file *f, const tsr_st_tensor *t) { return f->buf + t->begin; }

void tsr_st_drop(const tsr_st_file *f, const tsr_st_tensor *t) {
    if (!f->mapped || t->end <= t->begin) return;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)(f->buf + t->begin), e = (uintptr_t)(f->buf + t->end);
    uintptr_t lo = (a + pg - 1) & ~(pg - 1), hi = e & ~(pg - 1);
    /* a private read-only file mapping: the pages are read again from the file when touched again */
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Common checks for the typed reads: tensor inside the buffer, element count matches. */
static int read_check(const tsr_st_file *f, const tsr_st_tensor *t, int64_t n, const char *what) {
    if (t->begin > t->end || t->end > f->size ||
        t->end - t->begin != (uint64_t)t->numel * tsr_dtype_size(t->dtype))
        return tsr_error("%s: tensor '%s': descriptor is inconsistent with the file", f->path,
                         t->name);
    if (n != t->numel)
        return tsr_error("%s: tensor '%s': element count mismatch reading as %s: expected %" PRId64
                         " (destination size), tensor has %" PRId64,
                         f->path, t->name, what, n, t->numel);
    return 0;
}

/* n float values of dtype dt at p into dst. */
static void to_f32(tsr_dtype dt, const uint8_t *p, float *dst, int64_t n) {
    switch (dt) {
    case TSR_DT_F32:
        if (n) memcpy(dst, p, (size_t)n * 4);
        break;
    case TSR_DT_F64:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        break;
    case TSR_DT_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = f16_to_f32(h);
        }
        break;
    case TSR_DT_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = bf16_to_f32(h);
        }
        break;
    default:
        break;
    }
}

int tsr_st_read_f32(const tsr_st_file *f, const tsr_st_tensor *t, float *dst, int64_t n) {
    if (!dt_is_float(t->dtype))
        return tsr_error("%s: tensor '%s' has dtype %s, cannot read it as float", f->path, t->name,
                         tsr_dtype_name(t->dtype));
    if (read_check(f, t, n, "float") != 0) return -1;
    to_f32(t->dtype, f->buf + t->begin, dst, n);
    return 0;
}

int tsr_st_read_f32_at(const tsr_st_file *f, const tsr_st_tensor *t, int64_t first, float *dst, int64_t n) {
    if (!dt_is_float(t->dtype))
        return tsr_error("%s: tensor '%s' has dtype %s, cannot read it as float", f->path, t->name,
                         tsr_dtype_name(t->dtype));
    if (read_check(f, t, t->numel, "float") != 0) return -1;
    if (first < 0 || n < 0 || first > t->numel - n)
        return tsr_error("%s: tensor '%s': elements [%" PRId64 ", %" PRId64 ") are outside its %" PRId64, f->path,
                         t->name, first, first + n, t->numel);
    to_f32(t->dtype, f->buf + t->begin + (uint64_t)first * tsr_dtype_size(t->dtype), dst, n);
    return 0;
}

int tsr_st_read_f64(const tsr_st_file *f, const tsr_st_tensor *t, double *dst, int64_t n) {
    if (!dt_is_float(t->dtype))
        return tsr_error("%s: tensor '%s' has dtype %s, cannot read it as double", f->path, t->name,
                         tsr_dtype_name(t->dtype));
    if (read_check(f, t, n, "double") != 0) return -1;
    const uint8_t *p = f->buf + t->begin;
    switch (t->dtype) {
    case TSR_DT_F64:
        if (n) memcpy(dst, p, (size_t)n * 8);
        break;
    case TSR_DT_F32:
        for (int64_t i = 0; i < n; i++) {
            float x;
            memcpy(&x, p + 4 * i, 4);
            dst[i] = (double)x;
        }
        break;
    case TSR_DT_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = (double)f16_to_f32(h);
        }
        break;
    case TSR_DT_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = (double)bf16_to_f32(h);
        }
        break;
    default:
        break;
    }
    return 0;
}

int tsr_st_read_i64(const tsr_st_file *f, const tsr_st_tensor *t, int64_t *dst, int64_t n) {
    if (dt_is_float(t->dtype) || (unsigned)t->dtype >= TSR_DT_COUNT)
        return tsr_error("%s: tensor '%s' has dtype %s, cannot read it as an integer", f->path,
                         t->name, tsr_dtype_name(t->dtype));
    if (read_check(f, t, n, "int64") != 0) return -1;
    const uint8_t *p = f->buf + t->begin;
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case TSR_DT_I64: memcpy(&dst[i], p + 8 * i, 8); break;
        case TSR_DT_I32: {
            int32_t x;
            memcpy(&x, p + 4 * i, 4);
            dst[i] = x;
            break;
        }
        case TSR_DT_I16: {
            int16_t x;
            memcpy(&x, p + 2 * i, 2);
            dst[i] = x;
            break;
        }
        case TSR_DT_I8: dst[i] = (int8_t)p[i]; break;
        case TSR_DT_U8: dst[i] = p[i]; break;
        case TSR_DT_BOOL: dst[i] = p[i] != 0; break;
        default: break;
        }
    }
    return 0;
}

const tsr_st_tensor *tsr_st_expect(const tsr_st_file *f, const char *name, int ndim,
                                   const int64_t *shape) {
    char want[256], got[256];
    if (ndim < 0 || ndim > TSR_ST_MAX_DIMS) {
        tsr_error("%s: tensor '%s': expected rank %d is invalid", f->path, name, ndim);
        return NULL;
    }
    fmt_shape(want, sizeof want, ndim, shape);
    const tsr_st_tensor *t = tsr_st_find(f, name);
    if (!t) {
        tsr_error("%s: tensor '%s' not found (expected shape %s)", f->path, name, want);
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        tsr_error("%s: tensor '%s' has shape %s, expected %s", f->path, name,
                  fmt_shape(got, sizeof got, t->ndim, t->shape), want);
        return NULL;
    }
    return t;
}

/* ------------------------------------------------------------------ writer */

typedef struct {
    char *name;
    tsr_dtype dtype;
    int ndim;
    int64_t shape[TSR_ST_MAX_DIMS];
    const void *data;
    tsr_st_fill_fn fill; /* or the bytes from fill(ctx, ...) at write time */
    void *ctx;
    uint64_t nbytes;
} wr_tensor;

struct tsr_st_writer {
    wr_tensor *t;
    int n, cap;
    char **mk, **mv;
    int nmeta, capmeta;
    int no_crc;     /* tsr_st_writer_no_checksums: a file in another tool's exact format */
    char err[1024]; /* first argument error from add/meta, reported by write */
};

void tsr_st_writer_no_checksums(tsr_st_writer *w) { w->no_crc = 1; }

tsr_st_writer *tsr_st_writer_new(void) { return tsr_calloc(1, sizeof(tsr_st_writer)); }

void tsr_st_writer_free(tsr_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    for (int i = 0; i < w->nmeta; i++) {
        free(w->mk[i]);
        free(w->mv[i]);
    }
    free(w->mk);
    free(w->mv);
    free(w);
}

static void writer_fail(tsr_st_writer *w, const char *fmt, ...) TSR_PRINTF(2, 3);
static void writer_fail(tsr_st_writer *w, const char *fmt, ...) {
    if (w->err[0]) return; /* keep the first */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
}

static void add_impl(tsr_st_writer *w, const char *name, tsr_dtype dt, int ndim, const int64_t *shape,
                     const void *data, tsr_st_fill_fn fill, void *ctx) {
    if (!name) {
        writer_fail(w, "tensor name is NULL");
        return;
    }
    if (strcmp(name, "__metadata__") == 0) {
        writer_fail(w, "tensor name '__metadata__' is reserved");
        return;
    }
    if ((unsigned)dt >= TSR_DT_COUNT) {
        writer_fail(w, "tensor '%s': invalid dtype %d", name, (int)dt);
        return;
    }
    if (ndim < 0 || ndim > TSR_ST_MAX_DIMS) {
        writer_fail(w, "tensor '%s': rank %d not in 0..%d", name, ndim, TSR_ST_MAX_DIMS);
        return;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) {
            writer_fail(w, "tensor '%s': negative dimension %" PRId64 " in shape", name, shape[i]);
            return;
        }
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0) {
            writer_fail(w, "duplicate tensor name '%s'", name);
            return;
        }
    int64_t numel = shape_numel(ndim, shape);
    size_t ds = tsr_dtype_size(dt);
    if (numel < 0 || numel > INT64_MAX / (int64_t)ds) {
        writer_fail(w, "tensor '%s': size overflows", name);
        return;
    }
    if (numel > 0 && !data && !fill) {
        writer_fail(w, "tensor '%s': data is NULL", name);
        return;
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 16;
        wr_tensor *nt = realloc(w->t, (size_t)w->cap * sizeof *nt);
        if (!nt) tsr_fatal("out of memory growing safetensors writer");
        w->t = nt;
    }
    wr_tensor *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    t->name = dupstr(name);
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = data;
    t->fill = fill;
    t->ctx = ctx;
    t->nbytes = (uint64_t)numel * ds;
}

void tsr_st_writer_add(tsr_st_writer *w, const char *name, tsr_dtype dt, int ndim, const int64_t *shape,
                       const void *data) {
    add_impl(w, name, dt, ndim, shape, data, NULL, NULL);
}

void tsr_st_writer_add_fill(tsr_st_writer *w, const char *name, tsr_dtype dt, int ndim, const int64_t *shape,
                            tsr_st_fill_fn fill, void *ctx) {
    if (!fill) {
        writer_fail(w, "tensor '%s': fill function is NULL", name ? name : "(null)");
        return;
    }
    add_impl(w, name, dt, ndim, shape, NULL, fill, ctx);
}

void tsr_st_writer_meta(tsr_st_writer *w, const char *key, const char *val) {
    if (!key || !val) {
        writer_fail(w, "metadata key or value is NULL");
        return;
    }
    if (strcmp(key, TSR_ST_CRC_KEY) == 0) {
        writer_fail(w, "metadata key '%s' is reserved (the writer adds the checksums)", key);
        return;
    }
    for (int i = 0; i < w->nmeta; i++)
        if (strcmp(w->mk[i], key) == 0) {
            writer_fail(w, "duplicate metadata key '%s'", key);
            return;
        }
    if (w->nmeta == w->capmeta) {
        w->capmeta = w->capmeta ? 2 * w->capmeta : 8;
        char **a = realloc(w->mk, (size_t)w->capmeta * sizeof *a);
        if (!a) tsr_fatal("out of memory growing safetensors writer");
        w->mk = a;
        a = realloc(w->mv, (size_t)w->capmeta * sizeof *a);
        if (!a) tsr_fatal("out of memory growing safetensors writer");
        w->mv = a;
    }
    w->mk[w->nmeta] = dupstr(key);
    w->mv[w->nmeta] = dupstr(val);
    w->nmeta++;
}

/* Build the JSON header (malloc'ed, unpadded). NULL with tsr_error on invalid UTF-8 etc. */
__attribute__((noinline)) static char *build_header(const tsr_st_writer *w, const char *path) {
    json_t *root = json_object();
    json_t *meta = NULL;
    char *out = NULL;
    if (!root) goto oom;
    meta = json_object();
    if (!meta) goto oom;
    if (!w->no_crc) {
        /* the checksums' place, first: '0's, filled in once the data is written (tsr_st_writer_write) */
        size_t cl = (size_t)(w->n + 1) * 9 - 1;
        char *zeros = tsr_malloc(cl + 1);
        memset(zeros, '0', cl);
        for (int i = 0; i < w->n; i++) zeros[9 * (size_t)i + 8] = ' ';
        zeros[cl] = 0;
        int r0 = json_object_set_new(meta, TSR_ST_CRC_KEY, json_string(zeros));
        free(zeros);
        if (r0 != 0) goto oom;
    }
    {
        for (int i = 0; i < w->nmeta; i++) {
            json_t *s = json_string(w->mv[i]);
            if (!s) {
                tsr_error("%s: metadata value for key '%s' is not valid UTF-8", path, w->mk[i]);
                goto fail;
            }
            if (json_object_set_new(meta, w->mk[i], s) != 0) {
                tsr_error("%s: metadata key '%s' is not valid UTF-8", path, w->mk[i]);
                goto fail;
            }
        }
        int r = json_object_set_new(root, "__metadata__", meta);
        meta = NULL; /* reference stolen, even on failure */
        if (r != 0) goto oom;
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const wr_tensor *t = &w->t[i];
        if (t->nbytes > (uint64_t)INT64_MAX - off) {
            tsr_error("%s: total tensor data size overflows", path);
            goto fail;
        }
        json_t *shape = json_array();
        int bad = !shape;
        for (int d = 0; !bad && d < t->ndim; d++)
            bad = json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) != 0;
        if (bad) {
            json_decref(shape);
            goto oom;
        }
        /* "o" steals the reference to shape, also when json_pack fails */
        json_t *e = json_pack("{s:s, s:o, s:[I, I]}", "dtype", tsr_dtype_name(t->dtype), "shape",
                              shape, "data_offsets", (json_int_t)off,
                              (json_int_t)(off + t->nbytes));
        if (!e) goto oom;
        if (json_object_set_new(root, t->name, e) != 0) {
            tsr_error("%s: tensor name '%s' is not valid UTF-8", path, t->name);
            goto fail;
        }
        off += t->nbytes;
    }
    out = json_dumps(root, JSON_COMPACT);
    if (!out) goto oom;
    json_decref(root);
    return out;
oom:
    tsr_error("%s: out of memory building the safetensors header", path);
fail:
    json_decref(meta);
    json_decref(root);
    return NULL;
}

/* Write n bytes in pieces of at most 1 GiB; 0 / -1 (the commit reports the error). */
static int write_all(tsr_atomic *a, const void *data, uint64_t n) {
    const uint8_t *p = data;
    while (n > 0) {
        size_t chunk = n > ((uint64_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
        if (tsr_atomic_write(a, p, chunk) != 0) return -1;
        p += chunk;
        n -= chunk;
    }
    return 0;
}

int tsr_st_writer_write(tsr_st_writer *w, const char *path) {
    if (w->err[0]) return tsr_error("%s: %s", path, w->err);
    char *hdr = build_header(w, path);
    if (!hdr) return -1;
    size_t hl = strlen(hdr);
    /* where the checksums go: the first occurrence of the key (the first key of "__metadata__", which
     * json_dumps writes before any tensor; a metadata value cannot hold it unescaped) */
    static const char ckey[] = "\"" TSR_ST_CRC_KEY "\":\"";
    size_t crc_at = 0, kl = sizeof ckey - 1;
    for (size_t i = 0; !w->no_crc && !crc_at && i + kl <= hl; i++)
        if (memcmp(hdr + i, ckey, kl) == 0) crc_at = 8 + i + kl;
    if (!crc_at && !w->no_crc) {
        free(hdr);
        return tsr_error("%s: internal error: no checksum field in the header", path);
    }
    size_t crc_len = (size_t)(w->n + 1) * 9 - 1;
    uint32_t *crcs = tsr_calloc((size_t)w->n + 1, sizeof *crcs);
    size_t padded = (hl + 7) & ~(size_t)7; /* 8 + padded is a multiple of 8 */
    uint8_t *head = tsr_malloc(8 + padded);
    uint64_t hl64 = padded;
    memcpy(head, &hl64, 8);
    memcpy(head + 8, hdr, hl);
    memset(head + 8 + hl, ' ', padded - hl);
    free(hdr);

    /* filled tensors pass through one buffer of at most FILL_CHUNK bytes (a multiple of every dtype's size) */
    enum { FILL_CHUNK = 1 << 22 };
    uint64_t most = 0;
    for (int i = 0; i < w->n; i++)
        if (w->t[i].fill && w->t[i].nbytes > most) most = w->t[i].nbytes;
    uint8_t *chunk = most ? tsr_malloc(most < FILL_CHUNK ? (size_t)most : FILL_CHUNK) : NULL;

    /* path.tmp.<pid>, fsync, rename, fsync of the directory (core/atomic.h) */
    int rc = -1, filled = 0;
    tsr_atomic a;
    if (tsr_atomic_begin(&a, path)) {
        crcs[0] = crc_bytes(0, head, 8 + padded);
        int ok = write_all(&a, head, 8 + padded) == 0;
        for (int i = 0; ok && i < w->n; i++) {
            const wr_tensor *t = &w->t[i];
            if (!t->fill) {
                if (t->nbytes) {
                    crcs[i + 1] = crc_bytes(0, t->data, t->nbytes);
                    ok = write_all(&a, t->data, t->nbytes) == 0;
                }
                continue;
            }
            for (uint64_t off = 0; ok && off < t->nbytes; off += FILL_CHUNK) {
                size_t len = t->nbytes - off < FILL_CHUNK ? (size_t)(t->nbytes - off) : FILL_CHUNK;
                if (t->fill(t->ctx, chunk, off, len) != 0) {
                    tsr_error_context("%s: tensor '%s'", path, t->name);
                    ok = 0;
                    filled = -1;
                } else {
                    crcs[i + 1] = crc_bytes(crcs[i + 1], chunk, len);
                    ok = write_all(&a, chunk, len) == 0;
                }
            }
        }
        if (ok && !w->no_crc) { /* the checksums into their place in the header */
            char *txt = tsr_malloc(crc_len + 2);
            for (int i = 0; i <= w->n; i++) snprintf(txt + 9 * (size_t)i, 10, "%08x ", crcs[i]);
            ok = fflush(a.fp) == 0 && fseek(a.fp, (long)crc_at, SEEK_SET) == 0 && write_all(&a, txt, crc_len) == 0 &&
                 fflush(a.fp) == 0 && fseek(a.fp, 0, SEEK_END) == 0;
            if (!ok && !a.err) a.err = errno ? errno : EIO;
            free(txt);
        }
        if (filled) tsr_atomic_abort(&a); /* keeps the fill's message; no temporary stays behind */
        else rc = tsr_atomic_commit(&a); /* reports a failed write above and removes the temporary */
    }
    free(chunk);
    free(head);
    free(crcs);
    return rc;
}
