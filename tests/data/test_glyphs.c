/* test_glyphs.c: the glyph suite generator (src/data/glyphs.c).
 *
 * Needs Debian's fonts-noto-core and fonts-noto-extra (/usr/share/fonts/truetype/noto, installed by
 * scripts/setup.sh). Checks: one clean rendering (non-empty, upright, centred); the script table (names,
 * ranges, at least 40 usable scripts on this machine); the roles of configs/glyphs.yaml; the class /
 * split layout of a task; determinism (same seed: same pixels, whether built alone, twice, or through
 * the suite file; another seed: other pixels); the augmentation (emboldening adds ink, elastic
 * distortion moves pixels but keeps the mass, with the documented spread); suite v2's roles (renderings
 * per role and split, plain test renderings that do not change with the seed, the attributes);
 * refusals (missing font directory or font file, bad options, unknown script, bad role lists). Files go
 * to a mkdtemp directory under /tmp; the group teardown removes it and fails if anything was left. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "data/glyphs.h"
#include "data/suite.h"
#include "io/tsr_config.h"

#define NOTO TSR_GLYPHS_DEFAULT_FONT_DIR

#include "../common/test_util.h"


/* The small suite of the determinism tests: 3 scripts, 10 classes, 4 renderings (2 train, 1 val,
 * 1 test). */
static const char *SMALL[] = {"latin", "armenian", "hebrew"};

static void small_opts(tsr_glyph_opts *o, uint64_t seed) {
    tsr_glyph_opts_init(o);
    o->max_classes = 10;
    o->examples = 4;
    o->n_val = 1;
    o->n_test = 1;
    o->seed = seed;
    o->nscripts = 3;
    o->scripts = SMALL;
    o->command = "test_glyphs";
}

/* ------------------------------------------------------------------ rendering */

static void test_render_char_centred(void **state) {
    (void)state;
    enum { S = 28 };
    uint8_t img[S * S];
    assert_int_equal(tsr_glyphs_render_char(NOTO "/NotoSans-Regular.ttf", 'A', S, img), 0);
    long ink = 0, sx = 0, sy = 0;
    int x0 = S, x1 = -1, y0 = S, y1 = -1;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            int v = img[y * S + x];
            ink += v;
            sx += (long)v * x;
            sy += (long)v * y;
            if (v >= 128) {
                if (x < x0) x0 = x;
                if (x > x1) x1 = x;
                if (y < y0) y0 = y;
                if (y > y1) y1 = y;
            }
        }
    /* non-empty, and a glyph rather than a filled box */
    assert_true(ink > 255 * 30);
    assert_true(ink < 255 * S * S / 2);
    /* the larger side fills about 0.68 of the image; the box is centred within a pixel */
    assert_in_range(y1 - y0 + 1, 16, 21);
    assert_in_range(x0 + x1, S - 3, S + 1);
    assert_in_range(y0 + y1, S - 3, S + 1);
    /* the ink's centre of mass is near the middle (an A is heavier at the bottom) */
    assert_in_range((int)(2 * sx / ink), S - 4, S + 2);
    assert_in_range((int)(2 * sy / ink), S - 4, S + 4);
    /* black border */
    for (int i = 0; i < S; i++) {
        assert_int_equal(img[i], 0);
        assert_int_equal(img[(S - 1) * S + i], 0);
        assert_int_equal(img[i * S], 0);
        assert_int_equal(img[i * S + S - 1], 0);
    }
    /* upright: the apex of the A is at the top, the legs spread at the bottom */
    int lt = S, rt = -1, lb = S, rb = -1;
    for (int x = 0; x < S; x++) {
        if (img[(y0 + 1) * S + x] >= 128) {
            if (x < lt) lt = x;
            if (x > rt) rt = x;
        }
        if (img[(y1 - 1) * S + x] >= 128) {
            if (x < lb) lb = x;
            if (x > rb) rb = x;
        }
    }
    assert_true(rb - lb > 2 * (rt - lt));

    /* the same call twice gives the same pixels */
    uint8_t again[S * S];
    assert_int_equal(tsr_glyphs_render_char(NOTO "/NotoSans-Regular.ttf", 'A', S, again), 0);
    assert_memory_equal(img, again, sizeof img);
}

static void test_render_char_refusals(void **state) {
    (void)state;
    uint8_t img[28 * 28];
    assert_int_equal(tsr_glyphs_render_char("/nonexistent/Font.ttf", 'A', 28, img), -1);
    expect_error("/nonexistent/Font.ttf", "cannot open", NULL);
    /* Armenian has no Latin letters */
    assert_int_equal(tsr_glyphs_render_char(NOTO "/NotoSansArmenian-Regular.ttf", 'A', 28, img), -1);
    expect_error("NotoSansArmenian-Regular.ttf", "no glyph for U+0041", NULL);
    /* a space is empty */
    assert_int_equal(tsr_glyphs_render_char(NOTO "/NotoSans-Regular.ttf", ' ', 28, img), -1);
    expect_error("U+0020", "empty", NULL);
}

/* ------------------------------------------------------------------ the script table */

