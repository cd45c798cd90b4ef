/* test_atomic.c: atomic file replacement (src/core/atomic.c): round trips through the buffer and the
 * streaming writer, no temporary left behind after success or failure, the old file intact when a
 * write fails (target is a directory, directory missing, file size limit hit mid-write), errors that
 * name the path, and tsr_atomic_rename of library-written files and directories. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/atomic.h"
#include "core/common.h"

#include "../common/test_util.h"

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_test_atomic_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    tsr_log_level = TSR_LOG_ERROR;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    return nftw(g_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The whole file must hold exactly n bytes equal to want. */
static void expect_content(const char *p, const void *want, size_t n) {
    char *data = NULL;
    size_t len = 0;
    int rc = tsr_read_file(p, &data, &len);
    if (rc != 0) print_error("%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(len, n);
    if (n) assert_memory_equal(data, want, n);
    free(data);
}

static void write_plain(const char *p, const char *text) {
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* ------------------------------------------------------------------ tsr_write_file_atomic */

static void test_write_file_round_trip(void **state) {
    (void)state;
    const char *p = tpath("buf.bin");
    unsigned char data[3000];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 7 + 3);
    assert_int_equal(tsr_write_file_atomic(p, data, sizeof data), 0);
    expect_content(p, data, sizeof data);
    /* replacing it, with fewer bytes, and with none */
    assert_int_equal(tsr_write_file_atomic(p, "hello", 5), 0);
    expect_content(p, "hello", 5);
    assert_int_equal(tsr_write_file_atomic(p, NULL, 0), 0);
    expect_content(p, "", 0);
    assert_no_temp_files();
}

static void test_write_file_missing_dir(void **state) {
    (void)state;
    const char *p = tpath("no_such_dir/x.txt");
    assert_int_equal(tsr_write_file_atomic(p, "x", 1), -1);
    expect_error(p, "cannot create", "No such file or directory", NULL);
    assert_no_temp_files();
}

/* ------------------------------------------------------------------ the streaming writer */

static void test_stream_round_trip(void **state) {
    (void)state;
    const char *p = tpath("stream.txt");
    write_plain(p, "old contents");
    tsr_atomic a;
    FILE *f = tsr_atomic_begin(&a, p);
    assert_non_null(f);
    assert_ptr_equal(f, a.fp);
    assert_string_equal(a.path, p);
    char want_tmp[700];
    snprintf(want_tmp, sizeof want_tmp, "%s.tmp.%ld", p, (long)getpid());
    assert_string_equal(a.tmp, want_tmp);
    /* until the commit, readers see the old file */
    fprintf(f, "line %d\n", 1);
    fprintf(f, "line %d\n", 2);
    fflush(f);
    expect_content(p, "old contents", 12);
    assert_int_equal(access(a.tmp, F_OK), 0);
    assert_int_equal(tsr_atomic_commit(&a), 0);
    assert_null(a.fp);
    expect_content(p, "line 1\nline 2\n", 14);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    assert_no_temp_files();
    /* a second commit or an abort after a commit does nothing harmful */
    assert_int_equal(tsr_atomic_commit(&a), -1);
    expect_error(p, "not started", NULL);
    tsr_atomic_abort(&a);
    expect_content(p, "line 1\nline 2\n", 14);
}

static void test_stream_abort(void **state) {
    (void)state;
    const char *p = tpath("abort.txt");
    write_plain(p, "keep me");
    tsr_atomic a;
    FILE *f = tsr_atomic_begin(&a, p);
    assert_non_null(f);
    fputs("half-written", f);
    tsr_error("the caller's own error");
    tsr_atomic_abort(&a);
    assert_string_equal(tsr_last_error(), "the caller's own error"); /* abort keeps the message */
    tsr_atomic_abort(&a);                                          /* twice is fine */
    expect_content(p, "keep me", 7);
    assert_no_temp_files();
}

/* The target is a directory: the rename fails, the directory and what is in it stay, no temporary. */
static void test_stream_target_is_directory(void **state) {
    (void)state;
    const char *d = tpath("a_dir");
    assert_int_equal(mkdir(d, 0755), 0);
    write_plain(tpath("a_dir/inside.txt"), "inside");
    tsr_atomic a;
    FILE *f = tsr_atomic_begin(&a, d);
    assert_non_null(f);
    fputs("data", f);
    assert_int_equal(tsr_atomic_commit(&a), -1);
    expect_error(d, "cannot rename", NULL);
    assert_null(a.fp);
    struct stat sb;
    assert_int_equal(stat(d, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    expect_content(tpath("a_dir/inside.txt"), "inside", 6);
    assert_no_temp_files();
    assert_int_equal(tsr_write_file_atomic(d, "x", 1), -1);
    expect_error(d, "cannot rename", NULL);
    assert_no_temp_files();
}

static void test_stream_bad_names(void **state) {
    (void)state;
    tsr_atomic a;
    assert_null(tsr_atomic_begin(&a, ""));
    expect_error("no file name", NULL);
    assert_null(tsr_atomic_begin(&a, NULL));
    char *huge = malloc(5000);
    memset(huge, 'x', 4999);
    huge[4999] = 0;
    assert_null(tsr_atomic_begin(&a, huge));
    expect_error("file name too long", NULL);
    free(huge);
    char tmp[16];
    assert_int_equal(tsr_atomic_tmp_path("a_rather_long_name.txt", tmp, sizeof tmp), -1);
    expect_error("a_rather_long_name.txt", "too long", NULL);
    const char *p = tpath("no_such_dir/y.txt");
    assert_null(tsr_atomic_begin(&a, p));
    expect_error(p, "cannot create temporary file", "No such file or directory", NULL);
    assert_no_temp_files();
}

/* A write that fails half-way (file size limit: EFBIG): commit reports it, naming the path; the old
 * file stays and the temporary goes. */
static void test_stream_write_fails(void **state) {
    (void)state;
    const char *p = tpath("limited.bin");
    write_plain(p, "the old file");
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    if (old.rlim_max != RLIM_INFINITY && old.rlim_max < 4096) skip();
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 4096;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);

    static unsigned char big[64 * 1024];
    memset(big, 0xab, sizeof big);
    char msg[3][1024];
    int rc[3], wr = 0, began = 1;
    /* 0: tsr_atomic_write (keeps errno), 1: plain fwrite on the stream, 2: tsr_write_file_atomic */
    for (int k = 0; k < 3; k++) {
        tsr_atomic a;
        if (k < 2) {
            FILE *f = tsr_atomic_begin(&a, p);
            if (!f) {
                began = 0;
                break;
            }
            if (k == 0) wr = tsr_atomic_write(&a, big, sizeof big);
            else (void)fwrite(big, 1, sizeof big, f);
            rc[k] = tsr_atomic_commit(&a);
        } else {
            rc[k] = tsr_write_file_atomic(p, big, sizeof big);
        }
        snprintf(msg[k], sizeof msg[k], "%s", tsr_last_error());
    }
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_true(began);
    assert_int_equal(wr, -1);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(rc[k], -1);
        if (!strstr(msg[k], p) || !strstr(msg[k], "write to temporary file") ||
            (k != 1 && !strstr(msg[k], "File too large"))) {
            print_error("case %d: unexpected error \"%s\"\n", k, msg[k]);
            fail();
        }
    }
    expect_content(p, "the old file", 12);
    assert_no_temp_files();
}

/* ------------------------------------------------------------------ tsr_atomic_rename, fsync */

static void test_rename_file_and_directory(void **state) {
    (void)state;
    /* a file made by someone else (as netCDF makes its files) */
    char p[700], t[700], dt[700], d[700];
    snprintf(p, sizeof p, "%s", tpath("lib.nc"));
    snprintf(t, sizeof t, "%s", tpath("lib.nc.tmp.1"));
    snprintf(dt, sizeof dt, "%s", tpath("step-10.tmp.1"));
    snprintf(d, sizeof d, "%s", tpath("step-10"));
    write_plain(p, "old");
    write_plain(t, "new");
    assert_int_equal(tsr_atomic_rename(t, p), 0);
    expect_content(p, "new", 3);
    assert_int_equal(access(t, F_OK), -1);

    /* a directory (a checkpoint) */
    assert_int_equal(mkdir(dt, 0755), 0);
    write_plain(tpath("step-10.tmp.1/DONE"), "1");
    assert_int_equal(tsr_atomic_rename(dt, d), 0);
    expect_content(tpath("step-10/DONE"), "1", 1);
    assert_int_equal(access(dt, F_OK), -1);
    assert_no_temp_files();

    /* over a non-empty directory: refused, naming the path; the temporary stays for the caller */
    assert_int_equal(mkdir(dt, 0755), 0);
    write_plain(tpath("step-10.tmp.1/DONE"), "2");
    assert_int_equal(tsr_atomic_rename(dt, d), -1);
    expect_error(d, "cannot rename", dt, NULL);
    expect_content(tpath("step-10/DONE"), "1", 1);
    expect_content(tpath("step-10.tmp.1/DONE"), "2", 1);
    assert_int_equal(nftw(dt, rm_one, 16, FTW_DEPTH | FTW_PHYS), 0);

    /* a temporary that does not exist */
    assert_int_equal(tsr_atomic_rename(tpath("nothing.tmp.1"), p), -1);
    expect_error(p, "nothing.tmp.1", "No such file or directory", NULL);
    expect_content(p, "new", 3);
    assert_int_equal(tsr_atomic_rename("", p), -1);
    assert_no_temp_files();
}

static void test_fsync_dir(void **state) {
    (void)state;
    assert_int_equal(tsr_fsync_dir(g_dir), 0);
    assert_int_equal(tsr_fsync_dir("/"), 0);
    assert_int_equal(tsr_fsync_parent(tpath("anything")), 0);
    assert_int_equal(tsr_fsync_parent("bare_name_in_cwd"), 0);
    assert_int_equal(tsr_fsync_parent("/top"), 0);
    char trailing[700];
    snprintf(trailing, sizeof trailing, "%s/sub/", g_dir);
    assert_int_equal(tsr_fsync_parent(trailing), 0);
    const char *missing = tpath("no_such_dir");
    assert_int_equal(tsr_fsync_dir(missing), -1);
    expect_error(missing, "No such file or directory", NULL);
    const char *file = tpath("plain.txt");
    write_plain(file, "x");
    assert_int_equal(tsr_fsync_dir(file), -1);
    expect_error(file, "Not a directory", NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_file_round_trip),
        cmocka_unit_test(test_write_file_missing_dir),
        cmocka_unit_test(test_stream_round_trip),
        cmocka_unit_test(test_stream_abort),
        cmocka_unit_test(test_stream_target_is_directory),
        cmocka_unit_test(test_stream_bad_names),
        cmocka_unit_test(test_stream_write_fails),
        cmocka_unit_test(test_rename_file_and_directory),
        cmocka_unit_test(test_fsync_dir),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
