/* test_safetensors.c: unit tests for src/io/safetensors.{h,c} (cmocka). */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common.h"
#include "io/safetensors.h"

/* ------------------------------------------------------------------ helpers */

static char g_dir[64]; /* mkdtemp directory, removed by the group teardown */

static void mkpath(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", g_dir, name);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (n) assert_int_equal(fwrite(data, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

/* A safetensors file with header length field hlen (normally strlen(json)), header json and a data
 * region of ndata bytes (copied from data, or a 0..255 byte pattern when data is NULL). */
static void write_st(const char *path, uint64_t hlen, const char *json, const void *data,
                     size_t ndata) {
    size_t jl = strlen(json);
    uint8_t *buf = malloc(8 + jl + ndata + 1);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hlen >> (8 * i)); /* little-endian */
    memcpy(buf + 8, json, jl);
    for (size_t i = 0; i < ndata; i++)
        buf[8 + jl + i] = data ? ((const uint8_t *)data)[i] : (uint8_t)i;
    write_bytes(path, buf, 8 + jl + ndata);
    free(buf);
}

static void read_whole(const char *path, uint8_t **data, size_t *n) {
    char *p = NULL;
    assert_int_equal(tsr_read_file(path, &p, n), 0);
    *data = (uint8_t *)p;
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Assert the last error starts with "<path>: " and contains every non-NULL needle. */
static void check_error(const char *path, const char *const *needles, int nn) {
    const char *msg = tsr_last_error();
    char prefix[600];
    snprintf(prefix, sizeof prefix, "%s: ", path);
    if (!starts_with(msg, prefix)) fail_msg("error does not start with '%s': %s", prefix, msg);
    for (int i = 0; i < nn; i++)
        if (needles[i] && !strstr(msg, needles[i]))
            fail_msg("error lacks '%s': %s", needles[i], msg);
}

static int count_dir_entries(const char *dir, int *n_tmp) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    *n_tmp = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        n++;
        if (strstr(e->d_name, ".tmp")) (*n_tmp)++;
    }
    closedir(d);
    return n;
}

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int group_setup(void **state) {
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_st_test_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state) {
    rm_tree(g_dir);
    return 0;
}

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float f32_from(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* ------------------------------------------------------------------ dtype table */

static void test_dtype_names_sizes(void **state) {
    static const char *names[] = {"F32", "F16", "BF16", "F64", "I64",
                                  "I32", "I16", "I8",   "U8",  "BOOL"};
    static const size_t sizes[] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};
    for (int i = 0; i < TSR_DT_COUNT; i++) {
        assert_string_equal(tsr_dtype_name((tsr_dtype)i), names[i]);
        assert_int_equal(tsr_dtype_size((tsr_dtype)i), sizes[i]);
        tsr_dtype dt;
        assert_int_equal(tsr_dtype_from_name(names[i], &dt), 0);
        assert_int_equal(dt, i);
    }
    tsr_dtype dt;
    assert_int_equal(tsr_dtype_from_name("F8_E4M3", &dt), -1);
    assert_int_equal(tsr_dtype_from_name("f32", &dt), -1);
}

/* ------------------------------------------------------------------ round trip */

static void test_round_trip(void **state) {
    char path[256];
    mkpath(path, sizeof path, "roundtrip.safetensors");

    const float f32[8] = {1.0f, -0.0f, 3.4028235e38f, f32_from(0x00000001u), INFINITY,
                          f32_from(0x7fc12345u), f32_from(0xffa00001u), 0.1f};
    const int64_t f32_shape[2] = {2, 4};
    const double f64[3] = {3.141592653589793, -0.0, 1e-310};
    const int64_t f64_shape[1] = {3};
    const int64_t i64[4] = {INT64_MIN, INT64_MAX, -1, 0};
    const int64_t i64_shape[2] = {2, 2};
    const uint8_t u8[5] = {0, 1, 127, 128, 255};
    const int64_t u8_shape[1] = {5};
    const float scalar = 42.5f;
    const int64_t empty_shape[2] = {0, 3};
    const char *weird = "weird \"name\" \\ with/slash";
    const char *note = "quote \" backslash \\ newline \n tab \t unicode \xc3\xa9 \xe2\x9c\x93";

    tsr_st_writer *w = tsr_st_writer_new();
    tsr_st_writer_meta(w, "format", "pt");
    tsr_st_writer_add(w, "floats", TSR_DT_F32, 2, f32_shape, f32);
    tsr_st_writer_add(w, "doubles", TSR_DT_F64, 1, f64_shape, f64);
    tsr_st_writer_add(w, "ints", TSR_DT_I64, 2, i64_shape, i64);
    tsr_st_writer_add(w, "bytes", TSR_DT_U8, 1, u8_shape, u8);
    tsr_st_writer_add(w, "scalar", TSR_DT_F32, 0, NULL, &scalar);
    tsr_st_writer_add(w, "empty", TSR_DT_F32, 2, empty_shape, NULL);
    tsr_st_writer_add(w, weird, TSR_DT_U8, 1, u8_shape, u8);
    tsr_st_writer_meta(w, "note", note);
    if (tsr_st_writer_write(w, path) != 0) fail_msg("write: %s", tsr_last_error());
    tsr_st_writer_free(w);

    /* raw layout: header length multiple of 8, padding is spaces, data region 8-aligned */
    uint8_t *raw;
    size_t rawn;
    read_whole(path, &raw, &rawn);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)raw[i] << (8 * i);
    assert_int_equal(hlen % 8, 0);
    assert_true(8 + hlen <= rawn);
    assert_int_equal(raw[8], '{');
    size_t k = 8 + hlen;
    while (raw[k - 1] == ' ') k--;
    assert_int_equal(raw[k - 1], '}');
    assert_true(8 + hlen - k < 8);
    size_t ndata = sizeof f32 + sizeof f64 + sizeof i64 + 2 * sizeof u8 + sizeof scalar;
    assert_int_equal(rawn, 8 + hlen + ndata);
    free(raw);

    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) fail_msg("open: %s", tsr_last_error());
    assert_string_equal(f.path, path);
    assert_int_equal(f.n, 7);
    static const char *order[] = {"floats", "doubles", "ints", "bytes", "scalar", "empty", NULL};
    for (int i = 0; i < 6; i++) assert_string_equal(f.t[i].name, order[i]);
    assert_string_equal(f.t[6].name, weird);
    assert_int_equal(f.t[0].begin, 8 + hlen);
    assert_int_equal(f.t[0].begin % 8, 0);
    for (int i = 1; i < f.n; i++) assert_int_equal(f.t[i].begin, f.t[i - 1].end); /* in order */

    /* metadata */
    assert_int_equal(f.nmeta, 3); /* and the checksums */
    assert_int_equal(f.checksummed, 1);
    assert_string_equal(tsr_st_meta(&f, "format"), "pt");
    assert_string_equal(tsr_st_meta(&f, "note"), note);
    assert_null(tsr_st_meta(&f, "absent"));
    assert_null(tsr_st_find(&f, "absent"));

    /* F32: descriptor, raw bytes and read_f32 bitwise */
    const tsr_st_tensor *t = tsr_st_find(&f, "floats");
    assert_non_null(t);
    assert_int_equal(t->dtype, TSR_DT_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 4);
    assert_int_equal(t->numel, 8);
    assert_int_equal(t->end - t->begin, sizeof f32);
    assert_memory_equal(tsr_st_data(&f, t), f32, sizeof f32);
    float fo[8];
    assert_int_equal(tsr_st_read_f32(&f, t, fo, 8), 0);
    assert_memory_equal(fo, f32, sizeof f32);
    double fd[8];
    assert_int_equal(tsr_st_read_f64(&f, t, fd, 8), 0);
    for (int i = 0; i < 8; i++) {
        if (isnan(f32[i]))
            assert_true(isnan(fd[i]));
        else
            assert_memory_equal(&(double){(double)f32[i]}, &fd[i], sizeof(double));
    }

    /* F64 */
    t = tsr_st_find(&f, "doubles");
    assert_non_null(t);
    assert_int_equal(t->dtype, TSR_DT_F64);
    assert_int_equal(t->numel, 3);
    double d[3];
    assert_int_equal(tsr_st_read_f64(&f, t, d, 3), 0);
    assert_memory_equal(d, f64, sizeof f64);
    float df[3];
    assert_int_equal(tsr_st_read_f32(&f, t, df, 3), 0);
    for (int i = 0; i < 3; i++) assert_int_equal(f32_bits(df[i]), f32_bits((float)f64[i]));

    /* I64 */
    t = tsr_st_find(&f, "ints");
    assert_non_null(t);
    assert_int_equal(t->dtype, TSR_DT_I64);
    int64_t iv[4];
    assert_int_equal(tsr_st_read_i64(&f, t, iv, 4), 0);
    assert_memory_equal(iv, i64, sizeof i64);

    /* U8 (and the escaped name) */
    for (int which = 0; which < 2; which++) {
        t = tsr_st_find(&f, which ? weird : "bytes");
        assert_non_null(t);
        assert_int_equal(t->dtype, TSR_DT_U8);
        assert_memory_equal(tsr_st_data(&f, t), u8, sizeof u8);
        int64_t uv[5];
        assert_int_equal(tsr_st_read_i64(&f, t, uv, 5), 0);
        for (int i = 0; i < 5; i++) assert_int_equal(uv[i], u8[i]);
    }

    /* scalar and empty tensor */
    t = tsr_st_find(&f, "scalar");
    assert_non_null(t);
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    float sv = 0;
    assert_int_equal(tsr_st_read_f32(&f, t, &sv, 1), 0);
    assert_true(sv == 42.5f);
    t = tsr_st_find(&f, "empty");
    assert_non_null(t);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 0);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->end, t->begin);
    assert_int_equal(tsr_st_read_f32(&f, t, &sv, 0), 0);

    tsr_st_close(&f);
    assert_null(f.buf);
    assert_int_equal(f.n, 0);
    tsr_st_close(&f); /* closing twice is safe */
}

