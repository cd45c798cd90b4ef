/* test_dataset_nc.c: the netCDF-4 dataset and logits files (src/data/dataset_nc.c).
 * Every file is made in a mkdtemp directory under /tmp that is removed at the end; the group
 * teardown fails if anything (a temporary file included) was left behind. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <netcdf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "data/dataset_nc.h"

#include "../common/test_util.h"

static int file_exists(const char *p) { return access(p, F_OK) == 0; }


/* ------------------------------------------------------------------ a small test dataset */

enum { N = 6, H = 4, W = 5, C = 3, K = 4 };
static uint8_t g_img[N * H * W * C];
static int g_lab[N] = {0, 3, 1, 2, 3, 0};
static int8_t g_split[N] = {0, 0, 1, 2, 0, 1};
static const char *const g_names[K] = {"cat", "dog", "bird with a long name", "x"};
static const tsr_nc_provenance g_prov = {"toy-task", "toy dataset", "unit test", "CC0-1.0",
                                         "test_dataset_nc --roundtrip"};

static uint8_t pixel(int b, int y, int x, int c) {
    return (uint8_t)((b * 97 + y * 31 + x * 7 + c * 101 + (b == 1 ? 255 : 0)) % 256);
}

static void fill_images(void) {
    for (int b = 0; b < N; b++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < C; c++) g_img[((b * H + y) * W + x) * C + c] = pixel(b, y, x, c);
    g_img[0] = 0;
    g_img[1] = 255; /* both extremes appear */
}

static void write_toy(const char *p) {
    int rc = tsr_nc_dataset_write(p, N, H, W, C, g_img, g_lab, g_split, K, g_names, &g_prov);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
}

static void remove_file(const char *p) { assert_int_equal(unlink(p), 0); }

/* ------------------------------------------------------------------ round trips */

