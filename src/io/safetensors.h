/* safetensors.h: read and write the safetensors tensor container format.
 *
 * File layout: an 8-byte little-endian uint64 N, then N bytes of UTF-8 JSON (possibly padded with
 * trailing spaces), then the data region. The JSON object maps each tensor name to
 *   {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
 * with offsets relative to the start of the data region; the optional key "__metadata__" maps to
 * an object of string -> string.
 *
 * Reading: tsr_st_open maps the file read-only (or reads it into memory where it cannot be mapped) and
 * validates every entry (dtype, shape, offsets within the data region, byte counts, no overlaps, no
 * duplicate names) so that the accessors below never read out of bounds. Only the pages a reader touches
 * become resident, and tsr_st_drop gives a tensor's pages back once it has been read (loading a model
 * then never holds the whole file in memory). The file must not be truncated while it is open (files
 * written by tsr_st_writer_write are replaced by rename, which leaves an open mapping intact). Errors follow the common.h convention (0 / -1 plus
 * tsr_error); every message starts with the file path and names the tensor or field concerned.
 *
 * Writing: tsr_st_writer collects tensors (pointers to caller memory, not copied) and metadata and
 * writes them atomically (path.tmp.<pid>, fsync, rename). Tensors are stored in the order added,
 * and the header is padded with spaces so the data region starts 8-byte aligned.
 *
 * Byte order: the format is little-endian and the host must be too (checked at compile time). */
#ifndef TSR_IO_SAFETENSORS_H
#define TSR_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TSR_DT_F32,
    TSR_DT_F16,
    TSR_DT_BF16,
    TSR_DT_F64,
    TSR_DT_I64,
    TSR_DT_I32,
    TSR_DT_I16,
    TSR_DT_I8,
    TSR_DT_U8,
    TSR_DT_BOOL
} tsr_dtype;
#define TSR_DT_COUNT 10

/* "F32", "F16", ... ("?" for an out-of-range value). */
const char *tsr_dtype_name(tsr_dtype dt);
/* Bytes per element (0 for an out-of-range value). */
size_t tsr_dtype_size(tsr_dtype dt);
/* Parse a dtype name ("F32", ...). Returns 0 and sets *dt, or -1 (no tsr_error) if unknown. */
int tsr_dtype_from_name(const char *name, tsr_dtype *dt);

#define TSR_ST_MAX_DIMS 8

typedef struct {
    char *name;
    tsr_dtype dtype;
    int ndim;
    int64_t shape[TSR_ST_MAX_DIMS];
    uint64_t begin, end; /* absolute byte offsets in the file (end exclusive) */
    int64_t numel;       /* product of shape (1 for a scalar, 0 if any dim is 0) */
} tsr_st_tensor;

typedef struct {
    char *path;
    uint8_t *buf; /* the whole file: mapped (mapped 1, read-only) or read into memory */
    size_t size;
    int mapped;
    int n;            /* number of tensors */
    tsr_st_tensor *t; /* in header order (the order they were written) */
    int nmeta;
    char **meta_keys;
    char **meta_vals;
    int checksummed;  /* 1: the file carried TSR_ST_CRC_KEY and every checksum matched; 0: it had none */
} tsr_st_file;

/* Checksums (CRC-32, zlib) that tsr_st_writer_write puts in "__metadata__" under this key, as a string
 * (the file stays valid safetensors): the header's, then each tensor's data, 8 hex digits each, separated
 * by spaces. tsr_st_open verifies them when present and refuses a mismatch naming the file and the tensor
 * (or the header); a file without the key (other tools' files, tessera's from before checksums) is read
 * unverified, with checksummed = 0, and its loader decides. */
#define TSR_ST_CRC_KEY "tessera_crc32"