/* ------------------------------------------------------------------ typed-read errors */

static void test_read_errors(void **state) {
    char path[256];
    mkpath(path, sizeof path, "readerr.safetensors");
    const float fl[6] = {1, 2, 3, 4, 5, 6};
    const int64_t sh[2] = {2, 3};
    const int32_t i32[6] = {-1, 2, -3, 4, INT32_MIN, INT32_MAX};
    const int16_t i16[6] = {-1, 2, -3, 4, INT16_MIN, INT16_MAX};
    const int8_t i8[6] = {-1, 2, -3, 4, INT8_MIN, INT8_MAX};
    const uint8_t bo[6] = {0, 1, 0, 1, 1, 0};
    tsr_st_writer *w = tsr_st_writer_new();
    tsr_st_writer_add(w, "weights", TSR_DT_F32, 2, sh, fl);
    tsr_st_writer_add(w, "i32", TSR_DT_I32, 2, sh, i32);
    tsr_st_writer_add(w, "i16", TSR_DT_I16, 2, sh, i16);
    tsr_st_writer_add(w, "i8", TSR_DT_I8, 2, sh, i8);
    tsr_st_writer_add(w, "mask", TSR_DT_BOOL, 2, sh, bo);
    assert_int_equal(tsr_st_writer_write(w, path), 0);
    tsr_st_writer_free(w);

    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, path), 0);
    int64_t iv[6];
    float fv[6];
    double dv[6];

    /* integer dtypes refused for float reads, float dtypes refused for integer reads */
    const char *n1[] = {"'i32'", "I32", "float"};
    assert_int_equal(tsr_st_read_f32(&f, tsr_st_find(&f, "i32"), fv, 6), -1);
    check_error(path, n1, 3);
    const char *n2[] = {"'mask'", "BOOL", "double"};
    assert_int_equal(tsr_st_read_f64(&f, tsr_st_find(&f, "mask"), dv, 6), -1);
    check_error(path, n2, 3);
    const char *n3[] = {"'weights'", "F32", "integer"};
    assert_int_equal(tsr_st_read_i64(&f, tsr_st_find(&f, "weights"), iv, 6), -1);
    check_error(path, n3, 3);

    /* wrong destination size: names tensor, expected and actual counts */
    const char *n4[] = {"'weights'", "expected 5", "has 6"};
    assert_int_equal(tsr_st_read_f32(&f, tsr_st_find(&f, "weights"), fv, 5), -1);
    check_error(path, n4, 3);
    const char *n5[] = {"'weights'", "expected 7", "has 6"};
    assert_int_equal(tsr_st_read_f64(&f, tsr_st_find(&f, "weights"), dv, 7), -1);
    check_error(path, n5, 3);
    const char *n6[] = {"'i8'", "expected 0", "has 6"};
    assert_int_equal(tsr_st_read_i64(&f, tsr_st_find(&f, "i8"), iv, 0), -1);
    check_error(path, n6, 3);

    /* all integer dtypes widen correctly */
    assert_int_equal(tsr_st_read_i64(&f, tsr_st_find(&f, "i32"), iv, 6), 0);
    for (int i = 0; i < 6; i++) assert_int_equal(iv[i], i32[i]);
    assert_int_equal(tsr_st_read_i64(&f, tsr_st_find(&f, "i16"), iv, 6), 0);
    for (int i = 0; i < 6; i++) assert_int_equal(iv[i], i16[i]);
    assert_int_equal(tsr_st_read_i64(&f, tsr_st_find(&f, "i8"), iv, 6), 0);
    for (int i = 0; i < 6; i++) assert_int_equal(iv[i], i8[i]);
    assert_int_equal(tsr_st_read_i64(&f, tsr_st_find(&f, "mask"), iv, 6), 0);
    for (int i = 0; i < 6; i++) assert_int_equal(iv[i], bo[i]);
    tsr_st_close(&f);
}

