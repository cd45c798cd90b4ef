/* test64_gradcheck.c: finite-difference gradient checks, in double precision, of every layer of the
 * ViT (fast kernels AND their naive twins) and of the whole model in both backward modes.
 * Central differences, h = 1e-6; a check fails when max|analytic - numeric| / max|numeric| > 1e-6. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/common.h"
#include "core/rng.h"
#include "adapters/lora.h"
#include "model/layers.h"
#include "model/vit.h"

#define H_FD 1e-6
#define TOL 1e-6

static tsr_rng rng;
static double *randv(size_t n, double scale) {
    double *v = tsr_malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) v[i] = tsr_rng_normal(&rng) * scale;
    return v;
}
static double dotv(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
/* Compare an analytic gradient with a numeric one; print and return the relative error. */
static double rel_err(const char *what, const double *an, const double *num, size_t n) {
    double e = 0, m = 1e-12;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(an[i] - num[i]));
        m = fmax(m, fabs(num[i]));
    }
    printf("  %-34s rel err %.2e (max |grad| %.2e)\n", what, e / m, m);
    return e / m;
}

/* A layer under test: loss(x) = <R, f(x)>; the closure recomputes f with the current buffers. */
typedef double (*loss_fn)(void *ctx);
/* Numeric gradient of loss w.r.t. every entry of x (n entries). */
static void numeric_grad(double *g, double *x, size_t n, loss_fn f, void *ctx) {
    for (size_t i = 0; i < n; i++) {
        double old = x[i];
        x[i] = old + H_FD;
        double lp = f(ctx);
        x[i] = old - H_FD;
        double lm = f(ctx);
        x[i] = old;
        g[i] = (lp - lm) / (2 * H_FD);
    }
}

/* ---------------------------------------------------------------- linear */
typedef struct { double *out, *inp, *W, *b, *R; int N, C, OC, ref; } lin_ctx;
static double lin_loss(void *p) {
    lin_ctx *c = p;
    if (c->ref) linear_forward_ref_f64(c->out, c->inp, c->W, c->b, c->N, c->C, c->OC);
    else linear_forward_f64(c->out, c->inp, c->W, c->b, c->N, c->C, c->OC);
    return dotv(c->out, c->R, (size_t)c->N * c->OC);
}
static void check_linear(int ref) {
    int N = 5, C = 7, OC = 6;
    lin_ctx c = {tsr_malloc(sizeof(double) * N * OC), randv(N * C, 1), randv(OC * C, 1), randv(OC, 1),
                 randv(N * OC, 1), N, C, OC, ref};
    double *dinp = calloc(N * C, 8), *dW = calloc(OC * C, 8), *db = calloc(OC, 8);
    double *num = tsr_malloc(8 * N * C * OC);
    if (ref) linear_backward_ref_f64(dinp, dW, db, c.R, c.inp, c.W, N, C, OC);
    else linear_backward_f64(dinp, dW, db, c.R, c.inp, c.W, N, C, OC);
    numeric_grad(num, c.inp, N * C, lin_loss, &c);
    assert_true(rel_err("linear d input", dinp, num, N * C) < TOL);
    numeric_grad(num, c.W, OC * C, lin_loss, &c);
    assert_true(rel_err("linear d weight", dW, num, OC * C) < TOL);
    numeric_grad(num, c.b, OC, lin_loss, &c);
    assert_true(rel_err("linear d bias", db, num, OC) < TOL);
    /* frozen: NULL weight grads leave the input gradient unchanged */
    double *dinp2 = calloc(N * C, 8);
    linear_backward_f64(dinp2, NULL, NULL, c.R, c.inp, c.W, N, C, OC);
    assert_true(rel_err("linear d input (frozen)", dinp2, dinp, N * C) < 1e-12);
    free(c.out); free(c.inp); free(c.W); free(c.b); free(c.R); free(dinp); free(dW); free(db); free(num);
    free(dinp2);
}
static void test_linear(void **s) { (void)s; check_linear(0); }
static void test_linear_ref(void **s) { (void)s; check_linear(1); }

