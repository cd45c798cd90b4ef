/* blas.c: BLAS identification and threading for BLIS, OpenBLAS and MKL. */
#define _GNU_SOURCE
#include "blas.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "cpu.h"
#include "kernel_choice.h"

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
#define TSR_LIB TSR_LIB_BLIS
#elif defined(TSR_BLAS_OPENBLAS)
char *openblas_get_corename(void);
char *openblas_get_config(void);
void openblas_set_num_threads(int);
/* DYNAMIC_ARCH builds (Debian's) export these: the core set is chosen in gotoblas_dynamic_init from
 * OPENBLAS_CORETYPE (or by detection) when the library loads; quit + init chooses again. Weak: a
 * single-core build has neither, and then nothing is switched. */
void gotoblas_dynamic_init(void) __attribute__((weak));
void gotoblas_dynamic_quit(void) __attribute__((weak));
void tsr_blas_set_threads(int n) { openblas_set_num_threads(n); }
static const char *kernel_name(void) { return openblas_get_corename(); }
static const char *blas_name(void) { return "OpenBLAS"; }
static const char *blas_version(void) { return openblas_get_config(); }
#define TSR_LIB TSR_LIB_OPENBLAS
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
#define TSR_LIB TSR_LIB_MKL
#else
#error "no BLAS selected (TSR_BLAS_BLIS / TSR_BLAS_OPENBLAS / TSR_BLAS_MKL)"
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

static tsr_cpu_features g_cpu;     /* what tsr_blas_init detected */
static tsr_kernel_choice g_choice; /* what it decided (warn: a slow kernel kept) */
static char g_detected[64] = "unknown";

#if defined(TSR_BLAS_BLIS)
/* BLIS fixes its kernel set on first use, so a candidate is tried in a child process: with
 * BLIS_ARCH_TYPE=arch (arch NULL: the environment as it is), the child reports the kernel set BLIS
 * runs and the self-check's error. 0 when the child reported; -1 when it crashed or said nothing
 * (BLIS aborts on a sub-configuration it was not built with). */
static int blis_probe(const char *arch, char *kernel, int len, double *err) {
    int fd[2];
    snprintf(kernel, (size_t)len, "unknown");
    *err = INFINITY;
    if (pipe(fd) != 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        if (arch) setenv("BLIS_ARCH_TYPE", arch, 1);
        bli_thread_set_num_threads(1); /* no OpenMP team in a forked child */
        double e = check_gemm();
        char msg[128];
        int n = snprintf(msg, sizeof msg, "%.60s %.17g", kernel_name(), e);
        ssize_t w = write(fd[1], msg, (size_t)n);
        (void)w;
        _exit(0);
    }
    close(fd[1]);
    char buf[128];
    ssize_t n = 0, r;
    while (pid > 0 && n < (ssize_t)sizeof buf - 1 && (r = read(fd[0], buf + n, sizeof buf - 1 - (size_t)n)) > 0) n += r;
    buf[n > 0 ? n : 0] = 0;
    close(fd[0]);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
    char k[64];
    if (sscanf(buf, "%63s %lf", k, err) != 2) return -1;
    snprintf(kernel, (size_t)len, "%s", k);
    return 0;
}
#endif

#if defined(TSR_HAVE_ONEDNN) && !defined(TSR_F64)
static double check_sgemm_onednn(void);
#endif

