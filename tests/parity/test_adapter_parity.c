/* test_adapter_parity.c: adapters and routing against PyTorch autograd (tests/torch/adapter_ref.py).
 * Usage: test_adapter_parity CASE_DIR (weights_timm.safetensors, adapters.safetensors, ref.safetensors).
 * A frozen backbone with the case's adapters (LoRA at any site, bottleneck parallel / houlsby_attn /
 * mlp_seq, S skills, h heads, routing with or without relaxed-Bernoulli noise given as `noise.*`),
 * a batch with mixed, non-contiguous task ids. Checks (float32): training-mode logits and loss,
 * evaluation-mode logits (max abs <= 1e-4), and the gradient of every adapter tensor and of the head
 * (max|ours - torch| / max|torch| <= 1e-4). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapters.h"
#include "core/common.h"
#include "model/checkpoint.h"
#include "io/safetensors.h"
#include "model/vit.h"

static int failures = 0, checks = 0;
static void report(const char *what, double err, double tol) {
    checks++;
    int ok = err <= tol;
    if (!ok) failures++;
    printf("%-6s %-48s err %.3e (tol %.0e)\n", ok ? "ok" : "FAIL", what, err, tol);
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
static const char *meta(tsr_st_file *f, const char *k) {
    const char *v = tsr_st_meta(f, k);
    if (!v) tsr_fatal("%s: metadata '%s' missing", f->path, k);
    return v;
}
static float *load(tsr_st_file *f, const char *name, int64_t n) {
    const tsr_st_tensor *t = tsr_st_find(f, name);
    if (!t || t->numel != n) tsr_fatal("%s: tensor '%s' missing or not %lld elements", f->path, name, (long long)n);
    float *v = tsr_malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (tsr_st_read_f32(f, t, v, n) != 0) tsr_fatal("%s", tsr_last_error());
    return v;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_adapter_parity CASE_DIR\n");
        return 2;
    }
    char path[2048];
    tsr_st_file af, rf;
    snprintf(path, sizeof path, "%s/adapters.safetensors", argv[1]);
    if (tsr_st_open(&af, path) != 0) tsr_fatal("%s", tsr_last_error());
    snprintf(path, sizeof path, "%s/ref.safetensors", argv[1]);
    if (tsr_st_open(&rf, path) != 0) tsr_fatal("%s", tsr_last_error());
    tsr_vit_config c = {atoi(meta(&af, "image")), atoi(meta(&af, "patch")), atoi(meta(&af, "channels")),
                        atoi(meta(&af, "dim")), atoi(meta(&af, "depth")), atoi(meta(&af, "heads")),
                        atoi(meta(&af, "mlp")), atoi(meta(&af, "classes")), atof(meta(&af, "eps"))};
    int B = atoi(meta(&af, "batch"));
    tsr_adapter_config ac = {0};
    int lora = strcmp(meta(&af, "kind"), "lora") == 0;
    const char *list = lora ? meta(&af, "sites") : meta(&af, "pos");
    static const char *lnames[] = {"q", "k", "v", "proj", "fc1", "fc2"}, *bnames[] = {"parallel", "houlsby_attn", "mlp_seq"};
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ","))
        for (int i = 0; i < (lora ? 6 : 3); i++)
            if (strcmp(tok, lora ? lnames[i] : bnames[i]) == 0) {
                if (lora) ac.lora_sites |= 1 << i;
                else ac.bn_sites |= 1 << i;
            }
    int r = atoi(meta(&af, "rank"));
    if (lora) {
        ac.lora_rank = r;
        ac.lora_alpha = atof(meta(&af, "alpha"));
    } else {
        ac.bn_dim = r;
        ac.bn_scale = atof(meta(&af, "scale"));
        ac.bn_relu = strcmp(meta(&af, "activation"), "relu") == 0;
    }
    ac.skills = atoi(meta(&af, "skills"));
    ac.heads = atoi(meta(&af, "adapter_heads"));
    ac.n_tasks = atoi(meta(&af, "n_tasks"));
    ac.noise = atoi(meta(&af, "noise"));
    ac.tau = atof(meta(&af, "tau"));
    ac.layer_min = 0;
    ac.layer_max = -1;
    printf("adapter parity: %s: %s %s, rank %d, S %d, h %d, tasks %d, noise %d\n", argv[1], lora ? "lora" : "bottleneck",
           list, r, ac.skills, ac.heads, ac.n_tasks, ac.noise);

    tsr_vit m;
    tsr_adapters ad;
    if (tsr_vit_create(&m, &c, B) != 0) tsr_fatal("%s", tsr_last_error());
    snprintf(path, sizeof path, "%s/weights_timm.safetensors", argv[1]);
    if (tsr_ckpt_load_vit(&m, path, 0) != 0) tsr_fatal("%s", tsr_last_error());
    if (tsr_adapters_create(&ad, &ac, c.depth, c.dim, c.mlp_dim, m.tokens, B) != 0) tsr_fatal("%s", tsr_last_error());
    ad.ln_eps = c.ln_eps;
    tsr_adapters_attach(&ad, &m);
    int nt = tsr_adapters_tensor_info(&ad, ad.params, -1, NULL, 0, NULL, NULL, NULL);
    int nfile = 0;
    for (int i = 0; i < af.n; i++) nfile++;
    report("adapter tensor count equals the file's", abs(nt - nfile), 0);
    for (int i = 0; i < nt; i++) {
        char name[128];
        int nd;
        int64_t shape[4];
        float *p;
        tsr_adapters_tensor_info(&ad, ad.params, i, name, sizeof name, &nd, shape, &p);
        const tsr_st_tensor *t = tsr_st_expect(&af, name, nd, shape);
        if (!t) tsr_fatal("%s", tsr_last_error());
        if (tsr_st_read_f32(&af, t, p, t->numel) != 0) tsr_fatal("%s", tsr_last_error());
    }
    /* noise in module order */
    size_t nn = 0;
    for (int k = 0; k < ad.n_mod; k++) nn += ad.mod[k].nZ;
    float *noise = tsr_calloc(nn ? nn : 1, sizeof(float));
    if (ac.noise) {
        size_t o = 0;
        for (int k = 0; k < ad.n_mod; k++) {
            if (!ad.mod[k].nZ) continue;
            char name[96];
            snprintf(name, sizeof name, "noise.%s", ad.mod[k].name);
            float *v = load(&rf, name, (int64_t)ad.mod[k].nZ);
            memcpy(noise + o, v, sizeof(float) * ad.mod[k].nZ);
            free(v);
            o += ad.mod[k].nZ;
        }
    }
    int64_t nimg = (int64_t)B * c.channels * c.image_size * c.image_size, lab64[64], tid64[64];
    float *input = load(&rf, "input", nimg);
    if (tsr_st_read_i64(&rf, tsr_st_find(&rf, "labels"), lab64, B) || tsr_st_read_i64(&rf, tsr_st_find(&rf, "task_ids"), tid64, B))
        tsr_fatal("%s", tsr_last_error());
    int labels[64], tasks[64];
    for (int i = 0; i < B; i++) {
        labels[i] = (int)lab64[i];
        tasks[i] = (int)tid64[i];
    }
    float *logits = load(&rf, "logits", (int64_t)B * c.num_classes), *loss = load(&rf, "loss", 1);
    float *logits_eval = load(&rf, "logits_eval", (int64_t)B * c.num_classes);

    /* evaluation mode (no noise) */
    if (tsr_adapters_begin(&ad, tasks, B, 0, 0, 0, NULL) != 0) tsr_fatal("%s", tsr_last_error());
    tsr_vit_forward(&m, input, labels, B);
    report("evaluation logits", max_abs(m.acts.logits, logits_eval, (int64_t)B * c.num_classes), 1e-4);
    /* training mode with the reference's noise */
    if (tsr_adapters_begin(&ad, tasks, B, 1, 0, 0, noise) != 0) tsr_fatal("%s", tsr_last_error());
    double l = tsr_vit_forward(&m, input, labels, B);
    report("training logits", max_abs(m.acts.logits, logits, (int64_t)B * c.num_classes), 1e-4);
    report("training loss", fabs(l - loss[0]), 1e-5);
    tsr_vit_zero_grad(&m);
    tsr_adapters_zero_grad(&ad);
    tsr_vit_backward(&m, &TSR_VIT_ADAPTERS);
    double worst = 0;
    for (int i = 0; i < nt; i++) {
        char name[128], gname[160], what[200];
        int nd;
        int64_t shape[4];
        float *g;
        tsr_adapters_tensor_info(&ad, ad.grads, i, name, sizeof name, &nd, shape, &g);
        int64_t cnt = 1;
        for (int d = 0; d < nd; d++) cnt *= shape[d];
        snprintf(gname, sizeof gname, "grad.%s", name);
        float *ref = load(&rf, gname, cnt);
        double e = rel(g, ref, cnt);
        worst = fmax(worst, e);
        snprintf(what, sizeof what, "%s", gname);
        report(what, e, 1e-4);
        free(ref);
    }
    float *hw = load(&rf, "grad.head.weight", (int64_t)c.num_classes * c.dim), *hb = load(&rf, "grad.head.bias", c.num_classes);
    report("grad.head.weight", rel(m.grads.headw, hw, (int64_t)c.num_classes * c.dim), 1e-4);
    report("grad.head.bias", rel(m.grads.headb, hb, c.num_classes), 1e-4);
    printf("worst relative adapter gradient error %.3e over %d tensors\n", worst, nt);
    printf("%d passed, %d failed\n", checks - failures, failures);
    free(noise); free(input); free(logits); free(loss); free(logits_eval); free(hw); free(hb);
    tsr_adapters_destroy(&ad);
    tsr_vit_destroy(&m);
    tsr_st_close(&af);
    tsr_st_close(&rf);
    return failures ? 1 : 0;
}
