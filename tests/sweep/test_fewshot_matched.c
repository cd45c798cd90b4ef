/* test_fewshot_matched.c: the few-shot study's baselines are matched (issue 14, METHODS.md), as the sweep
 * of configs/fewshot_glyphs.yaml resolves its entries (sweep file, method file, fewshot.set lines, the
 * entry's keys):
 * - LoRA from scratch and shared LoRA are the routed LoRA module of Poly / MHR (and MoSA x MHR) with one
 *   skill: the same sites, rank, scale (alpha / rank) and A initialisation; and the module with one skill
 *   computes the same function whatever its head count (so routing: none is that S = 1 module);
 * - the bottleneck adapter and MoSA sit at the same placement with the same width, scale, dropout and
 *   activation, and train the same number of parameters; MoSA x MHR trains MHR's parameters;
 * - the trained parameter counts the trainer reports are those of the modules (LoRA, adapter, the sparse
 *   baseline's module 0), counted here by hand. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../common/test_util.h"

#include "adapters/adapters.h"
#include "adapters/mosa.h"
#include "core/rng.h"
#include "dist/parallel.h"
#include "io/tsr_config.h"
#include "model/vit.h"
#include "sweep/sweep.h"
#include "train/trainer.h"

#define SWEEP "configs/fewshot_glyphs.yaml"
#ifdef TSR_SOURCE_DIR
#define SRC(p) (access(p, R_OK) == 0 ? p : TSR_SOURCE_DIR "/" p)
#else
#define SRC(p) p
#endif

static char pre_set[400];

static int setup_dir(void **st) {
    (void)st;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_matched_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    /* stand-ins for the pre-training runs the sweep's methods start from (only their presence is checked) */
    const char *runs[] = {"lora", "poly", "mhr", "mosa_mhr"};
    for (int i = 0; i < 4; i++) {
        char d[600];
        snprintf(d, sizeof d, "%s/%s", g_dir, runs[i]);
        if (mkdir(d, 0700) != 0) return -1;
        snprintf(d, sizeof d, "%s/%s/adapters.safetensors", g_dir, runs[i]);
        FILE *f = fopen(d, "w");
        if (!f) return -1;
        fclose(f);
    }
    snprintf(pre_set, sizeof pre_set, "fewshot.pretrained=\"%s\"", g_dir);
    return 0;
}

static int teardown_dir(void **st) {
    (void)st;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The entry configuration of `method` in the study's sweep file (first held-out task, 5 shots, seed 0). */
static void entry(const char *method, tsr_config *c, int nextra, char **extra) {
    char *sets[16];
    int n = 0;
    sets[n++] = pre_set;
    for (int i = 0; i < nextra; i++) sets[n++] = extra[i];
    tsr_config sw;
    if (tsr_config_load(&sw, SRC(SWEEP), 0, NULL) != 0) fail_msg("%s", tsr_last_error());
    const char *task = sw.fewshot.tasks.n ? sw.fewshot.tasks.v[0] : sw.suite.heldout.v[0];
    if (tsr_sweep_entry_config(SRC(SWEEP), n, sets, method, task, 5, 0, c) != 0)
        fail_msg("%s: %s", method, tsr_last_error());
}

static int sites(const tsr_config *c) {
    static const char *names[] = {"q", "k", "v", "proj", "fc1", "fc2"};
    int mask = 0;
    for (int i = 0; i < c->adapter.lora_sites.n; i++)
        for (int s = 0; s < 6; s++)
            if (strcmp(c->adapter.lora_sites.v[i], names[s]) == 0) mask |= 1 << s;
    return mask;
}

/* lora and shared_lora: the S = 1 module of poly, mhr, mhr_z, mhr_mu and mosa_mhr */
static void test_lora_is_the_routed_module(void **st) {
    (void)st;
    tsr_config ref, c;
    entry("mhr", &ref, 0, NULL);
    assert_string_equal(ref.adapter.kind, "lora");
    assert_string_equal(ref.adapter.routing, "mhr");
    const char *ms[] = {"lora", "shared_lora", "poly", "mhr_z", "mhr_mu", "mosa_mhr"};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        entry(ms[i], &c, 0, NULL);
        print_message("  %-12s sites %#x rank %ld alpha %g (scale %g) init %s routing %s skills %ld heads %ld\n", ms[i],
                      sites(&c), c.adapter.lora_rank, c.adapter.lora_alpha, c.adapter.lora_alpha / c.adapter.lora_rank,
                      c.adapter.lora_init, c.adapter.routing, c.adapter.skills, c.adapter.heads);
        assert_string_equal(c.adapter.kind, "lora");
        assert_int_equal(sites(&c), sites(&ref));
        assert_int_equal(c.adapter.lora_rank, ref.adapter.lora_rank);
        assert_true(c.adapter.lora_alpha / c.adapter.lora_rank == ref.adapter.lora_alpha / ref.adapter.lora_rank);
        assert_string_equal(c.adapter.lora_init, ref.adapter.lora_init);
        if (strncmp(ms[i], "lora", 4) == 0 || strcmp(ms[i], "shared_lora") == 0) {
            assert_string_equal(c.adapter.routing, "none"); /* one skill: the trainer builds S = 1 */
        } else if (strcmp(ms[i], "poly") != 0) {
            assert_int_equal(c.adapter.skills, ref.adapter.skills); /* the same inventory */
            assert_int_equal(c.adapter.heads, ref.adapter.heads);
        }
    }
    /* the papers' setting: scale 1/r on q, k, v and the attention output */
    assert_int_equal(sites(&ref), 0xf);
    assert_true(ref.adapter.lora_alpha == 1.0);
}