/* ------------------------------------------------------------------ F16 / BF16 */

/* Independent reference for binary16 values, through double arithmetic. */
static double f16_ref(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

/* Header for one 1-D tensor of n elements; deliberately unpadded so the data is unaligned. */
static void write_half_file(const char *path, const char *dtype, const uint16_t *vals, int n) {
    char json[256];
    snprintf(json, sizeof json,
             "{\"h\":{\"dtype\":\"%s\",\"shape\":[%d],\"data_offsets\":[0,%d]}}", dtype, n, 2 * n);
    uint8_t *bytes = malloc(2 * (size_t)n);
    assert_non_null(bytes);
    for (int i = 0; i < n; i++) {
        bytes[2 * i] = (uint8_t)(vals[i] & 0xff); /* little-endian */
        bytes[2 * i + 1] = (uint8_t)(vals[i] >> 8);
    }
    write_st(path, strlen(json), json, bytes, 2 * (size_t)n);
    free(bytes);
}

static void test_f16_known_values(void **state) {
    char path[256];
    mkpath(path, sizeof path, "f16.safetensors");
    const uint16_t h[] = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x8001,
                          0x7C00, 0xFC00, 0x8000, 0x3555, 0x7E00};
    const float want[] = {1.0f,
                          -2.5f,
                          65504.0f,
                          5.9604644775390625e-08f, /* 2^-24, smallest subnormal */
                          6.0975551605224609e-05f, /* 1023 * 2^-24, largest subnormal */
                          6.103515625e-05f,        /* 2^-14, smallest normal */
                          -5.9604644775390625e-08f,
                          INFINITY,
                          -INFINITY,
                          -0.0f,
                          0.333251953125f,
                          NAN};
    const int n = (int)(sizeof h / sizeof h[0]);
    write_half_file(path, "F16", h, n);
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) fail_msg("open: %s", tsr_last_error());
    const tsr_st_tensor *t = tsr_st_find(&f, "h");
    assert_non_null(t);
    assert_int_equal(t->dtype, TSR_DT_F16);
    float out[16];
    double outd[16];
    assert_int_equal(tsr_st_read_f32(&f, t, out, n), 0);
    assert_int_equal(tsr_st_read_f64(&f, t, outd, n), 0);
    for (int i = 0; i < n - 1; i++) {
        if (f32_bits(out[i]) != f32_bits(want[i]))
            fail_msg("F16 0x%04x -> %a (0x%08x), want %a", h[i], (double)out[i],
                     f32_bits(out[i]), (double)want[i]);
        assert_true(outd[i] == (double)want[i] || (isinf(outd[i]) && isinf(want[i])));
        assert_int_equal(signbit(outd[i]) != 0, signbit(want[i]) != 0);
    }
    assert_true(isnan(out[n - 1]));
    assert_int_equal(f32_bits(out[n - 1]), 0x7FC00000u); /* quiet nan, payload kept */
    assert_true(isnan(outd[n - 1]));
    tsr_st_close(&f);
}

static void test_f16_exhaustive(void **state) {
    char path[256];
    mkpath(path, sizeof path, "f16_all.safetensors");
    uint16_t *h = malloc(65536 * sizeof *h);
    float *out = malloc(65536 * sizeof *out);
    assert_non_null(h);
    assert_non_null(out);
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    write_half_file(path, "F16", h, 65536);
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, path), 0);
    assert_int_equal(tsr_st_read_f32(&f, tsr_st_find(&f, "h"), out, 65536), 0);
    for (int i = 0; i < 65536; i++) {
        double r = f16_ref((uint16_t)i);
        if (isnan(r)) {
            uint32_t want = ((uint32_t)(i & 0x8000) << 16) | 0x7F800000u | ((uint32_t)(i & 0x3ff) << 13);
            if (f32_bits(out[i]) != want) fail_msg("F16 nan 0x%04x -> 0x%08x", i, f32_bits(out[i]));
        } else if (f32_bits(out[i]) != f32_bits((float)r)) {
            fail_msg("F16 0x%04x -> %a, want %a", i, (double)out[i], r);
        }
    }
    tsr_st_close(&f);
    free(h);
    free(out);
}

static void test_bf16_known_values(void **state) {
    char path[256];
    mkpath(path, sizeof path, "bf16.safetensors");
    const uint16_t h[] = {0x3F80, 0xC020, 0x477F, 0x0001, 0x0080, 0x7F80, 0xFF80, 0x8000, 0x7F7F};
    const float want[] = {1.0f,
                          -2.5f,
                          65280.0f,              /* nearest BF16 below 65504 */
                          9.18354961579912e-41f, /* 2^-133, smallest subnormal */
                          1.1754943508222875e-38f, /* 2^-126, smallest normal */
                          INFINITY,
                          -INFINITY,
                          -0.0f,
                          3.3895313892515355e38f}; /* largest finite */
    const int n = (int)(sizeof h / sizeof h[0]);
    write_half_file(path, "BF16", h, n);
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) fail_msg("open: %s", tsr_last_error());
    const tsr_st_tensor *t = tsr_st_find(&f, "h");
    assert_non_null(t);
    assert_int_equal(t->dtype, TSR_DT_BF16);
    float out[16];
    assert_int_equal(tsr_st_read_f32(&f, t, out, n), 0);
    for (int i = 0; i < n; i++)
        if (f32_bits(out[i]) != f32_bits(want[i]))
            fail_msg("BF16 0x%04x -> %a, want %a", h[i], (double)out[i], (double)want[i]);
    tsr_st_close(&f);

    /* every BF16 pattern is the top half of the f32 (nan payloads included) */
    uint16_t *all = malloc(65536 * sizeof *all);
    float *o = malloc(65536 * sizeof *o);
    double *od = malloc(65536 * sizeof *od);
    assert_non_null(all);
    assert_non_null(o);
    assert_non_null(od);
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    write_half_file(path, "BF16", all, 65536);
    assert_int_equal(tsr_st_open(&f, path), 0);
    assert_int_equal(tsr_st_read_f32(&f, tsr_st_find(&f, "h"), o, 65536), 0);
    assert_int_equal(tsr_st_read_f64(&f, tsr_st_find(&f, "h"), od, 65536), 0);
    for (int i = 0; i < 65536; i++) {
        assert_int_equal(f32_bits(o[i]), (uint32_t)i << 16);
        assert_true(isnan(o[i]) ? isnan(od[i]) : od[i] == (double)o[i]);
    }
    tsr_st_close(&f);
    free(all);
    free(o);
    free(od);
}