static void test_script_table(void **state) {
    (void)state;
    int n = tsr_glyph_script_count();
    assert_true(n >= 40);
    for (int i = 0; i < n; i++) {
        const tsr_glyph_script *s = tsr_glyph_script_at(i);
        assert_non_null(s);
        assert_true(strlen(s->name) > 0 && strlen(s->name) < TSR_NAME_MAX);
        for (const char *c = s->name; *c; c++) assert_true((*c >= 'a' && *c <= 'z') || *c == '-');
        assert_ptr_equal(tsr_glyph_script_find(s->name), s);
        for (int j = 0; j < i; j++) assert_string_not_equal(tsr_glyph_script_at(j)->name, s->name);
        assert_true(s->title && s->title[0] && s->fonts && s->fonts[0]);
        assert_true(s->ranges[0].lo > 0 && s->ranges[0].lo <= s->ranges[0].hi);
        for (int r = 0; r < TSR_GLYPH_MAX_RANGES; r++)
            assert_true(s->ranges[r].lo <= s->ranges[r].hi && s->ranges[r].hi <= 0x10FFFF);
    }
    assert_null(tsr_glyph_script_at(n));
    assert_null(tsr_glyph_script_at(-1));
    assert_null(tsr_glyph_script_find("klingon"));
}

/* At least 40 scripts reach 10 classes with the fonts of this machine; each usable task has 10..20
 * distinct code points of its own ranges and fonts that exist. */
static void test_scripts_found(void **state) {
    (void)state;
    tsr_glyph_opts o;
    tsr_glyph_opts_init(&o);
    int usable = 0, classes = 0;
    for (int i = 0; i < tsr_glyph_script_count(); i++) {
        const tsr_glyph_script *s = tsr_glyph_script_at(i);
        tsr_glyph_task t;
        int rc = tsr_glyphs_scan(&o, s, &t);
        if (rc < 0) print_error("%s: %s\n", s->name, tsr_last_error());
        assert_true(rc == 0 || rc == 1);
        if (rc == 1) {
            assert_true(strlen(t.reason) > 0);
            if (getenv("TSR_TEST_VERBOSE")) print_message("  dropped %s: %s\n", s->name, t.reason);
        } else {
            usable++;
            classes += t.num_classes;
            assert_in_range(t.num_classes, 10, 20);
            assert_true(t.nfonts >= 1);
            assert_int_equal(t.n, 0);
            for (int f = 0; f < t.nfonts; f++) assert_int_equal(access(t.fonts[f], R_OK), 0);
            for (int c = 0; c < t.num_classes; c++) {
                uint32_t cp = t.codepoints[c];
                int in = 0;
                for (int r = 0; r < TSR_GLYPH_MAX_RANGES; r++)
                    in |= cp >= s->ranges[r].lo && cp <= s->ranges[r].hi;
                assert_true(in);
                for (int d = 0; d < c; d++) assert_int_not_equal(t.codepoints[d], cp);
                char want[16];
                snprintf(want, sizeof want, "U+%04X ", (unsigned)cp);
                assert_memory_equal(t.class_names[c], want, strlen(want));
                assert_true(strlen(t.class_names[c]) < TSR_NAME_MAX);
            }
        }
        tsr_glyph_task_free(&t);
    }
    print_message("  %d scripts usable (%d classes) of %d in the table\n", usable, classes,
                  tsr_glyph_script_count());
    assert_true(usable >= 40);
}

/* configs/glyphs.yaml, loaded as a tessera configuration: its four role lists (suite.source, .train,
 * .val, .heldout) name scripts of the table, each once; together they cover every script usable on this
 * machine; at least 8 are held out. */
static void test_roles_config(void **state) {
    (void)state;
    static tsr_config cfg;
    if (tsr_config_load(&cfg, "configs/glyphs.yaml", 0, NULL) != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(tsr_config_load(&cfg, "configs/glyphs.yaml", 0, NULL), 0);
    assert_string_equal(cfg.data.dataset, "suite");
    assert_string_equal(cfg.data.path, "data/glyphs.nc");
    const cfg_string_list *lists[4] = {&cfg.suite.source, &cfg.suite.train, &cfg.suite.val, &cfg.suite.heldout};
    static char names[4][CFG_LIST_MAX][TSR_NAME_MAX];
    const char *keys[4] = {"source", "train", "val", "heldout"};
    int cnt[4];
    for (int r = 0; r < 4; r++) {
        cnt[r] = lists[r]->n;
        for (int i = 0; i < cnt[r]; i++) snprintf(names[r][i], TSR_NAME_MAX, "%s", lists[r]->v[i]);
        assert_true(cnt[r] > 0);
    }
    assert_true(cnt[2] >= 4);
    assert_true(cnt[3] >= 12);
    int total = cnt[0] + cnt[1] + cnt[2] + cnt[3];
    /* about 1/3 source, 1/2 train */
    assert_in_range(cnt[0] * 100 / total, 25, 42);
    assert_in_range(cnt[1] * 100 / total, 40, 60);
    tsr_glyph_opts o;
    tsr_glyph_opts_init(&o);
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < cnt[r]; i++) {
            const tsr_glyph_script *s = tsr_glyph_script_find(names[r][i]);
            if (!s) print_error("configs/glyphs.yaml: %s: '%s' is not in the script table\n", keys[r], names[r][i]);
            assert_non_null(s);
            for (int r2 = 0; r2 <= r; r2++)
                for (int j = 0; j < (r2 == r ? i : cnt[r2]); j++)
                    if (strcmp(names[r][i], names[r2][j]) == 0) {
                        print_error("configs/glyphs.yaml: '%s' is listed twice\n", names[r][i]);
                        fail();
                    }
        }
    /* every usable script has a role, and every listed one is usable */
    int usable = 0;
    for (int i = 0; i < tsr_glyph_script_count(); i++) {
        const tsr_glyph_script *s = tsr_glyph_script_at(i);
        tsr_glyph_task t;
        int rc = tsr_glyphs_scan(&o, s, &t);
        assert_true(rc == 0 || rc == 1);
        int listed = 0;
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < cnt[r]; j++) listed |= strcmp(names[r][j], s->name) == 0;
        if (rc == 0 && !listed) print_error("configs/glyphs.yaml: usable script '%s' has no role\n", s->name);
        if (rc == 1 && listed) print_error("configs/glyphs.yaml: '%s' cannot be built here: %s\n", s->name, t.reason);
        tsr_glyph_task_free(&t);
        assert_int_equal(rc == 0, listed);
        usable += rc == 0;
    }
    assert_int_equal(usable, total);
}

