/* common.h: error reporting, checked allocation, logging and small helpers used by every module.
 *
 * Errors: functions that can fail on bad input return int (0 = ok, -1 = error) and record a message
 * with tsr_error("..."): the message names the file, key or tensor and says what was expected.
 * The caller reads it with tsr_last_error(). The message buffer is thread-local. */
#ifndef TSR_COMMON_H
#define TSR_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define TSR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define TSR_NORETURN __attribute__((noreturn))
#else
#define TSR_PRINTF(a, b)
#define TSR_NORETURN
/* Create a directory and its parents. 0 / -1 (tsr_error). */
int tsr_mkdirs(const char *path);
/* Create the directory a file will be written to. */
int tsr_mkdirs_for(const char *file);

#endif

/* Record an error message (printf-style); always returns -1 so that `return tsr_error(...)` works. */
int tsr_error(const char *fmt, ...) TSR_PRINTF(1, 2);
/* The last recorded message ("" if none). */
const char *tsr_last_error(void);
/* Prefix the current message with more context: "ctx: <old message>". Returns -1. */
int tsr_error_context(const char *fmt, ...) TSR_PRINTF(1, 2);

/* Fatal: print "tessera: error: ..." with file:line and exit(1) (when ranks are running, the hook set by
 * the distribution layer aborts all of them). For programming errors and out-of-memory. */
TSR_NORETURN void tsr_fatal_at(const char *file, int line, const char *fmt, ...) TSR_PRINTF(3, 4);
#define tsr_fatal(...) tsr_fatal_at(__FILE__, __LINE__, __VA_ARGS__)
/* Hook called by tsr_fatal before exiting (src/dist installs one that aborts every rank). */
extern void (*tsr_abort_hook)(int code);

void *tsr_malloc_at(size_t n, const char *file, int line);
void *tsr_calloc_at(size_t count, size_t n, const char *file, int line);
void *tsr_aligned_alloc_at(size_t n, const char *file, int line); /* 64-byte aligned, zeroed */
#define tsr_malloc(n) tsr_malloc_at((n), __FILE__, __LINE__)
#define tsr_calloc(c, n) tsr_calloc_at((c), (n), __FILE__, __LINE__)
#define tsr_aligned_alloc(n) tsr_aligned_alloc_at((n), __FILE__, __LINE__)
/* Large zeroed buffers whose pages stay untouched (not resident, not counted in RSS) until first written:
 * an anonymous mapping, 64-byte aligned. For buffers of which a run may use only a part (the gradients of
 * a mostly frozen model, the AdamW moments of a few groups, activations of blocks a backward never
 * reaches). Free with tsr_lazy_free only (NULL is fine). */
void *tsr_lazy_alloc_at(size_t n, const char *file, int line);
void tsr_lazy_free(void *p);
/* Zero [p, p + n) inside a tsr_lazy_alloc buffer and give its whole pages back to the system
 * (madvise MADV_DONTNEED: they read as zero and are not resident until written again); the bytes of the
 * partial pages at either end are zeroed with memset (those pages stay resident: they hold neighbours).
 * Only for memory from tsr_lazy_alloc. */
void tsr_lazy_zero(void *p, size_t n);
#define tsr_lazy_alloc(n) tsr_lazy_alloc_at((n), __FILE__, __LINE__)
#define TSR_CHECK(cond, ...) do { if (!(cond)) tsr_fatal_at(__FILE__, __LINE__, __VA_ARGS__); } while (0)

/* Logging. Level: 0 error, 1 warn, 2 info, 3 debug. Only rank 0 prints info unless told otherwise. */
enum { TSR_LOG_ERROR = 0, TSR_LOG_WARN = 1, TSR_LOG_INFO = 2, TSR_LOG_DEBUG = 3 };
extern int tsr_log_level;
extern int tsr_log_rank; /* this process's MPI rank (0 when MPI is not running) */
void tsr_log(int level, const char *fmt, ...) TSR_PRINTF(2, 3);
/* A logger passed explicitly (library code logs through the run context's): the rank it speaks for and
 * its level. Only rank 0 prints info and debug lines; warnings and errors print on every rank and name
 * the rank when it is not 0. tsr_log uses the process's (tsr_log_rank, tsr_log_level). */
typedef struct {
    int rank, level;
} tsr_logger;
void tsr_logf(const tsr_logger *lg, int level, const char *fmt, ...) TSR_PRINTF(3, 4);
tsr_logger tsr_logger_default(void);
#define tsr_info(...) tsr_log(TSR_LOG_INFO, __VA_ARGS__)
#define tsr_warn(...) tsr_log(TSR_LOG_WARN, __VA_ARGS__)

double tsr_time(void); /* monotonic seconds */

/* Sizes computed from numbers a file supplies (dimension lengths, tensor shapes) must not wrap:
 * *out = a * b, returning 0, or -1 (no message: the caller names the file and the dimension) when the
 * product does not fit in size_t. */
static inline int tsr_size_mul(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
/* *out = elem * n * per for a count n read from a file (n < 0 is refused too). 0 / -1 (no message). */
static inline int tsr_size_bytes(size_t elem, int64_t n, size_t per, size_t *out) {
    size_t t;
    if (n < 0) return -1;
    return tsr_size_mul(elem, (size_t)n, &t) || tsr_size_mul(t, per, out) ? -1 : 0;
}


/* Write a whole buffer to path atomically: path.tmp.<pid>, fsync, rename, fsync of the directory.
 * Returns 0 / -1 (tsr_error). Defined in atomic.c; core/atomic.h has the streaming writer and rename. */
int tsr_write_file_atomic(const char *path, const void *data, size_t n);
/* Read a whole file into a malloc'ed buffer (NUL-terminated for convenience). 0 / -1 (tsr_error). */
int tsr_read_file(const char *path, char **data, size_t *n);

/* Create a directory and its parents. 0 / -1 (tsr_error). */
int tsr_mkdirs(const char *path);
/* Create the directory a file will be written to. */
int tsr_mkdirs_for(const char *file);

#endif