/* ------------------------------------------------------------------ tsr_st_expect */

static void test_expect_shape(void **state) {
    char path[256];
    mkpath(path, sizeof path, "ckpt.safetensors");
    float *wq = calloc(96 * 32, sizeof *wq);
    assert_non_null(wq);
    const int64_t sh[2] = {96, 32};
    const float s = 1.0f;
    tsr_st_writer *w = tsr_st_writer_new();
    tsr_st_writer_add(w, "blocks.0.attn.qkv.weight", TSR_DT_F32, 2, sh, wq);
    tsr_st_writer_add(w, "scale", TSR_DT_F32, 0, NULL, &s);
    assert_int_equal(tsr_st_writer_write(w, path), 0);
    tsr_st_writer_free(w);
    free(wq);

    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, path), 0);
    const tsr_st_tensor *t = tsr_st_expect(&f, "blocks.0.attn.qkv.weight", 2, sh);
    assert_non_null(t);
    assert_ptr_equal(t, tsr_st_find(&f, "blocks.0.attn.qkv.weight"));
    assert_non_null(tsr_st_expect(&f, "scale", 0, NULL));

    char want[512];
    const int64_t bad[2] = {96, 16};
    assert_null(tsr_st_expect(&f, "blocks.0.attn.qkv.weight", 2, bad));
    snprintf(want, sizeof want,
             "%s: tensor 'blocks.0.attn.qkv.weight' has shape [96, 32], expected [96, 16]", path);
    assert_string_equal(tsr_last_error(), want);

    const int64_t rank1[1] = {96};
    assert_null(tsr_st_expect(&f, "blocks.0.attn.qkv.weight", 1, rank1));
    snprintf(want, sizeof want,
             "%s: tensor 'blocks.0.attn.qkv.weight' has shape [96, 32], expected [96]", path);
    assert_string_equal(tsr_last_error(), want);

    assert_null(tsr_st_expect(&f, "scale", 1, rank1));
    snprintf(want, sizeof want, "%s: tensor 'scale' has shape [], expected [96]", path);
    assert_string_equal(tsr_last_error(), want);

    assert_null(tsr_st_expect(&f, "blocks.1.attn.qkv.weight", 2, sh));
    const char *nf[] = {"'blocks.1.attn.qkv.weight'", "not found", "[96, 32]"};
    check_error(path, nf, 3);
    tsr_st_close(&f);
}

/* ------------------------------------------------------------------ writer */

static void test_overwrite_no_temp_left(void **state) {
    char dir[256], path[300];
    mkpath(dir, sizeof dir, "overwrite");
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);

    const float a[4] = {1, 2, 3, 4};
    const int64_t sa[1] = {4};
    tsr_st_writer *w = tsr_st_writer_new();
    tsr_st_writer_add(w, "a", TSR_DT_F32, 1, sa, a);
    assert_int_equal(tsr_st_writer_write(w, path), 0);
    tsr_st_writer_free(w);

    const double b[2] = {5, 6};
    const int64_t sb[1] = {2};
    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "b", TSR_DT_F64, 1, sb, b);
    tsr_st_writer_meta(w, "version", "2");
    assert_int_equal(tsr_st_writer_write(w, path), 0);
    /* writing the same writer twice is fine too */
    assert_int_equal(tsr_st_writer_write(w, path), 0);
    tsr_st_writer_free(w);

    int ntmp;
    assert_int_equal(count_dir_entries(dir, &ntmp), 1);
    assert_int_equal(ntmp, 0);

    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, path), 0);
    assert_int_equal(f.n, 1);
    assert_null(tsr_st_find(&f, "a"));
    double bd[2];
    assert_int_equal(tsr_st_read_f64(&f, tsr_st_find(&f, "b"), bd, 2), 0);
    assert_memory_equal(bd, b, sizeof b);
    assert_string_equal(tsr_st_meta(&f, "version"), "2");
    tsr_st_close(&f);

    /* a writer with an argument error writes nothing: the old file survives, no temp appears */
    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "x", TSR_DT_F32, 1, sa, a);
    tsr_st_writer_add(w, "x", TSR_DT_F32, 1, sa, a);
    assert_int_equal(tsr_st_writer_write(w, path), -1);
    tsr_st_writer_free(w);
    assert_int_equal(count_dir_entries(dir, &ntmp), 1);
    assert_int_equal(ntmp, 0);
    assert_int_equal(tsr_st_open(&f, path), 0);
    assert_non_null(tsr_st_find(&f, "b"));
    tsr_st_close(&f);

    /* unwritable destination: error names the path, nothing left behind */
    char bad[400];
    snprintf(bad, sizeof bad, "%s/no_such_dir/model.safetensors", dir);
    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "a", TSR_DT_F32, 1, sa, a);
    assert_int_equal(tsr_st_writer_write(w, bad), -1);
    tsr_st_writer_free(w);
    const char *nd[] = {"cannot create"};
    check_error(bad, nd, 1);
    assert_int_equal(count_dir_entries(dir, &ntmp), 1);
}

static void expect_writer_error(const char *file, tsr_st_writer *w, const char *needle) {
    char path[256];
    mkpath(path, sizeof path, file);
    assert_int_equal(tsr_st_writer_write(w, path), -1);
    const char *n[] = {needle};
    check_error(path, n, 1);
    assert_int_not_equal(access(path, F_OK), 0); /* nothing written */
    tsr_st_writer_free(w);
}

/* ------------------------------------------------------------------ filled tensors, ranges, dropped pages */

/* value i of the filled tensors */
static float fill_value(uint64_t i) { return (float)(i % 1000003) * 0.5f - 7.0f; }

typedef struct {
    tsr_dtype dt;
    uint64_t next;    /* the offset the next call must ask for (in order, no gaps) */
    int calls, fail_at; /* fail_at: that call fails (0: none) */
} fill_state;

static int fill_fn(void *ctx, void *dst, uint64_t off, size_t n) {
    fill_state *c = ctx;
    size_t es = tsr_dtype_size(c->dt);
    assert_int_equal(off, c->next);
    assert_true(n > 0 && n <= ((size_t)1 << 22) && off % 8 == 0 && n % es == 0);
    c->next = off + n;
    if (++c->calls == c->fail_at) return tsr_error("the source is gone");
    for (size_t i = 0; i < n / es; i++) {
        float v = fill_value(off / es + i);
        if (c->dt == TSR_DT_F32) memcpy((char *)dst + 4 * i, &v, 4);
        else {
            double d = v;
            memcpy((char *)dst + 8 * i, &d, 8);
        }
    }
    return 0;
}

static long statm_resident(void) {
    long size = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &size, &res), 2);
    fclose(f);
    return res * sysconf(_SC_PAGESIZE);
}

