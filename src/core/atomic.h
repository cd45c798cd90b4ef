/* atomic.h: atomic, durable file replacement. A reader of path sees either the old file or the complete
 * new one, never a partial write, and after a successful commit the new file survives a crash.
 *
 * The recipe, in one place for every writer: write path.tmp.<pid> next to path (same directory, so the
 * rename stays within one filesystem), fsync it, rename it over path, fsync the directory (so that the
 * rename itself is on disk). On failure the temporary is removed and the old path is left as it was.
 *
 *   tsr_atomic a;
 *   FILE *f = tsr_atomic_begin(&a, path);
 *   if (!f) return -1;
 *   ... tsr_atomic_write(&a, p, n), or fwrite / fprintf on f ...
 *                                     (errors are sticky: commit reports them)
 *   if (something_failed) { tsr_atomic_abort(&a); return -1; }
 *   return tsr_atomic_commit(&a);
 *
 * Files or directories made by a library (netCDF, a checkpoint directory): create them under the name
 * from tsr_atomic_tmp_path, close them, then tsr_atomic_rename.
 *
 * All functions return 0 / -1 with tsr_error naming the final path and the system's reason. */
#ifndef TSR_ATOMIC_H
#define TSR_ATOMIC_H
#include <stddef.h>
#include <stdio.h>

typedef struct {
    char path[4096], tmp[4200];
    FILE *fp;
    int err; /* errno of the first failed tsr_atomic_write (0: none) */
} tsr_atomic;

/* Write a whole buffer to path atomically (begin, fwrite, commit). */
int tsr_write_file_atomic(const char *path, const void *data, size_t n);

/* "<path>.tmp.<pid>" into tmp (n bytes). -1 when path is empty or the name does not fit. */
int tsr_atomic_tmp_path(const char *path, char *tmp, size_t n);

/* Create (truncate) the temporary file for path, mode 0644 before the umask. Returns the stream to write,
 * or NULL with tsr_error ("<path>: cannot create temporary file <tmp> (<reason>)"); a is then unused. */
FILE *tsr_atomic_begin(tsr_atomic *a, const char *path);
/* fwrite n bytes to the temporary; 0, or -1 remembering errno for commit's message (no tsr_error: the
 * write error is reported by tsr_atomic_commit, which must still be called, or tsr_atomic_abort). */
int tsr_atomic_write(tsr_atomic *a, const void *p, size_t n);
/* Finish: fflush, check for earlier write errors, fsync, fclose, rename over the path, fsync the
 * directory. On any failure the temporary is removed (the old file, if any, is untouched) and -1 is
 * returned with tsr_error naming the path. a->fp is NULL afterwards either way. */
int tsr_atomic_commit(tsr_atomic *a);
/* Give up: close and remove the temporary. Safe to call twice or after a commit. Keeps tsr_last_error. */
void tsr_atomic_abort(tsr_atomic *a);

/* Move a finished temporary file or directory tmp (closed by whoever wrote it) over path: fsync tmp
 * (a directory's fsync covers its entries, not the files in it: fsync those when writing them), rename,
 * fsync the directory of path (and of tmp when that differs). On failure tmp is left where it is, for
 * the caller to remove or keep (a sweep's results may be worth keeping). Renaming a directory over a
 * non-empty directory fails (rename(2)). */
int tsr_atomic_rename(const char *tmp, const char *path);
/* Tests: TESSERA_FAULT_KILL_WRITE=SUBSTRING[$][#K] kills the process (SIGKILL) at its K-th commit or rename
 * of a path containing (with $: ending with) SUBSTRING (an atomic write's temporary cut to half first). */

/* fsync a directory, so that entries created, renamed or removed in it are on disk. A filesystem that
 * cannot sync directories (EINVAL, ENOTSUP) is not an error. */
int tsr_fsync_dir(const char *dir);
/* fsync the directory that holds path ("." for a bare name). */
int tsr_fsync_parent(const char *path);
#endif
