/* test_vec.c: the SIMD elementwise kernels of src/model/vec.c, at every level this CPU has (scalar,
 * AVX2, AVX-512; the others are skipped), against libm in double.
 *
 * Sweeps: every 97th float (by bit pattern) of [-10, 10] (so every binade down to the denormals) and
 * a uniform grid of step 2^-10 over the same interval; exp also every 97th float of [-104, 89] (its
 * whole finite, non-zero range) and GELU [-12, 12]. Edge cases: +-0, +-inf, NaN, denormals, the
 * overflow and underflow thresholds. Bounds asserted (measured on the AVX-512 and AVX2 paths, with a
 * margin; the scalar path is libm itself):
 *   exp   2 ulp (of the double result rounded to float); denormal results within 1 ulp of 2^-149
 *   erf   3 ulp
 *   GELU  forward |y - ref| <= 5e-7 |ref|; backward |d - ref| <= 5e-7 (Phi(x) + |x| phi(x)) (its
 *         terms' magnitudes: the derivative crosses zero near x = -0.75)
 * Then every layer that runs through these kernels against its naive twin (layers_ref.c) on random
 * inputs whose lengths are not multiples of the vector widths, max|fast - ref| / max|ref| < 2e-6,
 * with guard elements after each output that must stay untouched. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/blas.h"
#include "core/common.h"
#include "core/rng.h"
#include "dist/parallel.h"
#include "model/layers.h"
#include "model/vec.h"

#define EXP_ULP 2.0
#define ERF_ULP 3.0
#define GELU_REL 5e-7
#define TWIN_TOL 2e-6
#define GUARD 16
#define GUARD_VAL 12345.0f

static tsr_rng rng;
static const int LEVELS[TSR_SIMD_NLEVELS] = {TSR_SIMD_SCALAR, TSR_SIMD_AVX2, TSR_SIMD_AVX512};

/* select the level of the test's state, or skip the test when the CPU lacks it */
static void use_level(void **state) {
    int l = *(const int *)*state;
    if (!tsr_simd_supported(l)) {
        printf("  %s: not on this CPU, skipped\n", tsr_simd_name(l));
        skip();
    }
    assert_int_equal(tsr_simd_set(l), 0);
    assert_int_equal(tsr_simd_level(), l);
}

static float f_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t u_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
/* the float ulp at the magnitude of r (r as a double), 2^-149 for denormals */
static double ulp_at(double r) {
    double a = fabs(r);
    if (a < 0x1p-126) return 0x1p-149;
    int e;
    frexp(a, &e);
    return ldexp(1.0, e - 24);
}

/* a growable list of test inputs: the sweeps of the header */
typedef struct {
    float *v;
    size_t n, cap;
} flist;
static void push(flist *l, float x) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1 << 16;
        l->v = realloc(l->v, l->cap * sizeof(float));
        assert_non_null(l->v);
    }
    l->v[l->n++] = x;
}
/* every `stride`-th float by bit pattern in [0, hi] and its negative, and the grid lo..hi step h */
static flist sweep(float lo, float hi, double h) {
    flist l = {0};
    float m = fmaxf(fabsf(lo), hi);
    for (uint32_t u = 0; u <= u_of(m); u += 97) {
        float x = f_of(u);
        if (x <= hi) push(&l, x);
        if (-x >= lo) push(&l, -x);
    }
    for (double x = lo; x <= hi; x += h) push(&l, (float)x);
    return l;
}

