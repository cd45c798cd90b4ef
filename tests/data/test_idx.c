/* test_idx.c: the IDX (Fashion-MNIST) reader (src/data/idx.c).
 *
 * The real Debian files (dataset-fashion-mnist) are checked when installed, against numbers computed
 * independently with Python's gzip module:
 *   /usr/bin/python3 -c "import gzip; d=gzip.open('.../train-images-idx3-ubyte.gz').read()[16:]; print(sum(d))"
 * (and likewise for the labels and the t10k files). The other tests write small synthetic files in a
 * mkdtemp directory under /tmp; the group teardown removes them and fails if anything was left. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "core/common.h"
#include "core/rng.h"
#include "data/idx.h"

#define DEBIAN_DIR "/usr/share/datasets/fashion-mnist"

#include "../common/test_util.h"


/* A failed load must leave the set empty. */
static void assert_empty(const tsr_idx_set *s) {
    assert_null(s->pixels);
    assert_null(s->labels);
    assert_int_equal(s->n, 0);
}

/* ------------------------------------------------------------------ writing synthetic files */

static void put_be32(uint8_t *b, uint32_t v) {
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* Write magic, ndim dims and nbytes of data to name in g_dir, gzip-compressed or plain. */
static void write_idx(const char *name, int gz, uint32_t magic, int ndim, const uint32_t *dims,
                      const uint8_t *data, size_t nbytes) {
    uint8_t hdr[16];
    put_be32(hdr, magic);
    for (int i = 0; i < ndim; i++) put_be32(hdr + 4 * (1 + i), dims[i]);
    size_t hn = 4 * (size_t)(1 + ndim);
    const char *p = tpath(name);
    if (gz) {
        gzFile f = gzopen(p, "wb");
        assert_non_null(f);
        assert_int_equal(gzwrite(f, hdr, (unsigned)hn), (int)hn);
        if (nbytes) assert_int_equal(gzwrite(f, data, (unsigned)nbytes), (int)nbytes);
        assert_int_equal(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(p, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(hdr, 1, hn, f), hn);
        if (nbytes) assert_int_equal(fwrite(data, 1, nbytes, f), nbytes);
        assert_int_equal(fclose(f), 0);
    }
}

enum { N = 5, R = 3, C = 4 };
static uint8_t g_pix[N * R * C];
static uint8_t g_lab[N] = {9, 0, 3, 7, 1};

static void fill_pixels(void) {
    for (int i = 0; i < N * R * C; i++) g_pix[i] = (uint8_t)((i * 37 + 11) % 256);
    g_pix[0] = 0;
    g_pix[1] = 255;
}

/* name: "<prefix>-images-idx3-ubyte[.gz]" */
static const char *fname(char *buf, size_t cap, const char *prefix, const char *kind, int gz) {
    snprintf(buf, cap, "%s-%s%s", prefix, kind, gz ? ".gz" : "");
    return buf;
}

/* Write a correct pair with the given prefix. */
static void write_good_pair(const char *prefix, int gz) {
    char a[128], b[128];
    uint32_t di[3] = {N, R, C}, dl[1] = {N};
    write_idx(fname(a, sizeof a, prefix, "images-idx3-ubyte", gz), gz, TSR_IDX_MAGIC_IMAGES, 3, di, g_pix,
              sizeof g_pix);
    write_idx(fname(b, sizeof b, prefix, "labels-idx1-ubyte", gz), gz, TSR_IDX_MAGIC_LABELS, 1, dl, g_lab,
              sizeof g_lab);
}

static void remove_pair(const char *prefix, int gz) {
    char a[128], b[128];
    assert_int_equal(unlink(tpath(fname(a, sizeof a, prefix, "images-idx3-ubyte", gz))), 0);
    assert_int_equal(unlink(tpath(fname(b, sizeof b, prefix, "labels-idx1-ubyte", gz))), 0);
}

/* ------------------------------------------------------------------ fixtures */

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_test_idx_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    fill_pixels();
    return 0;
}

/* Every test removes its own files: the directory must be empty here. */
static int group_teardown(void **state) {
    (void)state;
    if (rmdir(g_dir) != 0) {
        fprintf(stderr, "test_idx: %s not empty or not removable: files left behind\n", g_dir);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ the real Debian files */

static void check_real(const char *prefix, int64_t n, uint64_t pixel_sum, const uint8_t first_labels[10],
                       uint64_t img0_sum, int center0, int per_class) {
    char p[512];
    snprintf(p, sizeof p, DEBIAN_DIR "/%s-images-idx3-ubyte.gz", prefix);
    if (access(p, R_OK) != 0) {
        print_message("  %s not installed (Debian package dataset-fashion-mnist): skipped\n", p);
        skip();
    }
    tsr_idx_set s;
    if (tsr_idx_load(&s, DEBIAN_DIR, prefix) != 0) {
        print_error("%s\n", tsr_last_error());
        fail();
    }
    assert_int_equal(s.n, n);
    assert_int_equal(s.rows, 28);
    assert_int_equal(s.cols, 28);
    int64_t hist[TSR_IDX_NUM_CLASSES] = {0};
    for (int64_t i = 0; i < s.n; i++) {
        assert_true(s.labels[i] < TSR_IDX_NUM_CLASSES);
        hist[s.labels[i]]++;
    }
    for (int k = 0; k < TSR_IDX_NUM_CLASSES; k++) assert_int_equal(hist[k], per_class);
    for (int i = 0; i < 10; i++) assert_int_equal(s.labels[i], first_labels[i]);
    uint64_t sum = 0, sum0 = 0;
    for (int64_t i = 0; i < s.n * 28 * 28; i++) sum += s.pixels[i];
    for (int i = 0; i < 28 * 28; i++) sum0 += s.pixels[i];
    assert_int_equal(sum, pixel_sum);
    assert_int_equal(sum0, img0_sum);
    assert_int_equal(s.pixels[14 * 28 + 14], center0);
    tsr_idx_free(&s);
    assert_null(s.pixels);
    assert_null(s.labels);
}

static void test_real_train(void **state) {
    (void)state;
    static const uint8_t first[10] = {9, 0, 0, 3, 0, 2, 7, 2, 5, 5};
    check_real("train", 60000, 3431114169ull, first, 76247, 217, 6000);
}

static void test_real_t10k(void **state) {
    (void)state;
    static const uint8_t first[10] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
    check_real("t10k", 10000, 573469082ull, first, 33456, 110, 1000);
}

/* ------------------------------------------------------------------ synthetic files */

static void check_good(const tsr_idx_set *s) {
    assert_int_equal(s->n, N);
    assert_int_equal(s->rows, R);
    assert_int_equal(s->cols, C);
    assert_memory_equal(s->pixels, g_pix, sizeof g_pix);
    assert_memory_equal(s->labels, g_lab, sizeof g_lab);
}

static void test_roundtrip_gz(void **state) {
    (void)state;
    write_good_pair("train", 1);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "train"), 0);
    check_good(&s);
    tsr_idx_free(&s);
    assert_empty(&s);
    tsr_idx_free(&s); /* twice is safe */
    remove_pair("train", 1);
}

static void test_roundtrip_plain(void **state) {
    (void)state;
    write_good_pair("t10k", 0);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "t10k"), 0);
    check_good(&s);
    tsr_idx_free(&s);
    remove_pair("t10k", 0);
}

