/* atomic.c: atomic, durable file replacement (see atomic.h). */
#define _POSIX_C_SOURCE 200809L
#include "core/atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common.h"

/* Fault injection for tests (test_faults): TESSERA_FAULT_KILL_WRITE=SUBSTRING[#K] makes this process kill
 * itself with SIGKILL at the K-th (default 1st) file write whose final path contains SUBSTRING (ends with it:
 * SUBSTRING$): an atomic
 * write is killed halfway (the temporary cut to half its bytes, not renamed), a rename of a finished
 * temporary (a checkpoint directory, the few-shot results file) just before the rename. It stands for a
 * node lost or a job killed at the worst moment. */
static void fault_kill_point(const char *path, FILE *half) {
    const char *spec = getenv("TESSERA_FAULT_KILL_WRITE");
    if (!spec || !spec[0]) return;
    char sub[512];
    snprintf(sub, sizeof sub, "%s", spec);
    long k = 1;
    char *hash = strrchr(sub, '#');
    if (hash) {
        *hash = 0;
        k = strtol(hash + 1, NULL, 10);
    }
    size_t ls = strlen(sub), lp = strlen(path);
    int at_end = ls > 0 && sub[ls - 1] == '$'; /* SUBSTRING$: the path ends with it */
    if (at_end) sub[--ls] = 0;
    int match = at_end ? lp >= ls && strcmp(path + lp - ls, sub) == 0 : strstr(path, sub) != NULL;
    static long seen = 0;
    if (!match || ++seen != k) return;
    if (half) {
        fflush(half);
        struct stat st;
        if (fstat(fileno(half), &st) == 0 && ftruncate(fileno(half), st.st_size / 2) != 0) {}
    }
    fprintf(stderr, "tessera: fault injection: SIGKILL at %s of %s\n", half ? "the write" : "the rename", path);
    raise(SIGKILL);
}

/* A filesystem that cannot fsync a directory (or this kind of file) says so with one of these. */
static int fsync_unsupported(int e) { return e == EINVAL || e == ENOTSUP || e == EOPNOTSUPP; }

int tsr_atomic_tmp_path(const char *path, char *tmp, size_t n) {
    if (!path || !path[0]) return tsr_error("write: no file name given");
    int w = snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    if (w < 0 || (size_t)w >= n) return tsr_error("%s: file name too long", path);
    return 0;
}

int tsr_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return tsr_error("%s: cannot open directory to fsync it (%s)", dir, strerror(errno));
    int rc = 0;
    if (fsync(fd) != 0 && !fsync_unsupported(errno))
        rc = tsr_error("%s: fsync of the directory failed (%s)", dir, strerror(errno));
    close(fd);
    return rc;
}

/* The directory part of path into dir (n bytes): "." for a bare name, "/" for a file in the root.
 * Trailing slashes of path (a directory given as "d/") are ignored. */
static int parent_of(const char *path, char *dir, size_t n) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    size_t cut = len;
    while (cut > 0 && path[cut - 1] != '/') cut--;
    if (cut == 0) {
        snprintf(dir, n, ".");
        return 0;
    }
    while (cut > 1 && path[cut - 1] == '/') cut--; /* "a//b" -> "a"; "/b" -> "/" */
    if (cut >= n) return tsr_error("%s: file name too long", path);
    memcpy(dir, path, cut);
    dir[cut] = 0;
    return 0;
}

int tsr_fsync_parent(const char *path) {
    char dir[4200];
    if (parent_of(path, dir, sizeof dir) != 0) return -1;
    return tsr_fsync_dir(dir);
}