static void test_roundtrip(void **state) {
    (void)state;
    const char *p = tpath("toy.nc");
    write_toy(p);
    assert_no_temp_files();

    tsr_nc_dataset d;
    int rc = tsr_nc_dataset_open(&d, p);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(d.n_examples, N);
    assert_int_equal(d.height, H);
    assert_int_equal(d.width, W);
    assert_int_equal(d.channels, C);
    assert_int_equal(d.n_classes, K);
    assert_string_equal(d.task_name, "toy-task");
    assert_true(d.has_labels);
    assert_true(d.has_split);

    const float mean[C] = {0.485f, 0.456f, 0.406f}, sd[C] = {0.229f, 0.224f, 0.225f};
    float *out = malloc(sizeof(float) * N * C * H * W);
    int lab[N];
    assert_int_equal(tsr_nc_dataset_read(&d, 0, N, mean, sd, out, lab), 0);
    for (int b = 0; b < N; b++) {
        assert_int_equal(lab[b], g_lab[b]);
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    uint8_t px = g_img[((b * H + y) * W + x) * C + c];
                    float want = ((float)px / 255.0f - mean[c]) / sd[c];
                    float got = out[((b * C + c) * H + y) * W + x];
                    assert_float_equal(got, want, 1e-6f);
                }
    }
    /* the extremes, by hand: pixel 0 of channel 0 and pixel 255 of channel 1 of example 0 */
    assert_float_equal(out[0], (0.0f - 0.485f) / 0.229f, 1e-6f);
    assert_float_equal(out[1 * H * W], (1.0f - 0.456f) / 0.224f, 1e-6f);

    /* raw pixels, split, class names */
    uint8_t raw[N * H * W * C];
    assert_int_equal(tsr_nc_dataset_read_raw(&d, 0, N, raw), 0);
    assert_memory_equal(raw, g_img, sizeof raw);
    int8_t split[N];
    assert_int_equal(tsr_nc_dataset_read_split(&d, 0, N, split), 0);
    assert_memory_equal(split, g_split, sizeof split);
    char name[64];
    for (int k = 0; k < K; k++) {
        assert_int_equal(tsr_nc_dataset_class_name(&d, k, name, sizeof name), 0);
        assert_string_equal(name, g_names[k]);
    }
    assert_int_equal(tsr_nc_dataset_class_name(&d, 2, name, 5), 0); /* truncated */
    assert_string_equal(name, "bird");
    assert_int_equal(tsr_nc_dataset_class_name(&d, K, name, sizeof name), -1);
    tsr_nc_dataset_close(&d);
    assert_int_equal(d.ncid, -1);
    tsr_nc_dataset_close(&d); /* twice is harmless */

    /* The file as other tools see it: format, chunking, compression, attributes. */
    int ncid, fmt, vid, storage, shuffle, deflate, level;
    size_t chunks[4];
    char buf[256];
    assert_int_equal(nc_open(p, NC_NOWRITE, &ncid), NC_NOERR);
    assert_int_equal(nc_inq_format(ncid, &fmt), NC_NOERR);
    assert_int_equal(fmt, NC_FORMAT_NETCDF4);
    assert_int_equal(nc_inq_varid(ncid, "images", &vid), NC_NOERR);
    assert_int_equal(nc_inq_var_chunking(ncid, vid, &storage, chunks), NC_NOERR);
    assert_int_equal(storage, NC_CHUNKED);
    assert_int_equal(chunks[0], N);
    assert_int_equal(chunks[1], H);
    assert_int_equal(chunks[2], W);
    assert_int_equal(chunks[3], C);
    assert_int_equal(nc_inq_var_deflate(ncid, vid, &shuffle, &deflate, &level), NC_NOERR);
    assert_true(shuffle);
    assert_true(deflate);
    assert_int_equal(level, 4);
    unsigned char vr[2];
    assert_int_equal(nc_get_att_uchar(ncid, vid, "valid_range", vr), NC_NOERR);
    assert_int_equal(vr[0], 0);
    assert_int_equal(vr[1], 255);
    assert_int_equal(nc_inq_varid(ncid, "labels", &vid), NC_NOERR);
    int lvr[2];
    assert_int_equal(nc_get_att_int(ncid, vid, "valid_range", lvr), NC_NOERR);
    assert_int_equal(lvr[0], 0);
    assert_int_equal(lvr[1], K - 1);
    assert_int_equal(nc_inq_varid(ncid, "split", &vid), NC_NOERR);
    signed char fv[3];
    nc_type t;
    size_t len;
    assert_int_equal(nc_inq_att(ncid, vid, "flag_values", &t, &len), NC_NOERR);
    assert_int_equal(t, NC_BYTE);
    assert_int_equal(len, 3);
    assert_int_equal(nc_get_att_schar(ncid, vid, "flag_values", fv), NC_NOERR);
    assert_int_equal(fv[0] + 10 * fv[1] + 100 * fv[2], 210);
    memset(buf, 0, sizeof buf);
    assert_int_equal(nc_get_att_text(ncid, vid, "flag_meanings", buf), NC_NOERR);
    assert_string_equal(buf, "train val test");
    const char *want_atts[][2] = {{"Conventions", "CF-1.8"}, {"tessera_schema", "tessera-dataset-1"},
                                  {"task_name", "toy-task"}, {"title", "toy dataset"},
                                  {"source", "unit test"},   {"license", "CC0-1.0"}};
    for (size_t i = 0; i < sizeof want_atts / sizeof *want_atts; i++) {
        memset(buf, 0, sizeof buf);
        assert_int_equal(nc_get_att_text(ncid, NC_GLOBAL, want_atts[i][0], buf), NC_NOERR);
        assert_string_equal(buf, want_atts[i][1]);
    }
    memset(buf, 0, sizeof buf);
    assert_int_equal(nc_get_att_text(ncid, NC_GLOBAL, "history", buf), NC_NOERR);
    assert_non_null(strstr(buf, "Z: test_dataset_nc --roundtrip"));
    memset(buf, 0, sizeof buf);
    assert_int_equal(nc_get_att_text(ncid, NC_GLOBAL, "date_created", buf), NC_NOERR);
    assert_int_equal(strlen(buf), 20); /* YYYY-MM-DDTHH:MM:SSZ */
    assert_int_equal(nc_close(ncid), NC_NOERR);

    free(out);
    remove_file(p);
    assert_no_temp_files();
}