/* ---------------------------------------------------------------- exp */
static void test_exp(void **state) {
    use_level(state);
    flist l = sweep(-104.0f, 89.0f, 1.0 / 1024);
    flist e = sweep(-10.0f, 10.0f, 1.0 / 1024);
    for (size_t i = 0; i < e.n; i++) push(&l, e.v[i]);
    free(e.v);
    float *y = tsr_malloc(l.n * sizeof(float));
    tsr_vec_exp(y, l.v, (long)l.n);
    double worst = 0, wx = 0;
    for (size_t i = 0; i < l.n; i++) {
        double r = exp((double)l.v[i]);
        double u;
        if (r > 0x1.fffffep127) { /* overflows: expf is +inf */
            assert_true(isinf(y[i]) && y[i] > 0);
            continue;
        }
        u = fabs((double)y[i] - r) / ulp_at(r);
        if (u > worst) worst = u, wx = l.v[i];
    }
    printf("  %-7s exp: %zu inputs, max error %.3f ulp (at x = %.9g); bound %.1f\n", tsr_simd_name(tsr_simd_level()),
           l.n, worst, wx, EXP_ULP);
    assert_true(worst <= EXP_ULP);
    /* edges */
    float in[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 88.72f, 88.73f, 89.0f, 1e30f, -87.3f, -100.0f, -103.9f,
                  -104.0f, -110.0f, -1e30f, 1e-45f, -1e-45f, 1e-38f, 0x1p-20f};
    size_t n = sizeof in / sizeof in[0];
    float out[sizeof in / sizeof in[0]];
    tsr_vec_exp(out, in, (long)n);
    for (size_t i = 0; i < n; i++) {
        double r = exp((double)in[i]);
        if (isnan(in[i])) assert_true(isnan(out[i]));
        else if (r > 0x1.fffffep127) assert_true(isinf(out[i]) && out[i] > 0);
        else assert_true(fabs((double)out[i] - r) <= EXP_ULP * ulp_at(r));
        if (!isnan(in[i])) assert_false(isnan(out[i]));
    }
    assert_true(out[0] == 1.0f && out[1] == 1.0f && out[3] == 0.0f && out[13] == 0.0f);
    free(y);
    free(l.v);
}

/* exp_sum: y = exp(x - shift) and its sum, in place, every length 1..70 */
static void test_exp_sum(void **state) {
    use_level(state);
    float x[70 + GUARD], y[70 + GUARD];
    for (int n = 1; n <= 70; n++) {
        for (int i = 0; i < n; i++) x[i] = (float)(tsr_rng_normal(&rng) * 5);
        for (int i = n; i < n + GUARD; i++) y[i] = GUARD_VAL;
        double ref = 0;
        for (int i = 0; i < n; i++) ref += exp((double)x[i] - 3.0);
        float s = tsr_vec_exp_sum(y, x, 3.0f, n);
        assert_true(fabs(s - ref) <= 1e-6 * ref);
        for (int i = 0; i < n; i++) { /* the argument x - shift rounded to float first */
            double r = exp((double)(x[i] - 3.0f));
            assert_true(fabs(y[i] - r) <= EXP_ULP * ulp_at(r));
        }
        for (int i = n; i < n + GUARD; i++) assert_true(y[i] == GUARD_VAL);
        float s2 = tsr_vec_exp_sum(x, x, 3.0f, n); /* in place */
        assert_true(s2 == s);
        assert_memory_equal(x, y, (size_t)n * sizeof(float));
    }
}

/* ---------------------------------------------------------------- erf */
static void test_erf(void **state) {
    use_level(state);
    flist l = sweep(-10.0f, 10.0f, 1.0 / 1024);
    float *y = tsr_malloc(l.n * sizeof(float));
    tsr_vec_erf(y, l.v, (long)l.n);
    double worst = 0, wx = 0;
    for (size_t i = 0; i < l.n; i++) {
        double r = erf((double)l.v[i]);
        double u = fabs((double)y[i] - r) / ulp_at(r);
        if (u > worst) worst = u, wx = l.v[i];
    }
    printf("  %-7s erf: %zu inputs, max error %.3f ulp (at x = %.9g); bound %.1f\n", tsr_simd_name(tsr_simd_level()),
           l.n, worst, wx, ERF_ULP);
    assert_true(worst <= ERF_ULP);
    float in[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e30f, -1e30f, 1e-45f, -1e-45f, 1e-40f, 0.4999999f, 0.5f,
                  -0.5f, 3.9f, 4.0f, 9.99f, 10.5f};
    size_t n = sizeof in / sizeof in[0];
    float out[sizeof in / sizeof in[0]];
    tsr_vec_erf(out, in, (long)n);
    for (size_t i = 0; i < n; i++) {
        if (isnan(in[i])) {
            assert_true(isnan(out[i]));
            continue;
        }
        double r = erf((double)in[i]);
        assert_true(fabs((double)out[i] - r) <= ERF_ULP * ulp_at(r));
    }
    assert_true(out[0] == 0.0f && !signbit(out[0]) && out[1] == 0.0f && signbit(out[1]));
    assert_true(out[2] == 1.0f && out[3] == -1.0f);
    free(y);
    free(l.v);
}

