/* test_bf16_model.c: model.precision bf16 against fp32 on a small ViT with adapters (LoRA on q, v, fc1,
 * fc2; MHR-routed LoRA on q, k, v, proj): logits and the adapter and head gradients.
 *
 * Tolerances. bf16 keeps 8 significant bits: one rounding has a relative error of at most 2^-8 = 0.39%.
 * Each block product rounds both inputs (weights once, activations on the fly) and sums in fp32, so a
 * product's error is about 2^-8 * sqrt(2) relative to its magnitude (random-sign terms add in
 * quadrature); LayerNorm renormalises between blocks, and three blocks compound it to roughly 1-2%
 * relative. We require: max |logit_bf16 - logit_fp32| <= 0.05 max |logit_fp32| (about 3x the
 * expected error, far below the logit scale), and cosine similarity >= 0.99 between the bf16 and fp32
 * gradient vectors of the adapters and of the head (a 1-2% relative perturbation gives cos ~ 0.9998;
 * 0.99 would still flag a wrong transpose or a stale weight copy, which give cos far below).
 * Also checked: bf16 differs from fp32 at all (the bf16 path ran), and the fp32 path is unchanged
 * after going back to fp32 (the fp32 block weights, not kept in bf16, restored from the checkpoint the
 * model was loaded from); a model set to bf16 before loading the checkpoint (each slice converted and
 * released as it is read) gives the same logits and gradients bit for bit. Skipped when this build or CPU
 * has no bf16 matrix product.
 *
 * test_guards (runs without a bf16 product too): every reader of the fp32 block weights of a model in bf16
 * either restores them or fails with a message naming the tensor, never reads the zeros of the released
 * pages: back to fp32 and saving a checkpoint when the weights were changed after init (the seed no longer
 * makes them), were never made by init or load, or came from a file that has changed or gone; a LoRA merge
 * into the weights; the model stays usable in bf16 after a refused switch. */
#define _DEFAULT_SOURCE /* mkdtemp */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirent.h>
#include <unistd.h>

#include "adapters/adapter_ops.h"
#include "adapters/adapters.h"
#include "core/bf16.h"
#include "core/common.h"
#include "core/rng.h"
#include "model/checkpoint.h"
#include "model/vit.h"

enum { B = 8, NTASK = 3 };
static char g_dir[64];
static const tsr_vit_config CFG = {16, 4, 1, 64, 3, 4, 128, 10, 1e-6};

static void tpath(char *out, const char *name) { snprintf(out, 128, "%s/%s", g_dir, name); }

typedef struct {
    double logit_rel, cos_ad, cos_head, max_logit;
} diffs;

static double normal(tsr_rng *r) {
    double u1 = tsr_rng_uniform(r), u2 = tsr_rng_uniform(r);
    return sqrt(-2 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2);
}

static double cosine(const float *a, const float *b, size_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return ab / sqrt(aa * bb + 1e-300);
}

/* one forward + backward; copies of logits, adapter and head gradients */
static void step(tsr_vit *m, tsr_adapters *ad, const float *x, const int *y, const int *tasks, float *logits,
                 float *gad, float *ghead) {
    const tsr_vit_config *c = &m->cfg;
    assert_int_equal(tsr_adapters_begin(ad, tasks, B, 1, 0, 7, NULL), 0);
    tsr_vit_zero_grad(m);
    tsr_adapters_zero_grad(ad);
    tsr_vit_forward(m, x, y, B);
    tsr_vit_backward(m, &TSR_VIT_ADAPTERS);
    memcpy(logits, m->acts.logits, sizeof(float) * B * c->num_classes);
    memcpy(gad, ad->grads, sizeof(float) * ad->num_params);
    memcpy(ghead, m->grads.headw, sizeof(float) * (size_t)c->num_classes * c->dim);
}

/* timm's initialisation (seed 3) with the block weights 5x larger (std 0.1 instead of 0.02: the blocks
 * matter), a non-zero head; r continues with the adapters and the data */