static void test_subrange(void **state) {
    (void)state;
    const char *p = tpath("sub.nc");
    write_toy(p);
    tsr_nc_dataset d;
    assert_int_equal(tsr_nc_dataset_open(&d, p), 0);
    float out[2 * C * H * W];
    int lab[2];
    /* examples 3 and 4, without normalisation (mean and std NULL): pixel / 255 */
    assert_int_equal(tsr_nc_dataset_read(&d, 3, 2, NULL, NULL, out, lab), 0);
    assert_int_equal(lab[0], g_lab[3]);
    assert_int_equal(lab[1], g_lab[4]);
    for (int b = 0; b < 2; b++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    assert_float_equal(out[((b * C + c) * H + y) * W + x],
                                       (float)pixel(3 + b, y, x, c) / 255.0f, 1e-7f);
    /* the last example alone, labels not wanted */
    const float mean[C] = {0.5f, 0.5f, 0.5f}, sd[C] = {0.5f, 0.5f, 0.5f};
    assert_int_equal(tsr_nc_dataset_read(&d, N - 1, 1, mean, sd, out, NULL), 0);
    assert_float_equal(out[2 * H * W + 1], ((float)pixel(N - 1, 0, 1, 2) / 255.0f - 0.5f) / 0.5f,
                       1e-6f);
    int l1;
    assert_int_equal(tsr_nc_dataset_read_labels(&d, 1, 1, &l1), 0);
    assert_int_equal(l1, 3);
    /* empty and out-of-range reads */
    assert_int_equal(tsr_nc_dataset_read(&d, N, 0, mean, sd, out, lab), 0);
    assert_int_equal(tsr_nc_dataset_read(&d, N - 1, 2, mean, sd, out, lab), -1);
    expect_error(p, "cannot read examples [5, 7)", "has 6 examples", NULL);
    assert_int_equal(tsr_nc_dataset_read(&d, -1, 1, mean, sd, out, lab), -1);
    const float bad_sd[C] = {0.5f, 0.0f, 0.5f};
    assert_int_equal(tsr_nc_dataset_read(&d, 0, 1, mean, bad_sd, out, lab), -1);
    expect_error("channel 1", "std", NULL);
    tsr_nc_dataset_close(&d);
    assert_int_equal(tsr_nc_dataset_read(&d, 0, 1, mean, sd, out, lab), -1);
    expect_error("not open", NULL);
    remove_file(p);
}

static void test_optional_variables(void **state) {
    (void)state;
    /* no labels, split or class names; then an empty dataset */
    const char *p = tpath("nolabels.nc");
    tsr_nc_provenance prov = {"bare", NULL, NULL, NULL, NULL};
    assert_int_equal(tsr_nc_dataset_write(p, N, H, W, C, g_img, NULL, NULL, 0, NULL, &prov), 0);
    tsr_nc_dataset d;
    assert_int_equal(tsr_nc_dataset_open(&d, p), 0);
    assert_false(d.has_labels);
    assert_false(d.has_split);
    assert_int_equal(d.n_classes, 0);
    float out[C * H * W];
    int lab;
    assert_int_equal(tsr_nc_dataset_read(&d, 0, 1, NULL, NULL, out, NULL), 0);
    assert_int_equal(tsr_nc_dataset_read(&d, 0, 1, NULL, NULL, out, &lab), -1);
    expect_error(p, "no 'labels' variable", NULL);
    tsr_nc_dataset_close(&d);

    /* labels and a class dimension but no class names: names are the indices */
    assert_int_equal(tsr_nc_dataset_write(p, N, H, W, C, g_img, g_lab, NULL, K, NULL, &prov), 0);
    assert_int_equal(tsr_nc_dataset_open(&d, p), 0);
    char name[16];
    assert_int_equal(tsr_nc_dataset_class_name(&d, 3, name, sizeof name), 0);
    assert_string_equal(name, "3");
    tsr_nc_dataset_close(&d);

    assert_int_equal(tsr_nc_dataset_write(p, 0, H, W, C, NULL, NULL, NULL, 0, NULL, &prov), 0);
    assert_int_equal(tsr_nc_dataset_open(&d, p), 0);
    assert_int_equal(d.n_examples, 0);
    assert_int_equal(tsr_nc_dataset_read(&d, 0, 0, NULL, NULL, out, NULL), 0);
    tsr_nc_dataset_close(&d);
    remove_file(p);
    assert_no_temp_files();
}

static void test_large_images_chunked(void **state) {
    (void)state;
    /* 300 examples of 64x64x3: more than one chunk (256 examples), read across the boundary */
    enum { NB = 300, S = 64 };
    const char *p = tpath("big.nc");
    size_t img = (size_t)S * S * 3;
    uint8_t *im = malloc(NB * img);
    for (size_t i = 0; i < NB * img; i++) im[i] = (uint8_t)(i * 2654435761u >> 13);
    int *lab = malloc(NB * sizeof *lab);
    for (int i = 0; i < NB; i++) lab[i] = i % 10;
    tsr_nc_provenance prov = {"big", NULL, NULL, NULL, NULL};
    assert_int_equal(tsr_nc_dataset_write(p, NB, S, S, 3, im, lab, NULL, 10, NULL, &prov), 0);
    tsr_nc_dataset d;
    assert_int_equal(tsr_nc_dataset_open(&d, p), 0);
    uint8_t *raw = malloc(10 * img);
    assert_int_equal(tsr_nc_dataset_read_raw(&d, 250, 10, raw), 0);
    assert_memory_equal(raw, im + 250 * img, 10 * img);
    float *out = malloc(10 * img * sizeof(float));
    int l[10];
    assert_int_equal(tsr_nc_dataset_read(&d, 250, 10, NULL, NULL, out, l), 0);
    assert_int_equal(l[9], 259 % 10);
    /* example 259, channel 2, y 63, x 1 */
    assert_float_equal(out[9 * img + (2 * S + 63) * S + 1],
                       (float)im[259 * img + ((size_t)63 * S + 1) * 3 + 2] / 255.0f, 1e-7f);
    tsr_nc_dataset_close(&d);

    int ncid, vid, storage;
    size_t chunks[4];
    assert_int_equal(nc_open(p, NC_NOWRITE, &ncid), NC_NOERR);
    assert_int_equal(nc_inq_varid(ncid, "images", &vid), NC_NOERR);
    assert_int_equal(nc_inq_var_chunking(ncid, vid, &storage, chunks), NC_NOERR);
    assert_int_equal(chunks[0], 256);
    nc_close(ncid);
    free(im);
    free(lab);
    free(raw);
    free(out);
    remove_file(p);
}

static void test_logits_roundtrip(void **state) {
    (void)state;
    enum { NL = 5, KL = 3 };
    const char *p = tpath("logits.nc");
    float lg[NL * KL];
    for (int i = 0; i < NL * KL; i++) lg[i] = (float)i * 0.25f - 1.5f;
    /* a large attribute value, as a resolved configuration might be */
    size_t big_len = 100000;
    char *big = malloc(big_len + 1);
    for (size_t i = 0; i < big_len; i++) big[i] = (char)('a' + i % 26);
    big[big_len] = 0;
    const char *keys[] = {"checkpoint", "git_commit", "config"};
    const char *vals[] = {"/ckpt/vit-b16.safetensors", "0123456789ab", big};
    int rc = tsr_nc_write_logits(p, NL, KL, lg, 3, keys, vals);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
    assert_no_temp_files();

    int ncid, vid, nd, dimids[2], fmt;
    nc_type t;
    size_t len;
    char name[NC_MAX_NAME + 1];
    assert_int_equal(nc_open(p, NC_NOWRITE, &ncid), NC_NOERR);
    assert_int_equal(nc_inq_format(ncid, &fmt), NC_NOERR);
    assert_int_equal(fmt, NC_FORMAT_NETCDF4);
    assert_int_equal(nc_inq_varid(ncid, "logits", &vid), NC_NOERR);
    assert_int_equal(nc_inq_var(ncid, vid, NULL, &t, &nd, dimids, NULL), NC_NOERR);
    assert_int_equal(t, NC_FLOAT);
    assert_int_equal(nd, 2);
    assert_int_equal(nc_inq_dim(ncid, dimids[0], name, &len), NC_NOERR);
    assert_string_equal(name, "example");
    assert_int_equal(len, NL);
    assert_int_equal(nc_inq_dim(ncid, dimids[1], name, &len), NC_NOERR);
    assert_string_equal(name, "class");
    assert_int_equal(len, KL);
    float back[NL * KL];
    assert_int_equal(nc_get_var_float(ncid, vid, back), NC_NOERR);
    assert_memory_equal(back, lg, sizeof lg);
    assert_int_equal(nc_inq_varid(ncid, "labels", &vid), NC_ENOTVAR);
    char buf[64] = {0};
    assert_int_equal(nc_get_att_text(ncid, NC_GLOBAL, "tessera_schema", buf), NC_NOERR);
    assert_string_equal(buf, "tessera-logits-1");
    memset(buf, 0, sizeof buf);
    assert_int_equal(nc_get_att_text(ncid, NC_GLOBAL, "checkpoint", buf), NC_NOERR);
    assert_string_equal(buf, "/ckpt/vit-b16.safetensors");
    assert_int_equal(nc_inq_attlen(ncid, NC_GLOBAL, "config", &len), NC_NOERR);
    assert_int_equal(len, big_len);
    char *bigback = malloc(big_len + 1);
    assert_int_equal(nc_get_att_text(ncid, NC_GLOBAL, "config", bigback), NC_NOERR);
    assert_memory_equal(bigback, big, big_len);
    assert_int_equal(nc_close(ncid), NC_NOERR);
    free(bigback);

    /* with labels, and overwriting the existing file */
    int lab[NL] = {0, 2, 1, 1, 0};
    assert_int_equal(tsr_nc_write_logits_ex(p, NL, KL, lg, lab, 0, NULL, NULL), 0);
    int back_lab[NL];
    assert_int_equal(nc_open(p, NC_NOWRITE, &ncid), NC_NOERR);
    assert_int_equal(nc_inq_varid(ncid, "labels", &vid), NC_NOERR);
    assert_int_equal(nc_get_var_int(ncid, vid, back_lab), NC_NOERR);
    assert_memory_equal(back_lab, lab, sizeof lab);
    assert_int_equal(nc_inq_att(ncid, NC_GLOBAL, "checkpoint", &t, &len), NC_ENOTATT);
    assert_int_equal(nc_close(ncid), NC_NOERR);

    free(big);
    remove_file(p);
    assert_no_temp_files();
}

/* ------------------------------------------------------------------ refusals when opening */

static void open_fails(const char *p, tsr_nc_dataset *d) {
    int rc = tsr_nc_dataset_open(d, p);
    assert_int_equal(rc, -1);
    assert_int_equal(d->ncid, -1);
    tsr_nc_dataset_close(d); /* safe after a failed open */
}

static void test_refuse_not_netcdf(void **state) {
    (void)state;
    const char *p = tpath("random.nc");
    unsigned char junk[4096];
    srand(12345);
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)(rand() & 0xff);
    assert_int_equal(tsr_write_file_atomic(p, junk, sizeof junk), 0);
    tsr_nc_dataset d;
    open_fails(p, &d);
    expect_error(p, "cannot open dataset", "NetCDF: Unknown file format", "not a netCDF file", NULL);
    remove_file(p);

    open_fails(tpath("does-not-exist.nc"), &d);
    expect_error("does-not-exist.nc", "No such file or directory", NULL);
}

