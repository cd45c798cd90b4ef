/* test_util.h: what the file-making unit tests share (include after <cmocka.h>): a scratch directory
 * g_dir (each test's group setup fills it with mkdtemp), paths in it, and checks of tessera's error
 * messages. */
#ifndef TSR_TEST_UTIL_H
#define TSR_TEST_UTIL_H
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

static char g_dir[256];

/* g_dir/name; the last 8 results stay valid. */
static inline const char *tpath(const char *name) {
    static char buf[8][600];
    static int i;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof buf[i], "%s/%s", g_dir, name);
    return buf[i];
}

/* The last error must contain every given substring (NULL-terminated list). */
static inline void expect_error(const char *first, ...) {
    const char *msg = tsr_last_error();
    if (getenv("TSR_TEST_VERBOSE")) print_message("  refused: %s\n", msg);
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *)) {
        if (!strstr(msg, s)) {
            va_end(ap);
            print_error("error message \"%s\" does not contain \"%s\"\n", msg, s);
            fail();
        }
    }
    va_end(ap);
}

/* No path.tmp.<pid> file may remain in g_dir (atomic writes clean up after themselves). */
static inline void assert_no_temp_files(void) {
    DIR *dir = opendir(g_dir);
    assert_non_null(dir);
    struct dirent *e;
    int bad = 0;
    while ((e = readdir(dir)) != NULL)
        if (strstr(e->d_name, ".tmp.")) {
            print_error("temporary file left behind: %s\n", e->d_name);
            bad = 1;
        }
    closedir(dir);
    assert_false(bad);
}
#endif
