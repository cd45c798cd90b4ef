/* fuzz_util.h: what the libFuzzer targets of tests/fuzz share. Each target is a file parser of tessera fed
 * the fuzzer's bytes; parsers that take a path get them through a file of this process (rewritten per
 * input). A target must never crash, hang, leak or touch memory it does not own, whatever the bytes: a
 * refusal (-1 with tsr_error) is the expected outcome for most inputs. */
#ifndef TSR_FUZZ_UTIL_H
#define TSR_FUZZ_UTIL_H
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"

/* The bytes into a file of this process ("/tmp/tsr_fuzz.<pid>.<tag><suffix>"); its path. */
static inline const char *fuzz_file(const char *tag, const char *suffix, const uint8_t *data, size_t n) {
    static char path[256];
    snprintf(path, sizeof path, "%s/tsr_fuzz.%ld.%s%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (long)getpid(), tag, suffix);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    if (fclose(f) != 0) abort();
    return path;
}

/* Quiet: refusals are expected; tessera's log lines would only slow the fuzzer down. */
static inline void fuzz_quiet(void) { tsr_log_level = -1; }
#endif
