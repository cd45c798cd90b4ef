/* fuzz_nc.h: for the netCDF targets. HDF5 (a system library, not instrumented, not tessera's) crashes on some
 * damaged files: tessera protects its users from that with tsr_nc_probe (a forked child opens the file first).
 * For the fuzzer to find crashes in tessera's own validators, an input is first opened by the library alone in
 * a forked child, which walks every group, variable and attribute and reads every small variable (what the
 * validators then ask of it); an input that kills that child is an HDF5 crash, which tsr_nc_probe turns into a
 * refusal (test_nc_probe), and is skipped here. */
#ifndef TSR_FUZZ_NC_H
#define TSR_FUZZ_NC_H
#include <netcdf.h>
#include <signal.h>
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

/* 1 if the netCDF library alone survives the file. */
static inline int fuzz_nc_library_survives(const char *path) {
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);
        signal(SIGBUS, SIG_DFL);
        signal(SIGABRT, SIG_DFL);
        signal(SIGILL, SIG_DFL);
        signal(SIGFPE, SIG_DFL);
        alarm(5); /* HDF5 loops on some damaged files: that input is skipped like a crash (tsr_nc_probe: 60 s) */
        fuzz_nc_walk(path);
        _exit(0);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0) {}
    return WIFEXITED(st) && WEXITSTATUS(st) == 0; /* ASan in the child: a report, then exit 1 or abort */
}
#endif