/* A plain images file with a gzip labels file: each name is resolved on its own. */
static void test_mixed_compression(void **state) {
    (void)state;
    uint32_t di[3] = {N, R, C}, dl[1] = {N};
    write_idx("mix-images-idx3-ubyte", 0, TSR_IDX_MAGIC_IMAGES, 3, di, g_pix, sizeof g_pix);
    write_idx("mix-labels-idx1-ubyte.gz", 1, TSR_IDX_MAGIC_LABELS, 1, dl, g_lab, sizeof g_lab);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "mix"), 0);
    check_good(&s);
    tsr_idx_free(&s);
    assert_int_equal(unlink(tpath("mix-images-idx3-ubyte")), 0);
    assert_int_equal(unlink(tpath("mix-labels-idx1-ubyte.gz")), 0);
}

static void test_wrong_magic_images(void **state) {
    (void)state;
    write_good_pair("bad", 1);
    uint32_t di[3] = {N, R, C};
    /* byte-swapped magic, as a little-endian writer would produce */
    write_idx("bad-images-idx3-ubyte.gz", 1, 0x03080000u, 3, di, g_pix, sizeof g_pix);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "bad"), -1);
    expect_error("bad-images-idx3-ubyte.gz", "magic", "0x03080000", "0x00000803", NULL);
    assert_empty(&s);
    remove_pair("bad", 1);
}