/* ------------------------------------------------------------------ tasks */

static void test_task_layout(void **state) {
    (void)state;
    tsr_glyph_opts o;
    tsr_glyph_opts_init(&o); /* 20 classes x 20 renderings: 12 train, 3 val, 5 test */
    tsr_glyph_task t;
    assert_int_equal(tsr_glyphs_render_task(&o, tsr_glyph_script_find("greek"), &t), 0);
    assert_int_equal(t.num_classes, 20);
    assert_int_equal(t.n, 400);
    assert_int_equal(t.size, 28);
    assert_int_equal(t.codepoints[0], 0x0391); /* Alpha */
    assert_string_equal(t.class_names[0], "U+0391 \xCE\x91");
    for (int c = 0; c < 20; c++) {
        int cnt[3] = {0, 0, 0};
        for (int e = 0; e < 20; e++) {
            int64_t k = (int64_t)c * 20 + e;
            assert_int_equal(t.labels[k], c);
            assert_in_range(t.split[k], 0, 2);
            cnt[t.split[k]]++;
            /* every rendering has ink: at least 10 white pixels' worth (a sum: the strokes of the Thin
             * faces are a fraction of a pixel wide and never reach white) */
            long ink = 0;
            for (int i = 0; i < 28 * 28; i++) ink += t.images[k * 784 + i];
            assert_true(ink >= 10 * 255);
        }
        assert_int_equal(cnt[0], 12);
        assert_int_equal(cnt[1], 3);
        assert_int_equal(cnt[2], 5);
    }
    /* the renderings of one class differ (fonts and jitter) */
    assert_memory_not_equal(t.images, t.images + 784, 784);
    tsr_glyph_task_free(&t);
    assert_null(t.images);
}

/* Same seed: identical tasks; another seed: other pixels but the same classes and fonts. */
static void test_determinism_memory(void **state) {
    (void)state;
    tsr_glyph_opts a, b;
    small_opts(&a, 7);
    small_opts(&b, 8);
    for (int i = 0; i < 3; i++) {
        const tsr_glyph_script *s = tsr_glyph_script_find(SMALL[i]);
        tsr_glyph_task t1, t2, t3;
        assert_int_equal(tsr_glyphs_render_task(&a, s, &t1), 0);
        assert_int_equal(tsr_glyphs_render_task(&a, s, &t2), 0);
        assert_int_equal(tsr_glyphs_render_task(&b, s, &t3), 0);
        assert_int_equal(t1.num_classes, 10);
        assert_int_equal(t1.n, 40);
        assert_int_equal(t2.n, t1.n);
        assert_memory_equal(t1.images, t2.images, (size_t)t1.n * 784);
        assert_memory_equal(t1.labels, t2.labels, (size_t)t1.n * sizeof *t1.labels);
        assert_memory_equal(t1.split, t2.split, (size_t)t1.n);
        assert_int_equal(t3.n, t1.n);
        assert_memory_equal(t1.codepoints, t3.codepoints, 10 * sizeof *t1.codepoints);
        assert_memory_not_equal(t1.images, t3.images, (size_t)t1.n * 784);
        tsr_glyph_task_free(&t1);
        tsr_glyph_task_free(&t2);
        tsr_glyph_task_free(&t3);
    }
    /* a task does not depend on the other scripts of the build: latin alone equals latin above */
    tsr_glyph_opts one;
    small_opts(&one, 7);
    tsr_glyph_task t1, t2;
    assert_int_equal(tsr_glyphs_render_task(&one, tsr_glyph_script_find("latin"), &t1), 0);
    one.scripts = (const char *[]){"latin"};
    one.nscripts = 1;
    assert_int_equal(tsr_glyphs_render_task(&one, tsr_glyph_script_find("latin"), &t2), 0);
    assert_memory_equal(t1.images, t2.images, (size_t)t1.n * 784);
    tsr_glyph_task_free(&t1);
    tsr_glyph_task_free(&t2);
}