static void test_fill_ranges_drop(void **state) {
    char path[256];
    mkpath(path, sizeof path, "filled.safetensors");
    enum { N = 3 << 20 }; /* 12 MiB of F32: three pieces */
    const int64_t shape[2] = {3 << 10, 1 << 10}, small[1] = {5}, dshape[1] = {1000};
    const float head[5] = {1, 2, 3, 4, 5};
    fill_state big = {TSR_DT_F32, 0, 0, 0}, dbl = {TSR_DT_F64, 0, 0, 0};
    tsr_st_writer *w = tsr_st_writer_new();
    tsr_st_writer_add(w, "head", TSR_DT_F32, 1, small, head);
    tsr_st_writer_add_fill(w, "big", TSR_DT_F32, 2, shape, fill_fn, &big);
    tsr_st_writer_add_fill(w, "doubles", TSR_DT_F64, 1, dshape, fill_fn, &dbl);
    if (tsr_st_writer_write(w, path) != 0) fail_msg("write: %s", tsr_last_error());
    tsr_st_writer_free(w);
    assert_int_equal(big.calls, 3);
    assert_int_equal(big.next, (uint64_t)N * 4);
    assert_int_equal(dbl.calls, 1);

    float *v = malloc(sizeof(float) * N);
    assert_non_null(v);
    memset(v, 0, sizeof(float) * N); /* resident before the measurement below */
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, path), 0);
    assert_int_equal(f.mapped, 1);
    const tsr_st_tensor *t = tsr_st_find(&f, "big"), *d = tsr_st_find(&f, "doubles");
    long r0 = statm_resident();
    assert_int_equal(tsr_st_read_f32(&f, t, v, N), 0);
    long r1 = statm_resident();
    tsr_st_drop(&f, t);
    long r2 = statm_resident();
    printf("  12 MiB tensor: resident %+ld KiB after reading it, %+ld KiB after tsr_st_drop\n", (r1 - r0) / 1024,
           (r2 - r1) / 1024);
    assert_true(r1 - r0 >= 11L << 20); /* the file's pages, mapped */
    assert_true(r1 - r2 >= 11L << 20); /* given back */
    for (size_t i = 0; i < N; i++)
        if (v[i] != fill_value(i)) fail_msg("big[%zu] = %g, expected %g", i, v[i], fill_value(i));
    /* ranges: the same values; after the drop too (read again from the file); other dtypes converted */
    float part[300];
    assert_int_equal(tsr_st_read_f32_at(&f, t, (int64_t)N - 300, part, 300), 0);
    assert_memory_equal(part, v + N - 300, sizeof part);
    assert_int_equal(tsr_st_read_f32_at(&f, d, 700, part, 300), 0);
    for (int i = 0; i < 300; i++) assert_true(part[i] == fill_value(700 + (uint64_t)i));
    assert_int_equal(tsr_st_read_f32_at(&f, d, 701, part, 300), -1);
    const char *nd[] = {"tensor 'doubles'", "[701, 1001)", "outside"};
    check_error(path, nd, 3);
    assert_int_equal(tsr_st_read_f32_at(&f, d, -1, part, 1), -1);
    tsr_st_close(&f);
    free(v);

    /* a fill that fails: the write fails with its message, names the tensor, and leaves no file */
    char dir[256], p2[300];
    mkpath(dir, sizeof dir, "fillfail");
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(p2, sizeof p2, "%s/x.safetensors", dir);
    fill_state bad = {TSR_DT_F32, 0, 0, 2};
    w = tsr_st_writer_new();
    tsr_st_writer_add_fill(w, "big", TSR_DT_F32, 2, shape, fill_fn, &bad);
    assert_int_equal(tsr_st_writer_write(w, p2), -1);
    tsr_st_writer_free(w);
    const char *nf[] = {"tensor 'big'", "the source is gone"};
    check_error(p2, nf, 2);
    int ntmp;
    assert_int_equal(count_dir_entries(dir, &ntmp), 0);
    /* a NULL fill function is an argument error */
    w = tsr_st_writer_new();
    tsr_st_writer_add_fill(w, "big", TSR_DT_F32, 2, shape, NULL, NULL);
    assert_int_equal(tsr_st_writer_write(w, p2), -1);
    tsr_st_writer_free(w);
    const char *nn[] = {"fill function is NULL"};
    check_error(p2, nn, 1);
}

static void test_writer_argument_errors(void **state) {
    const float v[2] = {1, 2};
    const int64_t s1[1] = {2};
    const int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 2};
    const int64_t neg[2] = {2, -1};
    const int64_t huge[3] = {INT64_C(1) << 40, INT64_C(1) << 40, 8};

    tsr_st_writer *w = tsr_st_writer_new();
    tsr_st_writer_add(w, "a", TSR_DT_F32, 1, s1, v);
    tsr_st_writer_add(w, "a", TSR_DT_F32, 1, s1, v);
    expect_writer_error("w_dup.safetensors", w, "duplicate tensor name 'a'");

    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "deep", TSR_DT_F32, 9, s9, v);
    expect_writer_error("w_rank.safetensors", w, "'deep': rank 9");

    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "neg", TSR_DT_F32, 2, neg, v);
    expect_writer_error("w_neg.safetensors", w, "'neg': negative dimension");

    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "big", TSR_DT_F32, 3, huge, v);
    expect_writer_error("w_big.safetensors", w, "'big': size overflows");

    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "__metadata__", TSR_DT_F32, 1, s1, v);
    expect_writer_error("w_reserved.safetensors", w, "reserved");

    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "nodata", TSR_DT_F32, 1, s1, NULL);
    expect_writer_error("w_null.safetensors", w, "'nodata': data is NULL");

    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "bad\xff\xfename", TSR_DT_F32, 1, s1, v);
    expect_writer_error("w_utf8.safetensors", w, "not valid UTF-8");

    w = tsr_st_writer_new();
    tsr_st_writer_meta(w, "k", "bad\xc3");
    expect_writer_error("w_utf8meta.safetensors", w, "not valid UTF-8");

    w = tsr_st_writer_new();
    tsr_st_writer_meta(w, "k", "1");
    tsr_st_writer_meta(w, "k", "2");
    expect_writer_error("w_dupmeta.safetensors", w, "duplicate metadata key 'k'");

    /* an empty writer produces a valid empty file */
    char path[256];
    mkpath(path, sizeof path, "w_empty.safetensors");
    w = tsr_st_writer_new();
    assert_int_equal(tsr_st_writer_write(w, path), 0);
    tsr_st_writer_free(w);
    tsr_st_writer_free(NULL);
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, path), 0);
    assert_int_equal(f.n, 0);
    assert_int_equal(f.nmeta, 1); /* the header's checksum */
    assert_int_equal(f.checksummed, 1);
    assert_int_equal(f.size % 8, 0);
    tsr_st_close(&f);
}

