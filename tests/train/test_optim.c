/* test_optim.c: AdamW, the learning-rate schedule and gradient clipping (src/train/optim.c).
 *
 * The expected numbers were produced once with Debian's /usr/bin/python3 and torch 1.13 by this
 * script (the printed values are pasted below as constants):
 *
 *   import torch
 *   def f(xs): return ", ".join("%.9g" % x for x in xs)
 *   # (1) one group, 6 elements, 5 steps
 *   p0 = [0.5, -1.0, 0.25, 2.0, -0.75, 0.0]
 *   G = [[0.1, -0.2, 0.3, -0.4, 0.5, 0.0],
 *        [0.05, 0.3, -0.1, -0.2, 0.4, 1.0],
 *        [-0.3, 0.1, 0.2, 0.0, -0.6, -0.5],
 *        [0.2, -0.05, -0.4, 0.1, 0.3, 0.25],
 *        [0.0, 0.2, 0.1, -0.3, -0.2, 0.75]]
 *   p = torch.tensor(p0, requires_grad=True)
 *   opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
 *   for g in G:
 *       p.grad = torch.tensor(g)
 *       opt.step()
 *       print("{" + f(p.detach().tolist()) + "},")
 *   st = opt.state[p]
 *   print("m", f(st["exp_avg"].tolist())); print("v", f(st["exp_avg_sq"].tolist()))
 *   # (2) 10-element buffer: group A = [1,5) lr_scale 1 wd 0.05, group B = [6,9) lr_scale 0.25 wd 0
 *   b0 = [0.3, -0.2, 0.7, 1.5, -0.4, 0.9, -1.2, 0.05, 0.6, -0.8]
 *   GB = [[0.5, 0.1, -0.3, 0.2, 0.4, -0.5, 0.3, -0.1, 0.2, 0.9],
 *         [-0.4, 0.2, 0.1, -0.5, 0.3, 0.6, -0.2, 0.4, -0.3, -0.7],
 *         [0.2, -0.3, 0.4, 0.1, -0.1, 0.8, 0.5, 0.2, 0.1, 0.3]]
 *   pa = torch.tensor(b0[1:5], requires_grad=True); pb = torch.tensor(b0[6:9], requires_grad=True)
 *   opt = torch.optim.AdamW([{"params": [pa], "lr": 1e-2 * 1.0, "weight_decay": 0.05},
 *                            {"params": [pb], "lr": 1e-2 * 0.25, "weight_decay": 0.0}],
 *                           betas=(0.9, 0.999), eps=1e-8)
 *   for g in GB:
 *       pa.grad = torch.tensor(g[1:5]); pb.grad = torch.tensor(g[6:9]); opt.step()
 *   print("groups A", f(pa.detach().tolist()), "B", f(pb.detach().tolist()))
 *   # (3) clip_grad_norm_ over the same two groups
 *   for mx in (0.5, 10.0):
 *       pa.grad = torch.tensor(GB[0][1:5]); pb.grad = torch.tensor(GB[0][6:9])
 *       n = torch.nn.utils.clip_grad_norm_([pa, pb], max_norm=mx)
 *       print("clip", mx, "%.9g" % n.item(), "A", f(pa.grad.tolist()), "B", f(pb.grad.tolist()))
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "train/optim.h"

#define TOL 1e-6

static void assert_close(double got, double want, double tol, const char *what, int i) {
    if (!(fabs(got - want) <= tol)) {
        print_error("%s[%d]: got %.9g, expected %.9g (tolerance %g)\n", what, i, got, want, tol);
        fail();
    }
}

/* ------------------------------------------------------------------ (1) one group vs torch */

static const float P0[6] = {0.5f, -1.0f, 0.25f, 2.0f, -0.75f, 0.0f};
static const float G[5][6] = {{0.1f, -0.2f, 0.3f, -0.4f, 0.5f, 0.0f},
                              {0.05f, 0.3f, -0.1f, -0.2f, 0.4f, 1.0f},
                              {-0.3f, 0.1f, 0.2f, 0.0f, -0.6f, -0.5f},
                              {0.2f, -0.05f, -0.4f, 0.1f, 0.3f, 0.25f},
                              {0.0f, 0.2f, 0.1f, -0.3f, -0.2f, 0.75f}};
