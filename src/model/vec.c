/* vec.c: the elementwise kernels of vec.h in AVX-512, AVX2 and scalar, dispatched once at run time.
 * Each SIMD function carries its own target attribute, so the file builds (and the dispatch stays
 * correct) without -march=native. AVX-512 tails use masked loads and stores; AVX2 tails go through a
 * zero-padded stack vector, so no kernel reads or writes past its buffers. */
#include "model/vec.h"

#ifndef TSR_F64

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

/* Coefficients: scripts/fit_vec.py (relative-error minimax fits against double libm). */
#define EXP_P0 1.000000000e+00f
#define EXP_P1 1.000000000e+00f
#define EXP_P2 4.999999106e-01f
#define EXP_P3 1.666641980e-01f
#define EXP_P4 4.166822508e-02f
#define EXP_P5 8.374815807e-03f
#define EXP_P6 1.383684226e-03f
/* erfc(u) = t exp(-u^2) Q(t), t = 1 / (1 + u/2) */
#define ERFC_Q0 2.820652127e-01f
#define ERFC_Q1 2.828421891e-01f
#define ERFC_Q2 2.387765795e-01f
#define ERFC_Q3 2.248911560e-01f
#define ERFC_Q4 -9.634187073e-02f
#define ERFC_Q5 4.174382389e-01f
#define ERFC_Q6 -6.652451754e-01f
#define ERFC_Q7 4.252370894e-01f
#define ERFC_Q8 -1.216441691e-01f
#define ERFC_Q9 1.198073663e-02f
/* erf(z) = z S(z^2), |z| < ERF_SMALL */
#define ERF_S0 1.128379107e+00f
#define ERF_S1 -3.761255145e-01f
#define ERF_S2 1.128245592e-01f
#define ERF_S3 -2.679148503e-02f
#define ERF_S4 5.032208748e-03f
#define ERF_S5 -6.203385419e-04f
/* Cody-Waite: ln2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits so n * LN2_HI is exact for |n| < 2^15 */
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440054690583e-4f
/* exp's input range: below -104 the result is 0 (after rounding), above 89 it is +inf */
#define EXP_LO -104.0f
#define EXP_HI 89.0f
#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define ERF_SMALL 0.875f
#define PHI_SMALL 0.25f /* Phi from erf's small branch below: near 0 it is more accurate than erfc's, and 1 + erf(u) cancels little */
#define GELU_CLAMP 20.0f /* |x| beyond: Phi(x) is 0 or 1 and phi(x) 0 in float */
#define ERF_CLAMP 10.0f  /* |z| beyond: erf(z) = +-1 in float */

/* ================================================================ scalar (libm) */
static void exp_scalar(float *y, const float *x, long n) {
    for (long i = 0; i < n; i++) y[i] = expf(x[i]);
}
static float exp_sum_scalar(float *y, const float *x, float shift, long n) {
    float s = 0;
    for (long i = 0; i < n; i++) {
        y[i] = expf(x[i] - shift);
        s += y[i];
    }
    return s;
}
static void erf_scalar(float *y, const float *x, long n) {
    for (long i = 0; i < n; i++) y[i] = erff(x[i]);
}
static void gelu_fwd_scalar(float *out, const float *inp, long n) {
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erff(x * INV_SQRT2));
    }
}
static void gelu_bwd_scalar(float *dinp, const float *dout, const float *inp, long n) {
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
        float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}
static void ln_fwd_scalar(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int C,
                          double eps) {
    float m = 0;
    for (int i = 0; i < C; i++) m += x[i];
    m /= C;
    float v = 0;
    for (int i = 0; i < C; i++) {
        float d = x[i] - m;
        v += d * d;
    }
    v /= C;
    float s = (float)(1.0 / sqrt((double)v + eps));
    for (int i = 0; i < C; i++) y[i] = (x[i] - m) * s * w[i] + b[i];
    *mean = m;
    *rstd = s;
}
static void ln_bwd_scalar(float *dx, const float *dy, const float *x, const float *w, float m, float s, int C) {
    float sum_g = 0, sum_gx = 0;
    for (int i = 0; i < C; i++) {
        float g = dy[i] * w[i];
        sum_g += g;
        sum_gx += g * (x[i] - m) * s;
    }
    sum_g /= C;
    sum_gx /= C;
    for (int i = 0; i < C; i++) {
        float xh = (x[i] - m) * s;
        dx[i] += s * (dy[i] * w[i] - sum_g - xh * sum_gx);
    }
}
static void ln_wb_scalar(float *accw, float *accb, const float *dy, const float *x, float m, float s, int n) {
    for (int i = 0; i < n; i++) {
        accw[i] += dy[i] * (x[i] - m) * s;
        accb[i] += dy[i];
    }
}

