/* test64_adapter_ops.c: the operations on trained adapter sets (adapter_ops.c), in double precision:
 *   - MHR-mu averaging equals a hand-computed mean over skills of every A, B and bias block (LN copied);
 *   - the averaged (S = 1) adapter computes what the routed one computes with uniform routing (every
 *     z of the task equal, so w = 1/S up to the 1e-12 of the normalisation): LoRA at all six sites and
 *     bottlenecks at all three positions, MHR h = 2, S = 3; and differs under non-uniform routing;
 *   - copying skills keeps every skill tensor bit for bit, draws every new routing row in [-1e-3, 1e-3]
 *     reproducibly from the seed, and a copied set with the source's row computes the source's logits;
 *   - merging LoRA into the backbone gives the logits of the unmerged adapters to 1e-12 (S = 1, Poly,
 *     MHR), detaching restores the plain backbone exactly, and a bottleneck set or a task out of range is
 *     refused with the model unchanged. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "adapters/adapter_ops.h"
#include "adapters/adapters.h"
#include "core/common.h"
#include "core/rng.h"
#include "model/vit.h"

static const tsr_vit_config small = {.image_size = 8, .patch_size = 4, .channels = 2, .dim = 8, .depth = 2,
                                     .heads = 2, .mlp_dim = 12, .num_classes = 3, .ln_eps = 1e-6};
enum { B = 4, K = 3 };

static void make_vit(tsr_vit *m, uint64_t seed) {
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    assert_int_equal(tsr_vit_create_f64(m, &small, B), 0);
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] = tsr_rng_normal(&r) * 0.4;
    for (int i = 0; i < small.depth * small.dim; i++) {
        m->params.ln1w[i] += 1;
        m->params.ln2w[i] += 1;
    }
    for (int i = 0; i < small.dim; i++) m->params.lnfw[i] += 1;
}

static void make_ad(tsr_adapters *ad, tsr_adapter_config c, uint64_t seed, double scale) {
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    c.layer_max = -1;
    assert_int_equal(tsr_adapters_create_f64(ad, &c, small.depth, small.dim, small.mlp_dim, tsr_vit_tokens(&small), B), 0);
    ad->ln_eps = small.ln_eps;
    for (size_t i = 0; i < ad->num_params; i++) ad->params[i] = tsr_rng_normal(&r) * scale;
}

static double *make_images(uint64_t seed) {
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    size_t n = (size_t)B * small.channels * small.image_size * small.image_size;
    double *x = tsr_malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) x[i] = tsr_rng_normal(&r);
    return x;
}

/* logits (B, K) of m on x, with ad attached (evaluation mode, task ids) or, ad NULL, the backbone alone */
static void logits_of(tsr_vit *m, tsr_adapters *ad, const int *tasks, const double *x, double *out) {
    tsr_adapters_attach_f64(ad, m);
    if (ad) assert_int_equal(tsr_adapters_begin_f64(ad, tasks, B, 0, 0, 0, NULL), 0);
    tsr_vit_forward_f64(m, x, NULL, B);
    memcpy(out, m->acts.logits, sizeof(double) * B * K);
    tsr_adapters_attach_f64(NULL, m);
}

static double max_diff(const double *a, const double *b, size_t n) {
    double e = 0;
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs(a[i] - b[i]));
    return e;
}

/* tensor `name` of ad (params): pointer and element count, or NULL */
static double *tensor(const tsr_adapters *ad, const char *name, size_t *cnt, int64_t shape[4]) {
    int n = tsr_adapters_tensor_info_f64(ad, ad->params, -1, NULL, 0, NULL, NULL, NULL);
    for (int i = 0; i < n; i++) {
        char nm[128];
        int nd;
        double *p;
        tsr_adapters_tensor_info_f64(ad, ad->params, i, nm, sizeof nm, &nd, shape, &p);
        if (strcmp(nm, name) == 0) {
            *cnt = 1;
            for (int d = 0; d < nd; d++) *cnt *= (size_t)shape[d];
            return p;
        }
    }
    return NULL;
}