static const double TORCH_P[5][6] = {
    {0.489500016, -0.989000022, 0.239749998, 2.00800014, -0.759249985, 0},
    {0.479688704, -0.990488052, 0.235508069, 2.01531386, -0.768371999, -0.00744136795},
    {0.482681274, -0.993050933, 0.229241714, 2.02050424, -0.768805325, -0.00972033013},
    {0.48153019, -0.994172335, 0.229886144, 2.02297401, -0.770849407, -0.0128074922},
    {0.480483711, -0.997313797, 0.229401961, 2.02711606, -0.771251023, -0.0179744177},
};
static const double TORCH_M[6] = {0.00390599947, 0.0323479995, 0.00259300135,
                                  -0.0618239976, 0.0203649979, 0.129899994};
static const double TORCH_V[6] = {0.000142232675, 0.000182048039, 0.000309370633,
                                  0.00029923112,  0.000897712365, 0.00187144079};

static void test_adamw_matches_torch(void **state) {
    (void)state;
    tsr_adamw o;
    tsr_adamw_init(&o, 6, 0.9, 0.999, 1e-8);
    tsr_adamw_add_group(&o, 0, 6, 1.0, 0.1);
    float p[6];
    memcpy(p, P0, sizeof p);
    for (int s = 0; s < 5; s++) {
        tsr_adamw_step(&o, p, G[s], 1e-2);
        assert_int_equal(o.t, s + 1);
        for (int i = 0; i < 6; i++) assert_close(p[i], TORCH_P[s][i], TOL, "param", s * 6 + i);
    }
    for (int i = 0; i < 6; i++) {
        assert_close(o.m[i], TORCH_M[i], 1e-6 * fabs(TORCH_M[i]), "exp_avg", i);
        assert_close(o.v[i], TORCH_V[i], 1e-6 * fabs(TORCH_V[i]), "exp_avg_sq", i);
    }
    tsr_adamw_free(&o);
    assert_null(o.m);
    tsr_adamw_free(&o); /* twice is safe */
}

/* The same problem tiled over a large group, so the step runs on the OpenMP path, with 1 and with
 * several threads: every element must follow the torch trajectory of its column. */
static void test_adamw_large_parallel(void **state) {
    (void)state;
    enum { REPS = 40000, NL = 6 * REPS };
    float *p = malloc(NL * sizeof(float)), *g = malloc(5 * (size_t)NL * sizeof(float));
    float *p1 = malloc(NL * sizeof(float));
    assert_non_null(p);
    assert_non_null(g);
    assert_non_null(p1);
    for (size_t i = 0; i < NL; i++) {
        p[i] = P0[i % 6];
        for (int s = 0; s < 5; s++) g[(size_t)s * NL + i] = G[s][i % 6];
    }
    memcpy(p1, p, NL * sizeof(float));
    int nthreads[2] = {1, 4};
    for (int k = 0; k < 2; k++) {
        float *q = k == 0 ? p1 : p;
        omp_set_num_threads(nthreads[k]);
        tsr_adamw o;
        tsr_adamw_init(&o, NL, 0.9, 0.999, 1e-8);
        tsr_adamw_add_group(&o, 0, NL, 1.0, 0.1);
        for (int s = 0; s < 5; s++) tsr_adamw_step(&o, q, g + (size_t)s * NL, 1e-2);
        for (size_t i = 0; i < NL; i++) assert_close(q[i], TORCH_P[4][i % 6], TOL, "param", (int)i);
        tsr_adamw_free(&o);
    }
    assert_memory_equal(p, p1, NL * sizeof(float)); /* bitwise the same for 1 and 4 threads */
    free(p);
    free(p1);
    free(g);
}

/* ------------------------------------------------------------------ (2) groups vs torch */

