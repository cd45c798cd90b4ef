/* test_checkpoint.c: ViT checkpoints in timm and Hugging Face naming: save/load round trips, and every
 * kind of bad file refused with a message naming the tensor (never a crash, never a silent zero). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/common.h"
#include "core/rng.h"
#include "model/checkpoint.h"
#include "io/safetensors.h"
#include "model/vit.h"

static char dir[256];
static const tsr_vit_config cfg = {.image_size = 8, .patch_size = 4, .channels = 3, .dim = 16, .depth = 2,
                                   .heads = 2, .mlp_dim = 32, .num_classes = 5, .ln_eps = 1e-6};

static void path_of(char *out, const char *name) { snprintf(out, 512, "%s/%s", dir, name); }

static void make_model(tsr_vit *m, uint64_t seed) {
    assert_int_equal(tsr_vit_create(m, &cfg, 2), 0);
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] = (float)tsr_rng_normal(&r);
}

/* Copy the timm file, applying one change to one tensor, into `out`. mode: 0 drop, 1 rename to 'extra',
 * 2 wrong shape, 3 wrong dtype (I64), 4 NaN */
static void write_variant(const tsr_vit *m, const char *out, const char *victim, int mode) {
    tsr_st_writer *w = tsr_st_writer_new();
    int n = tsr_vit_tensor_info(m, &m->params, -1, NULL, 0, NULL, NULL, NULL);
    static int64_t ibuf[4096];
    static float fbuf[4096];
    for (int i = 0; i < n; i++) {
        char name[128];
        int nd;
        int64_t shape[4];
        float *data;
        tsr_vit_tensor_info(m, &m->params, i, name, sizeof name, &nd, shape, &data);
        if (strcmp(name, victim) == 0) {
            if (mode == 0) continue;
            if (mode == 1) { tsr_st_writer_add(w, name, TSR_DT_F32, nd, shape, data); tsr_st_writer_add(w, "extra.weight", TSR_DT_F32, nd, shape, data); continue; }
            if (mode == 2) { shape[0] += 1; memset(fbuf, 0, sizeof fbuf); tsr_st_writer_add(w, name, TSR_DT_F32, nd, shape, fbuf); continue; }
            if (mode == 3) { tsr_st_writer_add(w, name, TSR_DT_I64, nd, shape, ibuf); continue; }
            if (mode == 4) {
                int64_t cnt = 1;
                for (int k = 0; k < nd; k++) cnt *= shape[k];
                memcpy(fbuf, data, sizeof(float) * (size_t)cnt);
                fbuf[cnt - 1] = NAN;
                tsr_st_writer_add(w, name, TSR_DT_F32, nd, shape, fbuf);
                continue;
            }
        }
        tsr_st_writer_add(w, name, TSR_DT_F32, nd, shape, data);
    }
    assert_int_equal(tsr_st_writer_write(w, out), 0);
    tsr_st_writer_free(w);
}

static void expect_refused(const char *file, const char *substr) {
    tsr_vit m2;
    assert_int_equal(tsr_vit_create(&m2, &cfg, 2), 0);
    int rc = tsr_ckpt_load_vit(&m2, file, 0);
    printf("  refused: %s\n", tsr_last_error());
    assert_int_equal(rc, -1);
    assert_non_null(strstr(tsr_last_error(), substr));
    tsr_vit_destroy(&m2);
}

static void test_round_trip_namings(void **s) {
    (void)s;
    tsr_vit m, m2;
    make_model(&m, 1);
    tsr_naming namings[5] = {TSR_NAMING_TIMM, TSR_NAMING_HF, TSR_NAMING_HF_NOPREFIX, TSR_NAMING_HF5,
                             TSR_NAMING_HF5_NOPREFIX};
    for (int k = 0; k < 5; k++) {
        char p[512];
        path_of(p, "rt.safetensors");
        assert_int_equal(tsr_ckpt_save_vit(&m, p, namings[k], 0, NULL, NULL), 0);
        tsr_naming det;
        assert_int_equal(tsr_ckpt_detect(p, &det), 0);
        assert_int_equal(det, namings[k]);
        if (TSR_NAMING_IS_HF5(namings[k])) { /* transformers 5: vit.layers.N.attention.q_proj, mlp.fc1, ... */
            tsr_st_file f;
            assert_int_equal(tsr_st_open(&f, p), 0);
            const char *pre = namings[k] == TSR_NAMING_HF5 ? "vit." : "";
            static const char *const names[] = {"layers.0.attention.k_proj.weight", "layers.0.attention.o_proj.bias",
                                                "layers.0.mlp.fc2.weight", "layers.0.layernorm_after.bias",
                                                "embeddings.position_embeddings", "layernorm.weight"};
            for (int i = 0; i < 6; i++) {
                char n[128];
                snprintf(n, sizeof n, "%s%s", pre, names[i]);
                if (!tsr_st_find(&f, n)) fail_msg("no tensor %s", n);
            }
            assert_null(tsr_st_find(&f, "vit.encoder.layer.0.output.dense.weight"));
            tsr_st_close(&f);
        }
        tsr_vit_config inf = cfg;
        inf.dim = inf.depth = inf.mlp_dim = inf.num_classes = inf.image_size = 0;
        assert_int_equal(tsr_ckpt_infer_config(p, &inf), 0);
        assert_int_equal(inf.dim, cfg.dim);
        assert_int_equal(inf.depth, cfg.depth);
        assert_int_equal(inf.mlp_dim, cfg.mlp_dim);
        assert_int_equal(inf.num_classes, cfg.num_classes);
        assert_int_equal(inf.image_size, cfg.image_size);
        assert_int_equal(tsr_vit_create(&m2, &cfg, 2), 0);
        assert_int_equal(tsr_ckpt_load_vit(&m2, p, 0), 0);
        assert_memory_equal(m.params_mem, m2.params_mem, sizeof(float) * m.num_params); /* bit-exact */
        tsr_vit_destroy(&m2);
        unlink(p);
    }
    tsr_vit_destroy(&m);
}