/* ------------------------------------------------------------------ valid hand-written headers */

static void test_accepts_valid_variants(void **state) {
    char path[256];
    mkpath(path, sizeof path, "variants.safetensors");
    /* header padded with spaces, entries listed out of data order, a gap, an empty tensor placed
     * inside another's range (empty ranges overlap nothing), whitespace in the JSON, an unknown
     * extra field */
    const char *json = "{ \"b\" : {\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[16,24]},\n"
                       "  \"a\": {\"dtype\":\"F32\", \"shape\":[2,1], \"data_offsets\":[0,8],"
                       " \"extra\": 1},\n"
                       "  \"z\": {\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[4,4]},\n"
                       "  \"__metadata__\": {} }      ";
    const uint8_t data[24] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, 9, 9, 9, 9,
                              9,    9,    9,    9,    0xff, 0xff, 0xff, 0xff, 7, 0,  0,  0};
    write_st(path, strlen(json), json, data, sizeof data);
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(f.n, 3);
    assert_int_equal(f.nmeta, 0);
    float av[2];
    assert_int_equal(tsr_st_read_f32(&f, tsr_st_expect(&f, "a", 2, (const int64_t[]){2, 1}), av, 2),
                     0);
    assert_true(av[0] == 1.0f && av[1] == -2.0f);
    int64_t bv[2];
    assert_int_equal(tsr_st_read_i64(&f, tsr_st_find(&f, "b"), bv, 2), 0);
    assert_true(bv[0] == -1 && bv[1] == 7);
    const tsr_st_tensor *z = tsr_st_find(&f, "z");
    assert_non_null(z);
    assert_int_equal(z->numel, 0);
    size_t hl = strlen(json);
    assert_int_equal(z->begin, 8 + hl + 4);
    assert_int_equal(tsr_st_find(&f, "b")->begin, 8 + hl + 16);
    tsr_st_close(&f);
}

/* ------------------------------------------------------------------ malformed files */

typedef struct {
    const char *file;
    const char *json;
    size_t ndata;
    const char *want[3];
} bad_case;

static void test_malformed(void **state) {
    const bad_case *c = *state;
    char path[256];
    mkpath(path, sizeof path, c->file);
    write_st(path, strlen(c->json), c->json, NULL, c->ndata);
    tsr_st_file f;
    memset(&f, 0x5a, sizeof f); /* open must not rely on a zeroed struct */
    assert_int_equal(tsr_st_open(&f, path), -1);
    check_error(path, c->want, 3);
    assert_null(f.buf);
    assert_null(f.t);
    assert_int_equal(f.n, 0);
    tsr_st_close(&f);
}

#define E(d, s, o) "{\"w\":{\"dtype\":" d ",\"shape\":" s ",\"data_offsets\":" o "}}"
#define BAD(nm, js, nd, w0, w1, w2)                                                                \
    {                                                                                              \
        .name = "malformed_" #nm, .test_func = test_malformed,                                     \
        .initial_state = (void *)&(const bad_case) {                                               \
            #nm ".safetensors", js, nd, { w0, w1, w2 }                                             \
        }                                                                                          \
    }

/* ------------------------------------------------------------------ file-level errors */

static void test_file_level_errors(void **state) {
    char path[256];
    tsr_st_file f;

    mkpath(path, sizeof path, "empty.safetensors");
    write_bytes(path, "", 0);
    assert_int_equal(tsr_st_open(&f, path), -1);
    const char *n1[] = {"0 bytes", "too short"};
    check_error(path, n1, 2);

    mkpath(path, sizeof path, "short.safetensors");
    write_bytes(path, "\x05\x00\x00\x00\x00", 5);
    assert_int_equal(tsr_st_open(&f, path), -1);
    const char *n2[] = {"5 bytes", "too short"};
    check_error(path, n2, 2);

    mkpath(path, sizeof path, "hlen_big.safetensors");
    write_st(path, 1000, "{}", NULL, 10);
    assert_int_equal(tsr_st_open(&f, path), -1);
    const char *n3[] = {"header length 1000", "12 bytes"};
    check_error(path, n3, 2);

    mkpath(path, sizeof path, "hlen_huge.safetensors");
    write_st(path, UINT64_MAX, "{}", NULL, 0);
    assert_int_equal(tsr_st_open(&f, path), -1);
    const char *n4[] = {"header length 18446744073709551615"};
    check_error(path, n4, 1);

    mkpath(path, sizeof path, "hlen_zero.safetensors");
    write_st(path, 0, "{}", NULL, 0);
    assert_int_equal(tsr_st_open(&f, path), -1);
    const char *n5[] = {"not valid JSON"};
    check_error(path, n5, 1);

    /* header length one short of the JSON: the closing brace is cut off */
    mkpath(path, sizeof path, "hlen_short.safetensors");
    write_st(path, 1, "{}", NULL, 0);
    assert_int_equal(tsr_st_open(&f, path), -1);
    check_error(path, n5, 1);

    mkpath(path, sizeof path, "does_not_exist.safetensors");
    assert_int_equal(tsr_st_open(&f, path), -1);
    const char *n6[] = {"cannot open"};
    check_error(path, n6, 1);

    assert_int_equal(tsr_st_open(&f, g_dir), -1);
    const char *n7[] = {"not a regular file"};
    check_error(g_dir, n7, 1);
    assert_null(f.buf);
    tsr_st_close(&f);
}

/* ------------------------------------------------------------------ robustness */

static const char *k_small_json =
    "{\"__metadata__\":{\"m\":\"v\"},"
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
    "\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]},"
    "\"c\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[24,32]},"
    "\"d\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[32,34]}}";

/* Read every tensor with the matching reader (exercises bounds under the sanitizers). */
static void read_all(const tsr_st_file *f) {
    for (int i = 0; i < f->n; i++) {
        const tsr_st_tensor *t = &f->t[i];
        assert_true(t->begin <= t->end && t->end <= f->size);
        size_t n = (size_t)t->numel;
        if (n > (1u << 20)) continue;
        if (t->dtype == TSR_DT_F32 || t->dtype == TSR_DT_F16 || t->dtype == TSR_DT_BF16 ||
            t->dtype == TSR_DT_F64) {
            float *x = malloc((n ? n : 1) * sizeof *x);
            double *y = malloc((n ? n : 1) * sizeof *y);
            assert_int_equal(tsr_st_read_f32(f, t, x, t->numel), 0);
            assert_int_equal(tsr_st_read_f64(f, t, y, t->numel), 0);
            free(x);
            free(y);
        } else {
            int64_t *x = malloc((n ? n : 1) * sizeof *x);
            assert_int_equal(tsr_st_read_i64(f, t, x, t->numel), 0);
            free(x);
        }
    }
}