/* A LoRA module with one skill computes the same function with h = 1 (routing: none) and with h = 4 heads
 * (the MHR layout), given the same A and B: at S = 1 the heads' blocks are one matrix. */
static void test_one_skill_any_heads(void **st) {
    (void)st;
    tsr_vit_config vc = {.image_size = 8, .patch_size = 4, .channels = 1, .dim = 8, .depth = 2, .heads = 2,
                         .mlp_dim = 16, .num_classes = 3, .ln_eps = 1e-6};
    enum { B = 3 };
    tsr_rng r;
    tsr_rng_seed(&r, 3);
    tsr_vit m;
    assert_int_equal(tsr_vit_create(&m, &vc, B), 0);
    tsr_vit_init_random(&m, 5);
    for (int i = 0; i < vc.num_classes * vc.dim; i++) m.params.headw[i] = (float)tsr_rng_normal(&r);
    float img[B * 64], out[2][B * 3];
    for (int i = 0; i < B * 64; i++) img[i] = (float)tsr_rng_normal(&r);
    tsr_adapters ad[2];
    for (int v = 0; v < 2; v++) {
        tsr_adapter_config ac = {.lora_sites = 0xf, .lora_rank = 2, .lora_alpha = 1, .skills = 1, .heads = v ? 4 : 1,
                                 .n_tasks = 1, .tau = 1, .layer_max = -1};
        assert_int_equal(tsr_adapters_create(&ad[v], &ac, vc.depth, vc.dim, vc.mlp_dim, m.tokens, B), 0);
    }
    tsr_adapters_init(&ad[0], 9);
    for (size_t i = 0; i < ad[0].num_params; i++) ad[0].params[i] += (float)(0.3 * tsr_rng_normal(&r)); /* B != 0 */
    for (int k = 0; k < ad[0].n_mod; k++) { /* A: the same layout; B (h, r, dout/h) from (r, dout) */
        const tsr_rlp *a = &ad[0].mod[k], *b = &ad[1].mod[k];
        memcpy(ad[1].params + b->oA, ad[0].params + a->oA, sizeof(float) * a->nA);
        int h = b->h, oh = b->dout / h;
        for (int q = 0; q < h; q++)
            for (int kk = 0; kk < b->r; kk++)
                for (int j = 0; j < oh; j++)
                    ad[1].params[b->oB + ((size_t)q * b->r + kk) * oh + j] = ad[0].params[a->oB + (size_t)kk * a->dout + q * oh + j];
    }
    for (int v = 0; v < 2; v++) {
        tsr_adapters_attach(&ad[v], &m);
        assert_int_equal(tsr_adapters_begin(&ad[v], NULL, B, 0, 0, 0, NULL), 0);
        tsr_vit_forward(&m, img, NULL, B);
        memcpy(out[v], m.acts.logits, sizeof out[v]);
    }
    double d = 0, mx = 0;
    for (int i = 0; i < B * 3; i++) d = fmax(d, fabs(out[0][i] - out[1][i])), mx = fmax(mx, fabs(out[0][i]));
    print_message("  one skill, h = 1 vs h = 4: max |logit difference| %.3g (logits up to %.3g)\n", d, mx);
    assert_true(d <= 1e-5 * (1 + mx));
    tsr_adapters_attach(NULL, &m);
    for (int v = 0; v < 2; v++) tsr_adapters_destroy(&ad[v]);
    tsr_vit_destroy(&m);
}

