/* test_import.c: the importers (src/data/import.c): Fashion-MNIST from Debian's IDX files (skipped
 * when dataset-fashion-mnist is not installed), image folders (class folders, train/val/test
 * layout) and list files, written as PNG/JPEG with stb_image_write in a temporary directory; the
 * resize (short side, area average / bilinear) and centre crop; refusals naming the file. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include <stb/stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include "core/common.h"
#include "data/idx.h"
#include "data/image_decoder.h"
#include "data/import.h"
#include "data/suite.h"

#include "../common/test_util.h"


static void mkdirs(const char *rel) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", g_dir, rel);
    for (char *s = p + strlen(g_dir) + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(p, 0755);
            *s = '/';
        }
    mkdir(p, 0755);
}

/* A w x h PNG with n channels: solid colour col (per channel), or, if split_x > 0, columns
 * x < split_x get col and the others col2. */
static void write_img(const char *rel, int w, int h, int n, const uint8_t *col, int split_x,
                      const uint8_t *col2) {
    uint8_t *px = malloc((size_t)w * h * n);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < n; c++)
                px[((size_t)y * w + x) * n + c] = (split_x > 0 && x >= split_x) ? col2[c] : col[c];
    int ok = stbi_write_png(tpath(rel), w, h, n, px, w * n);
    free(px);
    assert_true(ok);
}

/* A 24 x 16 baseline JPEG, solid RGB (5, 40, 220), quality 95 without chroma subsampling (made with
 * Python's PIL; stored as bytes because stb_image_write's JPEG encoder is not clean under UBSan). */
static const unsigned char BLUE_JPEG[] = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x02, 0x01, 0x01, 0x01, 0x01, 0x01, 0x02,
    0x01, 0x01, 0x01, 0x02, 0x02, 0x02, 0x02, 0x02, 0x04, 0x03, 0x02, 0x02, 0x02, 0x02, 0x05, 0x04,
    0x04, 0x03, 0x04, 0x06, 0x05, 0x06, 0x06, 0x06, 0x05, 0x06, 0x06, 0x06, 0x07, 0x09, 0x08, 0x06,
    0x07, 0x09, 0x07, 0x06, 0x06, 0x08, 0x0b, 0x08, 0x09, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x06, 0x08,
    0x0b, 0x0c, 0x0b, 0x0a, 0x0c, 0x09, 0x0a, 0x0a, 0x0a, 0xff, 0xdb, 0x00, 0x43, 0x01, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x05, 0x03, 0x03, 0x05, 0x0a, 0x07, 0x06, 0x07, 0x0a, 0x0a, 0x0a, 0x0a,
    0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a,
    0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a,
    0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0xff, 0xc0,
    0x00, 0x11, 0x08, 0x00, 0x10, 0x00, 0x18, 0x03, 0x01, 0x11, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11,
    0x01, 0xff, 0xc4, 0x00, 0x1f, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
    0x0a, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x10, 0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05,
    0x05, 0x04, 0x04, 0x00, 0x00, 0x01, 0x7d, 0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21,
    0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23,
    0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17,
    0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a,
    0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
    0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
    0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7,
    0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5,
    0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1,
    0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xff, 0xc4, 0x00, 0x1f, 0x01, 0x00, 0x03,
    0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x11, 0x00,
    0x02, 0x01, 0x02, 0x04, 0x04, 0x03, 0x04, 0x07, 0x05, 0x04, 0x04, 0x00, 0x01, 0x02, 0x77, 0x00,
    0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13,
    0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15,
    0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27,
    0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
    0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6,
    0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4,
    0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9,
    0xfa, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, 0x00, 0x3f, 0x00, 0xfc,
    0xc7, 0xaf, 0xf6, 0x00, 0xfe, 0x7f, 0x0a, 0x00, 0x28, 0x00, 0xa0, 0x02, 0x80, 0x0a, 0x00, 0xff,
    0xd9,
};

