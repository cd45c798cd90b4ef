/* test_mosa.c: MoSA masks (src/adapters/mosa.c), float build.
 *
 * The pinned values (test_golden_*) were produced once by an independent Python re-implementation of
 * the documented algorithm (splitmix64 / xoshiro256** / FNV-1a 64 written out in integer arithmetic),
 * so a change of the split or draw derivation, which would change the masks of saved runs, is caught:
 *
 *   M = 2**64 - 1
 *   def mix64(v):
 *       z = (v + 0x9E3779B97F4A7C15) & M
 *       z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
 *       z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
 *       return z ^ (z >> 31)
 *   def rotl(x, k): return ((x << k) | (x >> (64 - k))) & M
 *   def fnv(s):
 *       h = 0xCBF29CE484222325
 *       for b in s.encode(): h = ((h ^ b) * 0x100000001B3) & M
 *       return h
 *   def split(n, N, seed, key):
 *       s = [mix64((mix64(mix64(seed ^ 0x4D6F53412D73706C) ^ key) + i * 0x9E3779B97F4A7C15) & M)
 *            for i in range(4)]
 *       sc = []
 *       for _ in range(n):
 *           r = (rotl((s[1] * 5) & M, 7) * 9) & M; t = (s[1] << 17) & M
 *           s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45)
 *           sc.append(r)
 *       order = sorted(range(n), key=lambda j: (sc[j], j))
 *       sizes = [n // N + (1 if i < n % N else 0) for i in range(N)]
 *       own = [0] * n; p = 0
 *       for g, sz in enumerate(sizes):
 *           for _ in range(sz): own[order[p]] = g; p += 1
 *       return own
 *   def draw(seed, step, layer, proj, view, N):
 *       h = mix64(seed ^ 0x4D6F53412D647277)
 *       for v in (step, layer, proj, view): h = mix64(h ^ (v & M))
 *       return ((h >> 32) * N) >> 32
 *   print(split(20, 4, 42, fnv("blocks.0.mlp.adapter.up.weight")), split(10, 3, 1, fnv("a")))
 *   print([draw(7, s, 3, 1, 0, 4) for s in range(16)], [draw(7, s, 3, 1, 1, 4) for s in range(16)])
 *   print(draw(7, -1, 0, 0, 0, 5), draw(2**64 - 1, 123456789, 11, 2, 1, 3))
 *
 * The FNV-1a 64 values of "", "a" and "foobar" are the published test vectors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/mosa.h"
#include "core/rng.h"

static uint8_t *split_new(size_t n, int N, uint64_t seed, uint64_t key) {
    uint8_t *o = malloc(n ? n : 1);
    assert_non_null(o);
    memset(o, 0xEE, n ? n : 1);
    tsr_mosa_split(o, n, N, seed, key);
    return o;
}

static real *random_vec(size_t n, uint64_t seed) {
    real *v = malloc(n * sizeof *v);
    assert_non_null(v);
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    for (size_t j = 0; j < n; j++) v[j] = (real)(2.0 * tsr_rng_uniform(&r) - 1.0);
    return v;
}

/* ------------------------------------------------------------------ key */

static void test_key_fnv1a(void **state) {
    (void)state;
    assert_true(tsr_mosa_key("") == 0xCBF29CE484222325ULL);
    assert_true(tsr_mosa_key("a") == 0xAF63DC4C8601EC8CULL);
    assert_true(tsr_mosa_key("foobar") == 0x85944171F73967E8ULL);
    assert_true(tsr_mosa_key("blocks.0.mlp.adapter.up.weight") == 0xBD6DF9F805F63A5AULL);
    assert_true(tsr_mosa_key("blocks.0.mlp.adapter.up.weight") != tsr_mosa_key("blocks.1.mlp.adapter.up.weight"));
}

/* ------------------------------------------------------------------ split */

/* Every element owned by exactly one module (owner in [0, N)), group sizes floor/ceil with the first
 * n % N groups the larger ones, for many (n, N) including n < N, n % N == 0 and N = 256. */
