/* test_loader.c: the k-shot loader over a suite (src/data/loader.c): exact shots per class, the draw
 * and the images independent of which tasks are selected (rank independence) and dependent on the
 * seed, refusals, and centre crop / pad to the model size. (The trainer's sampler and augmentation
 * are tested in tests/train/test_trainer.c.) */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "data/loader.h"
#include "data/suite.h"

#include "../common/test_util.h"

static char g_path[512];

/* ------------------------------------------------------------------ the test suite
 * alpha: 3 classes, 60 examples; beta: 4 classes, 80; gamma: 2 classes, 30. Example i of a task with
 * K classes has label i % K and, with m = i / K, split m % 3: 7 train examples per class in alpha
 * and beta, 5 in gamma, except gamma's class 1 which has only 2 (m = 0, 3; the others with m % 3 == 0
 * are moved to test). */
enum { H = 6, W = 6, C = 3, NT = 3 };
static const char *const g_tnames[NT] = {"alpha", "beta", "gamma"};
static const int g_K[NT] = {3, 4, 2};
static const int64_t g_n[NT] = {60, 80, 30};
static const char *const g_cls_a[] = {"a0", "a1", "a2"};
static const char *const g_cls_b[] = {"b0", "b1", "b2", "b3"};
static const char *const g_cls_g[] = {"g0", "g1"};
static const char *const *const g_cls[NT] = {g_cls_a, g_cls_b, g_cls_g};
static uint8_t *g_img[NT];
static int *g_lab[NT];
static int8_t *g_split[NT];
static const float g_mean[C] = {0.485f, 0.456f, 0.406f}, g_std[C] = {0.229f, 0.224f, 0.225f};

static uint8_t pixel(int t, int64_t i, int y, int x, int c) {
    return (uint8_t)((t * 50 + i * 3 + y * 11 + x * 5 + c * 17 + (y * x * 3) % 7) % 256);
}

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_test_loader_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_path, sizeof g_path, "%s/suite.nc", g_dir);
    tsr_log_level = TSR_LOG_ERROR;
    tsr_suite_task tasks[NT];
    for (int t = 0; t < NT; t++) {
        g_img[t] = malloc((size_t)g_n[t] * H * W * C);
        g_lab[t] = malloc((size_t)g_n[t] * sizeof(int));
        g_split[t] = malloc((size_t)g_n[t]);
        for (int64_t i = 0; i < g_n[t]; i++) {
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    for (int c = 0; c < C; c++)
                        g_img[t][(((size_t)i * H + y) * W + x) * C + c] = pixel(t, i, y, x, c);
            int64_t m = i / g_K[t];
            g_lab[t][i] = (int)(i % g_K[t]);
            g_split[t][i] = (int8_t)(m % 3);
            if (t == 2 && g_lab[t][i] == 1 && m % 3 == 0 && m >= 6) g_split[t][i] = 2;
        }
        tasks[t] = (tsr_suite_task){g_tnames[t], g_K[t], g_cls[t], g_n[t], g_img[t], g_lab[t],
                                    g_split[t]};
    }
    if (tsr_suite_write(g_path, H, W, C, NT, tasks, NULL) != 0) {
        fprintf(stderr, "%s\n", tsr_last_error());
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    for (int t = 0; t < NT; t++) {
        free(g_img[t]);
        free(g_lab[t]);
        free(g_split[t]);
    }
    unlink(g_path);
    return rmdir(g_dir);
}

static tsr_suite g_s;