/* ================================================================ AVX-512 */
#define T512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
typedef __m512 v16;

T512 static inline __mmask16 tail16(long r) { return (__mmask16)((1u << r) - 1u); }
T512 static inline v16 set16(float a) { return _mm512_set1_ps(a); }

/* exp(x + xlo), xlo a small correction (|xlo| << ulp-scale of r), for x already in [EXP_LO, EXP_HI] */
T512 static inline v16 exp16_core(v16 x, v16 xlo) {
    v16 n = _mm512_roundscale_ps(_mm512_mul_ps(x, set16(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v16 r = _mm512_fnmadd_ps(n, set16(LN2_HI), x);
    r = _mm512_fnmadd_ps(n, set16(LN2_LO), r);
    r = _mm512_add_ps(r, xlo);
    v16 p = set16(EXP_P6);
    p = _mm512_fmadd_ps(p, r, set16(EXP_P5));
    p = _mm512_fmadd_ps(p, r, set16(EXP_P4));
    p = _mm512_fmadd_ps(p, r, set16(EXP_P3));
    p = _mm512_fmadd_ps(p, r, set16(EXP_P2));
    p = _mm512_fmadd_ps(p, r, set16(EXP_P1));
    p = _mm512_fmadd_ps(p, r, set16(EXP_P0));
    return _mm512_scalef_ps(p, n); /* p 2^n: one rounding, to +inf or a denormal when out of range */
}
T512 static inline v16 exp16(v16 x) {
    v16 xc = _mm512_min_ps(_mm512_max_ps(x, set16(EXP_LO)), set16(EXP_HI));
    v16 y = exp16_core(xc, _mm512_setzero_ps());
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_add_ps(y, nan, x, x);
}
/* erfc(a) for 0 <= a <= clamp: t exp(-a^2) Q(t); exp(-a^2) with a^2's rounding error from an FMA */
T512 static inline v16 erfc16_pos(v16 a, v16 e) {
    v16 t = _mm512_div_ps(set16(1.0f), _mm512_fmadd_ps(a, set16(0.5f), set16(1.0f)));
    v16 q = set16(ERFC_Q9);
    q = _mm512_fmadd_ps(q, t, set16(ERFC_Q8));
    q = _mm512_fmadd_ps(q, t, set16(ERFC_Q7));
    q = _mm512_fmadd_ps(q, t, set16(ERFC_Q6));
    q = _mm512_fmadd_ps(q, t, set16(ERFC_Q5));
    q = _mm512_fmadd_ps(q, t, set16(ERFC_Q4));
    q = _mm512_fmadd_ps(q, t, set16(ERFC_Q3));
    q = _mm512_fmadd_ps(q, t, set16(ERFC_Q2));
    q = _mm512_fmadd_ps(q, t, set16(ERFC_Q1));
    q = _mm512_fmadd_ps(q, t, set16(ERFC_Q0));
    return _mm512_mul_ps(_mm512_mul_ps(t, q), e);
}
/* exp(-h) for h = c x^2 (c = 1 or 1/2), x clamped: x^2's rounding error carried as a correction */
T512 static inline v16 expnegsq16(v16 x, float c) {
    v16 x2 = _mm512_mul_ps(x, x);
    v16 lo = _mm512_fmsub_ps(x, x, x2);
    v16 h = _mm512_mul_ps(x2, set16(-c)), hlo = _mm512_mul_ps(lo, set16(-c));
    return exp16_core(_mm512_max_ps(h, set16(EXP_LO)), hlo);
}
/* erf(z) for |z| < ERF_SMALL: z S(z^2) */
T512 static inline v16 erfsmall16(v16 z) {
    v16 z2 = _mm512_mul_ps(z, z);
    v16 s = set16(ERF_S5);
    s = _mm512_fmadd_ps(s, z2, set16(ERF_S4));
    s = _mm512_fmadd_ps(s, z2, set16(ERF_S3));
    s = _mm512_fmadd_ps(s, z2, set16(ERF_S2));
    s = _mm512_fmadd_ps(s, z2, set16(ERF_S1));
    s = _mm512_fmadd_ps(s, z2, set16(ERF_S0));
    return _mm512_mul_ps(z, s);
}
T512 static inline v16 erf16(v16 z) {
    v16 a = _mm512_min_ps(_mm512_abs_ps(z), set16(ERF_CLAMP));
    v16 small = erfsmall16(z);
    v16 big = _mm512_sub_ps(set16(1.0f), erfc16_pos(a, expnegsq16(a, 1.0f)));
    big = _mm512_or_ps(big, _mm512_and_ps(z, set16(-0.0f))); /* sign of z */
    __mmask16 is_small = _mm512_cmp_ps_mask(_mm512_abs_ps(z), set16(ERF_SMALL), _CMP_LT_OQ);
    v16 y = _mm512_mask_mov_ps(big, is_small, small);
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(z, z, _CMP_UNORD_Q), z);
}
/* Phi(x) and phi(x) (the normal density), x clamped to [-GELU_CLAMP, GELU_CLAMP]. Phi = (1 + erf(u)) / 2,
 * u = x / sqrt 2: from erf's small branch for |u| < PHI_SMALL, else from erfc(|u|) (no cancellation for x < 0) */
T512 static inline v16 phi16(v16 xc, v16 *pdf) {
    v16 e = expnegsq16(xc, 0.5f); /* exp(-x^2/2) */
    v16 u = _mm512_mul_ps(xc, set16(INV_SQRT2)), au = _mm512_abs_ps(u);
    v16 half = _mm512_mul_ps(erfc16_pos(au, e), set16(0.5f)); /* erfc(|u|) / 2 */
    __mmask16 neg = _mm512_cmp_ps_mask(xc, _mm512_setzero_ps(), _CMP_LT_OQ);
    v16 cdf = _mm512_mask_mov_ps(_mm512_sub_ps(set16(1.0f), half), neg, half);
    v16 cdf_small = _mm512_fmadd_ps(erfsmall16(u), set16(0.5f), set16(0.5f));
    *pdf = _mm512_mul_ps(e, set16(INV_SQRT_2PI));
    return _mm512_mask_mov_ps(cdf, _mm512_cmp_ps_mask(au, set16(PHI_SMALL), _CMP_LT_OQ), cdf_small);
}
T512 static inline v16 clampg16(v16 x) {
    return _mm512_min_ps(_mm512_max_ps(x, set16(-GELU_CLAMP)), set16(GELU_CLAMP));
}

T512 static void exp_avx512(float *y, const float *x, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 k = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, k, exp16(_mm512_maskz_loadu_ps(k, x + i)));
    }
}
T512 static float exp_sum_avx512(float *y, const float *x, float shift, long n) {
    v16 acc = _mm512_setzero_ps(), sh = set16(shift);
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        v16 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), sh));
        _mm512_storeu_ps(y + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (i < n) {
        __mmask16 k = tail16(n - i);
        v16 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), sh));
        _mm512_mask_storeu_ps(y + i, k, e);
        acc = _mm512_mask_add_ps(acc, k, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}
