/* test_nc_probe.c: netCDF inputs are opened first in a forked child (tsr_nc_probe), so that a file that
 * crashes HDF5 is refused with a message instead of killing the process (issue 15, part D).
 * - a good dataset and a good suite open (and the child is not run again for an unchanged file);
 * - truncated and garbled files get a clean error naming the file (dataset and suite openers);
 * - a child that dies by a signal (TESSERA_FAULT_NC_CHILD_SIGNAL: the path a crashing HDF5 takes) makes the
 *   open fail with a message naming the file and the signal, and this process lives on;
 * - real damaged files (found by fuzzing) on which HDF5 crashes (SIGSEGV) or loops when opened: refused by
 *   name, this process alive (and, asserted in a child, opening them without the check does crash or hang);
 * - TESSERA_NC_CHECK=0 turns the child off (then the signal is not seen: the fault test needs the probe). */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/test_util.h"
#include "core/common.h"
#include "data/dataset_nc.h"
#include "data/suite.h"

enum { N = 12, H = 6, W = 5, C = 1, K = 3 };

static void make_good(const char *p) {
    uint8_t img[N * H * W * C];
    int lab[N];
    for (int i = 0; i < N * H * W * C; i++) img[i] = (uint8_t)(i * 7);
    for (int i = 0; i < N; i++) lab[i] = i % K;
    tsr_nc_provenance prov = {.task_name = "probe"};
    if (tsr_nc_dataset_write(p, N, H, W, C, img, lab, NULL, K, NULL, &prov) != 0) fail_msg("%s", tsr_last_error());
}

static void copy_prefix(const char *from, const char *to, long keep, int garble) {
    char *buf;
    size_t n;
    assert_int_equal(tsr_read_file(from, &buf, &n), 0);
    if (keep < 0 || (size_t)keep > n) keep = (long)n;
    if (garble) /* the HDF5 signature stays; what follows it is noise */
        for (size_t i = 64; i < (size_t)keep; i++) buf[i] = (char)((i * 2654435761u) >> 13);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, (size_t)keep, f), (size_t)keep);
    fclose(f);
    free(buf);
}

static void test_good_files_open(void **state) {
    (void)state;
    const char *p = tpath("good.nc");
    make_good(p);
    tsr_nc_dataset d;
    if (tsr_nc_dataset_open(&d, p) != 0) fail_msg("%s", tsr_last_error());
    assert_int_equal(d.n_examples, N);
    tsr_nc_dataset_close(&d);
    tsr_suite s;
    if (tsr_suite_open(&s, p) != 0) fail_msg("%s", tsr_last_error());
    assert_int_equal(s.ntasks, 1);
    tsr_suite_close(&s);
    /* unchanged: not checked again (a child that would crash is not started) */
    setenv("TESSERA_FAULT_NC_CHILD_SIGNAL", "11", 1);
    assert_int_equal(tsr_nc_dataset_open(&d, p), 0);
    tsr_nc_dataset_close(&d);
    unsetenv("TESSERA_FAULT_NC_CHILD_SIGNAL");
}

static void test_truncated_and_garbled(void **state) {
    (void)state;
    char good[600]; /* tpath's buffers are reused */
    snprintf(good, sizeof good, "%s", tpath("good2.nc"));
    make_good(good);
    char *buf;
    size_t n;
    assert_int_equal(tsr_read_file(good, &buf, &n), 0);
    free(buf);
    const long cuts[] = {0, 4, 100, 1000, (long)n / 2, (long)n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        for (int garble = 0; garble < 2; garble++) {
            if (garble && cuts[i] < 200) continue;
            char name[64];
            snprintf(name, sizeof name, "bad_%ld_%d.nc", cuts[i], garble);
            const char *p = tpath(name);
            copy_prefix(good, p, cuts[i], garble);
            tsr_nc_dataset d;
            assert_int_equal(tsr_nc_dataset_open(&d, p), -1);
            expect_error(p, NULL);
            assert_int_equal(d.ncid, -1);
            tsr_suite s;
            assert_int_equal(tsr_suite_open(&s, p), -1);
            expect_error(p, NULL);
            unlink(p);
        }
    }
    unlink(good);
}

static void test_child_death_refuses_the_file(void **state) {
    (void)state;
    const char *p = tpath("crashes.nc");
    make_good(p);
    setenv("TESSERA_FAULT_NC_CHILD_SIGNAL", "11", 1);
    tsr_nc_dataset d;
    assert_int_equal(tsr_nc_dataset_open(&d, p), -1);
    expect_error(p, "refusing the file", "crashed the netCDF/HDF5 library", "signal 11", NULL);
    tsr_suite s;
    assert_int_equal(tsr_suite_open(&s, p), -1);
    expect_error(p, "crashed", NULL);
    unsetenv("TESSERA_FAULT_NC_CHILD_SIGNAL");
    unlink(p);
}