static void test_split_disjoint_covering_sizes(void **state) {
    (void)state;
    const size_t ns[] = {0, 1, 3, 7, 64, 100, 1000, 1001, 1023, 4096 + 5};
    const int Ns[] = {1, 2, 3, 4, 5, 7, 16, 255, 256};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++) {
        for (size_t b = 0; b < sizeof Ns / sizeof *Ns; b++) {
            size_t n = ns[a];
            int N = Ns[b];
            uint8_t *o = split_new(n, N, 1234 + a, tsr_mosa_key("w") + b);
            size_t count[256] = {0};
            for (size_t j = 0; j < n; j++) {
                assert_true((int)o[j] < N);
                count[o[j]]++;
            }
            size_t total = 0, lo = n / (size_t)N, mx = 0, mn = (size_t)-1;
            for (int i = 0; i < N; i++) {
                assert_int_equal(count[i], tsr_mosa_group_size(n, N, i));
                assert_int_equal(count[i], lo + ((size_t)i < n % (size_t)N ? 1 : 0));
                if (count[i] > mx) mx = count[i];
                if (count[i] < mn) mn = count[i];
                total += count[i];
            }
            assert_int_equal(total, n);
            assert_true(mx - mn <= 1);
            free(o);
        }
    }
    assert_int_equal(tsr_mosa_group_size(10, 4, 4), 0);
    assert_int_equal(tsr_mosa_group_size(10, 4, -1), 0);
}

/* Each mask M_i as a 0/1 vector: the masks are pairwise disjoint and sum to all ones. */
static void test_split_masks_partition(void **state) {
    (void)state;
    const size_t n = 777;
    const int N = 4;
    uint8_t *o = split_new(n, N, 5, tsr_mosa_key("blocks.3.attn.qkv.lora_b"));
    int *sum = calloc(n, sizeof *sum);
    assert_non_null(sum);
    for (int i = 0; i < N; i++)
        for (size_t j = 0; j < n; j++) sum[j] += o[j] == i;
    for (size_t j = 0; j < n; j++) assert_int_equal(sum[j], 1);
    free(sum);
    free(o);
}

static void test_split_deterministic_and_distinct(void **state) {
    (void)state;
    const size_t n = 1000;
    const int N = 4;
    uint64_t k1 = tsr_mosa_key("blocks.0.mlp.adapter.up.weight"), k2 = tsr_mosa_key("blocks.1.mlp.adapter.up.weight");
    uint8_t *a = split_new(n, N, 42, k1), *b = split_new(n, N, 42, k1);
    uint8_t *c = split_new(n, N, 42, k2), *d = split_new(n, N, 43, k1);
    assert_memory_equal(a, b, n);
    size_t diff_key = 0, diff_seed = 0;
    for (size_t j = 0; j < n; j++) {
        diff_key += a[j] != c[j];
        diff_seed += a[j] != d[j];
    }
    /* Independent random splits agree on about 1/N of the elements: expect ~750 differences. */
    assert_true(diff_key > 600 && diff_key < 900);
    assert_true(diff_seed > 600 && diff_seed < 900);
    free(a);
    free(b);
    free(c);
    free(d);
}

/* No module owns a contiguous block: every module has elements in both halves of a 1000-element
 * matrix (in fact roughly half in each), and neighbouring elements share an owner about 1/N of the
 * time (a blocked assignment would give ~1). */
static void test_split_spread(void **state) {
    (void)state;
    const size_t n = 1000;
    const int N = 4;
    uint8_t *o = split_new(n, N, 2024, tsr_mosa_key("blocks.7.mlp.adapter.down.weight"));
    size_t first[4] = {0}, second[4] = {0}, same = 0;
    for (size_t j = 0; j < n; j++) (j < n / 2 ? first : second)[o[j]]++;
    for (size_t j = 1; j < n; j++) same += o[j] == o[j - 1];
    assert_true(first[0] > 0 && second[0] > 0);
    for (int i = 0; i < N; i++) {
        assert_true(first[i] > 80 && first[i] < 170); /* expected 125 of 250 */
        assert_true(second[i] > 80 && second[i] < 170);
    }
    assert_true(same > 170 && same < 330); /* expected ~250 of 999 */
    free(o);
}

static void test_golden_split(void **state) {
    (void)state;
    const uint8_t want20[20] = {0, 0, 0, 1, 0, 2, 3, 1, 1, 3, 2, 3, 0, 2, 2, 1, 1, 2, 3, 3};
    const uint8_t want10[10] = {2, 2, 0, 1, 2, 1, 0, 0, 1, 0};
    uint8_t *a = split_new(20, 4, 42, tsr_mosa_key("blocks.0.mlp.adapter.up.weight"));
    uint8_t *b = split_new(10, 3, 1, tsr_mosa_key("a"));
    assert_memory_equal(a, want20, 20);
    assert_memory_equal(b, want10, 10);
    free(a);
    free(b);
}

/* ------------------------------------------------------------------ draw */