static void test_wrong_magic_labels(void **state) {
    (void)state;
    write_good_pair("bad", 1);
    uint32_t dl[3] = {N, 1, 1};
    /* an images file where the labels should be */
    write_idx("bad-labels-idx1-ubyte.gz", 1, TSR_IDX_MAGIC_IMAGES, 3, dl, g_lab, sizeof g_lab);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "bad"), -1);
    expect_error("bad-labels-idx1-ubyte.gz", "magic", "0x00000803", "0x00000801", NULL);
    assert_empty(&s);
    remove_pair("bad", 1);
}

/* The header promises N images, the data holds N-1 and a half. */
static void test_truncated_images(void **state) {
    (void)state;
    write_good_pair("trunc", 1);
    uint32_t di[3] = {N, R, C};
    size_t short_len = sizeof g_pix - R * C / 2;
    write_idx("trunc-images-idx3-ubyte.gz", 1, TSR_IDX_MAGIC_IMAGES, 3, di, g_pix, short_len);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "trunc"), -1);
    char want[64];
    snprintf(want, sizeof want, "%zu of %zu", short_len, sizeof g_pix);
    expect_error("trunc-images-idx3-ubyte.gz", "truncated", want, NULL);
    assert_empty(&s);
    remove_pair("trunc", 1);
}

/* The gzip stream itself is cut off (a partial download). */
static void test_truncated_gzip_stream(void **state) {
    (void)state;
    enum { BIG = 200, BR = 28, BC = 28 };
    uint8_t *pix = malloc((size_t)BIG * BR * BC);
    uint8_t lab[BIG];
    assert_non_null(pix);
    uint64_t x = 12345;
    for (size_t i = 0; i < (size_t)BIG * BR * BC; i++) pix[i] = (uint8_t)(tsr_splitmix64(&x));
    for (int i = 0; i < BIG; i++) lab[i] = (uint8_t)(i % 10);
    uint32_t di[3] = {BIG, BR, BC}, dl[1] = {BIG};
    write_idx("cut-images-idx3-ubyte.gz", 1, TSR_IDX_MAGIC_IMAGES, 3, di, pix, (size_t)BIG * BR * BC);
    write_idx("cut-labels-idx1-ubyte.gz", 1, TSR_IDX_MAGIC_LABELS, 1, dl, lab, BIG);
    free(pix);
    FILE *f = fopen(tpath("cut-images-idx3-ubyte.gz"), "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    fclose(f);
    assert_true(len > 1000);
    assert_int_equal(truncate(tpath("cut-images-idx3-ubyte.gz"), len / 2), 0);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "cut"), -1);
    expect_error("cut-images-idx3-ubyte.gz", "truncated", NULL);
    assert_empty(&s);
    remove_pair("cut", 1);
}

/* A corrupt header claiming about 2^64 bytes of images: refused as truncated after reading what is
 * there, without first allocating what the header claims. */
static void test_huge_header(void **state) {
    (void)state;
    write_good_pair("huge", 1);
    uint32_t di[3] = {0xFFFFFFFFu, 65535, 65535};
    write_idx("huge-images-idx3-ubyte.gz", 1, TSR_IDX_MAGIC_IMAGES, 3, di, g_pix, sizeof g_pix);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "huge"), -1);
    expect_error("huge-images-idx3-ubyte.gz", "truncated", "60 of 18446181123756261375", NULL);
    assert_empty(&s);
    remove_pair("huge", 1);
}

static void test_truncated_header(void **state) {
    (void)state;
    write_good_pair("hdr", 0);
    uint32_t di[1] = {N}; /* magic and one dimension: rows and cols missing */
    write_idx("hdr-images-idx3-ubyte", 0, TSR_IDX_MAGIC_IMAGES, 1, di, NULL, 0);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "hdr"), -1);
    expect_error("hdr-images-idx3-ubyte", "truncated", NULL);
    assert_empty(&s);
    remove_pair("hdr", 0);
}