T512 static void erf_avx512(float *y, const float *x, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, erf16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 k = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, k, erf16(_mm512_maskz_loadu_ps(k, x + i)));
    }
}
T512 static inline v16 gelu16(v16 x) {
    v16 pdf;
    return _mm512_mul_ps(x, phi16(clampg16(x), &pdf));
}
T512 static inline v16 dgelu16(v16 x) {
    v16 pdf, xc = clampg16(x);
    v16 cdf = phi16(xc, &pdf);
    v16 d = _mm512_fmadd_ps(xc, pdf, cdf);
    return _mm512_mask_mov_ps(d, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x); /* NaN in, NaN out */
}
T512 static void gelu_fwd_avx512(float *out, const float *x, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, gelu16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 k = tail16(n - i);
        _mm512_mask_storeu_ps(out + i, k, gelu16(_mm512_maskz_loadu_ps(k, x + i)));
    }
}
T512 static void gelu_bwd_avx512(float *dinp, const float *dout, const float *x, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        v16 d = dgelu16(_mm512_loadu_ps(x + i));
        _mm512_storeu_ps(dinp + i, _mm512_fmadd_ps(_mm512_loadu_ps(dout + i), d, _mm512_loadu_ps(dinp + i)));
    }
    if (i < n) {
        __mmask16 k = tail16(n - i);
        v16 d = dgelu16(_mm512_maskz_loadu_ps(k, x + i));
        v16 r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, dout + i), d, _mm512_maskz_loadu_ps(k, dinp + i));
        _mm512_mask_storeu_ps(dinp + i, k, r);
    }
}
T512 static void ln_fwd_avx512(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b,
                               int C, double eps) {
    v16 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= C; i += 16) acc = _mm512_add_ps(acc, _mm512_loadu_ps(x + i));
    __mmask16 k = tail16(C - i);
    int it = i;
    if (i < C) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(k, x + i));
    float m = _mm512_reduce_add_ps(acc) / C;
    v16 vm = set16(m);
    acc = _mm512_setzero_ps();
    for (i = 0; i + 16 <= C; i += 16) {
        v16 d = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm);
        acc = _mm512_fmadd_ps(d, d, acc);
    }
    if (it < C) {
        v16 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + it), vm);
        acc = _mm512_fmadd_ps(d, d, acc);
    }
    float v = _mm512_reduce_add_ps(acc) / C;
    float s = (float)(1.0 / sqrt((double)v + eps));
    v16 vs = set16(s);
    for (i = 0; i + 16 <= C; i += 16) {
        v16 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vs);
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(xh, _mm512_loadu_ps(w + i), _mm512_loadu_ps(b + i)));
    }
    if (it < C) {
        v16 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + it), vm), vs);
        _mm512_mask_storeu_ps(y + it, k,
                              _mm512_fmadd_ps(xh, _mm512_maskz_loadu_ps(k, w + it), _mm512_maskz_loadu_ps(k, b + it)));
    }
    *mean = m;
    *rstd = s;
}
T512 static void ln_bwd_avx512(float *dx, const float *dy, const float *x, const float *w, float m, float s, int C) {
    v16 ag = _mm512_setzero_ps(), agx = _mm512_setzero_ps(), vm = set16(m), vs = set16(s);
    int i = 0;
    for (; i + 16 <= C; i += 16) {
        v16 g = _mm512_mul_ps(_mm512_loadu_ps(dy + i), _mm512_loadu_ps(w + i));
        ag = _mm512_add_ps(ag, g);
        agx = _mm512_fmadd_ps(g, _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vs), agx);
    }
    int it = i;
    __mmask16 k = tail16(C - it);
    if (it < C) {
        v16 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + it), _mm512_maskz_loadu_ps(k, w + it));
        ag = _mm512_add_ps(ag, g);
        agx = _mm512_fmadd_ps(g, _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + it), vm), vs), agx);
    }
    v16 mg = set16(_mm512_reduce_add_ps(ag) / C), mgx = set16(_mm512_reduce_add_ps(agx) / C);
    for (i = 0; i + 16 <= C; i += 16) {
        v16 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vs);
        v16 g = _mm512_mul_ps(_mm512_loadu_ps(dy + i), _mm512_loadu_ps(w + i));
        v16 t = _mm512_fnmadd_ps(xh, mgx, _mm512_sub_ps(g, mg));
        _mm512_storeu_ps(dx + i, _mm512_fmadd_ps(vs, t, _mm512_loadu_ps(dx + i)));
    }
    if (it < C) {
        v16 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + it), vm), vs);
        v16 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + it), _mm512_maskz_loadu_ps(k, w + it));
        v16 t = _mm512_fnmadd_ps(xh, mgx, _mm512_sub_ps(g, mg));
        _mm512_mask_storeu_ps(dx + it, k, _mm512_fmadd_ps(vs, t, _mm512_maskz_loadu_ps(k, dx + it)));
    }
}
T512 static void ln_wb_avx512(float *accw, float *accb, const float *dy, const float *x, float m, float s, int n) {
    v16 vm = set16(m), vs = set16(s);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        v16 g = _mm512_loadu_ps(dy + i);
        v16 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vs);
        _mm512_storeu_ps(accw + i, _mm512_fmadd_ps(g, xh, _mm512_loadu_ps(accw + i)));
        _mm512_storeu_ps(accb + i, _mm512_add_ps(g, _mm512_loadu_ps(accb + i)));
    }
    if (i < n) {
        __mmask16 k = tail16(n - i);
        v16 g = _mm512_maskz_loadu_ps(k, dy + i);
        v16 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm), vs);
        _mm512_mask_storeu_ps(accw + i, k, _mm512_fmadd_ps(g, xh, _mm512_maskz_loadu_ps(k, accw + i)));
        _mm512_mask_storeu_ps(accb + i, k, _mm512_add_ps(g, _mm512_maskz_loadu_ps(k, accb + i)));
    }
}

