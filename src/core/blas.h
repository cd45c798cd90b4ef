/* blas.h: GEMM through the standard CBLAS ABI of the library chosen at configure time
 * (TESSERA_BLAS = blis | openblas | mkl), plus thread control and a description for the log.
 * The two CBLAS entry points are declared here (the standard ABI, identical in every implementation)
 * rather than through each library's cblas.h, whose contents differ (BLIS's pulls in all of blis.h). */
#ifndef TSR_BLAS_H
#define TSR_BLAS_H
#include "real.h"

enum { TSR_CBLAS_ROW_MAJOR = 101, TSR_CBLAS_NO_TRANS = 111, TSR_CBLAS_TRANS = 112 };
void cblas_sgemm(int order, int transA, int transB, const int M, const int N, const int K,
                 const float alpha, const float *A, const int lda, const float *B, const int ldb,
                 const float beta, float *C, const int ldc);
void cblas_dgemm(int order, int transA, int transB, const int M, const int N, const int K,
                 const double alpha, const double *A, const int lda, const double *B, const int ldb,
                 const double beta, double *C, const int ldc);

#if defined(TSR_HAVE_ONEDNN) && !defined(TSR_F64)
/* 1: the float products of tsr_gemm go to oneDNN's sgemm instead of the BLAS (experiment:
 * TESSERA_GEMM=onednn, read by tsr_blas_init). */
extern int tsr_gemm_onednn;
void tsr_sgemm_onednn(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);
#endif

/* C(M,N) = alpha * op(A) op(B) + beta * C, row-major, in `real` precision. */
static inline void tsr_gemm(int transA, int transB, int M, int N, int K, real alpha, const real *A,
                            int lda, const real *B, int ldb, real beta, real *C, int ldc) {
#ifdef TSR_F64
    cblas_dgemm(TSR_CBLAS_ROW_MAJOR, transA ? TSR_CBLAS_TRANS : TSR_CBLAS_NO_TRANS,
                transB ? TSR_CBLAS_TRANS : TSR_CBLAS_NO_TRANS,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
#ifdef TSR_HAVE_ONEDNN
    if (tsr_gemm_onednn) {
        tsr_sgemm_onednn(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
    cblas_sgemm(TSR_CBLAS_ROW_MAJOR, transA ? TSR_CBLAS_TRANS : TSR_CBLAS_NO_TRANS,
                transB ? TSR_CBLAS_TRANS : TSR_CBLAS_NO_TRANS,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

/* C(M,N) = alpha op(A) op(B) + beta C, row-major, float, on the calling thread alone: for the many
 * small products made inside an OpenMP parallel region (attention's per-(image, head) products), where
 * a multi-threaded BLAS call would nest. oneDNN's sgemm (JIT AVX-512 / AVX2 kernels; inside an active
 * parallel region it runs sequentially); only in builds with oneDNN (TSR_HAVE_ONEDNN), the others keep
 * the loop kernels. Deterministic: the same call on the same data gives the same bits. */
#if defined(TSR_HAVE_ONEDNN) && !defined(TSR_F64)
void tsr_sgemm_seq(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc);
#endif

/* Call once at start-up, before any other BLAS call: detects the CPU, asks the library which kernel
 * set it picks, and when that set lacks AVX-512 on an AVX-512 CPU selects the library's AVX-512 set
 * (tsr_kernel_choose in kernel_choice.h: BLIS through BLIS_ARCH_TYPE, OpenBLAS through
 * OPENBLAS_CORETYPE), unless the user chose (BLIS_ARCH_TYPE, TESSERA_BLIS_ARCH=auto,
 * OPENBLAS_CORETYPE). A selected set must pass the sgemm/dgemm check against a naive loop, else the
 * library's own choice is kept. note receives one line for the log: CPU features, the library's
 * choice, tessera's choice and why. 0, or -1 (tsr_error) when BLAS gives wrong results. */
int tsr_blas_init(char *note, int len);
/* Set the number of threads BLAS may use. */
void tsr_blas_set_threads(int n);
/* e.g. "BLIS 0.9.0 (kernel: zen3, openmp)". Written into buf. */
void tsr_blas_describe(char *buf, int len);
/* 1 when the BLAS runs a kernel set without AVX-512 on a CPU that has AVX-512 because the user's
 * environment asked for it or the AVX-512 set failed the self-check (a 2-5x slowdown); msg then names
 * the kernel and the reason. 0 when tsr_blas_init selected or found an AVX-512 set. */
int tsr_blas_slow_kernel(char *msg, int len);
#endif
