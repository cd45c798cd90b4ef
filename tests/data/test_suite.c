/* test_suite.c: multi-task suites, schema tessera-dataset-2 (src/data/suite.c).
 * Files are made in a mkdtemp directory under /tmp that is removed at the end; the group teardown
 * fails if anything (a temporary file included) was left behind. Damaged files are made by writing
 * a good suite and then changing it with the netCDF API. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <netcdf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "data/dataset_nc.h"
#include "data/suite.h"

#include "../common/test_util.h"



#define NC_OK(call)                                                                                \
    do {                                                                                           \
        int st_ = (call);                                                                          \
        if (st_ != NC_NOERR) print_error("%s: %s\n", #call, nc_strerror(st_));                     \
        assert_int_equal(st_, NC_NOERR);                                                           \
    } while (0)

/* ------------------------------------------------------------------ a 3-task test suite */

enum { H = 5, W = 4, C = 3, NT = 3 };
static const char *const g_tnames[NT] = {"alpha", "beta-task", "gamma"};
static const int g_ncls[NT] = {2, 5, 3};
static const int64_t g_n[NT] = {7, 12, 4};
static const char *const g_cls0[] = {"no", "yes"};
static const char *const g_cls1[] = {"cat", "dog", "bird with a longer name", "fish", "x"};
static const char *const *const g_cls[NT] = {g_cls0, g_cls1, NULL}; /* task 2: default names */
static uint8_t *g_img[NT];
static int *g_lab[NT];
static int8_t *g_split[NT];

static uint8_t pixel(int t, int64_t i, int y, int x, int c) {
    return (uint8_t)((t * 71 + i * 13 + y * 31 + x * 7 + c * 101) % 256);
}

static void make_data(void) {
    for (int t = 0; t < NT; t++) {
        g_img[t] = malloc((size_t)g_n[t] * H * W * C);
        g_lab[t] = malloc((size_t)g_n[t] * sizeof(int));
        g_split[t] = malloc((size_t)g_n[t]);
        for (int64_t i = 0; i < g_n[t]; i++) {
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    for (int c = 0; c < C; c++)
                        g_img[t][(((size_t)i * H + y) * W + x) * C + c] = pixel(t, i, y, x, c);
            g_lab[t][i] = (int)((i * 3 + t) % g_ncls[t]);
            g_split[t][i] = (int8_t)(i % 3);
        }
    }
}

static const char *const g_keys[2] = {"tessera_version", "note"};
static const char *const g_vals[2] = {"test", "a free attribute"};
static const tsr_suite_prov g_prov = {"toy suite", "unit test (no packages)", "CC0-1.0",
                                      "test_suite --roundtrip", 2, g_keys, g_vals};

static void write_suite(const char *p) {
    tsr_suite_task tasks[NT];
    for (int t = 0; t < NT; t++)
        tasks[t] = (tsr_suite_task){g_tnames[t], g_ncls[t], g_cls[t], g_n[t], g_img[t], g_lab[t],
                                    g_split[t]};
    int rc = tsr_suite_write(p, H, W, C, NT, tasks, &g_prov);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
}

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_test_suite_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    tsr_log_level = TSR_LOG_ERROR;
    make_data();
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    for (int t = 0; t < NT; t++) {
        free(g_img[t]);
        free(g_lab[t]);
        free(g_split[t]);
    }
    DIR *dir = opendir(g_dir);
    if (!dir) return -1;
    struct dirent *e;
    int left = 0;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char p[600];
        snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
        unlink(p);
        left++;
    }
    closedir(dir);
    rmdir(g_dir);
    if (left) fprintf(stderr, "test_suite: %d files were left in the temporary directory\n", left);
    return left ? -1 : 0;
}

/* ------------------------------------------------------------------ round trip */