/* ================================================================ AVX2 */
#define T256 __attribute__((target("avx2,fma")))
typedef __m256 v8;

T256 static inline v8 set8(float a) { return _mm256_set1_ps(a); }
T256 static inline v8 abs8(v8 x) { return _mm256_andnot_ps(set8(-0.0f), x); }
/* 2^k for integer-valued k in [-126, 127] */
T256 static inline v8 pow2i8(__m256i k) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}
T256 static inline v8 exp8_core(v8 x, v8 xlo) {
    v8 n = _mm256_round_ps(_mm256_mul_ps(x, set8(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v8 r = _mm256_fnmadd_ps(n, set8(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, set8(LN2_LO), r);
    r = _mm256_add_ps(r, xlo);
    v8 p = set8(EXP_P6);
    p = _mm256_fmadd_ps(p, r, set8(EXP_P5));
    p = _mm256_fmadd_ps(p, r, set8(EXP_P4));
    p = _mm256_fmadd_ps(p, r, set8(EXP_P3));
    p = _mm256_fmadd_ps(p, r, set8(EXP_P2));
    p = _mm256_fmadd_ps(p, r, set8(EXP_P1));
    p = _mm256_fmadd_ps(p, r, set8(EXP_P0));
    /* n in [-150, 129]: 2^n = 2^n1 2^n2 with both factors normal; p 2^n1 is exact, the second product
     * rounds once (to a denormal, 0 or +inf when out of range) */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    return _mm256_mul_ps(_mm256_mul_ps(p, pow2i8(n1)), pow2i8(n2));
}
T256 static inline v8 exp8(v8 x) {
    v8 xc = _mm256_min_ps(_mm256_max_ps(x, set8(EXP_LO)), set8(EXP_HI));
    v8 y = exp8_core(xc, _mm256_setzero_ps());
    return _mm256_blendv_ps(y, _mm256_add_ps(x, x), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
T256 static inline v8 erfc8_pos(v8 a, v8 e) {
    v8 t = _mm256_div_ps(set8(1.0f), _mm256_fmadd_ps(a, set8(0.5f), set8(1.0f)));
    v8 q = set8(ERFC_Q9);
    q = _mm256_fmadd_ps(q, t, set8(ERFC_Q8));
    q = _mm256_fmadd_ps(q, t, set8(ERFC_Q7));
    q = _mm256_fmadd_ps(q, t, set8(ERFC_Q6));
    q = _mm256_fmadd_ps(q, t, set8(ERFC_Q5));
    q = _mm256_fmadd_ps(q, t, set8(ERFC_Q4));
    q = _mm256_fmadd_ps(q, t, set8(ERFC_Q3));
    q = _mm256_fmadd_ps(q, t, set8(ERFC_Q2));
    q = _mm256_fmadd_ps(q, t, set8(ERFC_Q1));
    q = _mm256_fmadd_ps(q, t, set8(ERFC_Q0));
    return _mm256_mul_ps(_mm256_mul_ps(t, q), e);
}
T256 static inline v8 expnegsq8(v8 x, float c) {
    v8 x2 = _mm256_mul_ps(x, x);
    v8 lo = _mm256_fmsub_ps(x, x, x2);
    v8 h = _mm256_mul_ps(x2, set8(-c)), hlo = _mm256_mul_ps(lo, set8(-c));
    return exp8_core(_mm256_max_ps(h, set8(EXP_LO)), hlo);
}
T256 static inline v8 erfsmall8(v8 z) {
    v8 z2 = _mm256_mul_ps(z, z);
    v8 s = set8(ERF_S5);
    s = _mm256_fmadd_ps(s, z2, set8(ERF_S4));
    s = _mm256_fmadd_ps(s, z2, set8(ERF_S3));
    s = _mm256_fmadd_ps(s, z2, set8(ERF_S2));
    s = _mm256_fmadd_ps(s, z2, set8(ERF_S1));
    s = _mm256_fmadd_ps(s, z2, set8(ERF_S0));
    return _mm256_mul_ps(z, s);
}
T256 static inline v8 erf8(v8 z) {
    v8 az = abs8(z);
    v8 a = _mm256_min_ps(az, set8(ERF_CLAMP));
    v8 small = erfsmall8(z);
    v8 big = _mm256_sub_ps(set8(1.0f), erfc8_pos(a, expnegsq8(a, 1.0f)));
    big = _mm256_or_ps(big, _mm256_and_ps(z, set8(-0.0f)));
    v8 y = _mm256_blendv_ps(big, small, _mm256_cmp_ps(az, set8(ERF_SMALL), _CMP_LT_OQ));
    return _mm256_blendv_ps(y, z, _mm256_cmp_ps(z, z, _CMP_UNORD_Q));
}
T256 static inline v8 phi8(v8 xc, v8 *pdf) {
    v8 e = expnegsq8(xc, 0.5f);
    v8 u = _mm256_mul_ps(xc, set8(INV_SQRT2)), au = abs8(u);
    v8 half = _mm256_mul_ps(erfc8_pos(au, e), set8(0.5f));
    v8 cdf = _mm256_blendv_ps(_mm256_sub_ps(set8(1.0f), half), half, _mm256_cmp_ps(xc, _mm256_setzero_ps(), _CMP_LT_OQ));
    v8 cdf_small = _mm256_fmadd_ps(erfsmall8(u), set8(0.5f), set8(0.5f));
    *pdf = _mm256_mul_ps(e, set8(INV_SQRT_2PI));
    return _mm256_blendv_ps(cdf, cdf_small, _mm256_cmp_ps(au, set8(PHI_SMALL), _CMP_LT_OQ));
}
T256 static inline v8 clampg8(v8 x) { return _mm256_min_ps(_mm256_max_ps(x, set8(-GELU_CLAMP)), set8(GELU_CLAMP)); }
T256 static inline v8 gelu8(v8 x) {
    v8 pdf;
    return _mm256_mul_ps(x, phi8(clampg8(x), &pdf));
}
T256 static inline v8 dgelu8(v8 x) {
    v8 pdf, xc = clampg8(x);
    v8 cdf = phi8(xc, &pdf);
    v8 d = _mm256_fmadd_ps(xc, pdf, cdf);
    return _mm256_blendv_ps(d, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q)); /* NaN in, NaN out */
}
/* The tail of fewer than 8 elements: through a zero-padded stack vector (no read past the buffers). */
#define TAIL8(n, i, dst, expr_of_v)                                        \
    do {                                                                   \
        if ((i) < (n)) {                                                   \
            float tin_[8] = {0}, tout_[8];                                 \
            size_t r_ = (size_t)((n) - (i));                               \
            memcpy(tin_, x + (i), r_ * sizeof(float));                     \
            v8 v = _mm256_loadu_ps(tin_);                                  \
            _mm256_storeu_ps(tout_, expr_of_v);                            \
            memcpy((dst) + (i), tout_, r_ * sizeof(float));                \
        }                                                                  \
    } while (0)

T256 static void exp_avx2(float *y, const float *x, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    TAIL8(n, i, y, exp8(v));
}
T256 static inline float hsum8(v8 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
T256 static float exp_sum_avx2(float *y, const float *x, float shift, long n) {
    v8 acc = _mm256_setzero_ps(), sh = set8(shift);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        v8 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
        _mm256_storeu_ps(y + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float s = hsum8(acc);
    if (i < n) {
        float tin[8] = {0}, tout[8];
        size_t r = (size_t)(n - i);
        memcpy(tin, x + i, r * sizeof(float));
        _mm256_storeu_ps(tout, exp8(_mm256_sub_ps(_mm256_loadu_ps(tin), sh)));
        for (size_t j = 0; j < r; j++) s += tout[j];
        memcpy(y + i, tout, r * sizeof(float));
    }
    return s;
}
T256 static void erf_avx2(float *y, const float *x, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, erf8(_mm256_loadu_ps(x + i)));
    TAIL8(n, i, y, erf8(v));
}
T256 static void gelu_fwd_avx2(float *out, const float *x, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, gelu8(_mm256_loadu_ps(x + i)));
    TAIL8(n, i, out, gelu8(v));
}
T256 static void gelu_bwd_avx2(float *dinp, const float *dout, const float *x, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        v8 d = dgelu8(_mm256_loadu_ps(x + i));
        _mm256_storeu_ps(dinp + i, _mm256_fmadd_ps(_mm256_loadu_ps(dout + i), d, _mm256_loadu_ps(dinp + i)));
    }
    if (i < n) {
        float d[8];
        size_t r = (size_t)(n - i);
        float tin[8] = {0};
        memcpy(tin, x + i, r * sizeof(float));
        _mm256_storeu_ps(d, dgelu8(_mm256_loadu_ps(tin)));
        for (size_t j = 0; j < r; j++) dinp[i + (long)j] = fmaf(dout[i + (long)j], d[j], dinp[i + (long)j]);
    }
}
T256 static void ln_fwd_avx2(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int C,
                             double eps) {
    v8 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= C; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
    int it = i;
    float sum = hsum8(acc);
    for (; i < C; i++) sum += x[i];
    float m = sum / C;
    v8 vm = set8(m);
    acc = _mm256_setzero_ps();
    for (i = 0; i < it; i += 8) {
        v8 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
        acc = _mm256_fmadd_ps(d, d, acc);
    }
    float v = hsum8(acc);
    for (i = it; i < C; i++) v = fmaf(x[i] - m, x[i] - m, v);
    v /= C;
    float s = (float)(1.0 / sqrt((double)v + eps));
    v8 vs = set8(s);
    for (i = 0; i < it; i += 8) {
        v8 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vs);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(xh, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
    for (i = it; i < C; i++) y[i] = fmaf((x[i] - m) * s, w[i], b[i]);
    *mean = m;
    *rstd = s;
}
T256 static void ln_bwd_avx2(float *dx, const float *dy, const float *x, const float *w, float m, float s, int C) {
    v8 ag = _mm256_setzero_ps(), agx = _mm256_setzero_ps(), vm = set8(m), vs = set8(s);
    int i = 0;
    for (; i + 8 <= C; i += 8) {
        v8 g = _mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(w + i));
        ag = _mm256_add_ps(ag, g);
        agx = _mm256_fmadd_ps(g, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vs), agx);
    }
    int it = i;
    float sg = hsum8(ag), sgx = hsum8(agx);
    for (; i < C; i++) {
        float g = dy[i] * w[i];
        sg += g;
        sgx = fmaf(g, (x[i] - m) * s, sgx);
    }
    float fg = sg / C, fgx = sgx / C;
    v8 mg = set8(fg), mgx = set8(fgx);
    for (i = 0; i < it; i += 8) {
        v8 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vs);
        v8 g = _mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(w + i));
        v8 t = _mm256_fnmadd_ps(xh, mgx, _mm256_sub_ps(g, mg));
        _mm256_storeu_ps(dx + i, _mm256_fmadd_ps(vs, t, _mm256_loadu_ps(dx + i)));
    }
    for (i = it; i < C; i++) {
        float xh = (x[i] - m) * s;
        dx[i] = fmaf(s, fmaf(-xh, fgx, dy[i] * w[i] - fg), dx[i]);
    }
}
T256 static void ln_wb_avx2(float *accw, float *accb, const float *dy, const float *x, float m, float s, int n) {
    v8 vm = set8(m), vs = set8(s);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v8 g = _mm256_loadu_ps(dy + i);
        v8 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vs);
        _mm256_storeu_ps(accw + i, _mm256_fmadd_ps(g, xh, _mm256_loadu_ps(accw + i)));
        _mm256_storeu_ps(accb + i, _mm256_add_ps(g, _mm256_loadu_ps(accb + i)));
    }
    for (; i < n; i++) {
        accw[i] = fmaf(dy[i], (x[i] - m) * s, accw[i]);
        accb[i] += dy[i];
    }
}