static void write_bytes(const char *rel, const void *data, size_t n) {
    FILE *f = fopen(tpath(rel), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void write_text(const char *rel, const char *text) {
    FILE *f = fopen(tpath(rel), "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_test_import_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    tsr_log_level = TSR_LOG_ERROR;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    tsr_import_set_history(NULL);
    return nftw(g_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void open_ok(tsr_suite *s, const char *p) {
    int rc = tsr_suite_open(s, p);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
}

static void import_ok(const char *src, const char *out, int size, int ch, const char *task) {
    int rc = tsr_import_folder(src, out, size, ch, task);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
}

/* ------------------------------------------------------------------ Fashion-MNIST */

static void test_fashion_mnist(void **state) {
    (void)state;
    if (access(TSR_FASHION_MNIST_DIR "/train-images-idx3-ubyte.gz", R_OK) != 0) {
        print_message("  %s not installed (Debian package dataset-fashion-mnist): skipped\n",
                      TSR_FASHION_MNIST_DIR);
        skip();
    }
    char out[600];
    snprintf(out, sizeof out, "%s", tpath("fashion.nc"));
    int rc = tsr_import_fashion_mnist(NULL, out);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
    tsr_suite s;
    open_ok(&s, out);
    assert_int_equal(s.ntasks, 1);
    assert_string_equal(s.task_names[0], "fashion-mnist");
    assert_int_equal(s.n_examples, 70000);
    assert_int_equal(s.H, 28);
    assert_int_equal(s.W, 28);
    assert_int_equal(s.C, 1);
    assert_int_equal(s.num_classes[0], 10);
    assert_string_equal(s.class_names[0], "T-shirt/top");
    assert_string_equal(s.class_names[9], "Ankle boot");
    int8_t *sp = malloc(70000);
    int *lab = malloc(70000 * sizeof *lab);
    assert_int_equal(tsr_suite_read(&s, 0, 0, 70000, NULL, lab, sp), 0);
    int64_t per[3] = {0, 0, 0};
    for (int i = 0; i < 70000; i++) per[sp[i]]++;
    assert_int_equal(per[0], 60000);
    assert_int_equal(per[1], 0);
    assert_int_equal(per[2], 10000);
    for (int i = 0; i < 60000; i++) assert_int_equal(sp[i], 0);
    /* the same pixels and labels as the IDX files */
    tsr_idx_set te = {0};
    assert_int_equal(tsr_idx_load(&te, TSR_FASHION_MNIST_DIR, "t10k"), 0);
    uint8_t px[2 * 784];
    assert_int_equal(tsr_suite_read(&s, 0, 60000, 2, px, NULL, NULL), 0);
    assert_memory_equal(px, te.pixels, sizeof px);
    for (int i = 0; i < 10000; i++) assert_int_equal(lab[60000 + i], te.labels[i]);
    tsr_idx_free(&te);
    char buf[512];
    assert_int_equal(tsr_suite_attr(&s, "source", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "dataset-fashion-mnist"));
    assert_int_equal(tsr_suite_attr(&s, "license", buf, sizeof buf), 1);
    assert_string_equal(buf, "MIT");
    assert_int_equal(tsr_suite_attr(&s, "history", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "tessera prepare fashion-mnist"));
    tsr_suite_close(&s);
    free(sp);
    free(lab);
    unlink(out);
    /* a directory without the files */
    assert_int_equal(tsr_import_fashion_mnist(g_dir, out), -1);
    expect_error(g_dir, NULL);
}

/* ------------------------------------------------------------------ folders */

static const uint8_t RED[3] = {200, 10, 30}, GREEN[3] = {20, 180, 60}, BLUE[3] = {5, 40, 220};
static const uint8_t GREY[1] = {77}, BLACK[3] = {0, 0, 0}, LIGHT[3] = {200, 200, 200};

static void check_solid(const uint8_t *img, int S, int C, const uint8_t *col, int tol) {
    for (int i = 0; i < S * S; i++)
        for (int c = 0; c < C; c++) {
            int d = (int)img[i * C + c] - (int)col[c];
            if (d < -tol || d > tol) {
                print_error("pixel %d channel %d is %d, expected %d\n", i, c, img[i * C + c],
                            col[c]);
                fail();
            }
        }
}

static void test_folder_classes(void **state) {
    (void)state;
    mkdirs("pets/dog");
    mkdirs("pets/ant");
    mkdirs("pets/cat");
    write_img("pets/ant/a1.png", 40, 30, 3, RED, 0, NULL);
    write_img("pets/ant/a0.PNG", 30, 40, 3, GREEN, 0, NULL);
    write_img("pets/ant/a2.png", 9, 9, 4, (const uint8_t[4]){5, 40, 220, 128}, 0, NULL);
    write_img("pets/cat/c0.png", 16, 20, 1, GREY, 0, NULL);
    write_img("pets/cat/c1.png", 5, 3, 1, GREY, 0, NULL); /* enlarged */
    write_bytes("pets/dog/d0.jpg", BLUE_JPEG, sizeof BLUE_JPEG);
    write_text("pets/dog/notes.txt", "not an image");
    write_text("pets/.hidden.png", "ignored");
    write_text("pets/README", "ignored");
    char out[600];
    snprintf(out, sizeof out, "%s", tpath("pets.nc"));
    tsr_import_set_history("tessera prepare folder pets pets.nc --size 8");
    import_ok(tpath("pets"), out, 8, 3, "pets");
    tsr_import_set_history(NULL);
    tsr_suite s;
    open_ok(&s, out);
    assert_int_equal(s.ntasks, 1);
    assert_string_equal(s.task_names[0], "pets");
    assert_int_equal(s.H, 8);
    assert_int_equal(s.W, 8);
    assert_int_equal(s.C, 3);
    assert_int_equal(s.num_classes[0], 3);
    assert_string_equal(s.class_names[0], "ant");
    assert_string_equal(s.class_names[1], "cat");
    assert_string_equal(s.class_names[2], "dog");
    assert_int_equal(s.n_examples, 6);
    uint8_t px[6 * 64 * 3];
    int lab[6];
    int8_t sp[6];
    assert_int_equal(tsr_suite_read(&s, 0, 0, 6, px, lab, sp), 0);
    const int want_lab[6] = {0, 0, 0, 1, 1, 2};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(lab[i], want_lab[i]);
        assert_int_equal(sp[i], 0);
    }
    /* files sorted bytewise in a class: a0.PNG, a1.png, a2.png */
    check_solid(px + 0 * 192, 8, 3, GREEN, 0);
    check_solid(px + 1 * 192, 8, 3, RED, 0);
    check_solid(px + 2 * 192, 8, 3, BLUE, 0); /* alpha dropped */
    const uint8_t grey3[3] = {77, 77, 77};
    check_solid(px + 3 * 192, 8, 3, grey3, 0);
    check_solid(px + 4 * 192, 8, 3, grey3, 0);
    check_solid(px + 5 * 192, 8, 3, BLUE, 3); /* JPEG */
    char buf[512];
    assert_int_equal(tsr_suite_attr(&s, "history", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, ": tessera prepare folder pets pets.nc --size 8"));
    assert_int_equal(tsr_suite_attr(&s, "source", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "libstb-dev"));
    assert_int_equal(tsr_suite_attr(&s, "import_size", buf, sizeof buf), 1);
    assert_string_equal(buf, "8");
    tsr_suite_close(&s);

    /* grey output, default task name = the folder's name */
    import_ok(tpath("pets"), out, 4, 1, NULL);
    open_ok(&s, out);
    assert_string_equal(s.task_names[0], "pets");
    assert_int_equal(s.C, 1);
    uint8_t g[6 * 16];
    assert_int_equal(tsr_suite_read(&s, 0, 0, 6, g, NULL, NULL), 0);
    /* stb_image's luma: (77 r + 150 g + 29 b) >> 8 */
    const uint8_t gg[1] = {(uint8_t)((77 * GREEN[0] + 150 * GREEN[1] + 29 * GREEN[2]) >> 8)};
    check_solid(g, 4, 1, gg, 0);
    check_solid(g + 3 * 16, 4, 1, GREY, 0);
    tsr_suite_close(&s);
    unlink(out);
}

static void test_resize_geometry(void **state) {
    (void)state;
    mkdirs("geo/wide");
    mkdirs("geo/tall");
    mkdirs("geo/small");
    /* 40 x 20, left half black, right half light: short side 20 -> 10 (area average over 2 x 2),
     * width 20, centre crop columns 5..14 of the resized image: the edge is at crop column 5 */
    write_img("geo/wide/w.png", 40, 20, 3, BLACK, 20, LIGHT);
    /* 10 x 30 (short side already 10), left 3 columns black: the crop keeps rows 10..19 */
    write_img("geo/tall/t.png", 10, 30, 3, BLACK, 3, LIGHT);
    /* 5 x 5 enlarged to 10 (bilinear): black | light edge between columns 2 and 3 of the source */
    write_img("geo/small/s.png", 5, 5, 3, BLACK, 3, LIGHT);
    char out[600];
    snprintf(out, sizeof out, "%s", tpath("geo.nc"));
    import_ok(tpath("geo"), out, 10, 3, "geometry");
    tsr_suite s;
    open_ok(&s, out);
    uint8_t px[3 * 100 * 3];
    assert_int_equal(tsr_suite_read(&s, 0, 0, 3, px, NULL, NULL), 0);
    const uint8_t *small = px, *tall = px + 300, *wide = px + 600; /* classes sorted */
    for (int y = 0; y < 10; y++)
        for (int x = 0; x < 10; x++)
            for (int c = 0; c < 3; c++) {
                assert_int_equal(wide[(y * 10 + x) * 3 + c], x < 5 ? 0 : 200);
                assert_int_equal(tall[(y * 10 + x) * 3 + c], x < 3 ? 0 : 200);
                /* bilinear: source column (x + 0.5) / 2 - 0.5, taps floor and floor + 1: only
                 * black taps up to x = 4, only light ones from x = 7 */
                int v = small[(y * 10 + x) * 3 + c];
                if (x <= 4) assert_int_equal(v, 0);
                else if (x >= 7) assert_int_equal(v, 200);
                else assert_true(v > 0 && v < 200);
            }
    tsr_suite_close(&s);
    unlink(out);
}

static void test_resize_squash(void **state) {
    (void)state;
    /* 40 x 20 with the edge at column 10. Crop mode: resized to 20 x 10, the crop keeps resized
     * columns 5..14, all light. Squash mode: 10 x 10, output column u averages source columns
     * [4u, 4u + 4): black for u < 2, half (100) for u = 2, light from 3. */
    mkdirs("geo2/wide");
    write_img("geo2/wide/w.png", 40, 20, 3, BLACK, 10, LIGHT);
    char out[600];
    snprintf(out, sizeof out, "%s", tpath("geo2.nc"));
    for (int mode = TSR_RESIZE_CROP; mode <= TSR_RESIZE_SQUASH; mode++) {
        int rc = tsr_import_folder_resize(tpath("geo2"), out, 10, 3, "g", mode);
        if (rc != 0) print_error("%s\n", tsr_last_error());
        assert_int_equal(rc, 0);
        tsr_suite s;
        open_ok(&s, out);
        uint8_t px[100 * 3];
        assert_int_equal(tsr_suite_read(&s, 0, 0, 1, px, NULL, NULL), 0);
        char buf[256];
        assert_int_equal(tsr_suite_attr(&s, "import_resize", buf, sizeof buf), 1);
        assert_non_null(strstr(buf, mode == TSR_RESIZE_CROP ? "centre crop" : "aspect ratio"));
        for (int y = 0; y < 10; y++)
            for (int x = 0; x < 10; x++) {
                int want = mode == TSR_RESIZE_CROP ? 200 : (x < 2 ? 0 : x == 2 ? 100 : 200);
                assert_int_equal(px[(y * 10 + x) * 3 + 1], want);
            }
        tsr_suite_close(&s);
    }
    assert_int_equal(tsr_import_folder_resize(tpath("geo2"), out, 10, 3, "g", 2), -1);
    expect_error("resize mode 2", NULL);
    unlink(out);
}

static void test_folder_splits(void **state) {
    (void)state;
    mkdirs("sp/train/a");
    mkdirs("sp/train/b");
    mkdirs("sp/val/a");
    mkdirs("sp/test/b");
    mkdirs("sp/test/c");
    write_img("sp/train/a/1.png", 6, 6, 3, RED, 0, NULL);
    write_img("sp/train/a/2.png", 6, 6, 3, RED, 0, NULL);
    write_img("sp/train/b/1.png", 6, 6, 3, GREEN, 0, NULL);
    write_img("sp/val/a/1.png", 6, 6, 3, RED, 0, NULL);
    write_img("sp/test/b/1.png", 6, 6, 3, GREEN, 0, NULL);
    write_img("sp/test/c/1.png", 6, 6, 3, BLUE, 0, NULL);
    char out[600];
    snprintf(out, sizeof out, "%s", tpath("sp.nc"));
    import_ok(tpath("sp"), out, 4, 3, "splits");
    tsr_suite s;
    open_ok(&s, out);
    assert_int_equal(s.num_classes[0], 3);
    assert_string_equal(s.class_names[2], "c");
    assert_int_equal(s.n_examples, 6);
    int lab[6];
    int8_t sp[6];
    assert_int_equal(tsr_suite_read(&s, 0, 0, 6, NULL, lab, sp), 0);
    const int want_lab[6] = {0, 0, 1, 0, 1, 2};
    const int8_t want_sp[6] = {0, 0, 0, 1, 2, 2};
    assert_memory_equal(lab, want_lab, sizeof lab);
    assert_memory_equal(sp, want_sp, sizeof sp);
    tsr_suite_close(&s);
    unlink(out);
    /* anything else next to the split folders is refused */
    mkdirs("sp/extra");
    assert_int_equal(tsr_import_folder(tpath("sp"), out, 4, 3, "splits"), -1);
    expect_error("unexpected folder 'extra'", NULL);
    assert_int_equal(access(out, F_OK), -1);
}

static void test_list_file(void **state) {
    (void)state;
    mkdirs("lst/imgs");
    write_img("lst/imgs/x0.png", 7, 5, 3, RED, 0, NULL);
    write_img("lst/imgs/x1.png", 7, 5, 3, GREEN, 0, NULL);
    write_img("lst/imgs/x2.png", 7, 5, 3, BLUE, 0, NULL);
    char abs_line[700];
    snprintf(abs_line, sizeof abs_line, "%s 1 2\n", tpath("lst/imgs/x1.png"));
    char text[2000];
    snprintf(text, sizeof text,
             "# VTAB-style list: path label [split]\n"
             "imgs/x0.png 0 train\n"
             "\n"
             "imgs/x2.png 3 val\n"
             "imgs/x1.png 1\n"
             "%s",
             abs_line);
    write_text("lst/train800val200.txt", text);
    char out[600];
    snprintf(out, sizeof out, "%s", tpath("lst.nc"));
    import_ok(tpath("lst/train800val200.txt"), out, 4, 3, NULL);
    tsr_suite s;
    open_ok(&s, out);
    assert_string_equal(s.task_names[0], "train800val200");
    assert_int_equal(s.num_classes[0], 4); /* 0..3 */
    assert_string_equal(s.class_names[3], "3");
    assert_int_equal(s.n_examples, 4);
    uint8_t px[4 * 16 * 3];
    int lab[4];
    int8_t sp[4];
    assert_int_equal(tsr_suite_read(&s, 0, 0, 4, px, lab, sp), 0);
    const int want_lab[4] = {0, 3, 1, 1};
    const int8_t want_sp[4] = {0, 1, 0, 2};
    assert_memory_equal(lab, want_lab, sizeof lab);
    assert_memory_equal(sp, want_sp, sizeof sp);
    check_solid(px + 1 * 48, 4, 3, BLUE, 0);
    check_solid(px + 3 * 48, 4, 3, GREEN, 0);
    tsr_suite_close(&s);

    /* class names instead of indices: sorted */
    write_text("lst/named.txt", "imgs/x0.png zebra\nimgs/x1.png ant test\nimgs/x2.png zebra val\n");
    import_ok(tpath("lst/named.txt"), out, 4, 3, "named");
    open_ok(&s, out);
    assert_int_equal(s.num_classes[0], 2);
    assert_string_equal(s.class_names[0], "ant");
    assert_string_equal(s.class_names[1], "zebra");
    assert_int_equal(tsr_suite_read(&s, 0, 0, 3, NULL, lab, sp), 0);
    assert_int_equal(lab[0], 1);
    assert_int_equal(lab[1], 0);
    assert_int_equal(sp[2], 1);
    tsr_suite_close(&s);
    unlink(out);

    /* bad lines */
    write_text("lst/bad.txt", "imgs/x0.png 0\nimgs/x1.png\n");
    assert_int_equal(tsr_import_folder(tpath("lst/bad.txt"), out, 4, 3, "b"), -1);
    expect_error("bad.txt:2", "path label [split]", NULL);
    write_text("lst/bad.txt", "imgs/x0.png 0 training\n");
    assert_int_equal(tsr_import_folder(tpath("lst/bad.txt"), out, 4, 3, "b"), -1);
    expect_error("bad.txt:1", "'training'", NULL);
    write_text("lst/bad.txt", "imgs/missing.png 0\n");
    assert_int_equal(tsr_import_folder(tpath("lst/bad.txt"), out, 4, 3, "b"), -1);
    expect_error("imgs/missing.png", "cannot open image", NULL);
    assert_int_equal(access(out, F_OK), -1);
}

static void test_corrupt_image(void **state) {
    (void)state;
    mkdirs("bad/a");
    mkdirs("bad/b");
    write_img("bad/a/good.png", 8, 8, 3, RED, 0, NULL);
    write_img("bad/b/ok.png", 8, 8, 3, RED, 0, NULL);
    /* a PNG cut in half */
    char *data;
    size_t n;
    assert_int_equal(tsr_read_file(tpath("bad/a/good.png"), &data, &n), 0);
    FILE *f = fopen(tpath("bad/b/truncated.png"), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n / 2, f), n / 2);
    fclose(f);
    free(data);
    char out[600];
    snprintf(out, sizeof out, "%s", tpath("bad.nc"));
    assert_int_equal(tsr_import_folder(tpath("bad"), out, 4, 3, "bad"), -1);
    expect_error("bad/b/truncated.png", "cannot decode image", NULL);
    assert_int_equal(access(out, F_OK), -1);
    /* random bytes named .png */
    unlink(tpath("bad/b/truncated.png"));
    write_text("bad/a/noise.png", "\x89PNG this is not really a PNG file");
    assert_int_equal(tsr_import_folder(tpath("bad"), out, 4, 3, "bad"), -1);
    expect_error("bad/a/noise.png", "cannot decode image", NULL);
    assert_int_equal(access(out, F_OK), -1);
}

/* Debian's stb_image writes past its Huffman tables on a JPEG whose DHT table has more than 256 codes
 * (found by fuzz_image); tsr_import_decode_image refuses such a file before stb_image sees it, and the
 * check does not refuse a valid file that merely carries the bytes FF C4 inside another segment. */
static void test_jpeg_huffman_guard(void **state) {
    (void)state;
    mkdirs("jpeg");
    uint8_t px[4 * 4 * 3];
    char msg[512];
    write_bytes("jpeg/ok.jpg", BLUE_JPEG, sizeof BLUE_JPEG);
    assert_int_equal(tsr_import_decode_image(tpath("jpeg/ok.jpg"), 4, 3, 0, px, msg, sizeof msg), 0);
    check_solid(px, 4, 3, BLUE, 3);

    size_t dht = 0;
    for (size_t i = 2; i + 1 < sizeof BLUE_JPEG; i++)
        if (BLUE_JPEG[i] == 0xFF && BLUE_JPEG[i + 1] == 0xC4) {
            dht = i;
            break;
        }
    assert_true(dht > 0);
    unsigned char bad[sizeof BLUE_JPEG];
    memcpy(bad, BLUE_JPEG, sizeof bad);
    bad[dht + 5 + 14] = 200; /* code-length counts of the first table: 200 + 200 + the rest > 256 */
    bad[dht + 5 + 15] = 200;
    write_bytes("jpeg/bad.jpg", bad, sizeof bad);
    assert_int_equal(tsr_import_decode_image(tpath("jpeg/bad.jpg"), 4, 3, 0, px, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "jpeg/bad.jpg"));
    assert_non_null(strstr(msg, "Huffman table"));
    assert_non_null(strstr(msg, "at most 256"));

    /* a COM segment right after SOI holding FF C4 and a would-be table of 512 codes: still decoded */
    unsigned char com[sizeof BLUE_JPEG + 26];
    const unsigned char seg[26] = {0xFF, 0xFE, 0x00, 24, 0xFF, 0xC4, 0x00, 20, 0x00, 0, 0, 0, 0,
                                   0,    0,    0,    0,  0,    0,    0,    0,  0,    0, 0, 0xFF, 0xFF};
    memcpy(com, BLUE_JPEG, 2);
    memcpy(com + 2, seg, sizeof seg);
    com[2 + 4 + 4 + 1 + 14] = 0xFF; /* counts 15 and 16 of the fake table: 510 codes */
    com[2 + 4 + 4 + 1 + 15] = 0xFF;
    memcpy(com + 2 + sizeof seg, BLUE_JPEG + 2, sizeof BLUE_JPEG - 2);
    write_bytes("jpeg/comment.jpg", com, sizeof com);
    assert_int_equal(tsr_import_decode_image(tpath("jpeg/comment.jpg"), 4, 3, 0, px, msg, sizeof msg), 0);
    check_solid(px, 4, 3, BLUE, 3);
}

/* stb_image's PNM reader overflows an int on a header number past INT_MAX (found by fuzz_image): refused
 * before stb_image sees it; a valid binary PGM with a comment in its header still decodes. */
static void test_pnm_header_guard(void **state) {
    (void)state;
    mkdirs("pnm");
    uint8_t px[4 * 4];
    char msg[512];
    const char good[] = "P5\n# a comment 99999999999\n2 2\n255\n\x10\x10\x10\x10";
    write_bytes("pnm/good.pgm", good, sizeof good - 1);
    assert_int_equal(tsr_import_decode_image(tpath("pnm/good.pgm"), 4, 1, 0, px, msg, sizeof msg), 0);
    const uint8_t g16[1] = {16};
    check_solid(px, 4, 1, g16, 0);
    const char bad[] = "P5 2 99999999999 255\n\x10\x10";
    write_bytes("pnm/bad.pgm", bad, sizeof bad - 1);
    assert_int_equal(tsr_import_decode_image(tpath("pnm/bad.pgm"), 4, 1, 0, px, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "pnm/bad.pgm"));
    assert_non_null(strstr(msg, "corrupt PNM: header number 2 (height)"));
    const char wide[] = "P6 1 1 256\n\x01\x00\x02\x00\x03\x00";
    write_bytes("pnm/wide.ppm", wide, sizeof wide - 1);
    assert_int_equal(tsr_import_decode_image(tpath("pnm/wide.ppm"), 4, 1, 0, px, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "16-bit PNM (maximum value 256) is not supported"));
}

/* 1 if this process has no child left (no decoding process outlives its decoder) */
static int no_children(void) {
    int st;
    return waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD;
}

/* The decoding process (image_decoder.h): the same pixels and messages as decoding here; one process serves
 * many images; a process that crashes on a file (fault point: a signal raised in it) or hangs on one (a
 * 1 s limit) refuses that file by name, and the next file gets a new process; one killed from outside between
 * files is replaced without a word; none is left when the decoder is freed. */
static void test_decoder_process(void **state) {
    (void)state;
    mkdirs("dec");
    write_bytes("dec/blue.jpg", BLUE_JPEG, sizeof BLUE_JPEG);
    write_img("dec/red.png", 12, 8, 3, RED, 0, NULL);
    write_bytes("dec/crash.jpg", BLUE_JPEG, sizeof BLUE_JPEG);
    write_bytes("dec/hang.jpg", BLUE_JPEG, sizeof BLUE_JPEG);
    write_text("dec/noise.png", "not a PNG at all");
    setenv("TESSERA_FAULT_DECODE_SIGNAL", "11:crash.jpg", 1); /* read by the helper, which is forked later */
    setenv("TESSERA_FAULT_DECODE_HANG", "hang.jpg", 1);
    tsr_image_decoder *d = tsr_image_decoder_new();
    uint8_t a[6 * 6 * 3], b[6 * 6 * 3];
    char ma[1024], mb[1024];
    const char *names[3] = {"dec/blue.jpg", "dec/red.png", "dec/noise.png"};
    pid_t first = 0;
    for (int i = 0; i < 3; i++)
        for (int C = 1; C <= 3; C += 2) {
            memset(a, 1, sizeof a);
            memset(b, 2, sizeof b);
            int ra = tsr_image_decoder_decode(d, tpath(names[i]), 6, C, i & 1, a, ma, sizeof ma);
            int rb = tsr_import_decode_image(tpath(names[i]), 6, C, i & 1, b, mb, sizeof mb);
            assert_int_equal(ra, i == 2 ? -1 : 0);
            assert_int_equal(ra, rb);
            assert_int_equal(tsr_image_decoder_last_died(d), 0);
            if (ra == 0) assert_memory_equal(a, b, (size_t)36 * C);
            else assert_string_equal(ma, mb);
            if (i == 1 && C == 3) check_solid(a, 6, 3, RED, 3);
            if (!first) first = tsr_image_decoder_pid(d);
            assert_true(first > 0);
            assert_int_equal(tsr_image_decoder_pid(d), first); /* one process for all */
        }
    assert_true(first != getpid());

    /* crashes on a file: refused, named, with the signal */
    assert_int_equal(tsr_image_decoder_decode(d, tpath("dec/crash.jpg"), 6, 3, 0, a, ma, sizeof ma), -1);
    assert_int_equal(tsr_image_decoder_last_died(d), 1);
    assert_non_null(strstr(ma, "dec/crash.jpg"));
    assert_non_null(strstr(ma, "crashed stb_image (signal 11"));
    assert_int_equal(tsr_image_decoder_pid(d), 0);
    assert_int_equal(kill(first, 0), -1); /* ended and waited for */
    /* the next file: a new process */
    assert_int_equal(tsr_image_decoder_decode(d, tpath("dec/blue.jpg"), 6, 3, 0, a, ma, sizeof ma), 0);
    check_solid(a, 6, 3, BLUE, 3);
    pid_t second = tsr_image_decoder_pid(d);
    assert_true(second > 0 && second != first);

    /* hangs on a file: ended after the limit, refused, named */
    tsr_image_decoder_set_seconds(1);
    assert_int_equal(tsr_image_decoder_decode(d, tpath("dec/hang.jpg"), 6, 3, 0, a, ma, sizeof ma), -1);
    tsr_image_decoder_set_seconds(0);
    assert_int_equal(tsr_image_decoder_last_died(d), 1);
    assert_non_null(strstr(ma, "dec/hang.jpg"));
    assert_non_null(strstr(ma, "still decoding it after 1 s"));
    assert_int_equal(kill(second, 0), -1);

    /* killed from outside between two files: replaced, the file decoded */
    assert_int_equal(tsr_image_decoder_decode(d, tpath("dec/red.png"), 6, 3, 0, a, ma, sizeof ma), 0);
    pid_t third = tsr_image_decoder_pid(d);
    assert_int_equal(kill(third, SIGKILL), 0);
    nanosleep(&(struct timespec){0, 100000000}, NULL);
    assert_int_equal(tsr_image_decoder_decode(d, tpath("dec/blue.jpg"), 6, 3, 0, a, ma, sizeof ma), 0);
    assert_int_equal(tsr_image_decoder_last_died(d), 0);
    check_solid(a, 6, 3, BLUE, 3);
    assert_true(tsr_image_decoder_pid(d) != third);
    tsr_image_decoder_free(d);
    assert_true(no_children());

    /* prepare folder: a file that crashes the decoder refuses the folder, naming the file; nothing written, no
     * process left */
    mkdirs("decf/a");
    mkdirs("decf/b");
    write_img("decf/a/one.png", 8, 8, 3, RED, 0, NULL);
    write_img("decf/b/two.png", 8, 8, 3, RED, 0, NULL);
    write_bytes("decf/b/crash.jpg", BLUE_JPEG, sizeof BLUE_JPEG);
    char out[600];
    snprintf(out, sizeof out, "%s", tpath("decf.nc"));
    assert_int_equal(tsr_import_folder(tpath("decf"), out, 4, 3, "decf"), -1);
    expect_error("decf/b/crash.jpg", "crashed stb_image", NULL);
    assert_int_equal(access(out, F_OK), -1);
    assert_true(no_children());
    unsetenv("TESSERA_FAULT_DECODE_SIGNAL");
    unsetenv("TESSERA_FAULT_DECODE_HANG");
    import_ok(tpath("decf"), out, 4, 3, "decf"); /* the same folder decodes without the fault */
    assert_true(no_children());
}

/* Fills the stack below the caller with v (as a decode's frames will use it). */
__attribute__((noinline)) static void dirty_stack(unsigned char v) {
    unsigned char b[256 * 1024];
    memset(b, v, sizeof b);
    __asm__ volatile("" : : "r"(b) : "memory");
}

/* A 1-bit BMP whose pixels index a palette entry the file never defines (fuzz_image's input,
 * tests/fuzz/regressions/image/stb_bmp_palette_uninitialised.bmp): Debian's stb_image reads that entry from
 * uninitialised stack, so the pixels were whatever the stack held. tsr_import_decode_image zeroes the stack
 * first: two decodes after different stack contents give the same pixels. */
static void test_bmp_palette_deterministic(void **state) {
    (void)state;
    static const unsigned char BMP[] = {0x42, 0x4d, 0x76, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x32, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x03, 0x27, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    mkdirs("bmp");
    write_bytes("bmp/pal.bmp", BMP, sizeof BMP);
    uint8_t a[4 * 4 * 3], b[4 * 4 * 3];
    char msg[512];
    dirty_stack(0xAB);
    int ra = tsr_import_decode_image(tpath("bmp/pal.bmp"), 4, 3, 0, a, msg, sizeof msg);
    dirty_stack(0x35);
    int rb = tsr_import_decode_image(tpath("bmp/pal.bmp"), 4, 3, 0, b, msg, sizeof msg);
    assert_int_equal(ra, 0);
    assert_int_equal(rb, 0);
    assert_memory_equal(a, b, sizeof a);
}

static void test_bad_arguments(void **state) {
    (void)state;
    char out[600];
    snprintf(out, sizeof out, "%s", tpath("args.nc"));
    assert_int_equal(tsr_import_folder(tpath("pets"), out, 8, 2, "x"), -1);
    expect_error("channels 2", NULL);
    assert_int_equal(tsr_import_folder(tpath("pets"), out, 0, 3, "x"), -1);
    expect_error("size 0", NULL);
    assert_int_equal(tsr_import_folder(tpath("nowhere"), out, 8, 3, "x"), -1);
    expect_error("nowhere", NULL);
    mkdirs("empty");
    assert_int_equal(tsr_import_folder(tpath("empty"), out, 8, 3, "x"), -1);
    expect_error("no class folders", NULL);
    mkdirs("empty/cls");
    assert_int_equal(tsr_import_folder(tpath("empty"), out, 8, 3, "x"), -1);
    expect_error("no image files", NULL);
    assert_int_equal(tsr_import_folder(tpath("pets"), out, 8, 3,
                                       "a task name that is much too long: more than sixty-three bytes long"),
                     -1);
    expect_error("task name", NULL);
    assert_int_equal(access(out, F_OK), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fashion_mnist),   cmocka_unit_test(test_folder_classes),
        cmocka_unit_test(test_resize_geometry), cmocka_unit_test(test_resize_squash),
        cmocka_unit_test(test_folder_splits),
        cmocka_unit_test(test_list_file),       cmocka_unit_test(test_corrupt_image),
        cmocka_unit_test(test_bad_arguments),   cmocka_unit_test(test_jpeg_huffman_guard),
        cmocka_unit_test(test_pnm_header_guard), cmocka_unit_test(test_decoder_process),
        cmocka_unit_test(test_bmp_palette_deterministic),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
