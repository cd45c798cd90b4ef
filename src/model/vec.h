/* vec.h: vectorised elementwise kernels of the float build (GELU, exp, erf, LayerNorm rows), in
 * AVX-512, AVX2 and scalar variants chosen once at run time (__builtin_cpu_supports; the environment
 * variable TESSERA_SIMD=scalar|avx2|avx512 forces a level the CPU has). Float only: the double build
 * (-DTSR_F64) keeps libm's exact scalar paths in layers.c and does not compile these.
 *
 * Approximations of the SIMD levels (coefficients fitted by scripts/fit_vec.py; bounds measured
 * against libm in double by tests/model/test_vec.c over every float of a fine sweep):
 *   exp   Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, times 2^n;
 *         overflow to +inf, gradual underflow to denormals and 0, NaN in -> NaN out, like expf.
 *         Measured max error 0.998 ulp (bound asserted: 2 ulp).
 *   erf   |z| < 0.875: z S(z^2) (degree 5 in z^2); else 1 - erfc(|z|) with
 *         erfc(u) = t exp(-u^2) Q(t), t = 1 / (1 + u/2) (degree 9), exp(-u^2) with u^2's rounding
 *         error carried by an FMA. Measured max error 2.40 ulp (bound: 3 ulp).
 *   GELU  x Phi(x), Phi from the same erfc form (no cancellation on the negative side), or from
 *         erf's small branch for |x / sqrt 2| < 0.25: measured max relative error 4.2e-7 forward,
 *         2.4e-7 backward relative to Phi + |x| phi (bound: 5e-7).
 * The scalar level is the libm code (erff, expf) the program used before these kernels. */
#ifndef TSR_VEC_H
#define TSR_VEC_H

enum { TSR_SIMD_SCALAR = 0, TSR_SIMD_AVX2 = 1, TSR_SIMD_AVX512 = 2, TSR_SIMD_NLEVELS = 3 };

/* The level in use: chosen at the first call (best the CPU has, or TESSERA_SIMD), logged at debug. */
int tsr_simd_level(void);
const char *tsr_simd_name(int level);
/* 1 if the CPU (and OS) support the level. */
int tsr_simd_supported(int level);
/* Use this level from now on (tests). 0, or -1 (and no change) if the CPU lacks it. Not thread-safe:
 * call outside parallel regions. */
int tsr_simd_set(int level);

/* y = exp(x), n elements (y may be x). */
void tsr_vec_exp(float *y, const float *x, long n);
/* y = exp(x - shift), returns the sum of y (y may be x). */
float tsr_vec_exp_sum(float *y, const float *x, float shift, long n);
/* y = erf(x) (y may be x). */
void tsr_vec_erf(float *y, const float *x, long n);
/* Exact GELU: out = x Phi(x); backward dinp += dout * (Phi(x) + x phi(x)). */
void tsr_vec_gelu_fwd(float *out, const float *x, long n);
void tsr_vec_gelu_bwd(float *dinp, const float *dout, const float *x, long n);
/* One LayerNorm row of C: y = (x - m) s w + b with m the mean, s = 1/sqrt(var + eps), both returned. */
void tsr_vec_ln_fwd_row(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int C,
                        double eps);
/* dx += s (g - mean(g) - xh mean(g xh)), g = dy w, xh = (x - m) s. */
void tsr_vec_ln_bwd_row(float *dx, const float *dy, const float *x, const float *w, float m, float s, int C);
/* accw += dy (x - m) s, accb += dy over n columns (the weight and bias gradients of one row). */
void tsr_vec_ln_wb_row(float *accw, float *accb, const float *dy, const float *x, float m, float s, int n);

#endif