/* ---------------------------------------------------------------- GELU, elementwise */
static double gelu_ref(double x) { return 0.5 * x * erfc(-x / sqrt(2.0)); }
static double cdf_ref(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }
static double pdf_ref(double x) { return exp(-0.5 * x * x) * 0.39894228040143267794; }

static void test_gelu_sweep(void **state) {
    use_level(state);
    int scalar = tsr_simd_level() == TSR_SIMD_SCALAR;
    flist l = sweep(-12.0f, 12.0f, 1.0 / 1024);
    float *y = tsr_malloc(l.n * sizeof(float)), *d = tsr_calloc(l.n, sizeof(float)), *one = tsr_malloc(l.n * sizeof(float));
    for (size_t i = 0; i < l.n; i++) one[i] = 1;
    tsr_vec_gelu_fwd(y, l.v, (long)l.n);
    tsr_vec_gelu_bwd(d, one, l.v, (long)l.n);
    double wf = 0, wb = 0, xf = 0, xb = 0;
    for (size_t i = 0; i < l.n; i++) {
        double x = l.v[i], r = gelu_ref(x);
        /* denormal results: within 1 ulp of 2^-149 (that is not relative); the scalar (libm) level
         * computes 1 + erff(x / sqrt 2), whose absolute rounding error (2^-24 near 1 + erf = 0)
         * is not relative either on the negative side: it is allowed 2^-24 |x| more */
        double slack = scalar ? 0x1p-24 * fabs(x) : 0;
        double e = fabs(r) < 0x1p-126 ? (fabs(y[i] - r) <= 0x1p-149 ? 0 : 1) : (fabs(y[i] - r) - slack) / fabs(r);
        if (e > wf) wf = e, xf = x;
        double dr = cdf_ref(x) + x * pdf_ref(x), mag = cdf_ref(x) + fabs(x) * pdf_ref(x);
        double eb = (fabs(d[i] - dr) - (scalar ? 0x1p-24 : 0)) / mag;
        if (eb > wb) wb = eb, xb = x;
    }
    printf("  %-7s gelu: %zu inputs, forward max rel error %.2e (x = %.6g), backward %.2e (x = %.6g); bound %.0e\n",
           tsr_simd_name(tsr_simd_level()), l.n, wf, xf, wb, xb, GELU_REL);
    assert_true(wf <= GELU_REL);
    assert_true(wb <= GELU_REL);
    /* edges: like 0.5 x (1 + erf(x / sqrt 2)) in float */
    float in[] = {0.0f, INFINITY, -INFINITY, NAN, 1e30f, -1e30f, 1e-45f};
    float out[7], dd[7] = {0}, ones[7] = {1, 1, 1, 1, 1, 1, 1};
    tsr_vec_gelu_fwd(out, in, 7);
    tsr_vec_gelu_bwd(dd, ones, in, 7);
    assert_true(out[0] == 0 && isinf(out[1]) && out[1] > 0 && isnan(out[3]) && out[4] == 1e30f);
    assert_true(out[5] == 0 || isnan(out[5])); /* -1e30 * 0 */
    assert_true(fabs(dd[0] - 0.5) < 1e-7 && dd[4] == 1.0f && dd[5] == 0.0f && isnan(dd[3]));
    free(y);
    free(d);
    free(one);
    free(l.v);
}

