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

/* C(M,N) = alpha * op(A) op(B) + beta * C, row-major, in `real` precision. */
static inline void tsr_gemm(int transA, int transB, int M, int N, int K, real alpha, const real *A,
                            int lda, const real *B, int ldb, real beta, real *C, int ldc) {
#ifdef TSR_F64
    cblas_dgemm(TSR_CBLAS_ROW_MAJOR, transA ? TSR_CBLAS_TRANS : TSR_CBLAS_NO_TRANS,
                transB ? TSR_CBLAS_TRANS : TSR_CBLAS_NO_TRANS,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    cblas_sgemm(TSR_CBLAS_ROW_MAJOR, transA ? TSR_CBLAS_TRANS : TSR_CBLAS_NO_TRANS,
                transB ? TSR_CBLAS_TRANS : TSR_CBLAS_NO_TRANS,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

/* Call once at start-up, before any other BLAS call: picks the kernel (BLIS 0.9 detects recent AVX-512
 * CPUs such as AMD Zen 5 as 'generic', 5x slower: then the 'skx' AVX-512 kernels are selected through
 * BLIS_ARCH_TYPE unless the user set it, or TESSERA_BLIS_ARCH=auto), then checks sgemm and dgemm
 * against a naive loop. note receives what was done ("" if nothing). 0, or -1 (tsr_error) when BLAS
 * gives wrong results. */
int tsr_blas_init(char *note, int len);
/* Set the number of threads BLAS may use. */
void tsr_blas_set_threads(int n);
/* e.g. "BLIS 0.9.0 (kernel: zen3, openmp)". Written into buf. */
void tsr_blas_describe(char *buf, int len);
/* 1 when the BLAS runs a kernel without AVX-512 on a CPU that has AVX-512 (a 3-6x slowdown). */
int tsr_blas_generic_on_avx512(void);
#endif
