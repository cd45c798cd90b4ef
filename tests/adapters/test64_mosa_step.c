/* test64_mosa_step.c: finite-difference checks (double) of MoSA training through a whole ViT: the
 * gradient of the dense storage equals the drawn module's masked gradient, per-module bias copies get
 * their module's gradient, and the two-view consistency loss
 *   L = CE(z1, y) + c [KL(sg p2 || p1) + KL(sg p1 || p2)]
 * (stop-gradient: q1 = p1, q2 = p2 held at their current values) is differentiated correctly, for a
 * bottleneck adapter (split up and down, with biases) and for a routed MHR LoRA inventory (MoSA x MHR).
 * Also: two steps draw different modules somewhere, swapping in the merged adapter and back restores the
 * dense storage bit for bit, and the two consistency views draw independent dropout masks while a
 * recomputed view reproduces its first forward exactly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "adapters/adapt_step.h"
#include "core/common.h"
#include "core/rng.h"
#include "model/vit.h"

static const tsr_vit_config small = {.image_size = 8, .patch_size = 4, .channels = 2, .dim = 8, .depth = 2,
                                     .heads = 2, .mlp_dim = 12, .num_classes = 3, .ln_eps = 1e-6};
enum { B = 4 };
static const int labels[B] = {2, 0, 1, 1}, tasks[B] = {1, 0, 1, 2};
static const long STEP = 3;
static const double C = 0.5;

typedef struct { tsr_vit *m; tsr_adapters *ad; tsr_mosa *mo; double *img, *q1, *q2; double c; } ctx;

static void probs_view(ctx *x, int view, double *out) {
    tsr_mosa_begin(x->mo, STEP, view);
    assert_int_equal(tsr_adapters_begin_f64(x->ad, tasks, B, 1, STEP, 9, NULL), 0);
    tsr_vit_forward_f64(x->m, x->img, labels, B);
    if (out) memcpy(out, x->m->acts.probs, sizeof(double) * B * small.num_classes);
    tsr_mosa_end(x->mo);
}
/* the surrogate whose gradient the step computes: q1, q2 fixed */
static double surrogate(ctx *x) {
    int K = small.num_classes;
    double p1[B * 3], p2[B * 3], L = 0;
    probs_view(x, 0, p1);
    for (int b = 0; b < B; b++) L -= log(p1[b * K + labels[b]]) / B;
    if (x->c > 0) {
        probs_view(x, 1, p2);
        for (int i = 0; i < B * K; i++) L += x->c * (x->q2[i] * (log(x->q2[i]) - log(p1[i])) + x->q1[i] * (log(x->q1[i]) - log(p2[i]))) / B;
    }
    return L;
}

static double check(const char *what, double *p, const double *an, size_t n, ctx *x) {
    double e = 0, mx = 1e-12;
    for (size_t j = 0; j < n; j++) {
        double old = p[j];
        p[j] = old + 1e-6;
        double lp = surrogate(x);
        p[j] = old - 1e-6;
        double lm = surrogate(x);
        p[j] = old;
        double num = (lp - lm) / 2e-6;
        e = fmax(e, fabs(num - an[j]));
        mx = fmax(mx, fabs(num));
    }
    printf("  %-40s rel err %.2e (max |grad| %.2e)\n", what, e / mx, mx);
    return e / mx;
}