static void test_roundtrip(void **state) {
    (void)state;
    const char *p = tpath("suite.nc");
    write_suite(p);
    assert_no_temp_files();

    tsr_suite s;
    int rc = tsr_suite_open(&s, p);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(s.version, 2);
    assert_int_equal(s.ntasks, NT);
    assert_int_equal(s.H, H);
    assert_int_equal(s.W, W);
    assert_int_equal(s.C, C);
    assert_int_equal(s.max_classes, 5);
    assert_int_equal(s.n_examples, g_n[0] + g_n[1] + g_n[2]);
    int64_t first = 0;
    for (int t = 0; t < NT; t++) {
        assert_string_equal(s.task_names[t], g_tnames[t]);
        assert_int_equal(s.num_classes[t], g_ncls[t]);
        assert_int_equal(s.first[t], first);
        assert_int_equal(s.count[t], g_n[t]);
        first += g_n[t];
        assert_int_equal(tsr_suite_find_task(&s, g_tnames[t]), t);
        for (int k = 0; k < g_ncls[t]; k++) {
            char want[16];
            snprintf(want, sizeof want, "%d", k);
            assert_string_equal(s.class_names[t * s.max_classes + k], g_cls[t] ? g_cls[t][k] : want);
        }
        /* whole task, then in two pieces */
        size_t img = (size_t)H * W * C;
        uint8_t *px = malloc((size_t)g_n[t] * img);
        int *lab = malloc((size_t)g_n[t] * sizeof *lab);
        int8_t *sp = malloc((size_t)g_n[t]);
        assert_int_equal(tsr_suite_read(&s, t, 0, g_n[t], px, lab, sp), 0);
        assert_memory_equal(px, g_img[t], (size_t)g_n[t] * img);
        assert_memory_equal(lab, g_lab[t], (size_t)g_n[t] * sizeof *lab);
        assert_memory_equal(sp, g_split[t], (size_t)g_n[t]);
        memset(px, 0, (size_t)g_n[t] * img);
        assert_int_equal(tsr_suite_read(&s, t, 1, g_n[t] - 2, px, NULL, NULL), 0);
        assert_memory_equal(px, g_img[t] + img, (size_t)(g_n[t] - 2) * img);
        assert_int_equal(tsr_suite_read(&s, t, g_n[t] - 1, 1, NULL, lab, NULL), 0);
        assert_int_equal(lab[0], g_lab[t][g_n[t] - 1]);
        /* out of the task's range */
        assert_int_equal(tsr_suite_read(&s, t, 1, g_n[t], px, NULL, NULL), -1);
        expect_error("suite.nc", g_tnames[t], "examples", NULL);
        free(px);
        free(lab);
        free(sp);
    }
    assert_int_equal(tsr_suite_find_task(&s, "nope"), -1);
    assert_int_equal(tsr_suite_read(&s, 3, 0, 1, NULL, NULL, NULL), -1);
    expect_error("task 3 does not exist", NULL);

    /* provenance */
    char buf[512];
    assert_int_equal(tsr_suite_attr(&s, "tessera_schema", buf, sizeof buf), 1);
    assert_string_equal(buf, TSR_SUITE_SCHEMA);
    assert_int_equal(tsr_suite_attr(&s, "Conventions", buf, sizeof buf), 1);
    assert_string_equal(buf, "CF-1.8");
    assert_int_equal(tsr_suite_attr(&s, "title", buf, sizeof buf), 1);
    assert_string_equal(buf, "toy suite");
    assert_int_equal(tsr_suite_attr(&s, "source", buf, sizeof buf), 1);
    assert_string_equal(buf, "unit test (no packages)");
    assert_int_equal(tsr_suite_attr(&s, "license", buf, sizeof buf), 1);
    assert_string_equal(buf, "CC0-1.0");
    char date[64];
    assert_int_equal(tsr_suite_attr(&s, "date_created", date, sizeof date), 1);
    assert_int_equal(strlen(date), 20); /* 2025-03-01T12:00:00Z */
    assert_int_equal(tsr_suite_attr(&s, "history", buf, sizeof buf), 1);
    char want[256];
    snprintf(want, sizeof want, "%s: test_suite --roundtrip", date);
    assert_string_equal(buf, want);
    assert_int_equal(tsr_suite_attr(&s, "note", buf, sizeof buf), 1);
    assert_string_equal(buf, "a free attribute");
    assert_int_equal(tsr_suite_attr(&s, "tessera_version", buf, 3), 1);
    assert_string_equal(buf, "te"); /* truncated to the buffer */
    assert_int_equal(tsr_suite_attr(&s, "absent", buf, sizeof buf), 0);
    assert_string_equal(buf, "");

    /* storage as documented */
    int vid, storage;
    size_t chunks[4];
    int shuffle, deflate, level;
    NC_OK(nc_inq_varid(s.ncid, "images", &vid));
    NC_OK(nc_inq_var_chunking(s.ncid, vid, &storage, chunks));
    assert_int_equal(storage, NC_CHUNKED);
    assert_int_equal(chunks[0], 23); /* min(256, n) */
    NC_OK(nc_inq_var_deflate(s.ncid, vid, &shuffle, &deflate, &level));
    assert_true(shuffle);
    assert_true(deflate);
    assert_int_equal(level, 4);
    int unlim;
    NC_OK(nc_inq_unlimdim(s.ncid, &unlim));
    char dname[NC_MAX_NAME + 1];
    NC_OK(nc_inq_dimname(s.ncid, unlim, dname));
    assert_string_equal(dname, "example");
    tsr_suite_close(&s);
    tsr_suite_close(&s); /* twice is safe */
    unlink(p);
}