FILE *tsr_atomic_begin(tsr_atomic *a, const char *path) {
    memset(a, 0, sizeof *a);
    if (!path || !path[0]) {
        tsr_error("write: no file name given");
        return NULL;
    }
    if (strlen(path) >= sizeof a->path) {
        tsr_error("%.200s...: file name too long", path);
        return NULL;
    }
    if (tsr_atomic_tmp_path(path, a->tmp, sizeof a->tmp) != 0) return NULL;
    int fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        tsr_error("%s: cannot create temporary file %s (%s)", path, a->tmp, strerror(errno));
        a->tmp[0] = 0;
        return NULL;
    }
    a->fp = fdopen(fd, "wb");
    if (!a->fp) {
        tsr_error("%s: cannot create temporary file %s (%s)", path, a->tmp, strerror(errno));
        close(fd);
        unlink(a->tmp);
        a->tmp[0] = 0;
        return NULL;
    }
    strcpy(a->path, path);
    return a->fp;
}

void tsr_atomic_abort(tsr_atomic *a) {
    if (a->fp) fclose(a->fp);
    a->fp = NULL;
    if (a->tmp[0]) unlink(a->tmp);
    a->tmp[0] = 0;
}

int tsr_atomic_commit(tsr_atomic *a) {
    if (!a->fp) return tsr_error("%s: atomic write was not started or already finished", a->path);
    const char *what = NULL;
    int e = 0;
    int earlier = ferror(a->fp) || a->err;
    errno = 0;
    fault_kill_point(a->path, a->fp);
    if (fflush(a->fp) != 0 || earlier) {
        e = a->err ? a->err : errno ? errno : EIO; /* EIO: a write on the stream failed, reason unknown */
        what = "write to";
    } else if (fsync(fileno(a->fp)) != 0 && !fsync_unsupported(errno)) {
        e = errno;
        what = "fsync of";
    }
    if (fclose(a->fp) != 0 && !what) {
        e = errno;
        what = "close of";
    }
    a->fp = NULL;
    if (what) {
        int rc = tsr_error("%s: %s temporary file %s failed (%s)", a->path, what, a->tmp, strerror(e));
        tsr_atomic_abort(a);
        return rc;
    }
    if (rename(a->tmp, a->path) != 0) {
        int rc = tsr_error("%s: cannot rename temporary file %s to it (%s)", a->path, a->tmp, strerror(errno));
        tsr_atomic_abort(a);
        return rc;
    }
    a->tmp[0] = 0;
    if (tsr_fsync_parent(a->path) != 0) return tsr_error_context("%s: written, but its directory", a->path);
    return 0;
}

int tsr_atomic_write(tsr_atomic *a, const void *p, size_t n) {
    if (!a->fp) return -1;
    if (n == 0 || a->err) return a->err ? -1 : 0;
    errno = 0;
    if (fwrite(p, 1, n, a->fp) == n) return 0;
    a->err = errno ? errno : EIO;
    return -1;
}

int tsr_write_file_atomic(const char *path, const void *data, size_t n) {
    tsr_atomic a;
    if (!tsr_atomic_begin(&a, path)) return -1;
    (void)tsr_atomic_write(&a, data, n); /* a failure is reported by the commit, which removes the temporary */
    return tsr_atomic_commit(&a);
}

int tsr_atomic_rename(const char *tmp, const char *path) {
    if (!tmp || !tmp[0] || !path || !path[0]) return tsr_error("rename: no file name given");
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tsr_error("%s: cannot open temporary %s to fsync it (%s)", path, tmp, strerror(errno));
    if (fsync(fd) != 0 && !fsync_unsupported(errno)) {
        int e = errno;
        close(fd);
        return tsr_error("%s: fsync of temporary %s failed (%s)", path, tmp, strerror(e));
    }
    close(fd);
    fault_kill_point(path, NULL);
    if (rename(tmp, path) != 0) return tsr_error("%s: cannot rename %s to it (%s)", path, tmp, strerror(errno));
    char d1[4200], d2[4200];
    if (parent_of(path, d1, sizeof d1) != 0 || tsr_fsync_dir(d1) != 0)
        return tsr_error_context("%s: renamed, but its directory", path);
    if (parent_of(tmp, d2, sizeof d2) == 0 && strcmp(d1, d2) != 0 && tsr_fsync_dir(d2) != 0)
        return tsr_error_context("%s: renamed, but the directory of %s", path, tmp);
    return 0;
}