static const float B0[10] = {0.3f, -0.2f, 0.7f, 1.5f, -0.4f, 0.9f, -1.2f, 0.05f, 0.6f, -0.8f};
static const float GB[3][10] = {{0.5f, 0.1f, -0.3f, 0.2f, 0.4f, -0.5f, 0.3f, -0.1f, 0.2f, 0.9f},
                                {-0.4f, 0.2f, 0.1f, -0.5f, 0.3f, 0.6f, -0.2f, 0.4f, -0.3f, -0.7f},
                                {0.2f, -0.3f, 0.4f, 0.1f, -0.1f, 0.8f, 0.5f, 0.2f, 0.1f, 0.3f}};
static const double TORCH_A[4] = {-0.218671158, 0.709845126, 1.49437475, -0.425404906};
static const double TORCH_B[3] = {-1.20432043, 0.0494312085, 0.598153412};

static void make_two_groups(tsr_adamw *o) {
    tsr_adamw_init(o, 10, 0.9, 0.999, 1e-8);
    tsr_adamw_add_group(o, 6, 3, 0.25, 0.0); /* added out of order on purpose */
    tsr_adamw_add_group(o, 1, 4, 1.0, 0.05);
}

static void test_groups_match_torch(void **state) {
    (void)state;
    tsr_adamw o;
    make_two_groups(&o);
    float p[10];
    memcpy(p, B0, sizeof p);
    for (int s = 0; s < 3; s++) tsr_adamw_step(&o, p, GB[s], 1e-2);
    for (int i = 0; i < 4; i++) assert_close(p[1 + i], TORCH_A[i], TOL, "group A", i);
    for (int i = 0; i < 3; i++) assert_close(p[6 + i], TORCH_B[i], TOL, "group B", i);
    /* elements 0, 5 and 9 belong to no group: bitwise unchanged, moments untouched */
    const int outside[3] = {0, 5, 9};
    for (int k = 0; k < 3; k++) {
        int i = outside[k];
        assert_memory_equal(&p[i], &B0[i], sizeof(float));
        assert_true(o.m[i] == 0.0f && o.v[i] == 0.0f);
    }
    tsr_adamw_free(&o);
}

/* Hand-computed first steps. At t = 1, mhat = g and vhat = g^2, so the Adam part is
 * glr * g / (|g| + eps); with g = 0 only the decay acts. */
static void test_lr_scale_and_no_decay(void **state) {
    (void)state;
    tsr_adamw o;
    tsr_adamw_init(&o, 8, 0.9, 0.999, 1e-8);
    tsr_adamw_add_group(&o, 0, 4, 0.5, 0.0);  /* scaled lr, no decay */
    tsr_adamw_add_group(&o, 4, 4, 2.0, 0.25); /* scaled lr, decay */
    float p[8] = {1.0f, -2.0f, 0.5f, 3.0f, 1.0f, -2.0f, 0.5f, 3.0f};
    const float g[8] = {0.4f, -0.1f, 0.0f, 2.0f, 0.4f, -0.1f, 0.0f, 2.0f};
    float p0[8];
    memcpy(p0, p, sizeof p);
    const double lr = 0.01;
    tsr_adamw_step(&o, p, g, lr);
    for (int i = 0; i < 8; i++) {
        double glr = i < 4 ? lr * 0.5 : lr * 2.0, wd = i < 4 ? 0.0 : 0.25;
        double want = (double)p0[i] * (1.0 - glr * wd) - glr * g[i] / (fabs(g[i]) + 1e-8);
        assert_close(p[i], want, TOL, "param", i); /* float rounding of p: ~2.4e-7 at 3 */
    }
    /* no decay and no gradient: exactly unchanged; decay only: p (1 - 0.02 * 0.25) */
    assert_true(p[2] == p0[2]);
    assert_close(p[6], 0.5 * (1.0 - 0.005), 1e-7, "decay only", 6);
    tsr_adamw_free(&o);
}

/* ------------------------------------------------------------------ schedule */