/* A dataset-1 file opens as a suite of one task. */
static void test_v1_as_suite(void **state) {
    (void)state;
    const char *p = tpath("v1.nc");
    static const char *const names[3] = {"a", "b", "c"};
    const tsr_nc_provenance prov = {"v1-task", NULL, NULL, NULL, NULL};
    assert_int_equal(tsr_nc_dataset_write(p, 4, H, W, C, g_img[0], g_lab[0], g_split[0], 3, names,
                                          &prov),
                     0);
    tsr_suite s;
    int rc = tsr_suite_open(&s, p);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(s.version, 1);
    assert_int_equal(s.ntasks, 1);
    assert_string_equal(s.task_names[0], "v1-task");
    assert_int_equal(s.num_classes[0], 3);
    assert_int_equal(s.max_classes, 3);
    assert_string_equal(s.class_names[2], "c");
    assert_int_equal(s.first[0], 0);
    assert_int_equal(s.count[0], 4);
    uint8_t px[4 * H * W * C];
    int lab[4];
    int8_t sp[4];
    assert_int_equal(tsr_suite_read(&s, 0, 0, 4, px, lab, sp), 0);
    assert_memory_equal(px, g_img[0], sizeof px);
    assert_memory_equal(lab, g_lab[0], sizeof lab);
    assert_memory_equal(sp, g_split[0], sizeof sp);
    tsr_suite_close(&s);

    /* without split: all train */
    assert_int_equal(tsr_nc_dataset_write(p, 4, H, W, C, g_img[0], g_lab[0], NULL, 3, NULL, &prov), 0);
    assert_int_equal(tsr_suite_open(&s, p), 0);
    memset(sp, 9, sizeof sp);
    assert_int_equal(tsr_suite_read(&s, 0, 0, 4, NULL, NULL, sp), 0);
    for (int i = 0; i < 4; i++) assert_int_equal(sp[i], 0);
    assert_string_equal(s.class_names[1], "1");
    tsr_suite_close(&s);
    unlink(p);
}

/* ------------------------------------------------------------------ refusals */

static void expect_open_fails(const char *p) {
    tsr_suite s;
    assert_int_equal(tsr_suite_open(&s, p), -1);
    assert_int_equal(s.ncid, -1);
    assert_null(s.task_names);
    tsr_suite_close(&s);
    expect_error(p, NULL);
}

static void test_truncated(void **state) {
    (void)state;
    const char *p = tpath("good.nc"), *q = tpath("trunc.nc");
    write_suite(p);
    char *data;
    size_t n;
    assert_int_equal(tsr_read_file(p, &data, &n), 0);
    FILE *f = fopen(q, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n / 2, f), n / 2);
    fclose(f);
    free(data);
    expect_open_fails(q);
    expect_error("truncated or corrupt", NULL);
    f = fopen(q, "wb");
    fputs("not a netCDF file at all", f);
    fclose(f);
    expect_open_fails(q);
    expect_error("not a netCDF file", NULL);
    unlink(p);
    unlink(q);
}

/* Write a good suite to p and open it for changing. */
static int reopen_for_change(const char *p) {
    write_suite(p);
    int ncid;
    NC_OK(nc_open(p, NC_WRITE, &ncid));
    return ncid;
}