/* Read every example of a suite file: pixels, labels, split (malloc'ed, concatenated over tasks). */
static int64_t read_all(const char *path, uint8_t **px, int **lab, int8_t **sp, tsr_suite *s) {
    assert_int_equal(tsr_suite_open(s, path), 0);
    int64_t n = s->n_examples, pos = 0;
    *px = malloc((size_t)n * 784);
    *lab = malloc((size_t)n * sizeof **lab);
    *sp = malloc((size_t)n);
    for (int t = 0; t < s->ntasks; t++) {
        assert_int_equal(tsr_suite_read(s, t, 0, s->count[t], *px + pos * 784, *lab + pos, *sp + pos), 0);
        pos += s->count[t];
    }
    assert_int_equal(pos, n);
    return n;
}

/* Two builds of the small suite: the same tasks, classes and pixels as rendered in memory. */
static void test_determinism_file(void **state) {
    (void)state;
    tsr_glyph_opts o;
    small_opts(&o, 7);
    const char *p1 = tpath("g1.nc"), *p2 = tpath("g2.nc");
    assert_int_equal(tsr_glyphs_build(&o, p1), 0);
    assert_int_equal(tsr_glyphs_build(&o, p2), 0);

    tsr_suite s1, s2;
    uint8_t *px1, *px2;
    int *l1, *l2;
    int8_t *sp1, *sp2;
    int64_t n1 = read_all(p1, &px1, &l1, &sp1, &s1), n2 = read_all(p2, &px2, &l2, &sp2, &s2);
    assert_int_equal(n1, 3 * 10 * 4);
    assert_int_equal(n2, n1);
    assert_int_equal(s1.ntasks, 3);
    assert_int_equal(s1.H, 28);
    assert_int_equal(s1.W, 28);
    assert_int_equal(s1.C, 1);
    assert_memory_equal(px1, px2, (size_t)n1 * 784);
    assert_memory_equal(l1, l2, (size_t)n1 * sizeof *l1);
    assert_memory_equal(sp1, sp2, (size_t)n1);

    /* the file holds the tasks in the order asked, as rendered in memory */
    int64_t pos = 0;
    for (int t = 0; t < 3; t++) {
        assert_string_equal(s1.task_names[t], SMALL[t]);
        assert_int_equal(s1.num_classes[t], 10);
        tsr_glyph_task m;
        assert_int_equal(tsr_glyphs_render_task(&o, tsr_glyph_script_find(SMALL[t]), &m), 0);
        assert_int_equal(m.n, s1.count[t]);
        assert_memory_equal(px1 + pos * 784, m.images, (size_t)m.n * 784);
        assert_memory_equal(l1 + pos, m.labels, (size_t)m.n * sizeof *m.labels);
        assert_memory_equal(sp1 + pos, m.split, (size_t)m.n);
        for (int c = 0; c < 10; c++) assert_string_equal(s1.class_names[t * s1.max_classes + c], m.class_names[c]);
        pos += m.n;
        tsr_glyph_task_free(&m);
    }

    /* provenance */
    char buf[16384];
    assert_int_equal(tsr_suite_attr(&s1, "glyph_seed", buf, sizeof buf), 1);
    assert_string_equal(buf, "7");
    assert_int_equal(tsr_suite_attr(&s1, "glyph_fonts", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "NotoSansArmenian-Regular.ttf "));
    assert_non_null(strstr(buf, " bytes crc32 "));
    assert_int_equal(tsr_suite_attr(&s1, "glyph_task_fonts", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "hebrew: "));
    assert_int_equal(tsr_suite_attr(&s1, "history", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "test_glyphs"));
    assert_int_equal(tsr_suite_attr(&s1, "freetype_version", buf, sizeof buf), 1);
    assert_true(buf[0] >= '2');
    assert_int_equal(tsr_suite_attr(&s1, "glyph_packages", buf, sizeof buf), 1);
    assert_true(strlen(buf) > 0);

    tsr_suite_close(&s1);
    tsr_suite_close(&s2);
    free(px1);
    free(px2);
    free(l1);
    free(l2);
    free(sp1);
    free(sp2);
    assert_int_equal(unlink(p1), 0);
    assert_int_equal(unlink(p2), 0);
}

/* ------------------------------------------------------------------ augmentation */

static long ink_of(const uint8_t *img, int n) {
    long s = 0;
    for (int i = 0; i < n; i++) s += img[i];
    return s;
}

/* FreeType emboldening: a positive stroke change adds ink, a negative one removes it, except on a
 * light face (weight class below 350), which is never thinned. */
