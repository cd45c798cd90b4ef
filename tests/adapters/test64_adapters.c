/* test64_adapters.c: finite-difference checks (double, central, h = 1e-6) of every adapter kind and
 * routing path through a whole small ViT with a frozen backbone: LoRA at each site, bottleneck
 * parallel / Houlsby / Pfeiffer (GELU and ReLU, with dropout under a fixed mask), Poly (h = 1) and MHR
 * (h = 2) routing with and without relaxed-Bernoulli noise (fixed u), mixed task ids in the batch.
 * Every entry of every adapter tensor; fails when max|analytic - numeric| / max|numeric| > 1e-6. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "adapters/adapters.h"
#include "core/common.h"
#include "core/rng.h"
#include "model/vit.h"

static const tsr_vit_config small = {.image_size = 8, .patch_size = 4, .channels = 2, .dim = 8, .depth = 2,
                                     .heads = 2, .mlp_dim = 12, .num_classes = 3, .ln_eps = 1e-6};
enum { B = 4 };
static const int labels[B] = {2, 0, 1, 1}, tasks[B] = {2, 0, 2, 1};

typedef struct { tsr_vit *m; tsr_adapters *ad; double *img; double *noise; } ctx;
static double loss_of(ctx *c) {
    assert_int_equal(tsr_adapters_begin_f64(c->ad, tasks, B, 1, 5, 77, c->noise), 0);
    return tsr_vit_forward_f64(c->m, c->img, labels, B);
}

static void run_case(const char *label, tsr_adapter_config ac) {
    printf("case %s\n", label);
    tsr_rng r;
    tsr_rng_seed(&r, 11);
    tsr_vit m;
    tsr_adapters ad;
    assert_int_equal(tsr_vit_create_f64(&m, &small, B), 0);
    for (size_t i = 0; i < m.num_params; i++) m.params_mem[i] = tsr_rng_normal(&r) * 0.4;
    for (int i = 0; i < small.depth * small.dim; i++) { m.params.ln1w[i] += 1; m.params.ln2w[i] += 1; }
    for (int i = 0; i < small.dim; i++) m.params.lnfw[i] += 1;
    ac.layer_max = -1;
    assert_int_equal(tsr_adapters_create_f64(&ad, &ac, small.depth, small.dim, small.mlp_dim, m.tokens, B), 0);
    for (size_t i = 0; i < ad.num_params; i++) ad.params[i] = tsr_rng_normal(&r) * 0.5;
    tsr_adapters_attach_f64(&ad, &m);
    size_t nn = 0;
    for (int k = 0; k < ad.n_mod; k++) nn += ad.mod[k].nZ;
    double *noise = tsr_malloc(sizeof(double) * (nn ? nn : 1));
    for (size_t i = 0; i < nn; i++) noise[i] = 0.05 + 0.9 * tsr_rng_uniform(&r);
    size_t nimg = (size_t)B * small.channels * small.image_size * small.image_size;
    double *img = tsr_malloc(sizeof(double) * nimg);
    for (size_t i = 0; i < nimg; i++) img[i] = tsr_rng_normal(&r);
    ctx c = {&m, &ad, img, noise};
    loss_of(&c);
    tsr_vit_zero_grad_f64(&m);
    tsr_adapters_zero_grad_f64(&ad);
    tsr_vit_backward_f64(&m, &TSR_VIT_ADAPTERS);
    double *an = tsr_malloc(sizeof(double) * ad.num_params);
    memcpy(an, ad.grads, sizeof(double) * ad.num_params);
    int nt = tsr_adapters_tensor_info_f64(&ad, ad.params, -1, NULL, 0, NULL, NULL, NULL);
    double worst = 0;
    for (int i = 0; i < nt; i++) {
        char name[128];
        int nd;
        int64_t shape[4];
        double *p;
        tsr_adapters_tensor_info_f64(&ad, ad.params, i, name, sizeof name, &nd, shape, &p);
        size_t cnt = 1;
        for (int d = 0; d < nd; d++) cnt *= (size_t)shape[d];
        double e = 0, mx = 1e-12;
        for (size_t j = 0; j < cnt; j++) {
            double old = p[j];
            p[j] = old + 1e-6;
            double lp = loss_of(&c);
            p[j] = old - 1e-6;
            double lm = loss_of(&c);
            p[j] = old;
            double num = (lp - lm) / 2e-6;
            e = fmax(e, fabs(num - an[p - ad.params + j]));
            mx = fmax(mx, fabs(num));
        }
        printf("  %-34s rel err %.2e (max |grad| %.2e)\n", name, e / mx, mx);
        worst = fmax(worst, e / mx);
        assert_true(e / mx < 1e-6);
    }
    printf("  worst %.2e over %d tensors\n", worst, nt);
    free(an); free(noise); free(img);
    tsr_adapters_destroy_f64(&ad);
    tsr_vit_destroy_f64(&m);
}

static void test_lora_all_sites(void **s) {
    (void)s;
    run_case("lora, all six sites, S=1", (tsr_adapter_config){.lora_sites = 63, .lora_rank = 3, .lora_alpha = 6,
                                                              .skills = 1, .heads = 1, .n_tasks = 3, .tau = 1});
}
static void test_poly_noise(void **s) {
    (void)s;
    run_case("poly (h=1, S=3), q v fc1, relaxed Bernoulli", (tsr_adapter_config){.lora_sites = 1 | 4 | 16,
        .lora_rank = 2, .lora_alpha = 2, .skills = 3, .heads = 1, .n_tasks = 3, .noise = 1, .tau = 1});
}
static void test_mhr(void **s) {
    (void)s;
    run_case("mhr (h=2, S=3), all sites, no noise", (tsr_adapter_config){.lora_sites = 63, .lora_rank = 2,
        .lora_alpha = 2, .skills = 3, .heads = 2, .n_tasks = 3, .tau = 1});
}
static void test_mhr_noise_tau(void **s) {
    (void)s;
    run_case("mhr (h=2, S=2), proj fc2, noise, tau 0.5", (tsr_adapter_config){.lora_sites = 8 | 32,
        .lora_rank = 2, .lora_alpha = 1, .skills = 2, .heads = 2, .n_tasks = 3, .noise = 1, .tau = 0.5});
}
static void test_bottleneck_parallel_dropout(void **s) {
    (void)s;
    run_case("bottleneck parallel, GELU, dropout 0.3 (fixed mask)", (tsr_adapter_config){.bn_sites = 1,
        .bn_dim = 3, .bn_scale = 0.7, .bn_dropout = 0.3, .skills = 1, .heads = 1, .n_tasks = 3, .tau = 1});
}
static void test_bottleneck_mhr_all(void **s) {
    (void)s;
    run_case("bottleneck parallel+houlsby+mlp_seq, MHR h=2 S=2, noise", (tsr_adapter_config){.bn_sites = 7,
        .bn_dim = 4, .bn_scale = 0.5, .skills = 2, .heads = 2, .n_tasks = 3, .noise = 1, .tau = 1});
}
static void test_pfeiffer_relu(void **s) {
    (void)s;
    run_case("pfeiffer (mlp_seq), ReLU, S=3 h=1", (tsr_adapter_config){.bn_sites = 4, .bn_dim = 3,
        .bn_scale = 1, .bn_relu = 1, .skills = 3, .heads = 1, .n_tasks = 3, .tau = 1});
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lora_all_sites), cmocka_unit_test(test_poly_noise),
        cmocka_unit_test(test_mhr), cmocka_unit_test(test_mhr_noise_tau),
        cmocka_unit_test(test_bottleneck_parallel_dropout), cmocka_unit_test(test_bottleneck_mhr_all),
        cmocka_unit_test(test_pfeiffer_relu)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