/* MHR h = 2, S = 3: LoRA at every site, bottlenecks at every position (GELU, no dropout) */
static const tsr_adapter_config mhr_all = {.lora_sites = 63, .lora_rank = 2, .lora_alpha = 3, .bn_sites = 7,
                                           .bn_dim = 4, .bn_scale = 0.6, .skills = 3, .heads = 2, .n_tasks = 2,
                                           .tau = 1};

static void test_average_is_the_mean_of_skills(void **st) {
    (void)st;
    tsr_adapters src, dst;
    make_ad(&src, mhr_all, 1, 0.5);
    tsr_adapter_config c1 = mhr_all;
    c1.skills = 1;
    c1.n_tasks = 4;
    make_ad(&dst, c1, 2, 0.5);
    tsr_adapters_average_skills_f64(&src, &dst);
    int n = tsr_adapters_tensor_info_f64(&dst, dst.params, -1, NULL, 0, NULL, NULL, NULL), checked = 0;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        char name[128];
        int nd;
        int64_t shape[4], sshape[4];
        double *d;
        tsr_adapters_tensor_info_f64(&dst, dst.params, i, name, sizeof name, &nd, shape, &d);
        size_t cnt = 1, scnt;
        for (int k = 0; k < nd; k++) cnt *= (size_t)shape[k];
        const double *s = tensor(&src, name, &scnt, sshape);
        assert_non_null(s);
        const char *suf = strrchr(name, '.') + 1;
        if (strcmp(suf, "A") == 0 || strcmp(suf, "B") == 0) {
            /* (h, S, rows, cols) -> (h, 1, rows, cols): block (q, 0) = mean_s block (q, s) */
            int h = (int)sshape[0], S = (int)sshape[1];
            size_t blk = (size_t)(sshape[2] * sshape[3]);
            assert_int_equal(S, 3);
            assert_int_equal(shape[1], 1);
            for (int q = 0; q < h; q++)
                for (size_t j = 0; j < blk; j++) {
                    double mean = (s[(size_t)(q * S + 2) * blk + j] + s[(size_t)(q * S + 1) * blk + j] +
                                   s[(size_t)(q * S) * blk + j]) / 3;
                    worst = fmax(worst, fabs(d[(size_t)q * blk + j] - mean));
                }
        } else if (strcmp(suf, "bias") == 0 && strstr(name, ".ln.") == NULL) {
            /* down.bias (S, r), up.bias (S, dout) -> (1, .): the mean over skills */
            size_t w = (size_t)sshape[1];
            assert_int_equal(sshape[0], 3);
            for (size_t j = 0; j < w; j++)
                worst = fmax(worst, fabs(d[j] - (s[2 * w + j] + s[w + j] + s[j]) / 3));
        } else { /* the parallel adapter's LayerNorm: copied */
            assert_true(strstr(name, ".ln.") != NULL);
            assert_int_equal(scnt, cnt);
            worst = fmax(worst, max_diff(d, s, cnt));
        }
        checked++;
    }
    printf("  %d tensors of the averaged set: max |value - hand mean| %.2e\n", checked, worst);
    assert_int_equal(checked, n);
    assert_int_equal(n, 2 * 6 * 2 + 2 * 3 * 4 + 2 * 2); /* per layer: 6 LoRA (A, B), 3 bottlenecks (4), 1 LN (2) */
    assert_true(worst <= 1e-15);
    tsr_adapters_destroy_f64(&src);
    tsr_adapters_destroy_f64(&dst);
}