static void test_embolden_ink(void **state) {
    (void)state;
    enum { S = 28 };
    uint8_t clean[S * S], bold[S * S], thin[S * S];
    tsr_glyph_aug a;
    tsr_glyph_aug_clean(&a);
    assert_int_equal(tsr_glyphs_render_char_aug(NOTO "/NotoSans-Regular.ttf", 'A', S, &a, clean), 0);
    uint8_t plain[S * S];
    assert_int_equal(tsr_glyphs_render_char(NOTO "/NotoSans-Regular.ttf", 'A', S, plain), 0);
    assert_memory_equal(clean, plain, sizeof clean); /* the clean augmentation is the identity */
    a.embolden_pm = 40;
    assert_int_equal(tsr_glyphs_render_char_aug(NOTO "/NotoSans-Regular.ttf", 'A', S, &a, bold), 0);
    a.embolden_pm = -15;
    assert_int_equal(tsr_glyphs_render_char_aug(NOTO "/NotoSans-Regular.ttf", 'A', S, &a, thin), 0);
    long c = ink_of(clean, S * S), b = ink_of(bold, S * S), t = ink_of(thin, S * S);
    print_message("  ink of A: clean %ld, stroke +40/1000 %ld, -15/1000 %ld\n", c / 255, b / 255, t / 255);
    assert_true(b > c * 115 / 100); /* +4 % of the larger side: about +0.75 px of stroke at 28 px */
    assert_true(t < c * 95 / 100);
    assert_true(t > c / 2);
    /* a Thin face is not thinned (fonts-noto-extra) */
    const char *thin_face = NOTO "/NotoSans-Thin.ttf";
    if (access(thin_face, R_OK) != 0) {
        print_error("%s not found: install fonts-noto-extra (scripts/setup.sh)\n", thin_face);
        fail();
    }
    uint8_t t0[S * S], t1[S * S];
    a.embolden_pm = 0;
    assert_int_equal(tsr_glyphs_render_char_aug(thin_face, 'A', S, &a, t0), 0);
    a.embolden_pm = -15;
    assert_int_equal(tsr_glyphs_render_char_aug(thin_face, 'A', S, &a, t1), 0);
    assert_memory_equal(t0, t1, sizeof t0);
    a.embolden_pm = 40;
    assert_int_equal(tsr_glyphs_render_char_aug(thin_face, 'A', S, &a, t1), 0);
    assert_true(ink_of(t1, S * S) > ink_of(t0, S * S) * 115 / 100);
}

/* Elastic distortion: moves pixels, keeps the glyph's mass (on average: a smooth field stretches and
 * squeezes strokes locally, so one image's mass changes by up to about a third at alpha 20) and its
 * place (roughly: the field also shifts the glyph as a whole a little); the same seed gives the same
 * field; the displacement has the documented spread (0.0458 alpha
 * per axis at 28 px). */
static void test_elastic(void **state) {
    (void)state;
    enum { S = 28 };
    uint8_t clean[S * S], a1[S * S], a2[S * S], b1[S * S];
    assert_int_equal(tsr_glyphs_render_char(NOTO "/NotoSans-Regular.ttf", 'A', S, clean), 0);
    int changed_min = S * S;
    long mass0 = ink_of(clean, S * S);
    double ratio_sum = 0;
    for (uint64_t seed = 1; seed <= 40; seed++) {
        memcpy(a1, clean, sizeof a1);
        tsr_glyphs_elastic(a1, S, 20 * 256, seed);
        int changed = 0;
        for (int i = 0; i < S * S; i++) changed += abs((int)a1[i] - (int)clean[i]) > 32;
        if (changed < changed_min) changed_min = changed;
        long m = ink_of(a1, S * S);
        ratio_sum += (double)m / (double)mass0;
        /* each image's mass within -40 % .. +50 % */
        if (m * 100 < mass0 * 60 || m * 100 > mass0 * 150)
            print_error("seed %d: mass %ld against %ld\n", (int)seed, m, mass0);
        assert_true(m * 100 >= mass0 * 60 && m * 100 <= mass0 * 150);
        /* the centre of mass within 2.5 px (the field is smooth over the glyph: at most 2.3 px in 400
         * seeds here) */
        long sx0 = 0, sy0 = 0, sx = 0, sy = 0;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                sx0 += (long)clean[y * S + x] * x;
                sy0 += (long)clean[y * S + x] * y;
                sx += (long)a1[y * S + x] * x;
                sy += (long)a1[y * S + x] * y;
            }
        assert_true(labs(sx * mass0 - sx0 * m) * 2 <= 5 * m * mass0);
        assert_true(labs(sy * mass0 - sy0 * m) * 2 <= 5 * m * mass0);
    }
    print_message("  elastic alpha 20 px: at least %d of %d pixels change by more than 32; mass ratio %.3f on "
                  "average\n", changed_min, S * S, ratio_sum / 40);
    assert_true(changed_min >= 20);
    /* the mass on average within 5 % */
    assert_true(ratio_sum / 40 > 0.95 && ratio_sum / 40 < 1.05);
    /* the same seed: the same pixels; another seed: others; alpha 0: none */
    memcpy(a1, clean, sizeof a1);
    memcpy(a2, clean, sizeof a2);
    memcpy(b1, clean, sizeof b1);
    tsr_glyphs_elastic(a1, S, 20 * 256, 5);
    tsr_glyphs_elastic(a2, S, 20 * 256, 5);
    tsr_glyphs_elastic(b1, S, 20 * 256, 6);
    assert_memory_equal(a1, a2, sizeof a1);
    assert_memory_not_equal(a1, b1, sizeof a1);
    memcpy(a1, clean, sizeof a1);
    tsr_glyphs_elastic(a1, S, 0, 5);
    assert_memory_equal(a1, clean, sizeof a1);

    /* bilinear resampling is exact on a linear ramp, so a ramp 8 x reads the x displacement in 1/8
     * pixel; a constant block keeps its value exactly away from its edges */
    uint8_t ramp[S * S];
    double ss = 0;
    long cnt = 0;
    int maxd = 0;
    for (uint64_t seed = 1; seed <= 40; seed++) {
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) ramp[y * S + x] = (uint8_t)(8 * x);
        tsr_glyphs_elastic(ramp, S, 20 * 256, seed);
        for (int y = 6; y < S - 6; y++) /* away from the black outside */
            for (int x = 6; x < S - 6; x++) {
                int d = (int)ramp[y * S + x] - 8 * x; /* 8 * displacement, rounded */
                ss += (double)d * d / 64.0;
                cnt++;
                if (abs(d) > maxd) maxd = abs(d);
            }
    }
    double rms = sqrt(ss / (double)cnt);
    print_message("  elastic alpha 20 px: rms x displacement %.3f px (documented 0.0458 alpha = %.3f), max %.2f px\n",
                  rms, 0.0458 * 20, maxd / 8.0);
    assert_true(rms > 0.0458 * 20 * 0.8 && rms < 0.0458 * 20 * 1.2);
    uint8_t block[S * S];
    memset(block, 0, sizeof block);
    for (int y = 4; y < 24; y++)
        for (int x = 4; x < 24; x++) block[y * S + x] = 200;
    tsr_glyphs_elastic(block, S, 20 * 256, 9);
    for (int y = 11; y < 17; y++)
        for (int x = 11; x < 17; x++) assert_int_equal(block[y * S + x], 200);
}