static void put_int_at(int ncid, const char *var, size_t i, int v) {
    int vid;
    NC_OK(nc_inq_varid(ncid, var, &vid));
    NC_OK(nc_put_var1_int(ncid, vid, &i, &v));
}

static void put_i64_at(int ncid, const char *var, size_t i, long long v) {
    int vid;
    NC_OK(nc_inq_varid(ncid, var, &vid));
    NC_OK(nc_put_var1_longlong(ncid, vid, &i, &v));
}

static void test_wrong_image_type(void **state) {
    (void)state;
    const char *p = tpath("float_images.nc");
    int ncid = reopen_for_change(p);
    int vid, dims[4];
    NC_OK(nc_inq_varid(ncid, "images", &vid));
    NC_OK(nc_inq_vardimid(ncid, vid, dims));
    NC_OK(nc_redef(ncid));
    NC_OK(nc_rename_var(ncid, vid, "images_old"));
    NC_OK(nc_def_var(ncid, "images", NC_FLOAT, 4, dims, &vid));
    NC_OK(nc_enddef(ncid));
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("variable 'images'", "expected NC_UBYTE (example, y, x, channel)",
                 "got NC_FLOAT (example, y, x, channel)", NULL);
    unlink(p);
}

static void test_missing_variable(void **state) {
    (void)state;
    /* ("task" shares its name with a dimension, which netCDF-4 cannot rename: not tried) */
    static const char *const vars[] = {"task_count", "labels", "class_names", "split", "task_names"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *p = tpath("missing.nc");
        int ncid = reopen_for_change(p), vid;
        NC_OK(nc_inq_varid(ncid, vars[i], &vid));
        NC_OK(nc_redef(ncid));
        char other[64];
        snprintf(other, sizeof other, "renamed_%s", vars[i]);
        NC_OK(nc_rename_var(ncid, vid, other));
        NC_OK(nc_enddef(ncid));
        NC_OK(nc_close(ncid));
        expect_open_fails(p);
        char want[64];
        snprintf(want, sizeof want, "no variable '%s'", vars[i]);
        expect_error(want, TSR_SUITE_SCHEMA, NULL);
        unlink(p);
    }
}

static void test_label_out_of_range(void **state) {
    (void)state;
    const char *p = tpath("badlabel.nc");
    int ncid = reopen_for_change(p);
    /* example 3 of task "beta-task" (5 classes) = example 7 + 3 = 10 of the file */
    put_int_at(ncid, "labels", 10, 5);
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("variable 'labels'", "example 10", "task 'beta-task'", "example 3 of the task",
                 "has value 5", "0 <= label < 5", NULL);
    unlink(p);
    /* negative, in the last task */
    ncid = reopen_for_change(p);
    put_int_at(ncid, "labels", 22, -1);
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("example 22", "task 'gamma'", "has value -1", NULL);
    unlink(p);
}

static void test_bad_split(void **state) {
    (void)state;
    const char *p = tpath("badsplit.nc");
    int ncid = reopen_for_change(p), vid;
    signed char v = 3;
    size_t i = 4;
    NC_OK(nc_inq_varid(ncid, "split", &vid));
    NC_OK(nc_put_var1_schar(ncid, vid, &i, &v));
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("variable 'split'", "example 4", "value 3", NULL);
    unlink(p);
}

static void test_task_ranges(void **state) {
    (void)state;
    const char *p = tpath("ranges.nc");
    /* overlap: beta starts one example early */
    int ncid = reopen_for_change(p);
    put_i64_at(ncid, "task_first", 1, 6);
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("task_first", "'alpha' [0, 7)", "'beta-task' [6, 18)", "overlap", NULL);
    unlink(p);
    /* a gap: alpha one example short */
    ncid = reopen_for_change(p);
    put_i64_at(ncid, "task_count", 0, 6);
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("examples [6, 7) belong to no task", NULL);
    unlink(p);
    /* the end not covered */
    ncid = reopen_for_change(p);
    put_i64_at(ncid, "task_count", 2, 3);
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("examples [22, 23) belong to no task", NULL);
    unlink(p);
    /* out of bounds */
    ncid = reopen_for_change(p);
    put_i64_at(ncid, "task_count", 2, 5);
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("task 2 ('gamma')", "first 19 and count 5", "outside the 23 examples", NULL);
    unlink(p);
    /* a class count larger than the class dimension */
    ncid = reopen_for_change(p);
    put_int_at(ncid, "task_num_classes", 0, 6);
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("task_num_classes", "'alpha'", "6 classes", NULL);
    unlink(p);
}

