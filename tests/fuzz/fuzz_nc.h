/* fuzz_nc.h: for the netCDF targets. HDF5 (a system library, not instrumented, not tessera's) crashes on some
 * damaged files: tessera protects its users from that with tsr_nc_probe (a forked child opens the file first).
 * For the fuzzer to find crashes in tessera's own validators, an input is first opened by the library alone in
 * another process, which walks every group, variable and attribute and reads every small variable (what the
 * validators then ask of it); an input that kills that process is an HDF5 crash, which tsr_nc_probe turns into a
 * refusal (test_nc_probe), and is skipped here.
 * That process is a server that checks many inputs (a path in, a byte out), forked from the fuzzer and restarted
 * when it dies, loops (1 s of CPU time), is stuck (5 s) or has checked 1000 inputs. A fork, not a fresh process: HDF5's crashes
 * on damaged files depend on what it kept from earlier files (its free lists), and a fresh server passed inputs
 * on which the fuzzer's own open then crashed in HDF5 (tried 2026-11-30). tsr_nc_probe forks per file for the
 * same reason. The server dies without a sanitizer report (__asan_on_error, before the report is printed): the
 * reports were HDF5's, expected, and symbolizing them took ~13% of a campaign's CPU. A fork per input cost
 * 50-90 ms on a virtual machine (5-12 inputs/s); a server ~80-240/s. */
#ifndef TSR_FUZZ_NC_H
#define TSR_FUZZ_NC_H
#include <errno.h>
#include <netcdf.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>

static inline void fuzz_nc_walk(const char *path) {
    int ncid, nvars = 0, natts = 0;
    if (nc_open(path, NC_NOWRITE, &ncid) != NC_NOERR) return;
    nc_inq(ncid, NULL, &nvars, &natts, NULL);
    char name[NC_MAX_NAME + 1];
    for (int a = 0; a < natts; a++) nc_inq_attname(ncid, NC_GLOBAL, a, name);
    for (int v = 0; v < nvars; v++) {
        int nd, dims[NC_MAX_VAR_DIMS], na;
        nc_type t;
        if (nc_inq_var(ncid, v, name, &t, &nd, dims, &na) != NC_NOERR) continue;
        size_t total = 1, len;
        for (int d = 0; d < nd; d++) total *= nc_inq_dimlen(ncid, dims[d], &len) == NC_NOERR ? len : 0;
        if (total > 0 && total <= ((size_t)1 << 20) && t != NC_STRING) {
            double *buf = malloc(total * sizeof(double));
            if (t == NC_CHAR) nc_get_var_text(ncid, v, (char *)buf);
            else nc_get_var_double(ncid, v, buf);
            free(buf);
        }
    }
    nc_close(ncid);
}

/* ASan's defaults for these targets (ASAN_OPTIONS still overrides them): every allocation is filled, not just its
 * first 4 KiB. HDF5 reads memory it never wrote on some damaged files (it freed a pointer it never set); the
 * server's heap is not this process's, so with partly filled blocks what HDF5 read differed between the check
 * and the open here (the check passed, the open here crashed in HDF5). Filled, both read the same bytes. A smaller
 * quarantine than the 256 MiB default: fewer pages touched per input. */
const char *__asan_default_options(void) __attribute__((used, visibility("default")));
const char *__asan_default_options(void) { return "max_malloc_fill_size=2147483647:quarantine_size_mb=16"; }

static void fuzz_nc_server_death(void) { _exit(70); }
extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static pid_t fuzz_nc_pid;
static int fuzz_nc_fd = -1, fuzz_nc_served, fuzz_nc_status;

static inline void fuzz_nc_stop(void) {
    if (fuzz_nc_pid <= 0) return;
    close(fuzz_nc_fd);
    kill(fuzz_nc_pid, SIGKILL);
    int st = 0;
    while (waitpid(fuzz_nc_pid, &st, 0) < 0 && errno == EINTR) {}
    fuzz_nc_status = st;
    fuzz_nc_pid = 0;
    fuzz_nc_fd = -1;
}