static void test_extra_bytes(void **state) {
    (void)state;
    write_good_pair("extra", 1);
    uint32_t dl[1] = {N - 1}; /* the labels file holds N bytes but claims N-1 */
    write_idx("extra-labels-idx1-ubyte.gz", 1, TSR_IDX_MAGIC_LABELS, 1, dl, g_lab, sizeof g_lab);
    uint32_t di[3] = {N - 1, R, C};
    write_idx("extra-images-idx3-ubyte.gz", 1, TSR_IDX_MAGIC_IMAGES, 3, di, g_pix, (N - 1) * R * C);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "extra"), -1);
    expect_error("extra-labels-idx1-ubyte.gz", "extra bytes", NULL);
    assert_empty(&s);
    remove_pair("extra", 1);
}

static void test_zero_dims(void **state) {
    (void)state;
    write_good_pair("zero", 1);
    uint32_t di[3] = {N, 0, C};
    write_idx("zero-images-idx3-ubyte.gz", 1, TSR_IDX_MAGIC_IMAGES, 3, di, NULL, 0);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "zero"), -1);
    expect_error("zero-images-idx3-ubyte.gz", "bad dimensions", NULL);
    assert_empty(&s);
    remove_pair("zero", 1);
}

static void test_count_mismatch(void **state) {
    (void)state;
    write_good_pair("cnt", 1);
    uint32_t dl[1] = {N - 1};
    write_idx("cnt-labels-idx1-ubyte.gz", 1, TSR_IDX_MAGIC_LABELS, 1, dl, g_lab, N - 1);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "cnt"), -1);
    expect_error("cnt-labels-idx1-ubyte.gz", "cnt-images-idx3-ubyte.gz", "4 labels", "5 images", NULL);
    assert_empty(&s);
    remove_pair("cnt", 1);
}

static void test_label_out_of_range(void **state) {
    (void)state;
    write_good_pair("lab", 1);
    uint8_t lab[N];
    memcpy(lab, g_lab, N);
    lab[3] = 10;
    uint32_t dl[1] = {N};
    write_idx("lab-labels-idx1-ubyte.gz", 1, TSR_IDX_MAGIC_LABELS, 1, dl, lab, N);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "lab"), -1);
    expect_error("lab-labels-idx1-ubyte.gz", "label 10", "index 3", "0..9", NULL);
    assert_empty(&s);
    remove_pair("lab", 1);
}

static void test_missing_file(void **state) {
    (void)state;
    char a[128];
    uint32_t di[3] = {N, R, C};
    write_idx(fname(a, sizeof a, "miss", "images-idx3-ubyte", 1), 1, TSR_IDX_MAGIC_IMAGES, 3, di, g_pix,
              sizeof g_pix);
    tsr_idx_set s;
    assert_int_equal(tsr_idx_load(&s, g_dir, "miss"), -1);
    expect_error("miss-labels-idx1-ubyte.gz", "not found", NULL);
    assert_empty(&s);
    assert_int_equal(unlink(tpath(a)), 0);

    /* no files at all, and a directory that does not exist */
    assert_int_equal(tsr_idx_load(&s, g_dir, "miss"), -1);
    expect_error("miss-images-idx3-ubyte.gz", "not found", NULL);
    assert_int_equal(tsr_idx_load(&s, "/nonexistent/tsr_idx", "train"), -1);
    expect_error("/nonexistent/tsr_idx/train-images-idx3-ubyte", NULL);
    assert_int_equal(tsr_idx_load(&s, g_dir, ""), -1);
    expect_error("prefix", NULL);
    assert_empty(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_train),
        cmocka_unit_test(test_real_t10k),
        cmocka_unit_test(test_roundtrip_gz),
        cmocka_unit_test(test_roundtrip_plain),
        cmocka_unit_test(test_mixed_compression),
        cmocka_unit_test(test_wrong_magic_images),
        cmocka_unit_test(test_wrong_magic_labels),
        cmocka_unit_test(test_truncated_images),
        cmocka_unit_test(test_truncated_gzip_stream),
        cmocka_unit_test(test_truncated_header),
        cmocka_unit_test(test_huge_header),
        cmocka_unit_test(test_extra_bytes),
        cmocka_unit_test(test_zero_dims),
        cmocka_unit_test(test_count_mismatch),
        cmocka_unit_test(test_label_out_of_range),
        cmocka_unit_test(test_missing_file),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