static void test_every_truncation_fails(void **state) {
    char path[256];
    mkpath(path, sizeof path, "trunc_src.safetensors");
    write_st(path, strlen(k_small_json), k_small_json, NULL, 34);
    uint8_t *raw;
    size_t n;
    read_whole(path, &raw, &n);
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, path), 0);
    assert_int_equal(f.n, 4);
    read_all(&f);
    tsr_st_close(&f);

    mkpath(path, sizeof path, "trunc.safetensors");
    for (size_t len = 0; len < n; len++) {
        write_bytes(path, raw, len);
        if (tsr_st_open(&f, path) == 0) fail_msg("truncation to %zu of %zu bytes accepted", len, n);
        check_error(path, NULL, 0);
    }
    /* cutting into the data region is reported as truncation */
    write_bytes(path, raw, n - 1);
    assert_int_equal(tsr_st_open(&f, path), -1);
    const char *nt[] = {"'d'", "truncated"};
    check_error(path, nt, 2);
    free(raw);
}

static void test_random_mutations(void **state) {
    char path[256];
    mkpath(path, sizeof path, "mut.safetensors");
    size_t jl = strlen(k_small_json), n = 8 + jl + 34;
    uint8_t *orig = malloc(n), *buf = malloc(n);
    assert_non_null(orig);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++) orig[i] = (uint8_t)((uint64_t)jl >> (8 * i));
    memcpy(orig + 8, k_small_json, jl);
    for (size_t i = 0; i < 34; i++) orig[8 + jl + i] = (uint8_t)(i * 37);
    static const char alphabet[] = "0123456789-[]{},:\" .eE";
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    int accepted = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, orig, n);
        int nm = 1 + (int)(rng % 3);
        for (int m = 0; m < nm; m++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t r = rng >> 33;
            size_t pos = (size_t)(r % (8 + jl)); /* length field or header */
            buf[pos] = (r & 0x10000) ? (uint8_t)alphabet[(r >> 20) % (sizeof alphabet - 1)]
                                     : (uint8_t)(r >> 24);
        }
        write_bytes(path, buf, n);
        tsr_st_file f;
        if (tsr_st_open(&f, path) == 0) {
            accepted++;
            read_all(&f);
            tsr_st_close(&f);
        } else {
            check_error(path, NULL, 0);
        }
    }
    assert_true(accepted > 0); /* some mutations (e.g. in metadata strings) stay valid */
    free(orig);
    free(buf);
}

/* ------------------------------------------------------------------ checksums */

/* Offset of the first occurrence of needle in raw[0, n) (fails the test if absent). */
static uint64_t find_off(const uint8_t *raw, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(raw + i, needle, k) == 0) return i;
    fail_msg("'%s' not found", needle);
    return 0;
}

/* Every byte of a written file is covered: flipping one bit of a tensor's data is refused naming that tensor,
 * one bit of the header (a metadata value, the tensor table) naming the header; the key is reserved; a file
 * without the key (other tools, older tessera) opens unverified. */
