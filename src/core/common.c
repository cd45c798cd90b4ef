/* common.c: error messages, checked allocation, logging, reading files (atomic writes: atomic.c). */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char err_buf[2048];
void (*tsr_abort_hook)(int code) = NULL;
int tsr_log_level = TSR_LOG_INFO;
int tsr_log_rank = 0;

int tsr_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return -1;
}

const char *tsr_last_error(void) { return err_buf; }

int tsr_error_context(const char *fmt, ...) {
    char ctx[512], old[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    size_t n = strnlen(err_buf, sizeof old - 1);
    memcpy(old, err_buf, n);
    old[n] = 0;
    snprintf(err_buf, sizeof err_buf, "%.511s: %.1023s", ctx, n ? old : "failed (no reason was recorded)");
    return -1;
}

void tsr_fatal_at(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "tessera: error (rank %d, %s:%d): ", tsr_log_rank, file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    if (tsr_abort_hook) tsr_abort_hook(1);
    exit(1);
}

void *tsr_malloc_at(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) tsr_fatal_at(file, line, "out of memory allocating %zu bytes", n);
    return p;
}

void *tsr_calloc_at(size_t count, size_t n, const char *file, int line) {
    void *p = calloc(count ? count : 1, n ? n : 1);
    if (!p) tsr_fatal_at(file, line, "out of memory allocating %zu x %zu bytes", count, n);
    return p;
}

void *tsr_aligned_alloc_at(size_t n, const char *file, int line) {
    void *p = NULL;
    size_t sz = (n + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, sz ? sz : 64) != 0 || !p)
        tsr_fatal_at(file, line, "out of memory allocating %zu bytes", n);
    memset(p, 0, sz);
    return p;
}

/* The mapping starts 64 bytes before the pointer returned; its first size_t holds the mapping's length. */
#define LAZY_HEAD 64
void *tsr_lazy_alloc_at(size_t n, const char *file, int line) {
    size_t len = LAZY_HEAD + (n ? n : 1);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) tsr_fatal_at(file, line, "out of memory mapping %zu bytes", n);
    *(size_t *)p = len;
    return (char *)p + LAZY_HEAD;
}

void tsr_lazy_free(void *q) {
    if (!q) return;
    char *p = (char *)q - LAZY_HEAD;
    munmap(p, *(size_t *)p);
}

void tsr_lazy_zero(void *q, size_t n) {
    if (!q || !n) return;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)q, e = a + n;
    uintptr_t lo = (a + pg - 1) & ~(pg - 1), hi = e & ~(pg - 1);
    if (hi <= lo) { /* no whole page inside */
        memset(q, 0, n);
        return;
    }
    memset(q, 0, lo - a);
    memset((void *)hi, 0, e - hi);
    /* private anonymous memory: the pages are dropped and read as zero afterwards */
    if (madvise((void *)lo, hi - lo, MADV_DONTNEED) != 0) memset((void *)lo, 0, hi - lo);
}

static void vlog(int rank, int max_level, int level, const char *fmt, va_list ap) {
    if (level > max_level) return;
    if (level >= TSR_LOG_INFO && rank != 0) return;
    FILE *out = level <= TSR_LOG_WARN ? stderr : stdout;
    /* one line, one write: stderr is unbuffered, and a line written in pieces interleaves with other
     * ranks' lines under mpirun ("tessera: error: tessera: error: stopping: ...", seen in test_checkpoint_faults) */
    const char *pre = level == TSR_LOG_WARN ? "tessera: warning: " : level == TSR_LOG_ERROR ? "tessera: error: " : "";
    char line[4096];
    size_t np = strlen(pre);
    memcpy(line, pre, np);
    va_list aq;
    va_copy(aq, ap);
    int m = vsnprintf(line + np, sizeof line - np - 1, fmt, aq);
    va_end(aq);
    if (m >= 0 && (size_t)m < sizeof line - np - 1) {
        size_t len = np + (size_t)m;
        line[len++] = '\n';
        fwrite(line, 1, len, out);
    } else { /* longer than the buffer: in pieces */
        fputs(pre, out);
        vfprintf(out, fmt, ap);
        fputc('\n', out);
    }
    fflush(out);
}

void tsr_log(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(tsr_log_rank, tsr_log_level, level, fmt, ap);
    va_end(ap);
}

void tsr_logf(const tsr_logger *lg, int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(lg->rank, lg->level, level, fmt, ap);
    va_end(ap);
}

tsr_logger tsr_logger_default(void) { return (tsr_logger){tsr_log_rank, tsr_log_level}; }

double tsr_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int tsr_read_file(const char *path, char **data, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return tsr_error("%s: cannot open (%s)", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return tsr_error("%s: cannot seek", path); }
    long sz = ftell(f);
    if (sz < 0) { fclose(f); return tsr_error("%s: cannot determine size", path); }
    rewind(f);
    char *buf = tsr_malloc((size_t)sz + 1);
    if (sz > 0 && fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        fclose(f);
        free(buf);
        return tsr_error("%s: short read", path);
    }
    fclose(f);
    buf[sz] = 0;
    *data = buf;
    *n = (size_t)sz;
    return 0;
}

int tsr_mkdirs(const char *path) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return tsr_error("%s: cannot create (%s)", tmp, strerror(errno));
            *p = '/';
        }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return tsr_error("%s: cannot create (%s)", tmp, strerror(errno));
    return 0;
}

int tsr_mkdirs_for(const char *file) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", file);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = 0;
    return tsr_mkdirs(dir);
}