static void test_average_equals_uniform_routing(void **st) {
    (void)st;
    tsr_vit m;
    make_vit(&m, 3);
    tsr_adapters src, dst;
    make_ad(&src, mhr_all, 4, 0.5);
    /* task 1: every routing logit of a module equal (a different value per module) -> w = 1/S */
    for (int k = 0; k < src.n_mod; k++) {
        const tsr_rlp *md = &src.mod[k];
        int HS = md->h * md->S;
        for (int i = 0; i < HS; i++) src.params[md->oZ + (size_t)HS + i] = 0.3 * k - 1;
    }
    tsr_adapter_config c1 = mhr_all;
    c1.skills = 1;
    c1.n_tasks = 1;
    make_ad(&dst, c1, 5, 0.5);
    tsr_adapters_average_skills_f64(&src, &dst);
    double *x = make_images(6), l0[B * K], lr[B * K], la[B * K], ln[B * K];
    int t1[B] = {1, 1, 1, 1}, t0[B] = {0, 0, 0, 0};
    logits_of(&m, NULL, NULL, x, l0);
    logits_of(&m, &src, t1, x, lr);
    logits_of(&m, &dst, NULL, x, la);
    logits_of(&m, &src, t0, x, ln);
    double e = max_diff(lr, la, B * K), moved = max_diff(lr, l0, B * K), routed = max_diff(ln, la, B * K);
    printf("  uniform routing vs averaged: %.2e (adapters move the logits by %.2e; non-uniform routing differs "
           "by %.2e)\n", e, moved, routed);
    assert_true(e <= 1e-10);
    assert_true(moved > 1e-2);
    assert_true(routed > 1e-4);
    free(x);
    tsr_adapters_destroy_f64(&src);
    tsr_adapters_destroy_f64(&dst);
    tsr_vit_destroy_f64(&m);
}

static void test_copy_skills(void **st) {
    (void)st;
    tsr_adapters src, dst, again, other;
    make_ad(&src, mhr_all, 7, 0.5);
    tsr_adapter_config c5 = mhr_all;
    c5.n_tasks = 5;
    make_ad(&dst, c5, 8, 0.5);
    make_ad(&again, c5, 9, 0.5);
    make_ad(&other, c5, 10, 0.5);
    tsr_adapters_copy_skills_f64(&src, &dst, 42);
    tsr_adapters_copy_skills_f64(&src, &again, 42);
    tsr_adapters_copy_skills_f64(&src, &other, 43);
    assert_memory_equal(dst.params, again.params, sizeof(double) * dst.num_params);
    size_t nz = 0, zdiff = 0;
    double zmin = 1, zmax = -1;
    for (int k = 0; k < src.n_mod; k++) {
        const tsr_rlp *a = &src.mod[k], *b = &dst.mod[k];
        assert_memory_equal(dst.params + b->oA, src.params + a->oA, sizeof(double) * a->nA);
        assert_memory_equal(dst.params + b->oB, src.params + a->oB, sizeof(double) * a->nB);
        if (a->has_bias) {
            assert_memory_equal(dst.params + b->obd, src.params + a->obd, sizeof(double) * a->S * a->r);
            assert_memory_equal(dst.params + b->obu, src.params + a->obu, sizeof(double) * a->S * a->dout);
        }
        if (a->has_ln) {
            assert_memory_equal(dst.params + b->olnw, src.params + a->olnw, sizeof(double) * src.dim);
            assert_memory_equal(dst.params + b->olnb, src.params + a->olnb, sizeof(double) * src.dim);
        }
        assert_int_equal(b->nZ, (size_t)5 * a->h * a->S);
        for (size_t i = 0; i < b->nZ; i++) {
            double z = dst.params[b->oZ + i];
            zmin = fmin(zmin, z);
            zmax = fmax(zmax, z);
            zdiff += z != other.params[b->oZ + i];
            nz++;
        }
    }
    printf("  %zu fresh routing logits in [%.2e, %.2e]; %zu of them differ for another seed\n", nz, zmin, zmax, zdiff);
    assert_true(zmin >= -1e-3 && zmax <= 1e-3 && zmax - zmin > 1e-4);
    assert_int_equal(zdiff, nz);
    /* the copied set with the source's routing row 1 as its row 3 computes the source's task-1 logits */
    for (int k = 0; k < src.n_mod; k++) {
        const tsr_rlp *a = &src.mod[k], *b = &dst.mod[k];
        size_t HS = (size_t)a->h * a->S;
        memcpy(dst.params + b->oZ + 3 * HS, src.params + a->oZ + HS, sizeof(double) * HS);
    }
    tsr_vit m;
    make_vit(&m, 11);
    double *x = make_images(12), ls[B * K], ld[B * K];
    int t1[B] = {1, 1, 1, 1}, t3[B] = {3, 3, 3, 3};
    logits_of(&m, &src, t1, x, ls);
    logits_of(&m, &dst, t3, x, ld);
    printf("  copied set, same routing row: max logit diff %.2e\n", max_diff(ls, ld, B * K));
    assert_true(max_diff(ls, ld, B * K) <= 1e-13);
    free(x);
    tsr_vit_destroy_f64(&m);
    tsr_adapters_destroy_f64(&src);
    tsr_adapters_destroy_f64(&dst);
    tsr_adapters_destroy_f64(&again);
    tsr_adapters_destroy_f64(&other);
}