/* A real damaged file, found by fuzz_dataset_nc: in the fuzzer's process (after earlier inputs) opening it made
 * HDF5 free a pointer it never allocated (H5G__dense_iterate -> H5MM_xfree), caught by ASan. Opened alone (the
 * release and the gcc sanitizer builds) HDF5 returns an error. Either way tessera must refuse it cleanly, naming
 * the file, and live on; if the crash happens, the forked check turns it into that refusal. */
static void test_real_hdf5_crash_file(void **state) {
    (void)state;
    const char *p = "tests/fuzz/regressions/dataset_nc/hdf5_crash_link_table.nc";
    tsr_nc_dataset d;
    assert_int_equal(tsr_nc_dataset_open(&d, p), -1);
    expect_error(p, NULL);
    tsr_suite s;
    assert_int_equal(tsr_suite_open(&s, p), -1);
    expect_error(p, NULL);
}

/* How opening `p` in this process (no forked check) ends, in a child: 0 = returned (either way), else the
 * signal that killed it, or 1000 + an exit status other than the child's own (a sanitizer's report). */
static int open_in_process(const char *p, int seconds) {
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* cmocka's handlers would turn a crash into a failed test and run the rest in the child */
        const int sig[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGALRM};
        for (size_t i = 0; i < sizeof sig / sizeof *sig; i++) signal(sig[i], SIG_DFL);
        setenv("TESSERA_NC_CHECK", "0", 1);
        alarm((unsigned)seconds);
        tsr_nc_dataset d;
        if (tsr_nc_dataset_open(&d, p) == 0) tsr_nc_dataset_close(&d);
        _exit(42);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (WIFSIGNALED(st)) return WTERMSIG(st);
    return WEXITSTATUS(st) == 42 ? 0 : 1000 + WEXITSTATUS(st);
}

/* A real file on which Debian's HDF5 (1.10.8) crashes when it is opened: a dataset tessera wrote, one byte
 * changed (offset 6578, 0 -> 3; found by fuzz_dataset_nc, minimised against `ncdump -h`, which dies of SIGSEGV
 * on it). Opened in this process it kills the process (the premise, asserted in a child: a signal, or in a
 * sanitizer build the sanitizer's exit); through tessera's opener it is refused by name and this process lives
 * on. If a later HDF5 stops crashing on it, the premise fails: then this file no longer tests the forked check. */
static void test_real_hdf5_segv_file(void **state) {
    (void)state;
    const char *p = "tests/fuzz/regressions/dataset_nc/hdf5_segv_byte6578.nc";
    int how = open_in_process(p, 30);
    if (how == 0) fail_msg("%s: opening it in process no longer crashes HDF5 (a fixed HDF5?)", p);
    print_message("opening %s in process: %s %d\n", p, how >= 1000 ? "exit status" : "signal",
                  how >= 1000 ? how - 1000 : how);
    tsr_nc_dataset d;
    assert_int_equal(tsr_nc_dataset_open(&d, p), -1);
    expect_error(p, "refusing the file", "crashed the netCDF/HDF5 library", NULL);
    assert_int_equal(d.ncid, -1);
    tsr_suite s;
    assert_int_equal(tsr_suite_open(&s, p), -1);
    expect_error(p, "crashed the netCDF/HDF5 library", NULL);
}

/* A real file on which HDF5 loops in nc_open (ncdump -h spins on it for minutes; found by a CI-length fuzz run):
 * the check is ended after TESSERA_NC_CHECK_SECONDS and the file refused, and this process goes on. */
static void test_real_hdf5_loop_file(void **state) {
    (void)state;
    const char *p = "tests/fuzz/regressions/dataset_nc/hdf5_loop.nc";
    assert_int_equal(open_in_process(p, 3), SIGALRM); /* the premise: still in nc_open after 3 s */
    setenv("TESSERA_NC_CHECK_SECONDS", "2", 1);
    tsr_nc_dataset d;
    assert_int_equal(tsr_nc_dataset_open(&d, p), -1);
    expect_error(p, "refusing the file", "still opening it after 2 s", NULL);
    unsetenv("TESSERA_NC_CHECK_SECONDS");
}

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_test_nc_probe.XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    unlink(tpath("good.nc"));
    return rmdir(g_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_files_open),
        cmocka_unit_test(test_truncated_and_garbled),
        cmocka_unit_test(test_child_death_refuses_the_file),
        cmocka_unit_test(test_real_hdf5_crash_file),
        cmocka_unit_test(test_real_hdf5_segv_file),
        cmocka_unit_test(test_real_hdf5_loop_file),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