static void test_task_id_inconsistent(void **state) {
    (void)state;
    const char *p = tpath("taskid.nc");
    int ncid = reopen_for_change(p);
    put_int_at(ncid, "task", 8, 2); /* example 8 lies in beta-task = 1 */
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("variable 'task'", "example 8 has task 2, expected 1", "'beta-task'", "[7, 19)",
                 NULL);
    unlink(p);
}

static void test_schema_attr(void **state) {
    (void)state;
    const char *p = tpath("schema.nc");
    int ncid = reopen_for_change(p);
    NC_OK(nc_redef(ncid));
    NC_OK(nc_put_att_text(ncid, NC_GLOBAL, "tessera_schema", 17, "tessera-dataset-9"));
    NC_OK(nc_enddef(ncid));
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("'tessera_schema' is \"tessera-dataset-9\"", TSR_SUITE_SCHEMA, NULL);
    unlink(p);
    /* a duplicate task name */
    ncid = reopen_for_change(p);
    int vid;
    NC_OK(nc_inq_varid(ncid, "task_names", &vid));
    size_t st[2] = {2, 0}, ct[2] = {1, 5};
    NC_OK(nc_put_vara_text(ncid, vid, st, ct, "alpha"));
    NC_OK(nc_close(ncid));
    expect_open_fails(p);
    expect_error("task_names", "both named 'alpha'", NULL);
    unlink(p);
}

static void test_write_refusals(void **state) {
    (void)state;
    const char *p = tpath("refused.nc");
    tsr_suite_task tasks[2] = {
        {"a", 2, NULL, 3, g_img[0], g_lab[0], g_split[0]},
        {"a", 5, g_cls1, 4, g_img[1], g_lab[1], g_split[1]},
    };
    assert_int_equal(tsr_suite_write(p, H, W, C, 2, tasks, NULL), -1);
    expect_error("refused.nc", "both named 'a'", NULL);
    tasks[1].name = "b";
    int bad[3] = {0, 2, 1};
    tasks[0].labels = bad;
    assert_int_equal(tsr_suite_write(p, H, W, C, 2, tasks, NULL), -1);
    expect_error("task 'a' example 1 has label 2", "0 <= label < 2", NULL);
    tasks[0].labels = g_lab[0];
    tasks[0].name = "a name that is far too long for a task: more than sixty-three bytes";
    assert_int_equal(tsr_suite_write(p, H, W, C, 2, tasks, NULL), -1);
    expect_error("longer than 63 bytes", NULL);
    tasks[0].name = "a";
    const char *keys[1] = {"history"}, *vals[1] = {"x"};
    tsr_suite_prov prov = {NULL, NULL, NULL, NULL, 1, keys, vals};
    assert_int_equal(tsr_suite_write(p, H, W, C, 2, tasks, &prov), -1);
    expect_error("attribute 'history' is written by tessera", NULL);
    assert_int_equal(tsr_suite_write(p, 0, W, C, 2, tasks, NULL), -1);
    expect_error("H=0", NULL);
    assert_int_equal(access(p, F_OK), -1); /* nothing was created */
    /* the same tasks without prov: a good file; split NULL reads as train */
    tasks[1].split = NULL;
    assert_int_equal(tsr_suite_write(p, H, W, C, 2, tasks, NULL), 0);
    tsr_suite s;
    assert_int_equal(tsr_suite_open(&s, p), 0);
    int8_t sp[4];
    assert_int_equal(tsr_suite_read(&s, 1, 0, 4, NULL, NULL, sp), 0);
    for (int i = 0; i < 4; i++) assert_int_equal(sp[i], 0);
    char buf[64];
    assert_int_equal(tsr_suite_attr(&s, "title", buf, sizeof buf), 0);
    tsr_suite_close(&s);
    assert_no_temp_files();
    unlink(p);
}

