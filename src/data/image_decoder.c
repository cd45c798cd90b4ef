/* image_decoder.c: stb_image in a helper process (see image_decoder.h).
 *
 * Protocol over a UNIX stream socket pair, one request at a time:
 *   request:  int32 size, C, mode, path length; the path (no NUL)
 *   response: int32 status (0 decoded, 1 refused), uint32 length; the pixels (size*size*C bytes) or the message
 * The helper is a fork of this process without exec (the fuzz targets and the tests are not the tessera binary),
 * so it only ever runs tsr_import_decode_image and plain system calls, and leaves with _exit: no atexit
 * handlers, no MPI, no OpenMP, nothing buffered written twice. */
#define _GNU_SOURCE
#include "data/image_decoder.h"

#include "core/common.h"
#include "data/import.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TSR_DECODE_SECONDS 60
#define PATH_LIMIT 65536

struct tsr_image_decoder {
    pid_t pid;       /* the helper, 0 if none */
    int fd;          /* this side of the socket pair */
    int last_died;   /* the last decode ended the helper */
    int in_process;  /* fork failed: decoding here */
};

static int decode_seconds_set; /* 0: TESSERA_IMAGE_DECODE_SECONDS or the default */
static int helpers_quiet;

void tsr_image_decoder_set_seconds(int n) { decode_seconds_set = n > 0 ? n : 0; }
void tsr_image_decoder_set_quiet(int quiet) { helpers_quiet = quiet != 0; }

static int decode_seconds(void) {
    if (decode_seconds_set > 0) return decode_seconds_set;
    const char *e = getenv("TESSERA_IMAGE_DECODE_SECONDS");
    int v = e ? atoi(e) : 0;
    return v > 0 ? v : TSR_DECODE_SECONDS;
}

/* sanitizer builds: a report in the helper ends the helper (a fuzzer's own death handler, inherited through
 * fork, would otherwise report the helper's death as a crash of the fuzzer) */
extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));
static void helper_death(void) { _exit(70); }

/* ------------------------------------------------------------------ the helper */

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n) {
    char *c = p;
    while (n > 0) {
        ssize_t r = recv(fd, c, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

static void fault_points(const char *path) {
    const char *s = getenv("TESSERA_FAULT_DECODE_SIGNAL");
    if (s) {
        const char *colon = strchr(s, ':');
        if (colon && atoi(s) > 0 && strstr(path, colon + 1)) raise(atoi(s));
    }
    const char *h = getenv("TESSERA_FAULT_DECODE_HANG");
    if (h && h[0] && strstr(path, h))
        for (;;) pause();
}

static void close_others(int keep) {
#if defined(__linux__) && defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    if (keep == 3 && close_range(4, UINT_MAX, 0) == 0) return;
#endif
    long mx = sysconf(_SC_OPEN_MAX);
    if (mx < 0 || mx > 65536) mx = 65536;
    for (int f = 3; f < mx; f++)
        if (f != keep) close(f);
}

static void helper_main(int fd) {
    /* this helper holds only its own end: copies of other helpers' sockets (and of tessera's files) would keep
     * those open after tessera closes them */
    if (fd != 3) {
        if (dup2(fd, 3) < 0) _exit(71);
        close(fd);
        fd = 3;
    }
    close_others(fd);
    const int dfl[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGSYS, SIGTRAP, SIGALRM,
                       SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP, SIGPIPE};
    for (size_t i = 0; i < sizeof dfl / sizeof *dfl; i++) signal(dfl[i], SIG_DFL);
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(helper_death);
    if (helpers_quiet) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) {
            dup2(nul, 2);
            close(nul);
        }
    }
    char *path = NULL;
    uint8_t *px = NULL;
    size_t px_cap = 0;
    char msg[2048];
    for (;;) {
        int32_t req[4];
        if (read_all(fd, req, sizeof req) != 0) _exit(0); /* tessera closed its end, or ended */
        const int size = req[0], C = req[1], mode = req[2];
        if (size < 1 || size > 8192 || C < 1 || C > 4 || req[3] < 0 || req[3] > PATH_LIMIT) _exit(72);
        free(path);
        path = malloc((size_t)req[3] + 1);
        if (!path || read_all(fd, path, (size_t)req[3]) != 0) _exit(0);
        path[req[3]] = 0;
        const size_t img = (size_t)size * (size_t)size * (size_t)C;
        if (img > px_cap) {
            free(px);
            px = malloc(img);
            if (!px) _exit(73);
            px_cap = img;
        }
        fault_points(path);
        int32_t resp[2];
        if (tsr_import_decode_image(path, size, C, mode, px, msg, sizeof msg) == 0) {
            resp[0] = 0;
            resp[1] = (int32_t)img;
            if (write_all(fd, resp, sizeof resp) != 0 || write_all(fd, px, img) != 0) _exit(0);
        } else {
            resp[0] = 1;
            resp[1] = (int32_t)strlen(msg);
            if (write_all(fd, resp, sizeof resp) != 0 || write_all(fd, msg, (size_t)resp[1]) != 0) _exit(0);
        }
    }
}

/* ------------------------------------------------------------------ tessera's side */

tsr_image_decoder *tsr_image_decoder_new(void) {
    tsr_image_decoder *d = tsr_malloc(sizeof *d);
    d->pid = 0;
    d->fd = -1;
    d->last_died = 0;
    d->in_process = 0;
    return d;
}

pid_t tsr_image_decoder_pid(const tsr_image_decoder *d) { return d ? d->pid : 0; }
int tsr_image_decoder_last_died(const tsr_image_decoder *d) { return d ? d->last_died : 0; }

static int start(tsr_image_decoder *d) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        tsr_warn("prepare folder: images are decoded in this process, not a separate one (socketpair: %s)",
                 strerror(errno));
        return -1;
    }
    fflush(NULL); /* nothing buffered is written twice */
    pid_t pid = fork();
    if (pid < 0) {
        tsr_warn("prepare folder: images are decoded in this process, not a separate one (fork: %s)",
                 strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        helper_main(sv[1]);
        _exit(0);
    }
    close(sv[1]);
    d->pid = pid;
    d->fd = sv[0];
    return 0;
}