/* ================================================================ dispatch */
typedef struct {
    void (*exp)(float *, const float *, long);
    float (*exp_sum)(float *, const float *, float, long);
    void (*erf)(float *, const float *, long);
    void (*gelu_fwd)(float *, const float *, long);
    void (*gelu_bwd)(float *, const float *, const float *, long);
    void (*ln_fwd)(float *, float *, float *, const float *, const float *, const float *, int, double);
    void (*ln_bwd)(float *, const float *, const float *, const float *, float, float, int);
    void (*ln_wb)(float *, float *, const float *, const float *, float, float, int);
} vec_ops;

static const vec_ops OPS[TSR_SIMD_NLEVELS] = {
    {exp_scalar, exp_sum_scalar, erf_scalar, gelu_fwd_scalar, gelu_bwd_scalar, ln_fwd_scalar, ln_bwd_scalar,
     ln_wb_scalar},
    {exp_avx2, exp_sum_avx2, erf_avx2, gelu_fwd_avx2, gelu_bwd_avx2, ln_fwd_avx2, ln_bwd_avx2, ln_wb_avx2},
    {exp_avx512, exp_sum_avx512, erf_avx512, gelu_fwd_avx512, gelu_bwd_avx512, ln_fwd_avx512, ln_bwd_avx512,
     ln_wb_avx512},
};
static const char *const NAMES[TSR_SIMD_NLEVELS] = {"scalar", "avx2", "avx512"};
static const vec_ops *ops;
static int level = -1;
static pthread_once_t once = PTHREAD_ONCE_INIT;