static void test_refuse_truncated(void **state) {
    (void)state;
    /* a file big enough that its first half holds the HDF5 superblock and some data */
    enum { NB = 64, S = 32 };
    uint8_t *im = malloc((size_t)NB * S * S * 3);
    for (size_t i = 0; i < (size_t)NB * S * S * 3; i++) im[i] = (uint8_t)(i * 2654435761u >> 11);
    const char *full = tpath("full.nc"), *half = tpath("half.nc");
    tsr_nc_provenance prov = {"trunc", NULL, NULL, NULL, NULL};
    assert_int_equal(tsr_nc_dataset_write(full, NB, S, S, 3, im, NULL, NULL, 0, NULL, &prov), 0);
    char *data;
    size_t n;
    assert_int_equal(tsr_read_file(full, &data, &n), 0);
    assert_true(n > 4096);
    assert_int_equal(tsr_write_file_atomic(half, data, n / 2), 0);
    tsr_nc_dataset d;
    open_fails(half, &d);
    expect_error(half, "cannot open dataset", "truncated or corrupt", NULL);
    free(data);
    free(im);
    remove_file(full);
    remove_file(half);
}

/* Make a file with the global attributes of the schema and an `images` variable of the given type
 * and dimension order (type 0: no images variable at all). */
static void make_custom(const char *p, nc_type images_type, int channels_first) {
    int ncid, dims[4], vid;
    assert_int_equal(nc_create(p, NC_NETCDF4 | NC_CLOBBER, &ncid), NC_NOERR);
    assert_int_equal(nc_def_dim(ncid, "example", 2, &dims[0]), NC_NOERR);
    assert_int_equal(nc_def_dim(ncid, "y", 4, &dims[1]), NC_NOERR);
    assert_int_equal(nc_def_dim(ncid, "x", 4, &dims[2]), NC_NOERR);
    assert_int_equal(nc_def_dim(ncid, "channel", 3, &dims[3]), NC_NOERR);
    if (channels_first) {
        int c = dims[3];
        dims[3] = dims[2];
        dims[2] = dims[1];
        dims[1] = c;
    }
    if (images_type) assert_int_equal(nc_def_var(ncid, "images", images_type, 4, dims, &vid), NC_NOERR);
    assert_int_equal(nc_def_var(ncid, "labels", NC_INT, 1, dims, &vid), NC_NOERR);
    const char *schema = TSR_NC_DATASET_SCHEMA;
    assert_int_equal(nc_put_att_text(ncid, NC_GLOBAL, "tessera_schema", strlen(schema), schema),
                     NC_NOERR);
    assert_int_equal(nc_put_att_text(ncid, NC_GLOBAL, "task_name", 6, "custom"), NC_NOERR);
    assert_int_equal(nc_close(ncid), NC_NOERR);
}