/* Read and validate path. 0 / -1 (tsr_error). On failure *f is left zeroed (closing it is safe). */
int tsr_st_open(tsr_st_file *f, const char *path);
/* Free everything and zero *f. Safe on a zeroed or already closed struct. */
void tsr_st_close(tsr_st_file *f);
/* Tensor by name, NULL if absent. */
const tsr_st_tensor *tsr_st_find(const tsr_st_file *f, const char *name);
/* Metadata value by key, NULL if absent. */
const char *tsr_st_meta(const tsr_st_file *f, const char *key);
/* Raw little-endian bytes of a tensor (t->end - t->begin of them; not necessarily aligned). */
const void *tsr_st_data(const tsr_st_file *f, const tsr_st_tensor *t);

/* Copy a tensor into dst converting to float / double. F32, F16, BF16 and F64 are accepted
 * (F64 -> float rounds to nearest; F16/BF16 conversions are exact); integer dtypes are refused.
 * n = number of elements dst holds; it must equal t->numel. 0 / -1 (tsr_error). */
int tsr_st_read_f32(const tsr_st_file *f, const tsr_st_tensor *t, float *dst, int64_t n);
int tsr_st_read_f64(const tsr_st_file *f, const tsr_st_tensor *t, double *dst, int64_t n);
/* Elements [first, first + n) of a tensor as float (dtypes as tsr_st_read_f32). 0 / -1 (tsr_error). */
int tsr_st_read_f32_at(const tsr_st_file *f, const tsr_st_tensor *t, int64_t first, float *dst, int64_t n);
/* Done with a tensor's bytes: the whole pages of a mapped file that hold only them stop being resident
 * (they are read from the file again if touched again). Nothing for a file read into memory. */
void tsr_st_drop(const tsr_st_file *f, const tsr_st_tensor *t);
/* Integer read: I64, I32, I16, I8, U8, BOOL (BOOL bytes read as 0 / 1); float dtypes refused. */
int tsr_st_read_i64(const tsr_st_file *f, const tsr_st_tensor *t, int64_t *dst, int64_t n);

/* Check that tensor `name` exists with exactly this shape (ndim dims). Returns the tensor, or NULL
 * with tsr_error set, e.g. "ckpt.safetensors: tensor 'blocks.0.attn.qkv.weight' has shape
 * [96, 32], expected [96, 16]". The dtype is not checked. */
const tsr_st_tensor *tsr_st_expect(const tsr_st_file *f, const char *name, int ndim,
                                   const int64_t *shape);

/* Writer. Argument problems found by add/meta (duplicate name, bad shape, NULL data with a
 * non-empty shape, ...) are remembered and reported by tsr_st_writer_write, which then writes
 * nothing. Strings (names, keys, values) are copied; tensor data is not and must stay valid until
 * the write. Metadata is written as "__metadata__" first, then tensors in the order added. */
typedef struct tsr_st_writer tsr_st_writer;
tsr_st_writer *tsr_st_writer_new(void);
/* Write no TSR_ST_CRC_KEY: for files that must be exactly another tool's format (peft's adapter files). */
void tsr_st_writer_no_checksums(tsr_st_writer *w);
void tsr_st_writer_add(tsr_st_writer *w, const char *name, tsr_dtype dt, int ndim,
                       const int64_t *shape, const void *data);
/* A tensor whose bytes are produced at write time, in order, a piece at a time (at most 4 MiB, offsets and
 * lengths multiples of 8): fill(ctx, dst, offset, n) writes bytes [offset, offset + n) of the tensor's data
 * into dst and returns 0, or -1 with tsr_error set, which makes the write fail (no file is left behind;
 * the message gets "path: tensor 'name': " in front). For data too large to hold in memory at once. */
typedef int (*tsr_st_fill_fn)(void *ctx, void *dst, uint64_t offset, size_t n);
void tsr_st_writer_add_fill(tsr_st_writer *w, const char *name, tsr_dtype dt, int ndim,
                            const int64_t *shape, tsr_st_fill_fn fill, void *ctx);
void tsr_st_writer_meta(tsr_st_writer *w, const char *key, const char *val);
int tsr_st_writer_write(tsr_st_writer *w, const char *path); /* 0 / -1 (tsr_error) */
void tsr_st_writer_free(tsr_st_writer *w);                    /* NULL-safe */

#endif