static void test_draw_range_uniform(void **state) {
    (void)state;
    const int Ns[] = {2, 3, 4, 7};
    for (size_t b = 0; b < sizeof Ns / sizeof *Ns; b++) {
        int N = Ns[b];
        for (int view = 0; view < 2; view++) {
            long count[8] = {0};
            const long steps = 10000;
            for (long s = 0; s < steps; s++) {
                int m = tsr_mosa_draw(99, s, 5, 1, view, N);
                assert_true(m >= 0 && m < N);
                count[m]++;
            }
            double e = (double)steps / N, chi2 = 0;
            for (int i = 0; i < N; i++) chi2 += (count[i] - e) * (count[i] - e) / e;
            /* df = N - 1 <= 6: the 99.99% quantile is below 28; 40 is a loose bound. */
            assert_true(chi2 < 40.0);
        }
    }
    for (long s = 0; s < 100; s++) assert_int_equal(tsr_mosa_draw(3, s, 0, 0, 0, 1), 0);
}

/* Pure function: the same arguments give the same value in any call order; each argument matters. */
static void test_draw_deterministic_order_free(void **state) {
    (void)state;
    enum { S = 500, L = 12, P = 2 };
    static int fwd[S][L][P][2];
    for (long s = 0; s < S; s++)
        for (int l = 0; l < L; l++)
            for (int p = 0; p < P; p++)
                for (int v = 0; v < 2; v++) fwd[s][l][p][v] = tsr_mosa_draw(11, s, l, p, v, 4);
    for (long s = S - 1; s >= 0; s--)
        for (int v = 1; v >= 0; v--)
            for (int p = P - 1; p >= 0; p--)
                for (int l = L - 1; l >= 0; l--) assert_int_equal(tsr_mosa_draw(11, s, l, p, v, 4), fwd[s][l][p][v]);
    /* Interleave with unrelated draws (other seed, other N): still the same. */
    for (long s = 0; s < S; s += 7) {
        (void)tsr_mosa_draw(12, s, 0, 0, 0, 3);
        assert_int_equal(tsr_mosa_draw(11, s, 3, 1, 1, 4), fwd[s][3][1][1]);
    }
    /* Each argument changes the draw (agreement ~1/N = 25%, not 100%). */
    int same_view = 0, same_layer = 0, same_proj = 0, same_seed = 0, same_step = 0;
    for (long s = 0; s < S; s++) {
        same_view += fwd[s][0][0][0] == fwd[s][0][0][1];
        same_layer += fwd[s][0][0][0] == fwd[s][1][0][0];
        same_proj += fwd[s][0][0][0] == fwd[s][0][1][0];
        same_seed += fwd[s][0][0][0] == tsr_mosa_draw(12, s, 0, 0, 0, 4);
        if (s > 0) same_step += fwd[s][0][0][0] == fwd[s - 1][0][0][0];
    }
    assert_true(same_view > 75 && same_view < 200);
    assert_true(same_layer > 75 && same_layer < 200);
    assert_true(same_proj > 75 && same_proj < 200);
    assert_true(same_seed > 75 && same_seed < 200);
    assert_true(same_step > 75 && same_step < 200);
}

static void test_golden_draw(void **state) {
    (void)state;
    const int want0[16] = {2, 1, 1, 3, 3, 2, 2, 3, 0, 3, 2, 0, 3, 1, 2, 0};
    const int want1[16] = {2, 3, 3, 1, 1, 3, 0, 1, 0, 1, 1, 3, 3, 2, 2, 0};
    for (long s = 0; s < 16; s++) {
        assert_int_equal(tsr_mosa_draw(7, s, 3, 1, 0, 4), want0[s]);
        assert_int_equal(tsr_mosa_draw(7, s, 3, 1, 1, 4), want1[s]);
    }
    assert_int_equal(tsr_mosa_draw(7, -1, 0, 0, 0, 5), 4);
    assert_int_equal(tsr_mosa_draw(UINT64_MAX, 123456789L, 11, 2, 1, 3), 1);
}

/* ------------------------------------------------------------------ effective / mask_grad */

