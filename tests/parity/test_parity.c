/* test_parity.c: the C engine against PyTorch autograd (tests/torch/vit_ref.py, a ViT written from
 * torch ops). Usage: test_parity DIR, where DIR holds the reference files that vit_ref.py wrote.
 * Checks, in float32, with the stated tolerances (error = max|ours - torch| / max|torch| per tensor):
 *   logits (max abs error <= 1e-4) and loss, from timm, HF and HF-without-prefix checkpoints;
 *   every parameter gradient of the full backward (rel <= 1e-4);
 *   frozen backward: the gradient entering every block (rel <= 1e-4) and the head gradients;
 *   F16 / BF16 checkpoints against torch run on the same rounded weights (abs <= 1e-4). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "model/checkpoint.h"
#include "io/safetensors.h"
#include "model/vit.h"

static int failures = 0, checks = 0;

static void report(const char *what, double err, double tol) {
    checks++;
    int ok = err <= tol;
    if (!ok) failures++;
    printf("%-6s %-44s err %.3e (tol %.0e)\n", ok ? "ok" : "FAIL", what, err, tol);
}

static float *load(tsr_st_file *f, const char *name, int64_t *n) {
    const tsr_st_tensor *t = tsr_st_find(f, name);
    if (!t) tsr_fatal("%s: reference tensor '%s' missing", f->path, name);
    float *v = tsr_malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
    if (tsr_st_read_f32(f, t, v, t->numel) != 0) tsr_fatal("%s", tsr_last_error());
    if (n) *n = t->numel;
    return v;
}

static double max_abs(const float *a, const float *b, int64_t n) {
    double e = 0;
    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}
static double rel(const float *a, const float *ref, int64_t n) {
    double m = 1e-30;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)ref[i]));
    return max_abs(a, ref, n) / m;
}

static int meta_int(tsr_st_file *f, const char *k) {
    const char *v = tsr_st_meta(f, k);
    if (!v) tsr_fatal("%s: metadata '%s' missing", f->path, k);
    return atoi(v);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_parity DIR\n");
        return 2;
    }
    char path[2048];
    snprintf(path, sizeof path, "%s/ref.safetensors", argv[1]);
    tsr_st_file ref;
    if (tsr_st_open(&ref, path) != 0) tsr_fatal("%s", tsr_last_error());
    tsr_vit_config c = {.image_size = meta_int(&ref, "image"), .patch_size = meta_int(&ref, "patch"),
                        .channels = meta_int(&ref, "channels"), .dim = meta_int(&ref, "dim"),
                        .depth = meta_int(&ref, "depth"), .heads = meta_int(&ref, "heads"),
                        .mlp_dim = meta_int(&ref, "mlp"), .num_classes = meta_int(&ref, "classes"),
                        .ln_eps = atof(tsr_st_meta(&ref, "eps"))};
    int B = meta_int(&ref, "batch");
    printf("parity: %s: batch %d, image %d, patch %d, dim %d, depth %d, heads %d, mlp %d, eps %g\n", argv[1], B,
           c.image_size, c.patch_size, c.dim, c.depth, c.heads, c.mlp_dim, c.ln_eps);
    int64_t n;
    float *input = load(&ref, "input", &n);
    const tsr_st_tensor *lt = tsr_st_find(&ref, "labels");
    int64_t lab64[4096];
    if (!lt || lt->numel != B || tsr_st_read_i64(&ref, lt, lab64, B) != 0) tsr_fatal("labels");
    int labels[4096];
    for (int i = 0; i < B; i++) labels[i] = (int)lab64[i];
    float *logits_ref = load(&ref, "logits", &n);
    float *loss_ref = load(&ref, "loss", NULL);

    tsr_vit m;
    if (tsr_vit_create(&m, &c, B) != 0) tsr_fatal("%s", tsr_last_error());
    tsr_vit_keep_resid_grads(&m);

    /* timm / HF / HF-without-prefix checkpoints: the same logits */
    const char *files[] = {"weights_timm.safetensors", "weights_hf.safetensors",
                           "weights_hf_noprefix.safetensors"};
    float *params_timm = tsr_malloc(sizeof(float) * m.num_params);
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/%s", argv[1], files[k]);
        if (tsr_ckpt_load_vit(&m, path, 0) != 0) tsr_fatal("%s", tsr_last_error());
        if (k == 0) memcpy(params_timm, m.params_mem, sizeof(float) * m.num_params);
        else report("parameters equal timm's", max_abs(m.params_mem, params_timm, (int64_t)m.num_params), 0);
        double loss = tsr_vit_forward(&m, input, labels, B);
        char what[256];
        snprintf(what, sizeof what, "logits (%s)", files[k]);
        report(what, max_abs(m.acts.logits, logits_ref, (int64_t)B * c.num_classes), 1e-4);
        report("loss", fabs(loss - loss_ref[0]), 1e-5);
    }

    /* full backward: every parameter gradient */
    tsr_vit_forward(&m, input, labels, B);
    tsr_vit_zero_grad(&m);
    tsr_vit_backward(&m, &TSR_VIT_FULL);
    int nt = tsr_vit_tensor_info(&m, &m.grads, -1, NULL, 0, NULL, NULL, NULL);
    double worst = 0;
    for (int i = 0; i < nt; i++) {
        char name[128], gname[160];
        int nd;
        int64_t shape[4];
        float *g;
        tsr_vit_tensor_info(&m, &m.grads, i, name, sizeof name, &nd, shape, &g);
        snprintf(gname, sizeof gname, "grad.%s", name);
        int64_t cnt;
        float *r = load(&ref, gname, &cnt);
        double e = rel(g, r, cnt);
        worst = fmax(worst, e);
        char what[200];
        snprintf(what, sizeof what, "full: %s", gname);
        report(what, e, 1e-4);
        free(r);
    }
    printf("full backward: worst relative gradient error %.3e over %d tensors\n", worst, nt);
    size_t BTD = (size_t)B * m.tokens * c.dim;
    float *dres_full = tsr_malloc(sizeof(float) * BTD * (c.depth + 1));
    memcpy(dres_full, m.d_resid_all, sizeof(float) * BTD * (c.depth + 1));
    for (int l = 0; l <= c.depth; l++) {
        char name[64], what[128];
        snprintf(name, sizeof name, "grad_tokens.%d", l);
        float *r = load(&ref, name, NULL);
        snprintf(what, sizeof what, "full: %s", name);
        report(what, rel(m.d_resid_all + l * BTD, r, (int64_t)BTD), 1e-4);
        free(r);
    }
    float *head_full = tsr_malloc(sizeof(float) * (size_t)c.num_classes * (c.dim + 1));
    memcpy(head_full, m.grads.headw, sizeof(float) * (size_t)c.num_classes * (c.dim + 1));

    /* frozen backward: input gradients through every block, weight gradients for the head only */
    tsr_vit_forward(&m, input, labels, B);
    tsr_vit_zero_grad(&m);
    tsr_vit_backward(&m, &TSR_VIT_FROZEN);
    for (int l = 0; l <= c.depth; l++) {
        char name[64], what[128];
        snprintf(name, sizeof name, "grad_tokens.%d", l);
        float *r = load(&ref, name, NULL);
        snprintf(what, sizeof what, "frozen: %s", name);
        report(what, rel(m.d_resid_all + l * BTD, r, (int64_t)BTD), 1e-4);
        free(r);
    }
    report("frozen = full: input gradients (all blocks)", max_abs(m.d_resid_all, dres_full, (int64_t)BTD * (c.depth + 1)), 0);
    float *rw = load(&ref, "grad.head.weight", NULL), *rb = load(&ref, "grad.head.bias", NULL);
    report("frozen: grad.head.weight", rel(m.grads.headw, rw, (int64_t)c.num_classes * c.dim), 1e-4);
    report("frozen: grad.head.bias", rel(m.grads.headb, rb, c.num_classes), 1e-4);
    report("frozen = full: head gradients", max_abs(m.grads.headw, head_full, (int64_t)c.num_classes * (c.dim + 1)), 0);
    double other = 0;
    for (size_t i = 0; i < (size_t)(m.grads.headw - m.grads_mem); i++) other = fmax(other, fabs(m.grads_mem[i]));
    report("frozen: no backbone weight gradient written", other, 0);

    /* reduced-precision checkpoints */
    const char *lp[][2] = {{"weights_timm_f16.safetensors", "logits_f16"}, {"weights_timm_bf16.safetensors", "logits_bf16"}};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/%s", argv[1], lp[k][0]);
        if (tsr_ckpt_load_vit(&m, path, 0) != 0) tsr_fatal("%s", tsr_last_error());
        tsr_vit_forward(&m, input, labels, B);
        float *r = load(&ref, lp[k][1], NULL);
        char what[128];
        snprintf(what, sizeof what, "logits (%s)", lp[k][0]);
        report(what, max_abs(m.acts.logits, r, (int64_t)B * c.num_classes), 1e-4);
        free(r);
    }
    printf("%d passed, %d failed\n", checks - failures, failures);
    free(input); free(logits_ref); free(loss_ref); free(params_timm); free(dres_full); free(head_full);
    free(rw); free(rb);
    tsr_vit_destroy(&m);
    tsr_st_close(&ref);
    return failures ? 1 : 0;
}