/* The streaming writer: pieces that cross task boundaries give the same file contents. */
static void test_streaming_writer(void **state) {
    (void)state;
    const char *p = tpath("stream.nc");
    const size_t img = (size_t)H * W * C;
    const int64_t total = g_n[0] + g_n[1] + g_n[2];
    uint8_t *px = malloc((size_t)total * img);
    int *lab = malloc((size_t)total * sizeof *lab);
    int8_t *sp = malloc((size_t)total);
    int64_t pos = 0;
    tsr_suite_task meta[NT];
    for (int t = 0; t < NT; t++) {
        memcpy(px + (size_t)pos * img, g_img[t], (size_t)g_n[t] * img);
        memcpy(lab + pos, g_lab[t], (size_t)g_n[t] * sizeof *lab);
        memcpy(sp + pos, g_split[t], (size_t)g_n[t]);
        pos += g_n[t];
        meta[t] = (tsr_suite_task){g_tnames[t], g_ncls[t], g_cls[t], g_n[t], NULL, NULL, NULL};
    }
    tsr_suite_writer *w;
    assert_int_equal(tsr_suite_writer_open(&w, p, H, W, C, NT, meta, &g_prov), 0);
    /* a bad label in the second task (example 2 of beta-task): refused, the writer stays usable */
    int save = lab[9];
    lab[9] = 7;
    assert_int_equal(tsr_suite_writer_append(w, 12, px, lab, sp), -1);
    expect_error("stream.nc", "task 'beta-task' example 2 has label 7", NULL);
    lab[9] = save;
    const int64_t pieces[] = {5, 4, 9, 0, 5}; /* 5 | 4 (crosses 7) | 9 (crosses 19) | 0 | 5 */
    int64_t at = 0;
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
        int rc = tsr_suite_writer_append(w, pieces[i], px + (size_t)at * img, lab + at, sp + at);
        if (rc != 0) print_error("%s\n", tsr_last_error());
        assert_int_equal(rc, 0);
        at += pieces[i];
    }
    assert_int_equal(at, total);
    assert_int_equal(tsr_suite_writer_append(w, 1, px, lab, sp), -1);
    expect_error("only 0 of the 23 announced remain", NULL);
    assert_int_equal(tsr_suite_writer_close(w), 0);
    assert_no_temp_files();
    tsr_suite s;
    assert_int_equal(tsr_suite_open(&s, p), 0);
    for (int t = 0; t < NT; t++) {
        uint8_t *q = malloc((size_t)g_n[t] * img);
        int *l = malloc((size_t)g_n[t] * sizeof *l);
        int8_t *x = malloc((size_t)g_n[t]);
        assert_int_equal(tsr_suite_read(&s, t, 0, g_n[t], q, l, x), 0);
        assert_memory_equal(q, g_img[t], (size_t)g_n[t] * img);
        assert_memory_equal(l, g_lab[t], (size_t)g_n[t] * sizeof *l);
        assert_memory_equal(x, g_split[t], (size_t)g_n[t]);
        free(q);
        free(l);
        free(x);
    }
    tsr_suite_close(&s);
    unlink(p);
    /* closing early: refused, nothing left behind */
    assert_int_equal(tsr_suite_writer_open(&w, p, H, W, C, NT, meta, NULL), 0);
    assert_int_equal(tsr_suite_writer_append(w, 3, px, lab, sp), 0);
    assert_int_equal(tsr_suite_writer_close(w), -1);
    expect_error("3 of the 23 announced examples were written", NULL);
    assert_int_equal(access(p, F_OK), -1);
    assert_no_temp_files();
    free(px);
    free(lab);
    free(sp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_v1_as_suite),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_wrong_image_type),
        cmocka_unit_test(test_missing_variable),
        cmocka_unit_test(test_label_out_of_range),
        cmocka_unit_test(test_bad_split),
        cmocka_unit_test(test_task_ranges),
        cmocka_unit_test(test_task_id_inconsistent),
        cmocka_unit_test(test_schema_attr),
        cmocka_unit_test(test_write_refusals),
        cmocka_unit_test(test_streaming_writer),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