static void merge_case(const char *label, tsr_adapter_config c, int task) {
    tsr_vit m;
    make_vit(&m, 13);
    tsr_adapters ad;
    make_ad(&ad, c, 14, 0.5);
    double *x = make_images(15), base[B * K], with[B * K], detached[B * K], merged[B * K];
    int tasks[B] = {task, task, task, task};
    logits_of(&m, NULL, NULL, x, base);
    logits_of(&m, &ad, tasks, x, with);
    logits_of(&m, NULL, NULL, x, detached); /* logits_of detaches */
    assert_int_equal(tsr_adapters_merge_into_f64(&ad, &m, task), 0);
    logits_of(&m, NULL, NULL, x, merged);
    double err = max_diff(with, merged, B * K), moved = max_diff(with, base, B * K), big = 0;
    for (int i = 0; i < B * K; i++) big = fmax(big, fabs(with[i]));
    printf("  merge %s, task %d: max |merged - with adapters| %.2e (logits up to %.2e, adapters move them by %.2e)\n",
           label, task, err, big, moved);
    assert_memory_equal(detached, base, sizeof base);
    assert_true(err <= 1e-12);
    assert_true(moved > 1e-2);
    free(x);
    tsr_adapters_destroy_f64(&ad);
    tsr_vit_destroy_f64(&m);
}

static void test_merge_matches_unmerged(void **st) {
    (void)st;
    merge_case("LoRA, six sites, S=1", (tsr_adapter_config){.lora_sites = 63, .lora_rank = 3, .lora_alpha = 6,
                                                             .skills = 1, .heads = 1, .n_tasks = 0, .tau = 1}, 0);
    merge_case("Poly S=3, q v fc2", (tsr_adapter_config){.lora_sites = 1 | 4 | 32, .lora_rank = 2, .lora_alpha = 2,
                                                         .skills = 3, .heads = 1, .n_tasks = 3, .tau = 1}, 2);
    merge_case("MHR h=2 S=3, six sites", (tsr_adapter_config){.lora_sites = 63, .lora_rank = 2, .lora_alpha = 4,
                                                              .skills = 3, .heads = 2, .n_tasks = 3, .tau = 1}, 1);
}

static void test_merge_refusals(void **st) {
    (void)st;
    tsr_vit m;
    make_vit(&m, 16);
    double *keep = tsr_malloc(sizeof(double) * m.num_params);
    memcpy(keep, m.params_mem, sizeof(double) * m.num_params);
    tsr_adapters ad, lora;
    make_ad(&ad, mhr_all, 17, 0.5); /* holds bottlenecks */
    assert_int_equal(tsr_adapters_merge_into_f64(&ad, &m, 0), -1);
    assert_non_null(strstr(tsr_last_error(), "bottleneck"));
    assert_memory_equal(m.params_mem, keep, sizeof(double) * m.num_params);
    tsr_adapter_config c = mhr_all;
    c.bn_sites = 0;
    make_ad(&lora, c, 18, 0.5);
    assert_int_equal(tsr_adapters_merge_into_f64(&lora, &m, 2), -1);
    assert_non_null(strstr(tsr_last_error(), "task 2"));
    assert_int_equal(tsr_adapters_merge_into_f64(&lora, &m, -1), -1);
    assert_memory_equal(m.params_mem, keep, sizeof(double) * m.num_params);
    free(keep);
    tsr_adapters_destroy_f64(&ad);
    tsr_adapters_destroy_f64(&lora);
    tsr_vit_destroy_f64(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_average_is_the_mean_of_skills),
        cmocka_unit_test(test_average_equals_uniform_routing),
        cmocka_unit_test(test_copy_skills),
        cmocka_unit_test(test_merge_matches_unmerged),
        cmocka_unit_test(test_merge_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