static void test_checksums(void **state) {
    char path[256], bad[256];
    mkpath(path, sizeof path, "crc.safetensors");
    mkpath(bad, sizeof bad, "crc_bad.safetensors");
    float a[5] = {1, 2, 3, 4, 5};
    int32_t b[3] = {7, 8, 9};
    float big[3000];
    for (int i = 0; i < 3000; i++) big[i] = (float)i * 0.5f;
    tsr_st_writer *w = tsr_st_writer_new();
    tsr_st_writer_add(w, "alpha", TSR_DT_F32, 1, (const int64_t[]){5}, a);
    tsr_st_writer_add(w, "empty", TSR_DT_F32, 1, (const int64_t[]){0}, NULL);
    tsr_st_writer_add(w, "beta", TSR_DT_I32, 1, (const int64_t[]){3}, b);
    tsr_st_writer_add(w, "big", TSR_DT_F32, 2, (const int64_t[]){30, 100}, big);
    tsr_st_writer_meta(w, "note", "a value in the header");
    assert_int_equal(tsr_st_writer_write(w, path), 0);
    tsr_st_writer_free(w);

    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(f.checksummed, 1);
    const char *crc = tsr_st_meta(&f, TSR_ST_CRC_KEY);
    assert_non_null(crc);
    assert_int_equal(strlen(crc), 5 * 9 - 1);
    uint64_t data0 = f.t[0].begin;
    const tsr_st_tensor *tb = tsr_st_find(&f, "beta"), *tg = tsr_st_find(&f, "big");
    uint64_t beta_at = tb->begin + 5, big_at = tg->begin + 4321;
    tsr_st_close(&f);

    uint8_t *raw;
    size_t n;
    read_whole(path, &raw, &n);
    struct { uint64_t at; const char *needle; } cases[] = {
        {beta_at, "tensor 'beta' fails its checksum"},
        {big_at, "tensor 'big' fails its checksum"},
        {data0 + 2, "tensor 'alpha' fails its checksum"},
        {find_off(raw, n, "a value in"), "header"}, /* its checksum, or invalid UTF-8 */
        {find_off(raw, n, "\"shape\"") + 10, "header"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        for (int bit = 0; bit < 8; bit += 7) {
            raw[cases[c].at] ^= (uint8_t)(1u << bit);
            write_bytes(bad, raw, n);
            raw[cases[c].at] ^= (uint8_t)(1u << bit);
            if (tsr_st_open(&f, bad) == 0) fail_msg("bit %d of byte %llu flipped: accepted", bit, (unsigned long long)cases[c].at);
            const char *need[] = {cases[c].needle};
            check_error(bad, need, 1);
        }
    }
    /* a checksum digit changed */
    size_t v = find_off(raw, n, "\"" TSR_ST_CRC_KEY "\":\"") + strlen(TSR_ST_CRC_KEY) + 4 + 12;
    raw[v] = raw[v] == '0' ? '1' : '0';
    write_bytes(bad, raw, n);
    assert_int_equal(tsr_st_open(&f, bad), -1);
    free(raw);

    /* the key is the writer's */
    w = tsr_st_writer_new();
    tsr_st_writer_meta(w, TSR_ST_CRC_KEY, "00000000");
    assert_int_equal(tsr_st_writer_write(w, bad), -1);
    const char *res[] = {"reserved"};
    check_error(bad, res, 1);
    tsr_st_writer_free(w);

    /* without the key: read, not verified */
    const char *json = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    write_st(bad, strlen(json), json, a, 4);
    assert_int_equal(tsr_st_open(&f, bad), 0);
    assert_int_equal(f.checksummed, 0);
    tsr_st_close(&f);

    /* tsr_st_writer_no_checksums: another tool's exact format (peft's), the metadata as given and no more */
    w = tsr_st_writer_new();
    tsr_st_writer_add(w, "alpha", TSR_DT_F32, 1, (const int64_t[]){5}, a);
    tsr_st_writer_meta(w, "format", "pt");
    tsr_st_writer_no_checksums(w);
    assert_int_equal(tsr_st_writer_write(w, bad), 0);
    tsr_st_writer_free(w);
    assert_int_equal(tsr_st_open(&f, bad), 0);
    assert_int_equal(f.checksummed, 0);
    assert_int_equal(f.nmeta, 1);
    assert_string_equal(tsr_st_meta(&f, "format"), "pt");
    assert_null(tsr_st_meta(&f, TSR_ST_CRC_KEY));
    float got[5];
    assert_int_equal(tsr_st_read_f32(&f, tsr_st_find(&f, "alpha"), got, 5), 0);
    assert_memory_equal(got, a, sizeof a);
    tsr_st_close(&f);
}

/* ------------------------------------------------------------------ main */

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_names_sizes),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_read_errors),
        cmocka_unit_test(test_f16_known_values),
        cmocka_unit_test(test_f16_exhaustive),
        cmocka_unit_test(test_bf16_known_values),
        cmocka_unit_test(test_expect_shape),
        cmocka_unit_test(test_overwrite_no_temp_left),
        cmocka_unit_test(test_fill_ranges_drop),
        cmocka_unit_test(test_writer_argument_errors),
        cmocka_unit_test(test_accepts_valid_variants),
        cmocka_unit_test(test_file_level_errors),
        cmocka_unit_test(test_every_truncation_fails),
        cmocka_unit_test(test_random_mutations),
        cmocka_unit_test(test_checksums),
        BAD(not_json, "{\"w\": {\"dtype\": \"F32\",", 0, "not valid JSON", "line 1", "column"),
        BAD(trailing_garbage, "{} x", 0, "not valid JSON", NULL, NULL),
        BAD(bad_utf8, "{\"w\xff\": {}}", 0, "not valid JSON", NULL, NULL),
        BAD(int_too_big, E("\"F32\"", "[18446744073709551616]", "[0,4]"), 4, "not valid JSON",
            NULL, NULL),
        BAD(top_array, "[1, 2]", 0, "header is not a JSON object", NULL, NULL),
        BAD(top_scalar, "42", 0, "header is not a JSON object", NULL, NULL),
        BAD(entry_not_object, "{\"w\": [1]}", 0, "tensor 'w'", "not an object", NULL),
        BAD(missing_dtype, "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w'",
            "missing \"dtype\"", NULL),
        BAD(dtype_not_string, E("7", "[1]", "[0,4]"), 4, "tensor 'w'", "\"dtype\" is not a string",
            NULL),
        BAD(unknown_dtype, E("\"F8_E4M3\"", "[1]", "[0,1]"), 1, "tensor 'w'",
            "unknown dtype 'F8_E4M3'", NULL),
        BAD(missing_shape, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'w'",
            "missing \"shape\"", NULL),
        BAD(shape_not_array, E("\"F32\"", "4", "[0,16]"), 16, "tensor 'w'", "\"shape\"",
            "not an array"),
        BAD(shape_negative, E("\"F32\"", "[2,-1]", "[0,8]"), 8, "tensor 'w'", "\"shape\"",
            "element 1"),
        BAD(shape_float, E("\"F32\"", "[1.5]", "[0,4]"), 4, "tensor 'w'", "\"shape\" element 0",
            "non-negative integer"),
        BAD(shape_string, E("\"F32\"", "[\"3\"]", "[0,12]"), 12, "tensor 'w'",
            "\"shape\" element 0", NULL),
        BAD(shape_9_dims, E("\"U8\"", "[1,1,1,1,1,1,1,1,1]", "[0,1]"), 1, "tensor 'w'", "9 dims",
            "at most 8"),
        BAD(numel_overflow, E("\"U8\"", "[4294967296,4294967296,4]", "[0,0]"), 0, "tensor 'w'",
            "overflows", NULL),
        BAD(bytes_overflow, E("\"F64\"", "[1152921504606846976]", "[0,0]"), 0, "tensor 'w'",
            "overflows", NULL),
        BAD(missing_offsets, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'w'",
            "missing \"data_offsets\"", NULL),
        BAD(offsets_one, E("\"F32\"", "[1]", "[0]"), 4, "tensor 'w'", "\"data_offsets\"",
            "[begin, end]"),
        BAD(offsets_three, E("\"F32\"", "[1]", "[0,4,8]"), 8, "tensor 'w'", "\"data_offsets\"",
            NULL),
        BAD(offsets_not_array, E("\"F32\"", "[1]", "{\"b\":0}"), 4, "tensor 'w'",
            "\"data_offsets\"", NULL),
        BAD(offsets_negative, E("\"F32\"", "[1]", "[-4,0]"), 4, "tensor 'w'", "\"data_offsets\"",
            "non-negative"),
        BAD(offsets_float, E("\"F32\"", "[1]", "[0,4.0]"), 4, "tensor 'w'", "\"data_offsets\"",
            NULL),
        BAD(begin_after_end, E("\"F32\"", "[1]", "[8,4]"), 8, "tensor 'w'", "begin 8 > end 4",
            NULL),
        BAD(end_beyond_data, E("\"F32\"", "[4]", "[0,16]"), 8, "tensor 'w'", "truncated",
            "8 bytes"),
        BAD(end_huge, E("\"F32\"", "[1]", "[0,9223372036854775807]"), 4, "tensor 'w'",
            "truncated", NULL),
        BAD(size_mismatch, E("\"F32\"", "[3]", "[0,16]"), 16, "tensor 'w'", "span 16 bytes",
            "needs 12 bytes"),
        BAD(size_mismatch_f16, E("\"F16\"", "[2,2]", "[0,4]"), 4, "tensor 'w'", "[2, 2] of F16",
            "needs 8 bytes"),
        BAD(overlap,
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
            24, "'a'", "'b'", "overlap"),
        BAD(overlap_contained,
            "{\"big\":{\"dtype\":\"U8\",\"shape\":[32],\"data_offsets\":[0,32]},"
            "\"mid\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[20,24]},"
            "\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[32,36]}}",
            36, "'big'", "'mid'", "overlap"),
        BAD(overlap_same_range,
            "{\"p\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[4,8]},"
            "\"q\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
            8, "'p'", "'q'", "overlap"),
        BAD(duplicate_name,
            "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
            "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
            2, "not valid JSON", "duplicate", NULL),
        BAD(meta_not_string, "{\"__metadata__\":{\"ok\":\"1\",\"epoch\":3}}", 0, "__metadata__",
            "key 'epoch'", "not a string"),
        BAD(meta_not_object, "{\"__metadata__\":\"x\"}", 0, "__metadata__", "not an object",
            NULL),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
