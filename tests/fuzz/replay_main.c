/* replay_main.c: a main for the fuzz targets in builds without libFuzzer (gcc, the sanitizer build): runs
 * LLVMFuzzerTestOneInput once on each file given (the seed corpus and the inputs that once crashed,
 * tests/fuzz/regressions/<target>/). Exits non-zero if a file cannot be read; a crash is the test failing. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

int main(int argc, char **argv) {
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    int files = 0;
    for (int i = 1; i < argc; i++) {
        char *buf;
        size_t n;
        if (tsr_read_file(argv[i], &buf, &n) != 0) {
            fprintf(stderr, "replay: %s\n", tsr_last_error());
            return 2;
        }
        LLVMFuzzerTestOneInput((const uint8_t *)buf, n);
        free(buf);
        files++;
    }
    printf("replay: %d file(s), no crash\n", files);
    return 0;
}