static void test_effective(void **state) {
    (void)state;
    const size_t n = 513;
    const int N = 4;
    uint8_t *o = split_new(n, N, 8, tsr_mosa_key("eff"));
    real *W = random_vec(n, 1), *W0 = random_vec(n, 2), *eff = malloc(n * sizeof *eff);
    real *acc = calloc(n, sizeof *acc);
    assert_non_null(eff);
    assert_non_null(acc);
    for (int i = 0; i < N; i++) {
        mosa_effective(eff, W, W0, o, n, i);
        for (size_t j = 0; j < n; j++) {
            assert_true(eff[j] == (o[j] == i ? W[j] : W0[j]));
            acc[j] += eff[j] - W0[j]; /* exactly W - W0 on the owner, 0 elsewhere */
        }
        mosa_effective(eff, W, NULL, o, n, i);
        for (size_t j = 0; j < n; j++) assert_true(eff[j] == (o[j] == i ? W[j] : 0.0f));
    }
    /* The deltas of the N modules add up to the whole delta (the masks partition the matrix). */
    for (size_t j = 0; j < n; j++) assert_true(acc[j] == W[j] - W0[j]);
    /* In place (eff aliases W). */
    real *Wc = malloc(n * sizeof *Wc);
    assert_non_null(Wc);
    memcpy(Wc, W, n * sizeof *W);
    mosa_effective(Wc, Wc, W0, o, n, 2);
    for (size_t j = 0; j < n; j++) assert_true(Wc[j] == (o[j] == 2 ? W[j] : W0[j]));
    free(Wc);
    free(o);
    free(W);
    free(W0);
    free(eff);
    free(acc);
}

static void test_mask_grad(void **state) {
    (void)state;
    const size_t n = 300;
    const int N = 3;
    uint8_t *o = split_new(n, N, 77, tsr_mosa_key("grad"));
    real *g = random_vec(n, 3), *h = malloc(n * sizeof *h), *sum = calloc(n, sizeof *sum);
    assert_non_null(h);
    assert_non_null(sum);
    for (size_t j = 0; j < n; j++)
        if (g[j] == 0) g[j] = 0.5f;
    for (int i = 0; i < N; i++) {
        memcpy(h, g, n * sizeof *g);
        mosa_mask_grad(h, o, n, i);
        size_t nz = 0;
        for (size_t j = 0; j < n; j++) {
            if (o[j] == i) {
                assert_true(h[j] == g[j]);
                nz++;
            } else {
                assert_true(h[j] == 0.0f);
            }
            sum[j] += h[j];
        }
        assert_int_equal(nz, tsr_mosa_group_size(n, N, i));
    }
    for (size_t j = 0; j < n; j++) assert_true(sum[j] == g[j]);
    free(o);
    free(g);
    free(h);
    free(sum);
}

/* ------------------------------------------------------------------ merge */

/* merge == explicit mean of the N effective matrices built with mosa_effective. */
static void check_merge_is_mean(size_t n, int N, int with_w0) {
    uint8_t *o = split_new(n, N, 31 + (uint64_t)N, tsr_mosa_key("merge"));
    real *W = random_vec(n, 10), *W0 = with_w0 ? random_vec(n, 11) : NULL;
    real *eff = malloc(n * sizeof *eff), *out = malloc(n * sizeof *out);
    double *mean = calloc(n, sizeof *mean);
    assert_non_null(eff);
    assert_non_null(out);
    assert_non_null(mean);
    for (int i = 0; i < N; i++) {
        mosa_effective(eff, W, W0, o, n, i);
        for (size_t j = 0; j < n; j++) mean[j] += eff[j];
    }
    for (size_t j = 0; j < n; j++) mean[j] /= N;
    mosa_merge(out, W, W0, n, N);
    for (size_t j = 0; j < n; j++) assert_true(fabs(out[j] - mean[j]) <= 1e-6 * (1.0 + fabs(mean[j])));
    /* In place (out aliases W). */
    mosa_merge(W, W, W0, n, N);
    assert_memory_equal(W, out, n * sizeof *out);
    free(o);
    free(W);
    free(W0);
    free(eff);
    free(out);
    free(mean);
}

static void test_merge_mean_with_w0(void **state) {
    (void)state;
    check_merge_is_mean(1000, 4, 1);
    check_merge_is_mean(999, 2, 1);
    check_merge_is_mean(101, 7, 1);
}

static void test_merge_mean_without_w0(void **state) {
    (void)state;
    check_merge_is_mean(1000, 4, 0);
    check_merge_is_mean(999, 2, 0);
    check_merge_is_mean(101, 7, 0);
}

static void test_merge_explicit_values(void **state) {
    (void)state;
    const real W[3] = {4.0f, -8.0f, 1.0f}, W0[3] = {0.0f, 4.0f, -1.0f};
    real out[3];
    mosa_merge(out, W, W0, 3, 4); /* (W + 3 W0) / 4 */
    assert_true(out[0] == 1.0f && out[1] == 1.0f && out[2] == -0.5f);
    mosa_merge(out, W, NULL, 3, 4);
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0.25f);
}

