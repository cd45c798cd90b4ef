/* blas.c: BLAS identification and threading for BLIS, OpenBLAS and MKL. */
#define _GNU_SOURCE
#include "blas.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#if defined(TSR_BLAS_BLIS)
/* The few BLIS entry points used, declared here to keep blis.h (50k lines) out of the build. */
const char *bli_info_get_version_str(void);
int bli_arch_query_id(void);
const char *bli_arch_string(int id);
void bli_thread_set_num_threads(int64_t n);
void tsr_blas_set_threads(int n) { bli_thread_set_num_threads(n); }
static const char *kernel_name(void) { return bli_arch_string(bli_arch_query_id()); }
static const char *blas_name(void) { return "BLIS"; }
static const char *blas_version(void) { return bli_info_get_version_str(); }
static int kernel_is_generic(const char *k) {
    /* BLIS sub-configurations with AVX-512 micro-kernels. */
    static const char *avx512[] = {"skx", "knl", "zen4", "zen5", NULL};
    for (int i = 0; avx512[i]; i++)
        if (strcmp(k, avx512[i]) == 0) return 0;
    return 1;
}
#elif defined(TSR_BLAS_OPENBLAS)
char *openblas_get_corename(void);
char *openblas_get_config(void);
void openblas_set_num_threads(int);
void tsr_blas_set_threads(int n) { openblas_set_num_threads(n); }
static const char *kernel_name(void) { return openblas_get_corename(); }
static const char *blas_name(void) { return "OpenBLAS"; }
static const char *blas_version(void) { return openblas_get_config(); }
static int kernel_is_generic(const char *k) {
    static const char *avx512[] = {"SkylakeX", "skylakex", "Cooperlake", "cooperlake",
                                   "SapphireRapids", "sapphirerapids", NULL};
    for (int i = 0; avx512[i]; i++)
        if (strcmp(k, avx512[i]) == 0) return 0;
    return 1;
}
#elif defined(TSR_BLAS_MKL)
void mkl_set_num_threads(int);
void mkl_get_version_string(char *, int);
void tsr_blas_set_threads(int n) { mkl_set_num_threads(n); }
static const char *kernel_name(void) { return "mkl-dispatch"; }
static const char *blas_name(void) { return "MKL"; }
static const char *blas_version(void) {
    static char v[198];
    mkl_get_version_string(v, sizeof v);
    return v;
}
static int kernel_is_generic(const char *k) { (void)k; return 0; }
#else
#error "no BLAS selected (TSR_BLAS_BLIS / TSR_BLAS_OPENBLAS / TSR_BLAS_MKL)"
#endif

static int cpu_has_avx512(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

#if defined(TSR_BLAS_BLIS)
/* What BLIS detects on its own, asked in a child process (BLIS caches its choice on first use). */
static void blis_autodetect(char *out, int len) {
    int fd[2];
    snprintf(out, (size_t)len, "unknown");
    if (pipe(fd) != 0) return;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        const char *a = bli_arch_string(bli_arch_query_id());
        ssize_t w = write(fd[1], a, strlen(a));
        (void)w;
        _exit(0);
    }
    close(fd[1]);
    if (pid > 0) {
        ssize_t n = read(fd[0], out, (size_t)len - 1);
        if (n > 0) out[n] = 0;
        waitpid(pid, NULL, 0);
    }
    close(fd[0]);
}
#endif

static double check_gemm(void) {
    enum { M = 37, N = 29, K = 53 };
    float a[M * K], b[K * N], c[M * N];
    double ad[M * K], bd[K * N], cd[M * N], err = 0;
    for (int i = 0; i < M * K; i++) ad[i] = a[i] = (float)((i * 7 % 13) - 6) / 8.0f;
    for (int i = 0; i < K * N; i++) bd[i] = b[i] = (float)((i * 5 % 11) - 5) / 4.0f;
    cblas_sgemm(TSR_CBLAS_ROW_MAJOR, TSR_CBLAS_NO_TRANS, TSR_CBLAS_NO_TRANS, M, N, K, 1, a, K, b, N, 0, c, N);
    cblas_dgemm(TSR_CBLAS_ROW_MAJOR, TSR_CBLAS_NO_TRANS, TSR_CBLAS_NO_TRANS, M, N, K, 1, ad, K, bd, N, 0, cd, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += ad[i * K + k] * bd[k * N + j];
            err = fmax(err, fabs(s - c[i * N + j]));
            err = fmax(err, fabs(s - cd[i * N + j]));
        }
    return err; /* the inputs are exact in binary: any error is a wrong kernel */
}

int tsr_blas_init(char *note, int len) {
    note[0] = 0;
#if defined(TSR_BLAS_BLIS)
    const char *user = getenv("BLIS_ARCH_TYPE"), *mode = getenv("TESSERA_BLIS_ARCH");
    if (!user && !(mode && strcmp(mode, "auto") == 0) && cpu_has_avx512()) {
        char det[64];
        blis_autodetect(det, sizeof det);
        if (strcmp(det, "generic") == 0) {
            setenv("BLIS_ARCH_TYPE", "skx", 1);
            snprintf(note, (size_t)len,
                     "BLIS detected 'generic' on this AVX-512 CPU; selected its 'skx' AVX-512 kernels "
                     "(set TESSERA_BLIS_ARCH=auto to keep BLIS's choice)");
        }
    }
#endif
    double err = check_gemm();
    if (err > 1e-9)
        return tsr_error("BLAS self-check failed: sgemm/dgemm differ from a naive loop by %g on exact "
                         "inputs (kernel %s). HINT: choose another BLAS (-DTESSERA_BLAS=...) or unset "
                         "BLIS_ARCH_TYPE / OPENBLAS_CORETYPE", err, kernel_name());
    return 0;
}

void tsr_blas_describe(char *buf, int len) {
    snprintf(buf, (size_t)len, "%s %s (kernel: %s)", blas_name(), blas_version(), kernel_name());
}

int tsr_blas_generic_on_avx512(void) { return cpu_has_avx512() && kernel_is_generic(kernel_name()); }