static void test_bad_files(void **s) {
    (void)s;
    tsr_vit m;
    make_model(&m, 2);
    char p[512];
    path_of(p, "bad.safetensors");
    write_variant(&m, p, "blocks.1.attn.proj.weight", 0);
    expect_refused(p, "tensor 'blocks.1.attn.proj.weight' is missing");
    write_variant(&m, p, "blocks.0.mlp.fc2.bias", 1);
    expect_refused(p, "unexpected tensor 'extra.weight'");
    write_variant(&m, p, "blocks.0.attn.qkv.weight", 2);
    expect_refused(p, "blocks.0.attn.qkv.weight");
    write_variant(&m, p, "norm.bias", 3);
    expect_refused(p, "tensor 'norm.bias' has dtype I64");
    write_variant(&m, p, "head.weight", 4);
    expect_refused(p, "tensor 'head.weight' holds a non-finite value");
    /* a deeper model's file into a shallower model: blocks.1 ... fine, but a depth-3 file has blocks.2 */
    tsr_vit_config deeper = cfg;
    deeper.depth = 3;
    tsr_vit m3;
    assert_int_equal(tsr_vit_create(&m3, &deeper, 2), 0);
    assert_int_equal(tsr_ckpt_save_vit(&m3, p, TSR_NAMING_TIMM, 0, NULL, NULL), 0);
    expect_refused(p, "unexpected tensor 'blocks.2.");
    tsr_vit_destroy(&m3);
    /* truncated file */
    assert_int_equal(tsr_ckpt_save_vit(&m, p, TSR_NAMING_TIMM, 0, NULL, NULL), 0);
    char *buf;
    size_t n;
    assert_int_equal(tsr_read_file(p, &buf, &n), 0);
    assert_int_equal(tsr_write_file_atomic(p, buf, n - 100), 0);
    free(buf);
    expect_refused(p, "truncated");
    /* not a ViT */
    tsr_st_writer *w = tsr_st_writer_new();
    int64_t sh[1] = {4};
    float v[4] = {0};
    tsr_st_writer_add(w, "something.else", TSR_DT_F32, 1, sh, v);
    assert_int_equal(tsr_st_writer_write(w, p), 0);
    tsr_st_writer_free(w);
    expect_refused(p, "not a ViT checkpoint");
    /* garbage bytes */
    assert_int_equal(tsr_write_file_atomic(p, "\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!}", 24), 0);
    expect_refused(p, "JSON");
    unlink(p);
    tsr_vit_destroy(&m);
}

static void test_hf_config(void **s) {
    (void)s;
    char p[512];
    path_of(p, "config.json");
    const char *good = "{\"model_type\":\"vit\",\"hidden_size\":768,\"num_hidden_layers\":12,\"num_attention_heads\":12,"
                       "\"intermediate_size\":3072,\"hidden_act\":\"gelu\",\"layer_norm_eps\":1e-12,\"image_size\":224,"
                       "\"patch_size\":16,\"num_channels\":3,\"qkv_bias\":true}";
    assert_int_equal(tsr_write_file_atomic(p, good, strlen(good)), 0);
    tsr_vit_config c = cfg;
    assert_int_equal(tsr_ckpt_read_hf_config(p, &c), 0);
    assert_int_equal(c.dim, 768);
    assert_int_equal(c.heads, 12);
    assert_true(c.ln_eps == 1e-12);
    const char *bad[][2] = {{"{\"hidden_act\":\"relu\"}", "hidden_act"},
                            {"{\"hidden_size\":\"big\"}", "hidden_size"},
                            {"{\"hidden_size\":30,\"num_attention_heads\":4}", "not divisible"},
                            {"[1,2]", "expected a JSON object"},
                            {"{\"layer_norm_eps\": 2}", "layer_norm_eps"},
                            {"{oops", "not valid JSON"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(tsr_write_file_atomic(p, bad[i][0], strlen(bad[i][0])), 0);
        c = cfg;
        assert_int_equal(tsr_ckpt_read_hf_config(p, &c), -1);
        printf("  refused: %s\n", tsr_last_error());
        assert_non_null(strstr(tsr_last_error(), bad[i][1]));
        assert_non_null(strstr(tsr_last_error(), "config.json"));
    }
    unlink(p);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/tsr_ckpt_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_round_trip_namings), cmocka_unit_test(test_bad_files),
                                       cmocka_unit_test(test_hf_config)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(dir);
    return rc;
}