static void run(const char *label, tsr_adapter_config ac, int split, double c) {
    printf("case %s, consistency %g\n", label, c);
    tsr_rng r;
    tsr_rng_seed(&r, 5);
    tsr_vit m;
    tsr_adapters ad;
    tsr_mosa mo;
    assert_int_equal(tsr_vit_create_f64(&m, &small, B), 0);
    for (size_t i = 0; i < m.num_params; i++) m.params_mem[i] = tsr_rng_normal(&r) * 0.4;
    for (int i = 0; i < small.depth * small.dim; i++) { m.params.ln1w[i] += 1; m.params.ln2w[i] += 1; }
    for (int i = 0; i < small.dim; i++) m.params.lnfw[i] += 1;
    ac.layer_max = -1;
    assert_int_equal(tsr_adapters_create_f64(&ad, &ac, small.depth, small.dim, small.mlp_dim, m.tokens, B), 0);
    for (size_t i = 0; i < ad.num_params; i++) ad.params[i] = tsr_rng_normal(&r) * 0.5; /* = W0 */
    tsr_adapters_attach_f64(&ad, &m);
    assert_int_equal(tsr_mosa_create_f64(&mo, &ad, 3, split, 0, 1234), 0);
    /* move the dense storage away from W0 and the bias copies apart, as training would */
    for (size_t i = 0; i < ad.num_params; i++) ad.params[i] += tsr_rng_normal(&r) * 0.3;
    for (size_t i = 0; i < mo.nbias; i++) mo.bias_params[i] += tsr_rng_normal(&r) * 0.3;
    size_t nimg = (size_t)B * small.channels * small.image_size * small.image_size;
    double *img = tsr_malloc(sizeof(double) * nimg), q1[B * 3], q2[B * 3];
    for (size_t i = 0; i < nimg; i++) img[i] = tsr_rng_normal(&r);
    ctx x = {&m, &ad, &mo, img, q1, q2, c};
    probs_view(&x, 0, q1);
    probs_view(&x, 1, q2);
    /* modules differ between the views somewhere */
    int differ = 0;
    for (int k = 0; k < ad.n_mod; k++)
        for (int s = 0; s < 2; s++) {
            tsr_mosa_begin(&mo, STEP, 0);
            int a0 = mo.cur[2 * k + s];
            tsr_mosa_end(&mo);
            tsr_mosa_begin(&mo, STEP, 1);
            differ |= a0 != mo.cur[2 * k + s];
            tsr_mosa_end(&mo);
        }
    assert_true(differ);
    tsr_vit_zero_grad_f64(&m);
    tsr_adapters_zero_grad_f64(&ad);
    memset(mo.bias_grads, 0, sizeof(double) * mo.nbias);
    tsr_adapt_loss_grad_f64(&m, &ad, &mo, &TSR_VIT_ADAPTERS, img, labels, tasks, B, STEP, 9, c, NULL);
    double *an = tsr_malloc(sizeof(double) * ad.num_params), *anb = tsr_malloc(sizeof(double) * (mo.nbias + 1));
    memcpy(an, ad.grads, sizeof(double) * ad.num_params);
    memcpy(anb, mo.bias_grads, sizeof(double) * mo.nbias);
    assert_true(check("dense adapter storage (masked)", ad.params, an, ad.num_params, &x) < 1e-6);
    if (mo.nbias) assert_true(check("per-module bias copies", mo.bias_params, anb, mo.nbias, &x) < 1e-6);
    /* merged swap and back is exact */
    double *keep = tsr_malloc(sizeof(double) * ad.num_params);
    memcpy(keep, ad.params, sizeof(double) * ad.num_params);
    tsr_mosa_swap_merged_f64(&mo, 1);
    tsr_mosa_swap_merged_f64(&mo, 0);
    assert_memory_equal(keep, ad.params, sizeof(double) * ad.num_params);
    free(keep); free(an); free(anb); free(img);
    tsr_mosa_destroy_f64(&mo);
    tsr_adapters_destroy_f64(&ad);
    tsr_vit_destroy_f64(&m);
}

static void test_bottleneck_split_both(void **s) {
    (void)s;
    tsr_adapter_config ac = {.bn_sites = 1, .bn_dim = 4, .bn_scale = 0.5, .skills = 1, .heads = 1, .n_tasks = 3, .tau = 1};
    run("bottleneck parallel, split up and down", ac, TSR_MOSA_SPLIT_UP | TSR_MOSA_SPLIT_DOWN, 0);
    run("bottleneck parallel, split up and down", ac, TSR_MOSA_SPLIT_UP | TSR_MOSA_SPLIT_DOWN, C);
    /* with dropout: each view draws its own masks, and the step's recomputed view 1 must use the masks of its
     * first forward (the surrogate recomputes both views: a mismatch shows up as a gradient error) */
    ac.bn_dropout = 0.3;
    run("bottleneck parallel, split up and down, dropout 0.3", ac, TSR_MOSA_SPLIT_UP | TSR_MOSA_SPLIT_DOWN, C);
}