/* ------------------------------------------------------------------ roles */

/* Roles of the small role tests: latin is a source script, old-permic a training one, gothic a
 * validation one and ogham a held-out one. */
static const char *R_SOURCE[] = {"latin"}, *R_TRAIN[] = {"old-permic"}, *R_VAL[] = {"gothic"},
                  *R_HELDOUT[] = {"ogham"};

static void role_opts(tsr_glyph_opts *o, uint64_t seed) {
    tsr_glyph_opts_init(o);
    o->max_classes = 10;
    o->seed = seed;
    o->command = "test_glyphs roles";
    o->roles_file = "test-roles.yaml";
    o->role_n[TSR_GLYPH_SOURCE] = 1;
    o->role_scripts[TSR_GLYPH_SOURCE] = R_SOURCE;
    o->role_n[TSR_GLYPH_TRAIN] = 1;
    o->role_scripts[TSR_GLYPH_TRAIN] = R_TRAIN;
    o->role_n[TSR_GLYPH_VAL] = 1;
    o->role_scripts[TSR_GLYPH_VAL] = R_VAL;
    o->role_n[TSR_GLYPH_HELDOUT] = 1;
    o->role_scripts[TSR_GLYPH_HELDOUT] = R_HELDOUT;
    o->counts[TSR_GLYPH_SOURCE] = (tsr_glyph_counts){6, 2, 3, 0};
    o->counts[TSR_GLYPH_TRAIN] = (tsr_glyph_counts){4, 1, 1, 0};
    o->counts[TSR_GLYPH_VAL] = (tsr_glyph_counts){3, 1, 4, 1};
    o->counts[TSR_GLYPH_HELDOUT] = (tsr_glyph_counts){3, 2, 5, 1};
}

static void test_role_defaults(void **state) {
    (void)state;
    tsr_glyph_opts o;
    tsr_glyph_opts_init(&o);
    /* the documented defaults: source 100/10/10, train 40/5/5, val and heldout 20/5/10, every split
     * augmented (--plain-test: plain test renderings for val and heldout) */
    const int want[TSR_GLYPH_NROLES][4] = {{0}, {100, 10, 10, 0}, {40, 5, 5, 0}, {20, 5, 10, 0}, {20, 5, 10, 0}};
    for (int r = 1; r < TSR_GLYPH_NROLES; r++) {
        assert_int_equal(o.counts[r].train, want[r][0]);
        assert_int_equal(o.counts[r].val, want[r][1]);
        assert_int_equal(o.counts[r].test, want[r][2]);
        assert_int_equal(o.counts[r].plain_test, want[r][3]);
        assert_int_equal(o.role_n[r], 0);
    }
    assert_string_equal(tsr_glyph_role_name(TSR_GLYPH_HELDOUT), "heldout");
    assert_null(tsr_glyph_role_name(TSR_GLYPH_NROLES));
    role_opts(&o, 0);
    assert_int_equal(tsr_glyph_role_of(&o, "gothic"), TSR_GLYPH_VAL);
    assert_int_equal(tsr_glyph_role_of(&o, "greek"), TSR_GLYPH_NO_ROLE);
}

/* Per-role renderings and splits; the plain test renderings of the val and heldout roles are clean
 * renderings going round the fonts and do not change with the seed; everything else does. */