static void test_refuse_missing_images(void **state) {
    (void)state;
    const char *p = tpath("noimages.nc");
    make_custom(p, 0, 0);
    tsr_nc_dataset d;
    open_fails(p, &d);
    expect_error(p, "no variable 'images'", "NC_UBYTE (example, y, x, channel)", NULL);
    remove_file(p);
}

static void test_refuse_float_images(void **state) {
    (void)state;
    const char *p = tpath("floatimages.nc");
    make_custom(p, NC_FLOAT, 0);
    tsr_nc_dataset d;
    open_fails(p, &d);
    expect_error(p, "variable 'images'", "expected NC_UBYTE (example, y, x, channel)",
                 "got NC_FLOAT (example, y, x, channel)", NULL);
    remove_file(p);

    make_custom(p, NC_UBYTE, 1); /* right type, channels-first order */
    open_fails(p, &d);
    expect_error(p, "variable 'images'", "got NC_UBYTE (example, channel, y, x)", NULL);
    remove_file(p);
}

/* Write the toy dataset, then change one value or attribute in place with the netCDF API. */
static int patch_open(const char *p) {
    write_toy(p);
    int ncid;
    assert_int_equal(nc_open(p, NC_WRITE, &ncid), NC_NOERR);
    return ncid;
}

static void test_refuse_label_out_of_range(void **state) {
    (void)state;
    const char *p = tpath("badlabel.nc");
    int ncid = patch_open(p), vid, seven = 7;
    size_t idx = 3;
    assert_int_equal(nc_inq_varid(ncid, "labels", &vid), NC_NOERR);
    assert_int_equal(nc_put_var1_int(ncid, vid, &idx, &seven), NC_NOERR);
    assert_int_equal(nc_close(ncid), NC_NOERR);
    tsr_nc_dataset d;
    open_fails(p, &d);
    expect_error(p, "variable 'labels'", "example 3 has value 7", "0 <= label < 4", NULL);

    /* a negative label further on */
    ncid = patch_open(p);
    int minus = -1;
    idx = 5;
    assert_int_equal(nc_inq_varid(ncid, "labels", &vid), NC_NOERR);
    assert_int_equal(nc_put_var1_int(ncid, vid, &idx, &minus), NC_NOERR);
    assert_int_equal(nc_close(ncid), NC_NOERR);
    open_fails(p, &d);
    expect_error("example 5 has value -1", NULL);

    /* a split value outside {0, 1, 2} */
    ncid = patch_open(p);
    signed char three = 3;
    idx = 4;
    assert_int_equal(nc_inq_varid(ncid, "split", &vid), NC_NOERR);
    assert_int_equal(nc_put_var1_schar(ncid, vid, &idx, &three), NC_NOERR);
    assert_int_equal(nc_close(ncid), NC_NOERR);
    open_fails(p, &d);
    expect_error(p, "variable 'split'", "example 4 has value 3", "2 (test)", NULL);
    remove_file(p);
}