static inline int fuzz_nc_recv(int fd, void *p, size_t n) {
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

/* The server's loop on fd: a path in, one byte out per file that the library survived walking. */
static inline void fuzz_nc_serve_fd(int fd) {
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(fuzz_nc_server_death);
    signal(SIGPROF, SIG_DFL);
    char path[4096];
    for (;;) {
        uint32_t len;
        if (fuzz_nc_recv(fd, &len, sizeof len) != 0 || len >= sizeof path || fuzz_nc_recv(fd, path, len) != 0)
            _exit(0);
        path[len] = 0;
        /* HDF5 loops on some damaged files: skipped like a crash after 1 s of CPU time (tsr_nc_probe allows 60 s
         * of wall time; a valid file of the corpus takes milliseconds). CPU time: a niced fuzzer starved by
         * other work would skip good inputs on a short wall-clock limit. And 5 s of wall time: a server stuck
         * without using the CPU (a lock that another thread of the fuzzer held at the fork, seen once) must end
         * before libFuzzer's own 10 s limit on the input. */
        struct itimerval lim = {{0, 0}, {1, 0}}, off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_PROF, &lim, NULL);
        alarm(5);
        fuzz_nc_walk(path);
        alarm(0);
        setitimer(ITIMER_PROF, &off, NULL);
        char ok = 1;
        if (send(fd, &ok, 1, MSG_NOSIGNAL) != 1) _exit(0);
    }
}

/* 1 in the server: it ends at once on a sanitizer error (HDF5's), without a report */
static int fuzz_nc_in_server;
void __asan_on_error(void) __attribute__((used, visibility("default")));
void __asan_on_error(void) {
    if (fuzz_nc_in_server) _exit(70);
}

static inline int fuzz_nc_start(void) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        fuzz_nc_in_server = 1;
        const int dfl[] = {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE, SIGALRM, SIGPIPE};
        for (size_t i = 0; i < sizeof dfl / sizeof *dfl; i++) signal(dfl[i], SIG_DFL);
        fuzz_nc_serve_fd(sv[1]);
        _exit(0);
    }
    close(sv[1]);
    fuzz_nc_pid = pid;
    fuzz_nc_fd = sv[0];
    fuzz_nc_served = 0;
    return 0;
}

/* FUZZ_NC_KEEP=DIR: a copy of the first 1000 inputs the library alone did not survive goes to
 * DIR/hdf5-<pid>-<n>-<how the server ended>.nc (to study HDF5's crashes; the campaign otherwise skips them). */
static inline void fuzz_nc_keep(const char *path, const char *how) {
    static int n;
    const char *dir = getenv("FUZZ_NC_KEEP");
    if (!dir || !dir[0] || n >= 1000) return;
    char to[4096];
    char tag[32];
    snprintf(tag, sizeof tag, "%s", how);
    for (char *c = tag; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9'))) *c = '_';
    snprintf(to, sizeof to, "%s/hdf5-%ld-%d-%s.nc", dir, (long)getpid(), n++, tag);
    FILE *in = fopen(path, "rb"), *out = in ? fopen(to, "wb") : NULL;
    char buf[65536];
    size_t r;
    while (out && (r = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, r, out);
    if (out) fclose(out);
    if (in) fclose(in);
}

/* 1 if the netCDF library alone survives the file (checked in the server). */
static inline int fuzz_nc_library_survives(const char *path) {
    if (fuzz_nc_pid > 0 && fuzz_nc_served >= 1000) fuzz_nc_stop();
    if (fuzz_nc_pid <= 0 && fuzz_nc_start() != 0) return 1;
    fuzz_nc_served++;
    uint32_t len = (uint32_t)strlen(path);
    if (send(fuzz_nc_fd, &len, sizeof len, MSG_NOSIGNAL) != (ssize_t)sizeof len ||
        send(fuzz_nc_fd, path, len, MSG_NOSIGNAL) != (ssize_t)len) {
        fuzz_nc_stop(); /* died before this input: start again, check it */
        if (fuzz_nc_start() != 0) return 1;
        if (send(fuzz_nc_fd, &len, sizeof len, MSG_NOSIGNAL) != (ssize_t)sizeof len ||
            send(fuzz_nc_fd, path, len, MSG_NOSIGNAL) != (ssize_t)len) {
            fuzz_nc_stop();
            return 1;
        }
    }
    struct pollfd pf = {fuzz_nc_fd, POLLIN, 0};
    int r;
    while ((r = poll(&pf, 1, 6000)) < 0 && errno == EINTR) {}
    char ok = 0;
    if (r == 1 && recv(fuzz_nc_fd, &ok, 1, 0) == 1 && ok == 1) return 1;
    int alive = r != 1; /* no answer in time: still in it (killed by fuzz_nc_stop) */
    fuzz_nc_stop();    /* died on it (an HDF5 crash), or still in it */
    fuzz_nc_keep(path, alive ? "stuck" : WIFSIGNALED(fuzz_nc_status) ? strsignal(WTERMSIG(fuzz_nc_status)) : "exit");
    return 0;
}
#endif