const char *tsr_simd_name(int l) { return l >= 0 && l < TSR_SIMD_NLEVELS ? NAMES[l] : "?"; }

int tsr_simd_supported(int l) {
    __builtin_cpu_init();
    switch (l) {
    case TSR_SIMD_SCALAR: return 1;
    case TSR_SIMD_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case TSR_SIMD_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma");
    default: return 0;
    }
}

static void choose(void) {
    int best = TSR_SIMD_SCALAR;
    for (int l = TSR_SIMD_NLEVELS - 1; l > 0; l--)
        if (tsr_simd_supported(l)) {
            best = l;
            break;
        }
    int l = best;
    const char *how = "auto";
    const char *env = getenv("TESSERA_SIMD");
    if (env && *env) {
        int want = -1;
        for (int i = 0; i < TSR_SIMD_NLEVELS; i++)
            if (strcmp(env, NAMES[i]) == 0) want = i;
        if (want < 0)
            tsr_warn("TESSERA_SIMD=%s: expected scalar, avx2 or avx512; using %s", env, NAMES[best]);
        else if (!tsr_simd_supported(want))
            tsr_warn("TESSERA_SIMD=%s: this CPU lacks it; using %s", env, NAMES[best]);
        else {
            l = want;
            how = "TESSERA_SIMD";
        }
    }
    level = l;
    ops = &OPS[l];
    tsr_log(TSR_LOG_DEBUG, "simd: elementwise kernels %s (%s; best on this CPU: %s)", NAMES[l], how, NAMES[best]);
}