/* ---------------------------------------------------------------- layernorm */
typedef struct { double *out, *mean, *rstd, *inp, *w, *b, *R; int N, C, ref; } ln_ctx;
static double ln_loss(void *p) {
    ln_ctx *c = p;
    if (c->ref) layernorm_forward_ref_f64(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C, 1e-6);
    else layernorm_forward_f64(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C, 1e-6);
    return dotv(c->out, c->R, (size_t)c->N * c->C);
}
static void check_layernorm(int ref) {
    int N = 4, C = 9;
    ln_ctx c = {tsr_malloc(8 * N * C), tsr_malloc(8 * N), tsr_malloc(8 * N), randv(N * C, 2),
                randv(C, 1), randv(C, 1), randv(N * C, 1), N, C, ref};
    double *dinp = calloc(N * C, 8), *dw = calloc(C, 8), *db = calloc(C, 8), *num = tsr_malloc(8 * N * C);
    ln_loss(&c);
    if (ref) layernorm_backward_ref_f64(dinp, dw, db, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    else layernorm_backward_f64(dinp, dw, db, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    numeric_grad(num, c.inp, N * C, ln_loss, &c);
    assert_true(rel_err("layernorm d input", dinp, num, N * C) < TOL);
    numeric_grad(num, c.w, C, ln_loss, &c);
    assert_true(rel_err("layernorm d weight", dw, num, C) < TOL);
    numeric_grad(num, c.b, C, ln_loss, &c);
    assert_true(rel_err("layernorm d bias", db, num, C) < TOL);
    free(c.out); free(c.mean); free(c.rstd); free(c.inp); free(c.w); free(c.b); free(c.R);
    free(dinp); free(dw); free(db); free(num);
}
static void test_layernorm(void **s) { (void)s; check_layernorm(0); }
static void test_layernorm_ref(void **s) { (void)s; check_layernorm(1); }

/* ---------------------------------------------------------------- gelu */
typedef struct { double *out, *inp, *R; long n; int ref; } gelu_ctx;
static double gelu_loss(void *p) {
    gelu_ctx *c = p;
    if (c->ref) gelu_forward_ref_f64(c->out, c->inp, c->n);
    else gelu_forward_f64(c->out, c->inp, c->n);
    return dotv(c->out, c->R, (size_t)c->n);
}
static void check_gelu(int ref) {
    long n = 41;
    gelu_ctx c = {tsr_malloc(8 * n), randv(n, 2), randv(n, 1), n, ref};
    double *d = calloc(n, 8), *num = tsr_malloc(8 * n);
    if (ref) gelu_backward_ref_f64(d, c.R, c.inp, n);
    else gelu_backward_f64(d, c.R, c.inp, n);
    numeric_grad(num, c.inp, n, gelu_loss, &c);
    assert_true(rel_err("gelu d input", d, num, n) < TOL);
    /* exact erf form: GELU(1) = 0.8413447460685429 */
    double one = 1, g1;
    gelu_forward_f64(&g1, &one, 1);
    assert_true(fabs(g1 - 0.8413447460685429) < 1e-15);
    free(c.out); free(c.inp); free(c.R); free(d); free(num);
}
static void test_gelu(void **s) { (void)s; check_gelu(0); }
static void test_gelu_ref(void **s) { (void)s; check_gelu(1); }

/* ---------------------------------------------------------------- attention */
typedef struct { double *out, *att, *qkv, *R; int B, T, D, H, ref; } att_ctx;
static double att_loss(void *p) {
    att_ctx *c = p;
    if (c->ref) attention_forward_ref_f64(c->out, c->att, c->qkv, c->B, c->T, c->D, c->H);
    else attention_forward_f64(c->out, c->att, c->qkv, c->B, c->T, c->D, c->H);
    return dotv(c->out, c->R, (size_t)c->B * c->T * c->D);
}
static void check_attention(int ref) {
    int B = 2, T = 5, D = 8, H = 2;
    size_t nq = (size_t)B * T * 3 * D;
    att_ctx c = {tsr_malloc(8 * B * T * D), tsr_malloc(8 * B * H * T * T), randv(nq, 1),
                 randv((size_t)B * T * D, 1), B, T, D, H, ref};
    double *d = calloc(nq, 8), *num = tsr_malloc(8 * nq);
    att_loss(&c);
    if (ref) attention_backward_ref_f64(d, c.R, c.qkv, c.att, B, T, D, H);
    else attention_backward_f64(d, c.R, c.qkv, c.att, B, T, D, H);
    numeric_grad(num, c.qkv, nq, att_loss, &c);
    assert_true(rel_err("attention d qkv", d, num, nq) < TOL);
    free(c.out); free(c.att); free(c.qkv); free(c.R); free(d); free(num);
}
static void test_attention(void **s) { (void)s; check_attention(0); }
static void test_attention_ref(void **s) { (void)s; check_attention(1); }

/* ---------------------------------------------------------------- softmax cross-entropy */
typedef struct { double *probs, *logits; int *labels, B, K; } xent_ctx;
static double xent_loss(void *p) {
    xent_ctx *c = p;
    return softmax_xent_forward_f64(c->probs, c->logits, c->labels, c->B, c->K);
}
static void test_softmax_xent(void **s) {
    (void)s;
    int B = 3, K = 5, labels[3] = {0, 4, 2};
    xent_ctx c = {tsr_malloc(8 * B * K), randv(B * K, 2), labels, B, K};
    double *d = calloc(B * K, 8), *num = tsr_malloc(8 * B * K);
    xent_loss(&c);
    softmax_xent_backward_f64(d, c.probs, labels, B, K, 1.0);
    numeric_grad(num, c.logits, B * K, xent_loss, &c);
    assert_true(rel_err("softmax cross-entropy d logits", d, num, B * K) < TOL);
    free(c.probs); free(c.logits); free(d); free(num);
}

/* ---------------------------------------------------------------- LoRA */
typedef struct { double *y, *h, *x, *A, *B, *R; int N, C, OC, r, ref; double scale; } lora_ctx;
static double lora_loss(void *p) {
    lora_ctx *c = p;
    memset(c->y, 0, sizeof(double) * (size_t)c->N * c->OC);
    if (c->ref) lora_forward_ref_f64(c->y, c->h, c->x, c->A, c->B, c->N, c->C, c->OC, c->r, c->scale);
    else lora_forward_f64(c->y, c->h, c->x, c->A, c->B, c->N, c->C, c->OC, c->r, c->scale);
    return dotv(c->y, c->R, (size_t)c->N * c->OC);
}
static void check_lora(int ref) {
    int N = 5, C = 8, OC = 6, r = 3;
    lora_ctx c = {tsr_malloc(8 * N * OC), tsr_malloc(8 * N * r), randv(N * C, 1), randv(C * r, 1),
                  randv(r * OC, 1), randv(N * OC, 1), N, C, OC, r, ref, 1.0 / 3};
    double *dx = calloc(N * C, 8), *dA = calloc(C * r, 8), *dB = calloc(r * OC, 8), *sc = tsr_malloc(8 * N * r);
    double *num = tsr_malloc(8 * N * C * OC);
    lora_loss(&c);
    if (ref) lora_backward_ref_f64(dx, dA, dB, c.R, c.x, c.A, c.B, N, C, OC, r, c.scale);
    else lora_backward_f64(dx, dA, dB, sc, c.R, c.x, c.h, c.A, c.B, N, C, OC, r, c.scale);
    numeric_grad(num, c.x, N * C, lora_loss, &c);
    assert_true(rel_err("lora d input", dx, num, N * C) < TOL);
    numeric_grad(num, c.A, C * r, lora_loss, &c);
    assert_true(rel_err("lora d A", dA, num, C * r) < TOL);
    numeric_grad(num, c.B, r * OC, lora_loss, &c);
    assert_true(rel_err("lora d B", dB, num, r * OC) < TOL);
    free(c.y); free(c.h); free(c.x); free(c.A); free(c.B); free(c.R); free(dx); free(dA); free(dB); free(sc);
    free(num);
}
static void test_lora(void **s) { (void)s; check_lora(0); }
static void test_lora_ref(void **s) { (void)s; check_lora(1); }

/* ---------------------------------------------------------------- whole model */
static const tsr_vit_config small = {.image_size = 8, .patch_size = 4, .channels = 2, .dim = 8,
                                     .depth = 2, .heads = 2, .mlp_dim = 12, .num_classes = 3,
                                     .ln_eps = 1e-6};
typedef struct { tsr_vit *m; double *img; int *labels; int B; } vit_ctx;
static double vit_loss(void *p) {
    vit_ctx *c = p;
    return tsr_vit_forward_f64(c->m, c->img, c->labels, c->B);
}
static void make_model(tsr_vit *m, int B) {
    assert_int_equal(tsr_vit_create_f64(m, &small, B), 0);
    /* non-trivial parameters everywhere (LayerNorm and biases away from their initial values) */
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] = tsr_rng_normal(&rng) * 0.5;
    for (int i = 0; i < small.depth * small.dim; i++) {
        m->params.ln1w[i] += 1;
        m->params.ln2w[i] += 1;
    }
    for (int i = 0; i < small.dim; i++) m->params.lnfw[i] += 1;
}
/* FD-check every parameter tensor (all entries) of the full backward, then compare frozen mode. */
static void test_vit_full_and_frozen(void **s) {
    (void)s;
    int B = 3, labels[3] = {2, 0, 1};
    tsr_vit m;
    make_model(&m, B);
    tsr_vit_keep_resid_grads_f64(&m);
    size_t nimg = (size_t)B * small.channels * small.image_size * small.image_size;
    vit_ctx c = {&m, randv(nimg, 1), labels, B};
    vit_loss(&c);
    tsr_vit_zero_grad_f64(&m);
    tsr_vit_backward_f64(&m, &TSR_VIT_FULL);
    double *grads = tsr_malloc(8 * m.num_params);
    memcpy(grads, m.grads_mem, 8 * m.num_params);
    size_t nres = (size_t)(small.depth + 1) * B * m.tokens * small.dim;
    double *dres_full = tsr_malloc(8 * nres);
    memcpy(dres_full, m.d_resid_all, 8 * nres);
    int n = tsr_vit_tensor_info_f64(&m, &m.params, -1, NULL, 0, NULL, NULL, NULL);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        char name[128];
        int nd;
        int64_t shape[4];
        double *p;
        tsr_vit_tensor_info_f64(&m, &m.params, i, name, sizeof name, &nd, shape, &p);
        size_t cnt = 1;
        for (int k = 0; k < nd; k++) cnt *= (size_t)shape[k];
        double *num = tsr_malloc(8 * cnt);
        numeric_grad(num, p, cnt, vit_loss, &c);
        double e = rel_err(name, grads + (p - m.params_mem), num, cnt);
        assert_true(e < TOL);
        worst = fmax(worst, e);
        free(num);
    }
    printf("  whole model (full backward, %d tensors, every entry): worst rel err %.2e\n", n, worst);
    /* d loss / d resid[0] summed over the batch is d loss / d pos_embed */
    double *sumres = calloc((size_t)m.tokens * small.dim, 8);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < m.tokens * small.dim; i++) sumres[i] += dres_full[(size_t)b * m.tokens * small.dim + i];
    assert_true(rel_err("sum_b d resid[0] = d pos_embed", sumres, grads + (m.params.pos - m.params_mem),
                        (size_t)m.tokens * small.dim) < 1e-12);

    /* frozen backbone: same input gradients at every block, head grads equal, nothing else written */
    vit_loss(&c);
    tsr_vit_zero_grad_f64(&m);
    tsr_vit_backward_f64(&m, &TSR_VIT_FROZEN);
    assert_true(rel_err("frozen vs full: d resid (all blocks)", m.d_resid_all, dres_full, nres) < 1e-13);
    size_t head_off = (size_t)(m.params.headw - m.params_mem);
    assert_true(rel_err("frozen vs full: head grads", m.grads_mem + head_off, grads + head_off,
                        m.num_params - head_off) < 1e-13);
    for (size_t i = 0; i < head_off; i++) assert_true(m.grads_mem[i] == 0.0);
    free(sumres); free(grads); free(dres_full); free(c.img);
    tsr_vit_destroy_f64(&m);
}

int main(void) {
    tsr_rng_seed(&rng, 42);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),        cmocka_unit_test(test_linear_ref),
        cmocka_unit_test(test_layernorm),     cmocka_unit_test(test_layernorm_ref),
        cmocka_unit_test(test_gelu),          cmocka_unit_test(test_gelu_ref),
        cmocka_unit_test(test_attention),     cmocka_unit_test(test_attention_ref),
        cmocka_unit_test(test_softmax_xent),  cmocka_unit_test(test_vit_full_and_frozen),
        cmocka_unit_test(test_lora),          cmocka_unit_test(test_lora_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