/* ---------------------------------------------------------------- layers against their twins */
static float *randf(size_t n, double s) {
    float *v = tsr_malloc(sizeof(float) * (n + GUARD));
    for (size_t i = 0; i < n; i++) v[i] = (float)(tsr_rng_normal(&rng) * s);
    for (size_t i = n; i < n + GUARD; i++) v[i] = GUARD_VAL;
    return v;
}
static float *zeros(size_t n) {
    float *v = randf(n, 0);
    for (size_t i = 0; i < n; i++) v[i] = 0;
    return v;
}
static double relerr(const float *a, const float *ref, size_t n) {
    double e = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - ref[i]));
        m = fmax(m, fabs((double)ref[i]));
    }
    for (size_t i = n; i < n + GUARD; i++) assert_true(a[i] == GUARD_VAL);
    return e / m;
}

static void test_gelu_twin(void **state) {
    use_level(state);
    const long lens[] = {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 4095, 4097, 12801};
    double worst = 0;
    for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
        long n = lens[t];
        float *x = randf((size_t)n, 3), *dy = randf((size_t)n, 1), *y1 = zeros((size_t)n), *y2 = zeros((size_t)n);
        float *d1 = randf((size_t)n, 1), *d2 = tsr_malloc(sizeof(float) * (size_t)(n + GUARD));
        memcpy(d2, d1, sizeof(float) * (size_t)(n + GUARD));
        gelu_forward(y1, x, n);
        gelu_forward_ref(y2, x, n);
        worst = fmax(worst, relerr(y1, y2, (size_t)n));
        gelu_backward(d1, dy, x, n);
        gelu_backward_ref(d2, dy, x, n);
        worst = fmax(worst, relerr(d1, d2, (size_t)n));
        free(x); free(dy); free(y1); free(y2); free(d1); free(d2);
    }
    printf("  %-7s gelu vs twin: max rel err %.2e\n", tsr_simd_name(tsr_simd_level()), worst);
    assert_true(worst < TWIN_TOL);
}

static void test_layernorm_twin(void **state) {
    use_level(state);
    const int Cs[] = {1, 2, 5, 8, 13, 16, 17, 31, 33, 63, 64, 65, 192, 200};
    const int N = 7;
    double worst = 0;
    for (size_t t = 0; t < sizeof Cs / sizeof Cs[0]; t++) {
        int C = Cs[t];
        size_t NC = (size_t)N * C;
        float *x = randf(NC, 3), *w = randf((size_t)C, 1), *b = randf((size_t)C, 1), *dy = randf(NC, 1);
        for (size_t i = 0; i < NC; i++) x[i] += 2; /* a mean away from 0 */
        float *y1 = zeros(NC), *y2 = zeros(NC), *m1 = zeros(N), *m2 = zeros(N), *r1 = zeros(N), *r2 = zeros(N);
        layernorm_forward(y1, m1, r1, x, w, b, N, C, 1e-6);
        layernorm_forward_ref(y2, m2, r2, x, w, b, N, C, 1e-6);
        worst = fmax(worst, relerr(y1, y2, NC));
        worst = fmax(worst, relerr(m1, m2, N));
        worst = fmax(worst, relerr(r1, r2, N));
        float *dx1 = zeros(NC), *dx2 = zeros(NC), *dw1 = zeros((size_t)C), *dw2 = zeros((size_t)C);
        float *db1 = zeros((size_t)C), *db2 = zeros((size_t)C);
        layernorm_backward(dx1, dw1, db1, dy, x, w, m2, r2, N, C);
        layernorm_backward_ref(dx2, dw2, db2, dy, x, w, m2, r2, N, C);
        if (C > 2) worst = fmax(worst, relerr(dx1, dx2, NC)); /* C <= 2: dx is 0 up to rounding */
        else for (size_t i = 0; i < NC; i++) assert_true(fabs(dx1[i]) < 1e-3);
        worst = fmax(worst, relerr(dw1, dw2, (size_t)C));
        worst = fmax(worst, relerr(db1, db2, (size_t)C));
        free(x); free(w); free(b); free(dy); free(y1); free(y2); free(m1); free(m2); free(r1); free(r2);
        free(dx1); free(dx2); free(dw1); free(dw2); free(db1); free(db2);
    }
    printf("  %-7s layernorm vs twin: max rel err %.2e\n", tsr_simd_name(tsr_simd_level()), worst);
    assert_true(worst < TWIN_TOL);
}