static inline const vec_ops *get(void) {
    pthread_once(&once, choose);
    return ops;
}

int tsr_simd_level(void) {
    get();
    return level;
}

int tsr_simd_set(int l) {
    get();
    if (l < 0 || l >= TSR_SIMD_NLEVELS || !tsr_simd_supported(l)) return -1;
    level = l;
    ops = &OPS[l];
    return 0;
}

void tsr_vec_exp(float *y, const float *x, long n) { get()->exp(y, x, n); }
float tsr_vec_exp_sum(float *y, const float *x, float shift, long n) { return get()->exp_sum(y, x, shift, n); }
void tsr_vec_erf(float *y, const float *x, long n) { get()->erf(y, x, n); }
void tsr_vec_gelu_fwd(float *out, const float *x, long n) { get()->gelu_fwd(out, x, n); }
void tsr_vec_gelu_bwd(float *dinp, const float *dout, const float *x, long n) { get()->gelu_bwd(dinp, dout, x, n); }
void tsr_vec_ln_fwd_row(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int C,
                        double eps) {
    get()->ln_fwd(y, mean, rstd, x, w, b, C, eps);
}
void tsr_vec_ln_bwd_row(float *dx, const float *dy, const float *x, const float *w, float m, float s, int C) {
    get()->ln_bwd(dx, dy, x, w, m, s, C);
}
void tsr_vec_ln_wb_row(float *accw, float *accb, const float *dy, const float *x, float m, float s, int n) {
    get()->ln_wb(accw, accb, dy, x, m, s, n);
}

#else
typedef int tsr_vec_f64_unused; /* the double build keeps libm's scalar paths (layers.c) */
#endif
