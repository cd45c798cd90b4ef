/* mpi_check.h: the pass/fail tally of the MPI C tests. CHECK(cond, fmt, ...) counts a check and prints
 * the first 50 failures with the rank, the place and the test's context string `ctx` (defined by the
 * test before including this file). Each test prints "N passed, M failed" and exits non-zero on
 * every rank when a check failed anywhere. */
#ifndef TSR_MPI_CHECK_H
#define TSR_MPI_CHECK_H
#include <stdint.h>
#include <stdio.h>

static int64_t n_pass = 0, n_fail = 0;
static int rank_ = 0, size_ = 1;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (cond) {                                                                           \
            n_pass++;                                                                         \
        } else {                                                                              \
            n_fail++;                                                                         \
            if (n_fail <= 50) {                                                               \
                fprintf(stderr, "rank %d: FAIL %s:%d [%s] ", rank_, __FILE__, __LINE__, ctx); \
                fprintf(stderr, __VA_ARGS__);                                                 \
                fputc('\n', stderr);                                                          \
            }                                                                                 \
        }                                                                                     \
    } while (0)
#endif