static void test_merge_bias(void **state) {
    (void)state;
    /* bias (N=4, d=3) */
    const real bias[12] = {1, 2, 3, 3, 2, 1, -4, 0, 8, 4, 0, 0};
    real out[3];
    mosa_merge_bias(out, bias, 4, 3);
    assert_true(out[0] == 1.0f && out[1] == 1.0f && out[2] == 3.0f);
    /* Random, against an explicit mean; and in place (out aliases row 0). */
    const int N = 5, d = 37;
    real *b = random_vec((size_t)N * d, 21), *o2 = malloc(d * sizeof *o2);
    assert_non_null(o2);
    for (int k = 0; k < d; k++) {
        double s = 0;
        for (int i = 0; i < N; i++) s += b[i * d + k];
        o2[k] = (real)(s / N);
    }
    mosa_merge_bias(b, b, N, d);
    for (int k = 0; k < d; k++) assert_true(fabs(b[k] - o2[k]) <= 1e-6);
    free(b);
    free(o2);
    /* N = 1: the bias itself. */
    mosa_merge_bias(out, bias, 1, 3);
    assert_memory_equal(out, bias, 3 * sizeof *out);
}

/* ------------------------------------------------------------------ N = 1 and the baseline */

static void test_single_module(void **state) {
    (void)state;
    const size_t n = 250;
    uint8_t *o = split_new(n, 1, 9, tsr_mosa_key("one"));
    for (size_t j = 0; j < n; j++) assert_int_equal(o[j], 0);
    real *W = random_vec(n, 4), *W0 = random_vec(n, 5), *x = malloc(n * sizeof *x);
    assert_non_null(x);
    mosa_effective(x, W, W0, o, n, 0);
    assert_memory_equal(x, W, n * sizeof *x);
    mosa_merge(x, W, W0, n, 1);
    assert_memory_equal(x, W, n * sizeof *x);
    mosa_merge(x, W, NULL, n, 1);
    assert_memory_equal(x, W, n * sizeof *x);
    memcpy(x, W, n * sizeof *x);
    mosa_mask_grad(x, o, n, 0);
    assert_memory_equal(x, W, n * sizeof *x);
    for (long s = 0; s < 50; s++) assert_int_equal(tsr_mosa_draw(1, s, 2, 1, (int)(s & 1), 1), 0);
    free(o);
    free(W);
    free(W0);
    free(x);
}

/* Sparse-adapter baseline: module 0 alone, density ~1/N; its evaluation weights are its effective
 * weights (W0 elsewhere), which differ from the merge. */
static void test_sparse_baseline(void **state) {
    (void)state;
    const size_t n = 1000;
    const int N = 4;
    uint8_t *o = split_new(n, N, 13, tsr_mosa_key("sparse"));
    assert_int_equal(tsr_mosa_group_size(n, N, 0), 250);
    real *W0 = random_vec(n, 6), *W = malloc(n * sizeof *W), *g = random_vec(n, 7);
    real *eval = malloc(n * sizeof *eval), *merged = malloc(n * sizeof *merged);
    assert_non_null(W);
    assert_non_null(eval);
    assert_non_null(merged);
    memcpy(W, W0, n * sizeof *W);
    mosa_mask_grad(g, o, n, 0);
    for (size_t j = 0; j < n; j++) W[j] -= 0.1f * g[j]; /* one SGD step on module 0 only */
    size_t moved = 0;
    for (size_t j = 0; j < n; j++) {
        moved += W[j] != W0[j];
        if (o[j] != 0) assert_true(W[j] == W0[j]);
    }
    assert_true(moved > 0 && moved <= 250);
    mosa_effective(eval, W, W0, o, n, 0);
    assert_memory_equal(eval, W, n * sizeof *W); /* only module 0 moved, so eval == W */
    mosa_merge(merged, W, W0, n, N);
    size_t differ = 0;
    for (size_t j = 0; j < n; j++) differ += merged[j] != eval[j];
    assert_true(differ > 0);
    free(o);
    free(W0);
    free(W);
    free(g);
    free(eval);
    free(merged);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_fnv1a),
        cmocka_unit_test(test_split_disjoint_covering_sizes),
        cmocka_unit_test(test_split_masks_partition),
        cmocka_unit_test(test_split_deterministic_and_distinct),
        cmocka_unit_test(test_split_spread),
        cmocka_unit_test(test_golden_split),
        cmocka_unit_test(test_draw_range_uniform),
        cmocka_unit_test(test_draw_deterministic_order_free),
        cmocka_unit_test(test_golden_draw),
        cmocka_unit_test(test_effective),
        cmocka_unit_test(test_mask_grad),
        cmocka_unit_test(test_merge_mean_with_w0),
        cmocka_unit_test(test_merge_mean_without_w0),
        cmocka_unit_test(test_merge_explicit_values),
        cmocka_unit_test(test_merge_bias),
        cmocka_unit_test(test_single_module),
        cmocka_unit_test(test_sparse_baseline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
