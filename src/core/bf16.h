/* bf16.h: matrix products with bfloat16 inputs and fp32 accumulation through oneDNN's matmul primitive
 * (which JITs AVX512_BF16 and AMX kernels, and emulates bf16 on plain AVX-512 cores), and the fp32 ->
 * bf16 conversion. Float build only; without oneDNN at build time (TSR_HAVE_ONEDNN unset) every product
 * is unavailable and tsr_bf16_available says so.
 *
 * bf16 keeps fp32's 8 exponent bits and 8 of its 24 significand bits (7 stored): one rounding of a
 * value has a relative error of at most 2^-8 (round to nearest even: half of 2^-7). */
#ifndef TSR_BF16_H
#define TSR_BF16_H
#include <stddef.h>
#include <stdint.h>

typedef uint16_t tsr_bf16;

/* fp32 -> bf16, round to nearest even (NaN stays NaN). */
static inline tsr_bf16 tsr_f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (tsr_bf16)((v.u >> 16) | 0x40u);
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (tsr_bf16)(v.u >> 16);
}
static inline float tsr_bf16_to_f32(tsr_bf16 h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
/* dst[i] = bf16(src[i]) for n values (OpenMP). */
void tsr_bf16_convert(tsr_bf16 *dst, const float *src, size_t n);

/* 1 when a bf16 x bf16 -> fp32 matmul can be made on this CPU (natively or emulated); note gets one
 * line for the log: the library, its version and the implementation it picked (e.g.
 * "oneDNN 2.6.3: brg:avx512_core_bf16"), or why there is none ("built without oneDNN"). */
int tsr_bf16_available(char *note, int len);

/* C(M,N) = op(A) op(B) + beta C, row-major, beta 0 or 1. A (M,K) fp32 with leading dimension lda (no
 * transpose), converted to bf16 on the fly; B bf16: transB ? (N,K) : (K,N) with leading dimension ldb;
 * C fp32. Sums in fp32. 0, or -1 (tsr_error) when oneDNN refuses the shape. */
int tsr_gemm_bf16(int transB, int M, int N, int K, const float *A, int lda, const tsr_bf16 *B, int ldb,
                  float beta, float *C, int ldc);

/* Time the product C(M,N) = A(M,K) W^T, W (N,K), in fp32 (tsr_gemm) and in bf16 (tsr_gemm_bf16, the
 * conversion of A included): a warm-up each, then reps alternating runs; the best time of each in
 * seconds. 0, or -1 (tsr_error) when the bf16 product fails. */
int tsr_bf16_time_gemm(int M, int N, int K, int reps, double *t_fp32, double *t_bf16);

/* Release the cached primitives and the conversion buffer (at exit; tests under ASan). */
void tsr_bf16_release(void);
#endif