static void test_refuse_wrong_schema(void **state) {
    (void)state;
    const char *p = tpath("badschema.nc");
    int ncid = patch_open(p);
    assert_int_equal(nc_redef(ncid), NC_NOERR);
    assert_int_equal(nc_put_att_text(ncid, NC_GLOBAL, "tessera_schema", 17, "tessera-dataset-9"),
                     NC_NOERR);
    assert_int_equal(nc_close(ncid), NC_NOERR);
    tsr_nc_dataset d;
    open_fails(p, &d);
    expect_error(p, "'tessera_schema' is \"tessera-dataset-9\"", "expected \"tessera-dataset-1\"",
                 NULL);

    ncid = patch_open(p);
    assert_int_equal(nc_redef(ncid), NC_NOERR);
    assert_int_equal(nc_del_att(ncid, NC_GLOBAL, "tessera_schema"), NC_NOERR);
    assert_int_equal(nc_close(ncid), NC_NOERR);
    open_fails(p, &d);
    expect_error(p, "no global attribute 'tessera_schema'", NULL);

    /* a netCDF classic file is refused for its format */
    assert_int_equal(nc_create(p, NC_CLOBBER, &ncid), NC_NOERR);
    assert_int_equal(nc_close(ncid), NC_NOERR);
    open_fails(p, &d);
    expect_error(p, "netCDF classic", "must be netCDF-4", NULL);
    remove_file(p);
}