/* bottleneck adapter and MoSA: the same adapter at the same place */
static void test_adapter_mosa_same_place(void **st) {
    (void)st;
    tsr_config a, c;
    entry("adapter", &a, 0, NULL);
    const char *ms[] = {"mosa", "sparse"};
    for (int i = 0; i < 2; i++) {
        entry(ms[i], &c, 0, NULL);
        assert_string_equal(c.adapter.kind, "bottleneck");
        assert_string_equal(c.adapter.kind, a.adapter.kind);
        assert_string_equal(c.adapter.routing, a.adapter.routing);
        assert_string_equal(c.adapter.placement, a.adapter.placement);
        assert_int_equal(c.adapter.bottleneck, a.adapter.bottleneck);
        assert_true(c.adapter.scale == a.adapter.scale);
        assert_true(c.adapter.dropout == a.adapter.dropout);
        assert_string_equal(c.adapter.activation, a.adapter.activation);
        assert_true(c.mosa.modules > 0);
    }
}

/* What the trainer reports as trained, for an entry configuration trained from scratch for one step on
 * Fashion-MNIST (the sweep file's model; the backbone random). */
static size_t trained(const char *method, int scratch) {
    char outdir[400];
    snprintf(outdir, sizeof outdir, "run.output_dir=\"%s/%s\"", g_dir, method);
    char *extra[] = {"data.dataset=fashion-mnist", "data.path=/usr/share/datasets/fashion-mnist", "run.init=\"\"",
                     "train.steps=1", "train.eval_every=1", "train.eval_limit=8", "train.batch_size=8", "run.threads=1",
                     outdir};
    tsr_config c;
    entry(method, &c, (int)(sizeof extra / sizeof extra[0]), extra);
    if (scratch) { /* the method's adapters trained from scratch (no pre-trained file here) */
        c.adapter.init[0] = 0;
        strcpy(c.adapter.fewshot, "none");
    }
    tsr_ctx ctx = tsr_ctx_world();
    ctx.log.level = TSR_LOG_ERROR;
    tsr_train_opts o = {.quiet = 1, .fault_nan_step = -1};
    tsr_train_result res;
    if (tsr_train_run(&ctx, &c, "test", &o, &res) != 0) fail_msg("%s: %s", method, tsr_last_error());
    size_t n = res.trainable;
    tsr_train_result_free(&res);
    return n;
}

static void test_trained_counts(void **st) {
    (void)st;
    tsr_config c;
    entry("adapter", &c, 0, NULL);
    size_t D = (size_t)c.model.dim, L = (size_t)c.model.depth, K = (size_t)c.model.num_classes, r = (size_t)c.adapter.bottleneck;
    size_t head = K * D + K;
    size_t adapter = trained("adapter", 0), mosa = trained("mosa", 0), sparse = trained("sparse", 0);
    size_t lora = trained("lora", 0), mhr = trained("mhr", 1), mosa_mhr = trained("mosa_mhr", 1);
    entry("lora", &c, 0, NULL);
    size_t rl = (size_t)c.adapter.lora_rank;
    print_message("  trained: adapter %zu, mosa %zu, sparse %zu, lora %zu, mhr %zu, mosa_mhr %zu\n", adapter, mosa, sparse,
                  lora, mhr, mosa_mhr);
    /* the parallel adapter: LN_a (2D), Down (D r) + bias (r), Up (r D) + bias (D), per block; the head */
    assert_int_equal(adapter, L * (2 * D + D * r + r + r * D + D) + head);
    assert_int_equal(mosa, adapter); /* MoSA trains the dense adapter's parameters */
    assert_int_equal(mosa_mhr, mhr); /* and MoSA x MHR those of MHR */
    /* LoRA: A (D r) and B (r D) at q, k, v, proj of every block */
    assert_int_equal(lora, L * 4 * (D * rl + rl * D) + head);
    /* the sparse baseline trains module 0's share of its split tensors (and module 0's bias copy) */
    entry("sparse", &c, 0, NULL);
    int N = (int)c.mosa.modules;
    size_t want = L * (2 * D + r + D) + head;
    if (strcmp(c.mosa.split, "up") != 0) want += L * tsr_mosa_group_size(D * r, N, 0);
    else want += L * D * r;
    if (strcmp(c.mosa.split, "down") != 0) want += L * tsr_mosa_group_size(r * D, N, 0);
    else want += L * r * D;
    assert_int_equal(sparse, want);
    assert_true(sparse < adapter);
}

int main(void) {
    tsr_log_level = TSR_LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lora_is_the_routed_module),
        cmocka_unit_test(test_one_skill_any_heads),
        cmocka_unit_test(test_adapter_mosa_same_place),
        cmocka_unit_test(test_trained_counts),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