static int setup(void **state) {
    (void)state;
    if (tsr_suite_open(&g_s, g_path) != 0) {
        fprintf(stderr, "%s\n", tsr_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tsr_suite_close(&g_s);
    return 0;
}

static tsr_loader_opts opts(int shots, uint64_t seed, int split) {
    tsr_loader_opts o = {.shots = shots, .seed = seed, .split = split, .mean = g_mean, .std = g_std};
    return o;
}

static void open_ok(tsr_loader *l, const int *tasks, int nt, const tsr_loader_opts *o) {
    int rc = tsr_loader_open(l, &g_s, tasks, nt, o);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
}

/* The normalised image of example i of suite task t, (C, S, S) with S = H (no crop). */
static void expected_image(int t, int64_t i, float *out) {
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                uint8_t p = g_img[t][(((size_t)i * H + y) * W + x) * C + c];
                out[(c * H + y) * W + x] = ((float)p / 255.0f - g_mean[c]) / g_std[c];
            }
}

/* ------------------------------------------------------------------ k-shot */

static void test_shots_exact(void **state) {
    (void)state;
    const int all[NT] = {0, 1, 2};
    tsr_loader_opts o = opts(2, 42, 0);
    tsr_loader l;
    open_ok(&l, all, NT, &o);
    assert_int_equal(l.ntasks, NT);
    assert_int_equal(l.S, H);
    float *img = malloc(sizeof(float) * C * H * W), *want = malloc(sizeof(float) * C * H * W);
    for (int i = 0; i < NT; i++) {
        assert_string_equal(l.t[i].name, g_tnames[i]);
        assert_int_equal(tsr_loader_count(&l, i), 2 * g_K[i]);
        int per[4] = {0, 0, 0, 0};
        for (int64_t j = 0; j < l.t[i].n; j++) {
            int64_t idx = l.t[i].index[j];
            if (j > 0) assert_true(idx > l.t[i].index[j - 1]); /* file order */
            assert_int_equal(g_split[i][idx], 0);            /* from the train split */
            int lab = -1;
            assert_int_equal(tsr_loader_get(&l, i, j, img, &lab), 0);
            assert_int_equal(lab, g_lab[i][idx]);
            per[lab]++;
            expected_image(i, idx, want);
            assert_memory_equal(img, want, sizeof(float) * C * H * W);
        }
        for (int k = 0; k < g_K[i]; k++) assert_int_equal(per[k], 2);
    }
    assert_int_equal(tsr_loader_count(&l, 3), -1);
    assert_int_equal(tsr_loader_get(&l, 0, 6, img, NULL), -1);
    expect_error("'alpha' has 6 examples", NULL);
    tsr_loader_close(&l);
    tsr_loader_close(&l);
    free(img);
    free(want);
}

static void test_shots_rank_independent(void **state) {
    (void)state;
    const int all[NT] = {0, 1, 2}, only_beta[1] = {1}, rev[2] = {2, 1};
    tsr_loader_opts o = opts(2, 7, 0);
    tsr_loader a, b, c, d;
    open_ok(&a, all, NT, &o);
    open_ok(&b, only_beta, 1, &o);
    open_ok(&c, rev, 2, &(tsr_loader_opts){.shots = 1, .seed = 7, .split = 0});
    assert_int_equal(b.t[0].n, a.t[1].n);
    assert_memory_equal(b.t[0].index, a.t[1].index, sizeof(int64_t) * (size_t)a.t[1].n);
    assert_memory_equal(b.t[0].labels, a.t[1].labels, sizeof(int) * (size_t)a.t[1].n);
    /* fewer shots: a subset of the larger draw (the same stream, stopped earlier) */
    assert_int_equal(c.t[1].n, 1 * 4);
    for (int64_t j = 0; j < c.t[1].n; j++) {
        int in = 0;
        for (int64_t k = 0; k < a.t[1].n; k++) in |= a.t[1].index[k] == c.t[1].index[j];
        assert_true(in);
    }
    /* the loaders' images and labels of beta are the same too (same seed, same name) */
    float *xa = malloc(sizeof(float) * C * H * W), *xb = malloc(sizeof(float) * C * H * W);
    for (int64_t j = 0; j < a.t[1].n; j++) {
        int la = -1, lb = -2;
        assert_int_equal(tsr_loader_get(&a, 1, j, xa, &la), 0);
        assert_int_equal(tsr_loader_get(&b, 0, j, xb, &lb), 0);
        assert_memory_equal(xa, xb, sizeof(float) * C * H * W);
        assert_int_equal(la, lb);
    }
    free(xa);
    free(xb);
    /* another seed: another draw (7 classes of 7 examples, 2 drawn from each: all equal by
     * chance has probability 21^-7) */
    tsr_loader_opts o2 = opts(2, 8, 0);
    open_ok(&d, all, NT, &o2);
    int differ = 0;
    for (int i = 0; i < 2; i++) /* alpha and beta: 7 candidates per class */
        differ |= memcmp(d.t[i].index, a.t[i].index, sizeof(int64_t) * (size_t)a.t[i].n) != 0;
    assert_true(differ);
    /* the same seed again: the same draw */
    tsr_loader e;
    open_ok(&e, all, NT, &o);
    for (int i = 0; i < NT; i++)
        assert_memory_equal(e.t[i].index, a.t[i].index, sizeof(int64_t) * (size_t)a.t[i].n);
    tsr_loader_close(&a);
    tsr_loader_close(&b);
    tsr_loader_close(&c);
    tsr_loader_close(&d);
    tsr_loader_close(&e);
}

static void test_shots_too_few(void **state) {
    (void)state;
    const int all[NT] = {0, 1, 2}, ab[2] = {0, 1};
    tsr_loader_opts o = opts(3, 1, 0);
    tsr_loader l;
    assert_int_equal(tsr_loader_open(&l, &g_s, all, NT, &o), -1);
    expect_error("suite.nc", "task 'gamma'", "class 1 ('g1')", "has 2 examples in the train split",
                 "fewer than shots = 3", NULL);
    assert_null(l.t);
    tsr_loader_close(&l);
    open_ok(&l, ab, 2, &o); /* without gamma it works */
    tsr_loader_close(&l);
    o.shots = 8;
    assert_int_equal(tsr_loader_open(&l, &g_s, ab, 2, &o), -1);
    expect_error("task 'alpha'", "class 0 ('a0')", "has 7 examples", NULL);
}

static void test_all_of_split(void **state) {
    (void)state;
    const int all[NT] = {0, 1, 2};
    for (int split = 0; split < 3; split++) {
        tsr_loader_opts o = opts(0, 5, split);
        tsr_loader l;
        open_ok(&l, all, NT, &o);
        for (int i = 0; i < NT; i++) {
            int64_t want = 0;
            for (int64_t k = 0; k < g_n[i]; k++) want += g_split[i][k] == split;
            assert_int_equal(tsr_loader_count(&l, i), want);
            for (int64_t j = 0; j < l.t[i].n; j++) {
                assert_int_equal(g_split[i][l.t[i].index[j]], split);
                assert_int_equal(l.t[i].labels[j], g_lab[i][l.t[i].index[j]]);
            }
        }
        tsr_loader_close(&l);
    }
}

static void test_refusals(void **state) {
    (void)state;
    tsr_loader l;
    const int bad[1] = {3}, dup[2] = {1, 1}, one[1] = {0};
    tsr_loader_opts o = opts(0, 1, 0);
    assert_int_equal(tsr_loader_open(&l, &g_s, bad, 1, &o), -1);
    expect_error("task index 3 does not exist", NULL);
    assert_int_equal(tsr_loader_open(&l, &g_s, dup, 2, &o), -1);
    expect_error("'beta' selected twice", NULL);
    o.split = 3;
    assert_int_equal(tsr_loader_open(&l, &g_s, one, 1, &o), -1);
    expect_error("split = 3", NULL);
    o = opts(-1, 1, 0);
    assert_int_equal(tsr_loader_open(&l, &g_s, one, 1, &o), -1);
    expect_error("shots = -1", NULL);
    o = opts(0, 1, 0);
    o.std = NULL;
    assert_int_equal(tsr_loader_open(&l, &g_s, one, 1, &o), -1);
    expect_error("mean and std", NULL);
    const float zero[C] = {1, 0, 1};
    o.std = zero;
    assert_int_equal(tsr_loader_open(&l, &g_s, one, 1, &o), -1);
    expect_error("channel 1", "std", NULL);
    /* an example of a task that was not selected */
    o = opts(0, 1, 0);
    open_ok(&l, one, 1, &o);
    float x[C * H * W];
    assert_int_equal(tsr_loader_get(&l, 1, 0, x, NULL), -1);
    expect_error("task 1 does not exist", "1 selected", NULL);
    tsr_loader_close(&l);
}

/* ------------------------------------------------------------------ size */

static void test_out_size(void **state) {
    (void)state;
    const int sel[1] = {0};
    float img[C * 10 * 10];
    for (int S = 2; S <= 10; S += 4) { /* 2: crop offset 2; 10: pad 2 */
        tsr_loader_opts o = opts(0, 1, 0);
        o.out_size = S;
        tsr_loader l;
        open_ok(&l, sel, 1, &o);
        assert_int_equal(l.S, S);
        int lab;
        assert_int_equal(tsr_loader_get(&l, 0, 4, img, &lab), 0);
        int64_t idx = l.t[0].index[4];
        int off = (H - S) / 2;
        for (int c = 0; c < C; c++)
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++) {
                    int sy = y + off, sx = x + off;
                    uint8_t p = 0;
                    if (sy >= 0 && sy < H && sx >= 0 && sx < W)
                        p = g_img[0][(((size_t)idx * H + sy) * W + sx) * C + c];
                    float want = ((float)p / 255.0f - g_mean[c]) / g_std[c];
                    assert_true(img[(c * S + y) * S + x] == want);
                }
        tsr_loader_close(&l);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_shots_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shots_rank_independent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shots_too_few, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_of_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_size, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