/* attention's softmax (T not a multiple of 8 or 16) and the softmax cross-entropy */
static void test_softmax_twin(void **state) {
    use_level(state);
    double worst = 0;
    const int Ts[] = {1, 7, 17, 50};
    for (size_t t = 0; t < sizeof Ts / sizeof Ts[0]; t++) {
        int B = 2, T = Ts[t], D = 24, H = 3;
        size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D, na = (size_t)B * H * T * T;
        float *qkv = randf(nq, 1.5), *o1 = zeros(no), *o2 = zeros(no), *a1 = zeros(na), *a2 = zeros(na);
        attention_forward(o1, a1, qkv, B, T, D, H);
        attention_forward_ref(o2, a2, qkv, B, T, D, H);
        worst = fmax(worst, relerr(o1, o2, no));
        worst = fmax(worst, relerr(a1, a2, na));
        free(qkv); free(o1); free(o2); free(a1); free(a2);
    }
    const int Ks[] = {1, 10, 13, 100};
    for (size_t t = 0; t < sizeof Ks / sizeof Ks[0]; t++) {
        int B = 3, K = Ks[t], labels[3] = {0, K / 2, K - 1};
        float *z = randf((size_t)B * K, 4), *p = zeros((size_t)B * K), *pr = zeros((size_t)B * K);
        double loss = softmax_xent_forward(p, z, labels, B, K), lref = 0;
        for (int b = 0; b < B; b++) {
            double mx = -INFINITY, s = 0;
            for (int k = 0; k < K; k++) mx = fmax(mx, z[b * K + k]);
            for (int k = 0; k < K; k++) s += exp(z[b * K + k] - mx);
            for (int k = 0; k < K; k++) pr[b * K + k] = (float)(exp(z[b * K + k] - mx) / s);
            lref += (log(s) + mx - z[b * K + labels[b]]) / B;
        }
        worst = fmax(worst, relerr(p, pr, (size_t)B * K));
        worst = fmax(worst, fabs(loss - lref) / fmax(1, fabs(lref)));
        free(z); free(p); free(pr);
    }
    printf("  %-7s softmax vs twin: max rel err %.2e\n", tsr_simd_name(tsr_simd_level()), worst);
    assert_true(worst < TWIN_TOL);
}

/* levels the CPU lacks, or that do not exist, are refused and change nothing */
static void test_dispatch(void **state) {
    (void)state;
    int before = tsr_simd_level();
    assert_int_equal(tsr_simd_set(-1), -1);
    assert_int_equal(tsr_simd_set(TSR_SIMD_NLEVELS), -1);
    for (int l = 0; l < TSR_SIMD_NLEVELS; l++)
        if (!tsr_simd_supported(l)) assert_int_equal(tsr_simd_set(l), -1);
    assert_int_equal(tsr_simd_level(), before);
    assert_true(tsr_simd_supported(TSR_SIMD_SCALAR));
    printf("  this CPU: avx2 %s, avx512 %s; in use: %s\n", tsr_simd_supported(TSR_SIMD_AVX2) ? "yes" : "no",
           tsr_simd_supported(TSR_SIMD_AVX512) ? "yes" : "no", tsr_simd_name(before));
}

#define PER_LEVEL(f)                                                                                         \
    cmocka_unit_test_prestate(f, (void *)&LEVELS[0]), cmocka_unit_test_prestate(f, (void *)&LEVELS[1]),     \
        cmocka_unit_test_prestate(f, (void *)&LEVELS[2])

int main(void) {
    char note[256];
    if (tsr_blas_init(note, sizeof note) != 0) {
        fprintf(stderr, "%s\n", tsr_last_error());
        return 1;
    }
    tsr_dist_set_threads(2);
    tsr_rng_seed(&rng, 11);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_dispatch),       PER_LEVEL(test_exp),
                                       PER_LEVEL(test_exp_sum),               PER_LEVEL(test_erf),
                                       PER_LEVEL(test_gelu_sweep),            PER_LEVEL(test_gelu_twin),
                                       PER_LEVEL(test_layernorm_twin),        PER_LEVEL(test_softmax_twin)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