static void scaled_model(tsr_vit *m, tsr_rng *r) {
    assert_int_equal(tsr_vit_create(m, &CFG, B), 0);
    tsr_vit_init_random(m, 3);
    tsr_rng_seed(r, 11);
    float *blk[4] = {m->params.qkvw, m->params.projw, m->params.fc1w, m->params.fc2w};
    size_t nblk[4] = {m->param_sizes[6], m->param_sizes[8], m->param_sizes[12], m->param_sizes[14]};
    for (int i = 0; i < 4; i++)
        for (size_t j = 0; j < nblk[i]; j++) blk[i][j] *= 5;
    for (size_t j = 0; j < (size_t)CFG.num_classes * CFG.dim; j++) m->params.headw[j] = (float)(0.3 * normal(r));
}

static diffs compare(tsr_adapter_config ac, int routed) {
    const tsr_vit_config c = CFG;
    tsr_vit m;
    tsr_rng r;
    /* the weights go through a checkpoint: the model then knows where its fp32 block weights come from */
    char file[128];
    tpath(file, "scaled.safetensors");
    scaled_model(&m, &r);
    assert_int_equal(tsr_ckpt_save_vit(&m, file, TSR_NAMING_TIMM, 0, NULL, NULL), 0);
    assert_int_equal(tsr_ckpt_load_vit(&m, file, 0), 0);
    tsr_adapters ad;
    assert_int_equal(tsr_adapters_create(&ad, &ac, c.depth, c.dim, c.mlp_dim, m.tokens, B), 0);
    ad.ln_eps = c.ln_eps;
    tsr_adapters_init(&ad, 5);
    for (size_t j = 0; j < ad.num_params; j++) ad.params[j] = (float)(0.05 * normal(&r)); /* no zero B */
    tsr_adapters_attach(&ad, &m);
    size_t nimg = (size_t)B * c.image_size * c.image_size;
    float *x = malloc(sizeof(float) * nimg);
    int y[B], tasks[B];
    for (size_t i = 0; i < nimg; i++) x[i] = (float)normal(&r);
    for (int i = 0; i < B; i++) y[i] = i % c.num_classes, tasks[i] = routed ? (i * 5) % NTASK : 0;
    size_t nl = (size_t)B * c.num_classes, nh = (size_t)c.num_classes * c.dim;
    float *l32 = malloc(sizeof(float) * nl), *l16 = malloc(sizeof(float) * nl), *l32b = malloc(sizeof(float) * nl);
    float *a32 = malloc(sizeof(float) * ad.num_params), *a16 = malloc(sizeof(float) * ad.num_params);
    float *h32 = malloc(sizeof(float) * nh), *h16 = malloc(sizeof(float) * nh);
    float *l16b = malloc(sizeof(float) * nl), *a16b = malloc(sizeof(float) * ad.num_params);
    float *h16b = malloc(sizeof(float) * nh);

    step(&m, &ad, x, y, tasks, l32, a32, h32);
    assert_int_equal(tsr_vit_set_precision(&m, 1), 0);
    assert_non_null(m.w16_mem);
    step(&m, &ad, x, y, tasks, l16, a16, h16);
    assert_int_equal(tsr_vit_set_precision(&m, 0), 0); /* the fp32 block weights read again from the file */
    assert_null(m.w16_mem);
    step(&m, &ad, x, y, tasks, l32b, a32, h32); /* back in fp32: the same logits bit for bit */
    assert_memory_equal(l32, l32b, sizeof(float) * nl);
    /* bf16 first, then the checkpoint (each slice converted and released as it is read): the same results */
    assert_int_equal(tsr_vit_set_precision(&m, 1), 0);
    assert_int_equal(tsr_ckpt_load_vit(&m, file, 0), 0);
    step(&m, &ad, x, y, tasks, l16b, a16b, h16b);
    assert_memory_equal(l16b, l16, sizeof(float) * nl);
    assert_memory_equal(a16b, a16, sizeof(float) * ad.num_params);
    assert_memory_equal(h16b, h16, sizeof(float) * nh);
    unlink(file);

    diffs d = {0};
    double md = 0;
    for (size_t i = 0; i < nl; i++) {
        d.max_logit = fmax(d.max_logit, fabs(l32[i]));
        md = fmax(md, fabs((double)l16[i] - l32[i]));
    }
    d.logit_rel = md / d.max_logit;
    d.cos_ad = cosine(a32, a16, ad.num_params);
    d.cos_head = cosine(h32, h16, nh);
    printf("# %s: max|logit| %.3f, max|diff| / max|logit| %.2e, cos(adapter grads) %.6f, cos(head grads) %.6f\n",
           routed ? "mhr" : "lora", d.max_logit, d.logit_rel, d.cos_ad, d.cos_head);
    tsr_adapters_destroy(&ad);
    tsr_vit_destroy(&m);
    free(x), free(l32), free(l16), free(l32b), free(a32), free(a16), free(h32), free(h16);
    free(l16b), free(a16b), free(h16b);
    return d;
}