/* Ends the helper (kill: 1 sends SIGKILL first); its wait status in *status (-1 if it could not be waited
 * for). */
static void stop(tsr_image_decoder *d, int kill_it, int *status) {
    if (d->fd >= 0) close(d->fd);
    d->fd = -1;
    if (kill_it) kill(d->pid, SIGKILL);
    int st = -1;
    while (waitpid(d->pid, &st, 0) < 0) {
        if (errno == EINTR) continue;
        st = -1;
        break;
    }
    if (status) *status = st;
    d->pid = 0;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 0, -1 (end of file or an error: the helper died), -2 (deadline passed) */
static int read_until(int fd, void *p, size_t n, double deadline) {
    char *c = p;
    while (n > 0) {
        double left = deadline - now_s();
        if (left <= 0) return -2;
        struct pollfd pf = {fd, POLLIN, 0};
        int r = poll(&pf, 1, left > 1e6 ? 1000000000 : (int)(left * 1000.0) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) continue; /* the deadline is checked above */
        ssize_t g = recv(fd, c, n, 0);
        if (g < 0 && errno == EINTR) continue;
        if (g <= 0) return -1;
        c += g;
        n -= (size_t)g;
    }
    return 0;
}

int tsr_image_decoder_start(tsr_image_decoder *d) {
    if (d->in_process) return -1;
    if (d->pid > 0) return 0;
    if (start(d) != 0) {
        d->in_process = 1;
        return -1;
    }
    return 0;
}

int tsr_image_decoder_decode(tsr_image_decoder *d, const char *path, int size, int C, int mode, uint8_t *dst,
                             char *msg, size_t mn) {
    d->last_died = 0;
    const size_t plen = strlen(path);
    if (d->in_process || plen > PATH_LIMIT || size < 1 || size > 8192 || C < 1 || C > 4)
        return tsr_import_decode_image(path, size, C, mode, dst, msg, mn);
    int32_t req[4] = {size, C, mode, (int32_t)plen};
    int sent = 0;
    for (int attempt = 0; attempt < 2 && !sent; attempt++) {
        if (d->pid == 0 && start(d) != 0) {
            d->in_process = 1;
            return tsr_import_decode_image(path, size, C, mode, dst, msg, mn);
        }
        if (write_all(d->fd, req, sizeof req) == 0 && write_all(d->fd, path, plen) == 0) sent = 1;
        else stop(d, 1, NULL); /* the helper was gone before this file (killed from outside): a new one */
    }
    if (!sent) {
        snprintf(msg, mn, "%s: cannot decode image: the decoding process does not take requests", path);
        return -1;
    }
    const int secs = decode_seconds();
    const double deadline = now_s() + secs;
    int32_t resp[2];
    int r = read_until(d->fd, resp, sizeof resp, deadline);
    const size_t img = (size_t)size * (size_t)size * (size_t)C;
    if (r == 0) {
        if (resp[0] == 0 && (size_t)resp[1] == img) {
            r = read_until(d->fd, dst, img, deadline);
            if (r == 0) return 0;
        } else if (resp[0] == 1 && resp[1] >= 0 && resp[1] < 65536) {
            char *m = malloc((size_t)resp[1] + 1);
            if (m && (r = read_until(d->fd, m, (size_t)resp[1], deadline)) == 0) {
                m[resp[1]] = 0;
                snprintf(msg, mn, "%s", m);
                free(m);
                return -1;
            }
            free(m);
            if (!m) r = -1;
        } else {
            r = -1; /* a response that is not one: the helper is not itself any more */
        }
    }
    /* the helper died on this file, or is still decoding it: refused; the next file gets a new helper */
    d->last_died = 1;
    int st;
    stop(d, 1, &st);
    if (r == -2)
        snprintf(msg, mn, "%s: refusing the image: stb_image was still decoding it after %d s (in a separate "
                 "process, now ended); the file is malformed (HINT: convert it with another program, or "
                 "leave it out)", path, secs);
    else if (st != -1 && WIFSIGNALED(st) && WTERMSIG(st) != SIGKILL)
        snprintf(msg, mn, "%s: refusing the image: decoding it crashed stb_image (signal %d, %s) in a separate "
                 "process; the file is malformed (HINT: convert it with another program, or leave it out)", path,
                 WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(msg, mn, "%s: refusing the image: decoding it ended stb_image's process (%s %d; a sanitizer's "
                 "report, if any, is above); the file is malformed (HINT: convert it with another program, or "
                 "leave it out)", path, st != -1 && WIFEXITED(st) ? "exit status" : "wait status", st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : st);
    return -1;
}

void tsr_image_decoder_free(tsr_image_decoder *d) {
    if (!d) return;
    if (d->pid > 0) stop(d, 0, NULL); /* closing our end ends the helper's loop */
    free(d);
}