static void test_roles_memory(void **state) {
    (void)state;
    tsr_glyph_opts a, b;
    role_opts(&a, 7);
    role_opts(&b, 8);
    const char *names[] = {"latin", "old-permic", "gothic", "ogham", "greek"};
    const int role[] = {TSR_GLYPH_SOURCE, TSR_GLYPH_TRAIN, TSR_GLYPH_VAL, TSR_GLYPH_HELDOUT, TSR_GLYPH_NO_ROLE};
    for (int k = 0; k < 5; k++) {
        tsr_glyph_task t1, t2;
        assert_int_equal(tsr_glyphs_render_task(&a, tsr_glyph_script_find(names[k]), &t1), 0);
        assert_int_equal(tsr_glyphs_render_task(&b, tsr_glyph_script_find(names[k]), &t2), 0);
        assert_int_equal(t1.role, role[k]);
        int tr, va, te, plain;
        if (role[k] == TSR_GLYPH_NO_ROLE) {
            tr = a.examples - a.n_val - a.n_test, va = a.n_val, te = a.n_test, plain = 0;
        } else {
            tr = a.counts[role[k]].train, va = a.counts[role[k]].val, te = a.counts[role[k]].test;
            plain = a.counts[role[k]].plain_test;
        }
        int E = tr + va + te;
        assert_int_equal(t1.examples, E);
        assert_int_equal(t1.n, (int64_t)t1.num_classes * E);
        assert_int_equal(t1.plain_test, plain);
        assert_memory_equal(t1.labels, t2.labels, (size_t)t1.n * sizeof *t1.labels);
        size_t npx = 28 * 28;
        int test_same = 0, test_n = 0, train_diff = 0, train_n = 0;
        for (int c = 0; c < t1.num_classes; c++) {
            int cnt[3] = {0, 0, 0};
            for (int e = 0; e < E; e++) {
                int64_t i = (int64_t)c * E + e;
                assert_int_equal(t1.labels[i], c);
                cnt[t1.split[i]]++;
                if (plain) assert_int_equal(t1.split[i] == 2, e < te);
                const uint8_t *p1 = t1.images + (size_t)i * npx, *p2 = t2.images + (size_t)i * npx;
                if (t1.split[i] == 2) {
                    test_n++;
                    test_same += memcmp(p1, p2, npx) == 0;
                }
                if (t1.split[i] == 0) {
                    train_n++;
                    train_diff += memcmp(p1, p2, npx) != 0;
                }
                if (plain && e < te) { /* clean rendering in font e mod nfonts */
                    uint8_t want[28 * 28];
                    assert_int_equal(tsr_glyphs_render_char(t1.fonts[e % t1.nfonts], t1.codepoints[c], 28, want), 0);
                    assert_memory_equal(p1, want, npx);
                }
            }
            assert_int_equal(cnt[0], tr);
            assert_int_equal(cnt[1], va);
            assert_int_equal(cnt[2], te);
        }
        /* training renderings always change with the seed; test renderings only when augmented */
        assert_int_equal(train_diff, train_n);
        assert_int_equal(test_same, plain ? test_n : 0);
        tsr_glyph_task_free(&t1);
        tsr_glyph_task_free(&t2);
    }
}

/* A built file: per-role counts in the tasks and the attributes; the same pixels twice. */
static void test_roles_file(void **state) {
    (void)state;
    tsr_glyph_opts o;
    role_opts(&o, 3);
    const char *scripts[] = {"latin", "old-permic", "gothic", "ogham"};
    o.scripts = scripts;
    o.nscripts = 4;
    const char *p1 = tpath("roles1.nc"), *p2 = tpath("roles2.nc");
    assert_int_equal(tsr_glyphs_build(&o, p1), 0);
    assert_int_equal(tsr_glyphs_build(&o, p2), 0);
    tsr_suite s1, s2;
    uint8_t *px1, *px2;
    int *l1, *l2;
    int8_t *sp1, *sp2;
    int64_t n1 = read_all(p1, &px1, &l1, &sp1, &s1), n2 = read_all(p2, &px2, &l2, &sp2, &s2);
    assert_int_equal(n1, n2);
    assert_memory_equal(px1, px2, (size_t)n1 * 784);
    assert_memory_equal(sp1, sp2, (size_t)n1);
    const int E[4] = {11, 6, 8, 10};
    int64_t pos = 0;
    for (int t = 0; t < 4; t++) {
        assert_string_equal(s1.task_names[t], scripts[t]);
        assert_int_equal(s1.count[t], (int64_t)s1.num_classes[t] * E[t]);
        pos += s1.count[t];
    }
    assert_int_equal(pos, n1);
    char buf[4096];
    assert_int_equal(tsr_suite_attr(&s1, "glyph_suite_version", buf, sizeof buf), 1);
    assert_string_equal(buf, "2.1");
    assert_int_equal(tsr_suite_attr(&s1, "glyph_counts", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "source (1 tasks): 6 train, 2 val, 3 test renderings per class; every split augmented"));
    assert_non_null(strstr(buf, "train (1 tasks): 4 train, 1 val, 1 test"));
    assert_non_null(strstr(buf, "val (1 tasks): 3 train, 1 val, 4 test renderings per class; test renderings plain"));
    assert_non_null(strstr(buf, "heldout (1 tasks): 3 train, 2 val, 5 test renderings per class; test renderings plain"));
    assert_int_equal(tsr_suite_attr(&s1, "glyph_roles", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "source: latin\ntrain: old-permic\nval: gothic\nheldout: ogham"));
    assert_int_equal(tsr_suite_attr(&s1, "glyph_options", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "elastic=1 roles=test-roles.yaml"));
    assert_int_equal(tsr_suite_attr(&s1, "glyph_augmentation", buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "width 7 (sigma 3.46 px), alpha 6.0..24.0 px"));
    tsr_suite_close(&s1);
    tsr_suite_close(&s2);
    free(px1);
    free(px2);
    free(l1);
    free(l2);
    free(sp1);
    free(sp2);
    assert_int_equal(unlink(p1), 0);
    assert_int_equal(unlink(p2), 0);
}