static void test_schedule(void **state) {
    (void)state;
    const double lr = 1e-3, r = 0.1, mn = r * lr;
    /* total 110, warmup 10: cosine over steps 10..110 */
    assert_close(tsr_lr_schedule(0, 110, 10, lr, r), 0.0, 1e-15, "step 0", 0);
    assert_close(tsr_lr_schedule(1, 110, 10, lr, r), 1e-4, 1e-15, "step 1", 1);
    assert_close(tsr_lr_schedule(5, 110, 10, lr, r), 5e-4, 1e-15, "step 5", 5);
    assert_close(tsr_lr_schedule(10, 110, 10, lr, r), lr, 1e-15, "warmup end", 10);
    assert_close(tsr_lr_schedule(35, 110, 10, lr, r), mn + (lr - mn) * (1 + cos(3.14159265358979323846 / 4)) / 2, 1e-15,
                 "quarter", 35);
    assert_close(tsr_lr_schedule(60, 110, 10, lr, r), (lr + mn) / 2, 1e-15, "middle", 60);
    assert_close(tsr_lr_schedule(110, 110, 10, lr, r), mn, 1e-15, "end", 110);
    assert_close(tsr_lr_schedule(500, 110, 10, lr, r), mn, 1e-15, "past end", 500);
    assert_close(tsr_lr_schedule(-3, 110, 10, lr, r), 0.0, 1e-15, "negative step", -3);
    /* non-increasing after warmup, increasing during it */
    for (long s = 1; s <= 120; s++) {
        double a = tsr_lr_schedule(s - 1, 110, 10, lr, r), b = tsr_lr_schedule(s, 110, 10, lr, r);
        if (s <= 10) assert_true(b > a);
        else assert_true(b <= a);
    }
    /* no warmup: starts at lr; min ratio 0 ends at 0 */
    assert_close(tsr_lr_schedule(0, 100, 0, lr, 0.0), lr, 1e-15, "no warmup", 0);
    assert_close(tsr_lr_schedule(50, 100, 0, lr, 0.0), lr / 2, 1e-15, "no warmup middle", 50);
    assert_close(tsr_lr_schedule(100, 100, 0, lr, 0.0), 0.0, 1e-15, "no warmup end", 100);
    /* total <= warmup: warmup, then the minimum */
    assert_close(tsr_lr_schedule(5, 10, 10, lr, r), 5e-4, 1e-15, "short", 5);
    assert_close(tsr_lr_schedule(10, 10, 10, lr, r), mn, 1e-15, "short end", 10);
}

/* ------------------------------------------------------------------ clipping */

/* Groups [0,2) and [3,4) of {3, 4, 100, 12}: norm sqrt(9 + 16 + 144) = 13; element 2 is ignored. */
static void test_clip_hand(void **state) {
    (void)state;
    tsr_adamw o;
    tsr_adamw_init(&o, 4, 0.9, 0.999, 1e-8);
    tsr_adamw_add_group(&o, 0, 2, 1.0, 0.0);
    tsr_adamw_add_group(&o, 3, 1, 1.0, 0.0);
    float g[4] = {3, 4, 100, 12};

    assert_close(tsr_clip_grad_norm(g, &o, 0.0), 13.0, 1e-12, "norm (no clip)", 0);
    assert_true(g[0] == 3 && g[1] == 4 && g[2] == 100 && g[3] == 12);
    assert_close(tsr_clip_grad_norm(g, &o, 20.0), 13.0, 1e-12, "norm (below max)", 0);
    assert_true(g[0] == 3 && g[1] == 4 && g[2] == 100 && g[3] == 12);

    assert_close(tsr_clip_grad_norm(g, &o, 6.5), 13.0, 1e-12, "norm (clipped)", 0);
    const double c = 6.5 / (13.0 + 1e-6);
    assert_close(g[0], 3 * c, 1e-6, "clipped", 0);
    assert_close(g[1], 4 * c, 1e-6, "clipped", 1);
    assert_true(g[2] == 100);
    assert_close(g[3], 12 * c, 1e-6, "clipped", 3);
    assert_close(tsr_clip_grad_norm(g, &o, 0.0), 6.5, 1e-6, "norm after clipping", 0);

    /* torch semantics: max_norm == norm still scales by max/(norm + 1e-6) < 1 */
    float h[4] = {3, 4, 100, 12};
    tsr_clip_grad_norm(h, &o, 13.0);
    assert_true(h[0] < 3.0f && h[3] < 12.0f);
    assert_close(h[3], 12 * 13.0 / (13.0 + 1e-6), 1e-6, "at max", 3);
    tsr_adamw_free(&o);
}