int tsr_blas_init(char *note, int len) {
    note[0] = 0;
    tsr_cpu_detect(&g_cpu);
    tsr_kernel_inputs in = {.lib = TSR_LIB};
    char fallback[400] = "";
#if defined(TSR_BLAS_BLIS)
    const char *names[64];
    int n = 0;
    for (int i = 0; i < 63; i++) { /* the ids run up to 'generic', always the last */
        const char *s = bli_arch_string(i);
        if (!s) break;
        names[n++] = s;
        if (strcmp(s, "generic") == 0) break;
    }
    names[n] = NULL;
    double err;
    blis_probe(NULL, g_detected, sizeof g_detected, &err);
    in.detected = g_detected;
    in.available = names;
    in.blis_arch_type = getenv("BLIS_ARCH_TYPE");
    in.tessera_blis_arch = getenv("TESSERA_BLIS_ARCH");
    tsr_kernel_choose(&g_cpu, &in, &g_choice);
    if (g_choice.kernel[0]) {
        /* BLIS 0.9 reads BLIS_ARCH_TYPE as a number (a name reads as 0, which happens to be skx); later
         * versions take names or numbers: set the id. */
        char id[16] = "", got[64] = "none";
        for (int i = 0; i < n; i++)
            if (strcmp(names[i], g_choice.kernel) == 0) snprintf(id, sizeof id, "%d", i);
        if (id[0] && blis_probe(id, got, sizeof got, &err) == 0 && err <= 1e-9 &&
            strcmp(got, g_choice.kernel) == 0) {
            setenv("BLIS_ARCH_TYPE", id, 1);
        } else {
            snprintf(fallback, sizeof fallback, "BLIS with '%.31s' failed the self-check (kernel '%.63s', error %g, or the "
                     "trial process died): BLIS's own '%s' kept", g_choice.kernel, got, err, g_detected);
        }
    }
#elif defined(TSR_BLAS_OPENBLAS)
    snprintf(g_detected, sizeof g_detected, "%s", kernel_name());
    in.detected = g_detected;
    in.openblas_coretype = getenv("OPENBLAS_CORETYPE");
    tsr_kernel_choose(&g_cpu, &in, &g_choice);
    if (g_choice.kernel[0]) {
        if (!gotoblas_dynamic_init || !gotoblas_dynamic_quit) {
            snprintf(fallback, sizeof fallback, "this OpenBLAS cannot switch core sets (not a DYNAMIC_ARCH build): "
                     "'%s' kept", g_detected);
        } else {
            gotoblas_dynamic_quit();
            setenv("OPENBLAS_CORETYPE", g_choice.kernel, 1);
            gotoblas_dynamic_init();
            double err = check_gemm();
            if (err > 1e-9 || strcasecmp(kernel_name(), g_choice.kernel) != 0) {
                snprintf(fallback, sizeof fallback, "OpenBLAS with '%s' failed the self-check (core '%s', error %g): "
                         "its own '%s' kept", g_choice.kernel, kernel_name(), err, g_detected);
                gotoblas_dynamic_quit();
                unsetenv("OPENBLAS_CORETYPE");
                gotoblas_dynamic_init();
            }
        }
    }
#else
    snprintf(g_detected, sizeof g_detected, "%s", kernel_name());
    in.detected = g_detected;
    tsr_kernel_choose(&g_cpu, &in, &g_choice);
#endif
    if (fallback[0]) {
        g_choice.kernel[0] = 0;
        g_choice.warn = 1;
        snprintf(g_choice.reason, sizeof g_choice.reason, "%.*s", (int)sizeof g_choice.reason - 1, fallback);
    }
    char cpu[160];
    tsr_cpu_describe(&g_cpu, cpu, sizeof cpu);
    snprintf(note, (size_t)len, "cpu: %s; %s picked '%s'; tessera: %s (%s)", cpu, blas_name(), g_detected,
             g_choice.kernel[0] ? g_choice.kernel : "kept it", g_choice.reason);
#ifndef TSR_F64
    char gwhy[200];
#ifdef TSR_HAVE_ONEDNN
    int g = tsr_gemm_choose(&g_cpu, 1, getenv("TESSERA_GEMM"), gwhy, sizeof gwhy);
#else
    int g = tsr_gemm_choose(&g_cpu, 0, getenv("TESSERA_GEMM"), gwhy, sizeof gwhy);
#endif
    if (g < 0) return tsr_error("%s", gwhy);
#ifdef TSR_HAVE_ONEDNN
    tsr_gemm_onednn = g;
    if (g && check_sgemm_onednn() > 1e-9) {
        tsr_gemm_onednn = 0;
        snprintf(gwhy, sizeof gwhy, "oneDNN's sgemm failed the self-check: the BLAS kept");
    }
#endif
    size_t nl = strlen(note);
    snprintf(note + nl, (size_t)len - nl, "; float products: %s (%s)", g ? "oneDNN sgemm" : blas_name(), gwhy);
#endif
    double final_err = check_gemm();
    if (final_err > 1e-9)
        return tsr_error("BLAS self-check failed: sgemm/dgemm differ from a naive loop by %g on exact "
                         "inputs (kernel %s). HINT: choose another BLAS (-DTESSERA_BLAS=...) or unset "
                         "BLIS_ARCH_TYPE / OPENBLAS_CORETYPE", final_err, kernel_name());
    return 0;
}

void tsr_blas_describe(char *buf, int len) {
    snprintf(buf, (size_t)len, "%s %s (kernel: %s)", blas_name(), blas_version(), kernel_name());
}

int tsr_blas_slow_kernel(char *msg, int len) {
    msg[0] = 0;
    if (!g_choice.warn || !tsr_cpu_has_avx512(&g_cpu)) return 0;
    snprintf(msg, (size_t)len, "%s runs its '%s' kernels, without AVX-512, on this AVX-512 CPU: expect 2-5x "
             "slower matrix products. Why: %s", blas_name(), kernel_name(), g_choice.reason);
    return 1;
}

#if defined(TSR_HAVE_ONEDNN) && !defined(TSR_F64)
#include <oneapi/dnnl/dnnl.h>
int tsr_gemm_onednn = 0;
/* oneDNN's sgemm against a naive loop on small integer-valued matrices (every sum exact), each transpose */
static double check_sgemm_onednn(void) {
    enum { M = 7, N = 5, K = 9 };
    float A[M * K], B[K * N], C[M * N];
    for (int i = 0; i < M * K; i++) A[i] = (float)(i % 5 - 2);
    for (int i = 0; i < K * N; i++) B[i] = (float)(i % 3 - 1);
    double err = 0;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            /* op(A) (M, K), op(B) (K, N) from the same storage read as A^T / B^T */
            tsr_sgemm_seq(ta, tb, M, N, K, 1, A, ta ? M : K, B, tb ? K : N, 0, C, N);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
                    err = fmax(err, fabs(s - C[i * N + j]));
                }
        }
    return err;
}
void tsr_sgemm_onednn(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    tsr_sgemm_seq(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void tsr_sgemm_seq(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    /* dnnl_sgemm takes row-major matrices; it only fails on invalid arguments, which our callers fix */
    dnnl_status_t st = dnnl_sgemm(transA ? 'T' : 'N', transB ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                                  beta, C, ldc);
    TSR_CHECK(st == dnnl_success, "dnnl_sgemm(%c%c, %d x %d x %d) failed: status %d", transA ? 'T' : 'N',
              transB ? 'T' : 'N', M, N, K, (int)st);
}
#endif