/* The consistency views draw independent dropout masks: with one module (N = 1, so both views use the
 * same weights) the views' outputs differ only through dropout, and they must differ; a view run again
 * (as the step's backward recomputes view 1) reproduces its first forward bit for bit; outside the
 * views (view 0 after tsr_mosa_end) the masks are those of view 0. */
static void test_views_draw_own_dropout(void **s) {
    (void)s;
    tsr_rng r;
    tsr_rng_seed(&r, 17);
    tsr_vit m;
    tsr_adapters ad;
    tsr_mosa mo;
    assert_int_equal(tsr_vit_create_f64(&m, &small, B), 0);
    for (size_t i = 0; i < m.num_params; i++) m.params_mem[i] = tsr_rng_normal(&r) * 0.4;
    for (int i = 0; i < small.dim; i++) m.params.lnfw[i] += 1;
    tsr_adapter_config ac = {.bn_sites = 1, .bn_dim = 6, .bn_scale = 0.5, .bn_dropout = 0.5, .skills = 1, .heads = 1,
                             .n_tasks = 3, .tau = 1, .layer_max = -1};
    assert_int_equal(tsr_adapters_create_f64(&ad, &ac, small.depth, small.dim, small.mlp_dim, m.tokens, B), 0);
    for (size_t i = 0; i < ad.num_params; i++) ad.params[i] = tsr_rng_normal(&r) * 0.5;
    tsr_adapters_attach_f64(&ad, &m);
    assert_int_equal(tsr_mosa_create_f64(&mo, &ad, 1, TSR_MOSA_SPLIT_UP, 0, 1234), 0);
    size_t nimg = (size_t)B * small.channels * small.image_size * small.image_size;
    double *img = tsr_malloc(sizeof(double) * nimg), p0[B * 3], p1[B * 3], p1b[B * 3], p0b[B * 3];
    for (size_t i = 0; i < nimg; i++) img[i] = tsr_rng_normal(&r);
    ctx x = {&m, &ad, &mo, img, NULL, NULL, 0};
    probs_view(&x, 0, p0);
    probs_view(&x, 1, p1);
    probs_view(&x, 1, p1b);
    assert_int_equal(ad.view, 0); /* tsr_mosa_end leaves view 0 */
    probs_view(&x, 0, p0b);
    double dmax = 0;
    for (int i = 0; i < B * small.num_classes; i++) dmax = fmax(dmax, fabs(p0[i] - p1[i]));
    printf("  views 0 and 1, one module: max |p0 - p1| = %.3g (dropout alone)\n", dmax);
    assert_true(dmax > 1e-6);
    assert_memory_equal(p1, p1b, sizeof p1); /* the recomputed view equals its first forward */
    assert_memory_equal(p0, p0b, sizeof p0);
    /* without dropout the two views of one module coincide: the difference above is the masks' */
    ad.cfg.bn_dropout = 0;
    probs_view(&x, 0, p0);
    probs_view(&x, 1, p1);
    assert_memory_equal(p0, p1, sizeof p0);
    free(img);
    tsr_mosa_destroy_f64(&mo);
    tsr_adapters_destroy_f64(&ad);
    tsr_vit_destroy_f64(&m);
}
static void test_bottleneck_split_up(void **s) {
    (void)s;
    tsr_adapter_config ac = {.bn_sites = 4, .bn_dim = 3, .bn_scale = 1, .skills = 1, .heads = 1, .n_tasks = 3, .tau = 1};
    run("mlp_seq bottleneck, shared down, split up", ac, TSR_MOSA_SPLIT_UP, C);
}
static void test_mosa_x_mhr(void **s) {
    (void)s;
    tsr_adapter_config ac = {.lora_sites = 1 | 8, .lora_rank = 2, .lora_alpha = 2, .skills = 2, .heads = 2, .n_tasks = 3, .tau = 1};
    run("MoSA x MHR LoRA inventory (q, proj)", ac, TSR_MOSA_SPLIT_UP | TSR_MOSA_SPLIT_DOWN, C);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_bottleneck_split_both), cmocka_unit_test(test_bottleneck_split_up),
                                       cmocka_unit_test(test_mosa_x_mhr),
                                       cmocka_unit_test(test_views_draw_own_dropout)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