static void check(diffs d) {
    assert_true(d.max_logit > 0.5);  /* the logits carry signal */
    assert_true(d.logit_rel > 0);    /* the bf16 path ran */
    assert_true(d.logit_rel <= 0.05);
    assert_true(d.cos_ad >= 0.99);
    assert_true(d.cos_head >= 0.99);
}

static int have_bf16(void) {
    char note[200];
    int ok = tsr_bf16_available(note, sizeof note);
    printf("# bf16: %s\n", note);
    return ok;
}

static void test_lora(void **st) {
    (void)st;
    if (!have_bf16()) skip();
    tsr_adapter_config ac = {0};
    ac.lora_sites = 1 << TSR_LORA_Q | 1 << TSR_LORA_V | 1 << TSR_LORA_FC1 | 1 << TSR_LORA_FC2;
    ac.lora_rank = 4, ac.lora_alpha = 8, ac.skills = ac.heads = 1, ac.tau = 1, ac.layer_max = -1;
    check(compare(ac, 0));
}

static void test_mhr(void **st) {
    (void)st;
    if (!have_bf16()) skip();
    tsr_adapter_config ac = {0};
    ac.lora_sites = 1 << TSR_LORA_Q | 1 << TSR_LORA_K | 1 << TSR_LORA_V | 1 << TSR_LORA_PROJ;
    ac.lora_rank = 4, ac.lora_alpha = 4, ac.skills = 4, ac.heads = 2, ac.n_tasks = NTASK, ac.tau = 1;
    ac.layer_max = -1;
    check(compare(ac, 1));
}

/* The error is set, and names the tensor and says what happened. */
static void refused(int rc, const char *tensor, const char *what) {
    printf("# refused: %s\n", tsr_last_error());
    assert_int_equal(rc, -1);
    assert_non_null(strstr(tsr_last_error(), tensor));
    assert_non_null(strstr(tsr_last_error(), what));
}