static void test_clip_matches_torch(void **state) {
    (void)state;
    static const double WANT_A[4] = {0.0753777251, -0.226133168, 0.15075545, 0.3015109};
    static const double WANT_B[3] = {0.226133168, -0.0753777251, 0.15075545};
    tsr_adamw o;
    make_two_groups(&o);
    float g[10];
    memcpy(g, GB[0], sizeof g);
    assert_close(tsr_clip_grad_norm(g, &o, 0.5), 0.663324952, 1e-7, "torch norm", 0);
    for (int i = 0; i < 4; i++) assert_close(g[1 + i], WANT_A[i], 1e-7, "clipped A", i);
    for (int i = 0; i < 3; i++) assert_close(g[6 + i], WANT_B[i], 1e-7, "clipped B", i);
    const int outside[3] = {0, 5, 9};
    for (int k = 0; k < 3; k++) assert_true(g[outside[k]] == GB[0][outside[k]]);
    /* max_norm 10: the same norm, gradients untouched */
    memcpy(g, GB[0], sizeof g);
    assert_close(tsr_clip_grad_norm(g, &o, 10.0), 0.663324952, 1e-7, "torch norm", 1);
    assert_memory_equal(g, GB[0], sizeof g);
    tsr_adamw_free(&o);
}

static void test_clip_nonfinite(void **state) {
    (void)state;
    tsr_adamw o;
    tsr_adamw_init(&o, 3, 0.9, 0.999, 1e-8);
    tsr_adamw_add_group(&o, 0, 3, 1.0, 0.0);
    float g[3] = {1.0f, INFINITY, 2.0f};
    assert_true(isinf(tsr_clip_grad_norm(g, &o, 1.0)));
    assert_true(g[0] == 1.0f && isinf(g[1]) && g[2] == 2.0f);
    g[1] = NAN;
    assert_true(isnan(tsr_clip_grad_norm(g, &o, 1.0)));
    assert_true(g[0] == 1.0f && g[2] == 2.0f);
    tsr_adamw_free(&o);
}

/* The norm is summed in fixed blocks: bitwise the same for any number of threads. */
static void test_clip_thread_independent(void **state) {
    (void)state;
    enum { NL = 300001 };
    float *g = malloc(NL * sizeof(float));
    assert_non_null(g);
    uint64_t x = 7;
    for (size_t i = 0; i < NL; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        g[i] = (float)((double)(x >> 11) * 0x1.0p-53 - 0.5);
    }
    tsr_adamw o;
    tsr_adamw_init(&o, NL, 0.9, 0.999, 1e-8);
    tsr_adamw_add_group(&o, 0, 100000, 1.0, 0.0);
    tsr_adamw_add_group(&o, 100001, NL - 100001, 1.0, 0.0);
    double serial = 0;
    for (size_t i = 0; i < NL; i++)
        if (i != 100000) serial += (double)g[i] * g[i];
    double norms[3];
    const int nt[3] = {1, 3, 4};
    for (int k = 0; k < 3; k++) {
        omp_set_num_threads(nt[k]);
        norms[k] = tsr_clip_grad_norm(g, &o, 0.0);
    }
    assert_close(norms[0], sqrt(serial), 1e-9, "norm", 0);
    assert_true(norms[0] == norms[1] && norms[0] == norms[2]);
    tsr_adamw_free(&o);
    free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_matches_torch),
        cmocka_unit_test(test_adamw_large_parallel),
        cmocka_unit_test(test_groups_match_torch),
        cmocka_unit_test(test_lr_scale_and_no_decay),
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_clip_hand),
        cmocka_unit_test(test_clip_matches_torch),
        cmocka_unit_test(test_clip_nonfinite),
        cmocka_unit_test(test_clip_thread_independent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