/* ------------------------------------------------------------------ refusals when writing */

static void test_refuse_bad_writes(void **state) {
    (void)state;
    const char *p = tpath("refused.nc");
    int bad_lab[N] = {0, 1, 2, 3, 4, 0};
    assert_int_equal(tsr_nc_dataset_write(p, N, H, W, C, g_img, bad_lab, NULL, K, NULL, &g_prov), -1);
    expect_error(p, "example 4 has label 4", NULL);
    int8_t bad_split[N] = {0, 0, 0, 0, 0, -1};
    assert_int_equal(tsr_nc_dataset_write(p, N, H, W, C, g_img, NULL, bad_split, 0, NULL, &g_prov),
                     -1);
    expect_error(p, "example 5 has split -1", NULL);
    tsr_nc_provenance noname = {NULL, "t", NULL, NULL, NULL};
    assert_int_equal(tsr_nc_dataset_write(p, N, H, W, C, g_img, NULL, NULL, 0, NULL, &noname), -1);
    expect_error("task_name", NULL);
    assert_int_equal(tsr_nc_dataset_write(p, N, 0, W, C, g_img, NULL, NULL, 0, NULL, &g_prov), -1);
    const char *names_with_null[K] = {"a", NULL, "c", "d"};
    assert_int_equal(
        tsr_nc_dataset_write(p, N, H, W, C, g_img, g_lab, NULL, K, names_with_null, &g_prov), -1);
    expect_error("class_names[1] is NULL", NULL);
    assert_false(file_exists(p));

    /* netCDF refuses the file itself: a directory that does not exist */
    const char *nodir = tpath("no/such/dir/x.nc");
    assert_int_equal(tsr_nc_dataset_write(nodir, N, H, W, C, g_img, NULL, NULL, 0, NULL, &g_prov),
                     -1);
    expect_error(nodir, "creating temporary file", "no/such/dir: No such file or directory", NULL);

    /* logits: an attribute name netCDF rejects after the file was created, a reserved name */
    float lg[2 * 3] = {0};
    const char *keys[] = {"ok", "bad/name"}, *vals[] = {"1", "2"};
    assert_int_equal(tsr_nc_write_logits(p, 2, 3, lg, 2, keys, vals), -1);
    expect_error(p, "attribute 'bad/name'", "NetCDF:", NULL);
    const char *rkeys[] = {"tessera_schema"};
    assert_int_equal(tsr_nc_write_logits(p, 2, 3, lg, 1, rkeys, vals), -1);
    expect_error("'tessera_schema' is written by tessera", NULL);
    int lab2[2] = {0, 3};
    assert_int_equal(tsr_nc_write_logits_ex(p, 2, 3, lg, lab2, 0, NULL, NULL), -1);
    expect_error("example 1 has label 3", NULL);
    assert_false(file_exists(p));
    assert_no_temp_files();

    /* a failed write leaves an existing file as it was */
    write_toy(p);
    assert_int_equal(tsr_nc_dataset_write(p, N, H, W, C, g_img, bad_lab, NULL, K, NULL, &g_prov), -1);
    tsr_nc_dataset d;
    assert_int_equal(tsr_nc_dataset_open(&d, p), 0);
    assert_int_equal(d.n_classes, K);
    tsr_nc_dataset_close(&d);
    remove_file(p);
    assert_no_temp_files();
}

/* ------------------------------------------------------------------ fixture */

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_test_dataset_nc.XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    fill_images();
    return 0;
}

/* Fails if anything was left in the directory (it is removed either way). */
static int group_teardown(void **state) {
    (void)state;
    DIR *dir = opendir(g_dir);
    if (!dir) return -1;
    int left = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        fprintf(stderr, "left behind in %s: %s\n", g_dir, e->d_name);
        unlink(tpath(e->d_name));
        left++;
    }
    closedir(dir);
    if (rmdir(g_dir) != 0) return -1;
    return left ? -1 : 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_subrange),
        cmocka_unit_test(test_optional_variables),
        cmocka_unit_test(test_large_images_chunked),
        cmocka_unit_test(test_logits_roundtrip),
        cmocka_unit_test(test_refuse_not_netcdf),
        cmocka_unit_test(test_refuse_truncated),
        cmocka_unit_test(test_refuse_missing_images),
        cmocka_unit_test(test_refuse_float_images),
        cmocka_unit_test(test_refuse_label_out_of_range),
        cmocka_unit_test(test_refuse_wrong_schema),
        cmocka_unit_test(test_refuse_bad_writes),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