/* Files in g_dir (the temporary of a failed atomic write must not stay behind). */
static int files_in_dir(void) {
    DIR *d = opendir(g_dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static void test_guards(void **st) {
    (void)st;
    int prod = have_bf16();
    char file[128], out[128];
    tpath(file, "a.safetensors");
    tpath(out, "out.safetensors");
    tsr_vit m;
    tsr_rng r;
    scaled_model(&m, &r); /* changed after tsr_vit_init_random: the seed no longer makes them */
    size_t nimg = (size_t)B * CFG.image_size * CFG.image_size, nl = (size_t)B * CFG.num_classes;
    float *x = malloc(sizeof(float) * nimg), *l1 = malloc(sizeof(float) * nl);
    int y[B];
    for (size_t i = 0; i < nimg; i++) x[i] = (float)normal(&r);
    for (int i = 0; i < B; i++) y[i] = i % CFG.num_classes;
    assert_int_equal(tsr_vit_set_precision(&m, 1), 0);
    if (prod) {
        tsr_vit_forward(&m, x, y, B);
        memcpy(l1, m.acts.logits, sizeof(float) * nl);
    }
    /* back to fp32: refused, and the model stays in bf16, still computing the same */
    refused(tsr_vit_set_precision(&m, 0), "blocks.0.attn.qkv.weight", "cannot be restored");
    assert_non_null(m.w16_mem);
    assert_int_equal(tsr_vit_released(&m, 0, m.num_params), 0);
    if (prod) {
        tsr_vit_forward(&m, x, y, B);
        assert_memory_equal(m.acts.logits, l1, sizeof(float) * nl);
    }
    /* a checkpoint: refused, no file (nor temporary) left */
    int nfiles = files_in_dir();
    refused(tsr_ckpt_save_vit(&m, out, TSR_NAMING_TIMM, 0, NULL, NULL), "blocks.0.attn.qkv.weight", "cannot be restored");
    assert_int_equal(access(out, F_OK), -1);
    assert_int_equal(files_in_dir(), nfiles);
    /* a LoRA merge into the weights (nothing merged) */
    tsr_adapter_config ac = {0};
    ac.lora_sites = 1 << TSR_LORA_V | 1 << TSR_LORA_FC2;
    ac.lora_rank = 2, ac.lora_alpha = 2, ac.skills = ac.heads = 1, ac.tau = 1, ac.layer_max = -1;
    tsr_adapters ad;
    assert_int_equal(tsr_adapters_create(&ad, &ac, CFG.depth, CFG.dim, CFG.mlp_dim, m.tokens, B), 0);
    tsr_adapters_init(&ad, 1);
    refused(tsr_adapters_merge_into(&ad, &m, 0), "blocks.0.attn.qkv.weight", "model.precision bf16");
    tsr_adapters_destroy(&ad);
    tsr_vit_destroy(&m);

    /* weights made by hand (neither init nor load): nothing to restore them from */
    assert_int_equal(tsr_vit_create(&m, &CFG, B), 0);
    for (size_t i = 0; i < m.num_params; i++) m.params_mem[i] = (float)(0.1 * normal(&r));
    assert_int_equal(tsr_vit_set_precision(&m, 1), 0);
    refused(tsr_vit_set_precision(&m, 0), "blocks.0.attn.qkv.weight", "came neither from");
    tsr_vit_destroy(&m);

    /* loaded from a file that changes afterwards, then from one that is gone */
    tsr_vit other;
    assert_int_equal(tsr_vit_create(&other, &CFG, B), 0);
    tsr_vit_init_random(&other, 4);
    assert_int_equal(tsr_vit_create(&m, &CFG, B), 0);
    tsr_vit_init_random(&m, 3);
    assert_int_equal(tsr_ckpt_save_vit(&m, file, TSR_NAMING_TIMM, 0, NULL, NULL), 0);
    assert_int_equal(tsr_ckpt_load_vit(&m, file, 0), 0);
    assert_int_equal(tsr_vit_set_precision(&m, 1), 0);
    assert_int_equal(tsr_ckpt_save_vit(&m, out, TSR_NAMING_TIMM, 0, NULL, NULL), 0); /* restorable: fine */
    assert_int_equal(tsr_ckpt_save_vit(&other, file, TSR_NAMING_TIMM, 0, NULL, NULL), 0);
    refused(tsr_ckpt_save_vit(&m, out, TSR_NAMING_TIMM, 0, NULL, NULL), "blocks.0.attn.qkv.weight",
            "no longer gives the values");
    refused(tsr_vit_set_precision(&m, 0), "blocks.0.attn.qkv.weight", "no longer gives the values");
    unlink(file);
    refused(tsr_vit_set_precision(&m, 0), "blocks.0.attn.qkv.weight", "cannot open");
    assert_non_null(m.w16_mem);
    tsr_vit_destroy(&m);
    tsr_vit_destroy(&other);
    unlink(out);
    free(x);
    free(l1);
}

static int setup(void **st) {
    (void)st;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_bf16_model_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **st) {
    (void)st;
    tsr_bf16_release();
    return rmdir(g_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_lora), cmocka_unit_test(test_mhr),
                                       cmocka_unit_test(test_guards)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