static void test_roles_refused(void **state) {
    (void)state;
    const char *p = tpath("roles_bad.nc");
    tsr_glyph_opts o;
    role_opts(&o, 0);
    const char *unknown[] = {"ogham", "klingon"};
    o.role_scripts[TSR_GLYPH_HELDOUT] = unknown;
    o.role_n[TSR_GLYPH_HELDOUT] = 2;
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("test-roles.yaml", "suite.heldout", "'klingon'", "not a script of the table", NULL);

    role_opts(&o, 0);
    const char *twice[] = {"ogham", "latin"};
    o.role_scripts[TSR_GLYPH_HELDOUT] = twice;
    o.role_n[TSR_GLYPH_HELDOUT] = 2;
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("test-roles.yaml", "'latin'", "suite.source and in suite.heldout", NULL);

    role_opts(&o, 0);
    o.counts[TSR_GLYPH_VAL].train = 0;
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("role val", "at least 1 train", NULL);

    /* a listed script that cannot be built is an error, not a silent drop */
    role_opts(&o, 0);
    o.font_dir = g_dir; /* an empty directory */
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("'latin'", "suite.source in test-roles.yaml", "no font file matches", NULL);
    assert_int_not_equal(access(p, F_OK), 0);
}

/* ------------------------------------------------------------------ refusals */

static void test_missing_font_dir(void **state) {
    (void)state;
    tsr_glyph_opts o;
    small_opts(&o, 0);
    o.font_dir = "/nonexistent/fonts";
    const char *p = tpath("missing.nc");
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("glyph suite", "font directory '/nonexistent/fonts'", "No such file or directory",
                 "fonts-noto-core", NULL);
    assert_int_not_equal(access(p, F_OK), 0);
    /* one bad directory in a list is refused too */
    o.font_dir = NOTO ":/nonexistent/more";
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("'/nonexistent/more'", NULL);
    /* and by the memory-level API */
    tsr_glyph_task t;
    assert_int_equal(tsr_glyphs_scan(&o, tsr_glyph_script_find("latin"), &t), -1);
    expect_error("script 'latin'", "/nonexistent/more", NULL);
    tsr_glyph_task_free(&t);
    assert_int_not_equal(access(p, F_OK), 0);
}

static void test_bad_options(void **state) {
    (void)state;
    const char *p = tpath("bad.nc");
    tsr_glyph_opts o;
    small_opts(&o, 0);
    o.n_test = 3; /* 1 val + 3 test of 4 leaves no training example */
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("n_val 1", "n_test 3", NULL);

    small_opts(&o, 0);
    o.max_classes = 5; /* below min_classes 10 */
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("min_classes", NULL);

    small_opts(&o, 0);
    o.scripts = (const char *[]){"latin", "klingon"};
    o.nscripts = 2;
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("unknown script 'klingon'", NULL);

    /* a script asked for by name that has no fonts here is an error, not a silent drop */
    tsr_glyph_opts_init(&o);
    o.font_dir = g_dir; /* an empty directory */
    o.scripts = (const char *[]){"latin"};
    o.nscripts = 1;
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("'latin'", "no font file matches", NULL);
    /* with the whole table: nothing can be built */
    o.nscripts = 0;
    o.scripts = NULL;
    assert_int_equal(tsr_glyphs_build(&o, p), -1);
    expect_error("no script could be built", NULL);
    assert_int_not_equal(access(p, F_OK), 0);
}

/* ------------------------------------------------------------------ fixtures */

static int group_setup(void **state) {
    (void)state;
    if (access(NOTO "/NotoSans-Regular.ttf", R_OK) != 0) {
        fprintf(stderr, "test_glyphs: %s/NotoSans-Regular.ttf not found: install fonts-noto-core\n", NOTO);
        return -1;
    }
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_test_glyphs_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    if (rmdir(g_dir) != 0) {
        fprintf(stderr, "test_glyphs: %s not empty or not removable: files left behind\n", g_dir);
        return -1;
    }
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_char_centred),
        cmocka_unit_test(test_render_char_refusals),
        cmocka_unit_test(test_script_table),
        cmocka_unit_test(test_scripts_found),
        cmocka_unit_test(test_roles_config),
        cmocka_unit_test(test_task_layout),
        cmocka_unit_test(test_determinism_memory),
        cmocka_unit_test(test_determinism_file),
        cmocka_unit_test(test_embolden_ink),
        cmocka_unit_test(test_elastic),
        cmocka_unit_test(test_role_defaults),
        cmocka_unit_test(test_roles_memory),
        cmocka_unit_test(test_roles_file),
        cmocka_unit_test(test_roles_refused),
        cmocka_unit_test(test_missing_font_dir),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
