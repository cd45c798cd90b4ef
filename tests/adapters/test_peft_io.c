/* test_peft_io.c: Hugging Face peft adapter directories (src/adapters/peft_io.c): LoRA (S = 1, any number of
 * heads) and Poly / MHR export and re-import bit for bit, the layouts element by element (lora_A = A^T,
 * lora_B = B^T with the heads' column blocks, Poly's tensors as tessera's), a layer range, the module paths
 * of each naming, and every refusal naming the key or tensor. The torch statement of peft's forward is in
 * tests/torch/test_peft.py. */
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
#include <jansson.h>

#include "adapters/adapter_io.h"
#include "adapters/peft_io.h"
#include "../common/test_util.h"
#include "core/rng.h"
#include "io/safetensors.h"

enum { DEPTH = 2, DIM = 16, MLP = 32, TOKENS = 5 };

static tsr_adapter_config lora_cfg(int heads) {
    tsr_adapter_config c = {0};
    c.lora_sites = (1 << TSR_NLORA) - 1;
    c.lora_rank = 4;
    c.lora_alpha = 2.0;
    c.skills = 1;
    c.heads = heads;
    c.n_tasks = 1;
    c.tau = 1.0;
    c.layer_min = 0;
    c.layer_max = -1;
    return c;
}

static tsr_adapter_config poly_cfg(void) {
    tsr_adapter_config c = lora_cfg(2);
    c.lora_rank = 2;
    c.lora_alpha = 1.0;
    c.skills = 3;
    c.n_tasks = 3;
    return c;
}

static void make_ad(tsr_adapters *ad, const tsr_adapter_config *c, uint64_t seed) {
    assert_int_equal(tsr_adapters_create(ad, c, DEPTH, DIM, MLP, TOKENS, 1), 0);
    ad->ln_eps = 1e-6;
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    for (size_t i = 0; i < ad->num_params; i++) ad->params[i] = (float)tsr_rng_normal(&r);
}

/* the adapters a peft directory describes, loaded */
static void load_dir(tsr_adapters *ad, const char *d) {
    tsr_adapter_config c;
    int depth, dim, mlp;
    if (tsr_peft_load_config(d, &c, &depth, &dim, &mlp, NULL) != 0) fail_msg("%s", tsr_last_error());
    assert_int_equal(depth, -1);
    assert_int_equal(dim, DIM);
    assert_int_equal(mlp, MLP);
    assert_int_equal(tsr_adapters_create(ad, &c, DEPTH, DIM, MLP, TOKENS, 1), 0);
    /* the generic entry points read a directory as a peft one */
    tsr_adapter_config c2;
    assert_int_equal(tsr_adapters_load_config(d, &c2, NULL, NULL, NULL), 0);
    assert_int_equal(c2.lora_sites, c.lora_sites);
    if (tsr_adapters_load(ad, d) != 0) fail_msg("%s", tsr_last_error());
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = tsr_malloc(*n + 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    b[*n] = 0;
    return b;
}

static void assert_same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, na);
    free(x);
    free(y);
}

/* LoRA with 2 heads: the file holds lora_A = A^T (r, din) and lora_B = B^T (dout, r) with head q's columns at
 * q*dout/h; reloaded (as h = 1) every element is in place and a second export is the same file */
static void test_lora_round_trip(void **s) {
    tsr_adapter_config c = lora_cfg(2);
    tsr_adapters ad, back;
    make_ad(&ad, &c, 1);
    const char *d1 = tpath("lora"), *d2 = tpath("lora_again");
    if (tsr_peft_export(&ad, TSR_NAMING_HF, d1, "org/vit") != 0) fail_msg("%s", tsr_last_error());
    tsr_st_file f;
    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/" TSR_PEFT_WEIGHTS, d1);
    assert_int_equal(tsr_st_open(&f, p1), 0);
    assert_string_equal(tsr_st_meta(&f, "format"), "pt");
    int k = tsr_ad_find(&ad, 1, TSR_LORA_FC1);
    const tsr_rlp *m = &ad.mod[k];
    const tsr_st_tensor *ta = tsr_st_find(&f, "base_model.model.vit.encoder.layer.1.intermediate.dense.lora_A.weight");
    const tsr_st_tensor *tb = tsr_st_find(&f, "base_model.model.vit.encoder.layer.1.intermediate.dense.lora_B.weight");
    assert_non_null(ta);
    assert_non_null(tb);
    assert_int_equal(ta->shape[0], 4);
    assert_int_equal(ta->shape[1], DIM);
    assert_int_equal(tb->shape[0], MLP);
    assert_int_equal(tb->shape[1], 4);
    float *a = tsr_malloc(sizeof(float) * (size_t)ta->numel), *b = tsr_malloc(sizeof(float) * (size_t)tb->numel);
    assert_int_equal(tsr_st_read_f32(&f, ta, a, ta->numel), 0);
    assert_int_equal(tsr_st_read_f32(&f, tb, b, tb->numel), 0);
    int oq = MLP / 2;
    for (int i = 0; i < DIM; i++)
        for (int j = 0; j < 4; j++) assert_true(a[j * DIM + i] == ad.params[m->oA + (size_t)i * 4 + j]);
    for (int q = 0; q < 2; q++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < oq; j++)
                assert_true(b[(q * oq + j) * 4 + i] == ad.params[m->oB + ((size_t)q * 4 + i) * oq + j]);
    free(a);
    free(b);
    tsr_st_close(&f);
    load_dir(&back, d1);
    assert_int_equal(back.cfg.heads, 1);
    assert_int_equal(back.cfg.skills, 1);
    assert_true(back.cfg.lora_alpha == 2.0);
    assert_int_equal(back.cfg.layer_min, 0);
    assert_int_equal(back.cfg.layer_max, DEPTH - 1);
    if (tsr_peft_export(&back, TSR_NAMING_HF, d2, "org/vit") != 0) fail_msg("%s", tsr_last_error());
    snprintf(p2, sizeof p2, "%s/" TSR_PEFT_WEIGHTS, d2);
    assert_same_file(p1, p2);
    snprintf(p1, sizeof p1, "%s/" TSR_PEFT_CONFIG, d1);
    snprintf(p2, sizeof p2, "%s/" TSR_PEFT_CONFIG, d2);
    assert_same_file(p1, p2);
    size_t n;
    char *cfg = slurp(p1, &n);
    assert_non_null(strstr(cfg, "\"peft_type\": \"LORA\""));
    assert_non_null(strstr(cfg, "\"lora_alpha\": 2,"));
    assert_non_null(strstr(cfg, "\"base_model_name_or_path\": \"org/vit\""));
    free(cfg);
    tsr_adapters_destroy(&back);
    tsr_adapters_destroy(&ad);
    assert_no_temp_files();
}

/* Poly / MHR: tessera's layouts are peft's; the reload is the same parameter buffer, bit for bit */
static void test_poly_round_trip(void **s) {
    tsr_adapter_config c = poly_cfg();
    tsr_adapters ad, back;
    make_ad(&ad, &c, 2);
    const char *d = tpath("mhr");
    if (tsr_peft_export(&ad, TSR_NAMING_HF5_NOPREFIX, d, NULL) != 0) fail_msg("%s", tsr_last_error());
    char p[600];
    snprintf(p, sizeof p, "%s/" TSR_PEFT_WEIGHTS, d);
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, p), 0);
    int64_t sa[4] = {2, 3, MLP / 2, 2}, sz[2] = {3, 6};
    assert_non_null(tsr_st_expect(&f, "base_model.model.layers.1.mlp.fc2.poly_lora_A", 4, sa));
    assert_non_null(tsr_st_expect(&f, "base_model.model.layers.0.attention.q_proj.poly_router.module_logits", 2, sz));
    tsr_st_close(&f);
    load_dir(&back, d);
    assert_int_equal(back.cfg.skills, 3);
    assert_int_equal(back.cfg.heads, 2);
    assert_int_equal(back.cfg.n_tasks, 3);
    assert_int_equal(back.cfg.noise, 1); /* peft's router samples whenever it trains */
    assert_int_equal(back.num_params, ad.num_params);
    assert_memory_equal(back.params, ad.params, sizeof(float) * ad.num_params);
    tsr_adapters_destroy(&back);
    tsr_adapters_destroy(&ad);
}

/* adapters on the last block only; timm naming exports proj, fc1, fc2 */
static void test_layers_and_timm(void **s) {
    tsr_adapter_config c = lora_cfg(1);
    c.lora_sites = (1 << TSR_LORA_PROJ) | (1 << TSR_LORA_FC1) | (1 << TSR_LORA_FC2);
    c.layer_min = 1;
    tsr_adapters ad, back;
    make_ad(&ad, &c, 3);
    const char *d = tpath("timm");
    if (tsr_peft_export(&ad, TSR_NAMING_TIMM, d, NULL) != 0) fail_msg("%s", tsr_last_error());
    char p[600];
    snprintf(p, sizeof p, "%s/" TSR_PEFT_WEIGHTS, d);
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, p), 0);
    assert_int_equal(f.n, 6);
    assert_non_null(tsr_st_find(&f, "base_model.model.blocks.1.attn.proj.lora_B.weight"));
    assert_non_null(tsr_st_find(&f, "base_model.model.blocks.1.mlp.fc2.lora_A.weight"));
    tsr_st_close(&f);
    tsr_adapter_config bc;
    tsr_naming nm;
    assert_int_equal(tsr_peft_load_config(d, &bc, NULL, NULL, NULL, &nm), 0);
    assert_int_equal(nm, TSR_NAMING_TIMM);
    assert_int_equal(bc.layer_min, 1);
    assert_int_equal(bc.layer_max, 1);
    load_dir(&back, d);
    assert_memory_equal(back.params, ad.params, sizeof(float) * ad.num_params);
    tsr_adapters_destroy(&back);
    tsr_adapters_destroy(&ad);
}

static void test_export_refusals(void **s) {
    tsr_adapters ad;
    tsr_adapter_config c = poly_cfg();
    c.lora_alpha = 4.0;
    make_ad(&ad, &c, 4);
    assert_int_equal(tsr_peft_export(&ad, TSR_NAMING_HF, tpath("x1"), NULL), -1);
    expect_error("1/r", "lora_alpha = 4", NULL);
    tsr_adapters_destroy(&ad);
    c = lora_cfg(1);
    make_ad(&ad, &c, 5);
    assert_int_equal(tsr_peft_export(&ad, TSR_NAMING_TIMM, tpath("x2"), NULL), -1);
    expect_error("fused", "attn.qkv", NULL);
    tsr_adapters_destroy(&ad);
    memset(&c, 0, sizeof c);
    c.bn_sites = 1 << TSR_BN_PARALLEL;
    c.bn_dim = 4;
    c.bn_scale = 0.1;
    c.skills = 1;
    c.heads = 1;
    c.tau = 1;
    c.layer_max = -1;
    make_ad(&ad, &c, 6);
    assert_int_equal(tsr_peft_export(&ad, TSR_NAMING_HF, tpath("x3"), NULL), -1);
    expect_error("bottleneck", NULL);
    tsr_adapters_destroy(&ad);
    assert_int_equal(access(tpath("x1"), F_OK), -1); /* nothing written */
}

/* a copy of a valid directory with its config edited (key = JSON value; value NULL deletes the key) */
static void edit_cfg(const char *src, const char *dst, const char *key, const char *value) {
    char p[600], q[600];
    assert_int_equal(tsr_mkdirs(dst), 0);
    snprintf(p, sizeof p, "%s/" TSR_PEFT_WEIGHTS, src);
    snprintf(q, sizeof q, "%s/" TSR_PEFT_WEIGHTS, dst);
    size_t n;
    char *b = slurp(p, &n);
    assert_int_equal(tsr_write_file_atomic(q, b, n), 0);
    free(b);
    snprintf(p, sizeof p, "%s/" TSR_PEFT_CONFIG, src);
    snprintf(q, sizeof q, "%s/" TSR_PEFT_CONFIG, dst);
    json_t *o = json_load_file(p, 0, NULL);
    assert_non_null(o);
    if (value) json_object_set_new(o, key, json_loads(value, JSON_DECODE_ANY, NULL));
    else json_object_del(o, key);
    assert_int_equal(json_dump_file(o, q, 0), 0);
    json_decref(o);
}

static void expect_refused(const char *d, const char *a, const char *b) {
    tsr_adapter_config c;
    assert_int_equal(tsr_peft_load_config(d, &c, NULL, NULL, NULL, NULL), -1);
    expect_error(a, b, NULL);
}

static void test_import_refusals(void **s) {
    tsr_adapter_config c = lora_cfg(1);
    tsr_adapters ad;
    make_ad(&ad, &c, 7);
    char lo[400], po[400]; /* tpath's buffers rotate */
    snprintf(lo, sizeof lo, "%s", tpath("valid_lora"));
    snprintf(po, sizeof po, "%s", tpath("valid_poly"));
    assert_int_equal(tsr_peft_export(&ad, TSR_NAMING_HF, lo, NULL), 0);
    tsr_adapters_destroy(&ad);
    c = poly_cfg();
    make_ad(&ad, &c, 8);
    assert_int_equal(tsr_peft_export(&ad, TSR_NAMING_HF, po, NULL), 0);

    edit_cfg(lo, tpath("r1"), "peft_type", "\"ADALORA\"");
    expect_refused(tpath("r1"), "peft_type", "ADALORA");
    edit_cfg(lo, tpath("r2"), "lora_dropout", "0.05");
    expect_refused(tpath("r2"), "lora_dropout", "no dropout");
    edit_cfg(lo, tpath("r3"), "use_dora", "true");
    expect_refused(tpath("r3"), "use_dora", "adapter_config.json");
    edit_cfg(lo, tpath("r4"), "bias", "\"all\"");
    expect_refused(tpath("r4"), "'bias'", "none");
    edit_cfg(lo, tpath("r5"), "init_lora_weights", "\"pissa\"");
    expect_refused(tpath("r5"), "init_lora_weights", "pissa");
    edit_cfg(lo, tpath("r6"), "rank_pattern", "{\"query\": 8}");
    expect_refused(tpath("r6"), "rank_pattern", "adapter_config.json");
    edit_cfg(po, tpath("r7"), "n_skills", "1");
    expect_refused(tpath("r7"), "n_skills", "LORA");
    edit_cfg(po, tpath("r8"), "poly_type", "\"other\"");
    expect_refused(tpath("r8"), "poly_type", "poly");
    edit_cfg(lo, tpath("r9"), "target_modules", "[\"query\", \"key\"]");
    expect_refused(tpath("r9"), "value", "target_modules");
    /* regular expressions: peft's re.fullmatch, \d translated */
    edit_cfg(lo, tpath("r10"), "target_modules", "\"vit\\\\.encoder\\\\.layer\\\\.\\\\d+\\\\.attention\\\\.attention\\\\.(query|key)\"");
    expect_refused(tpath("r10"), "attention.attention.value", "not matched by target_modules");
    edit_cfg(lo, tpath("ok1"), "target_modules",
             "\"vit\\\\.encoder\\\\.layer\\\\.\\\\d+\\\\.(attention\\\\.(attention\\\\.(query|key|value)|output\\\\.dense)|intermediate\\\\.dense|output\\\\.dense)\"");
    tsr_adapter_config ok;
    if (tsr_peft_load_config(tpath("ok1"), &ok, NULL, NULL, NULL, NULL) != 0) fail_msg("%s", tsr_last_error());
    edit_cfg(lo, tpath("ok2"), "target_modules", "[\"query\", \"key\", \"value\", \"dense\"]");
    if (tsr_peft_load_config(tpath("ok2"), &ok, NULL, NULL, NULL, NULL) != 0) fail_msg("%s", tsr_last_error());
    edit_cfg(lo, tpath("r11"), "r", "0");
    expect_refused(tpath("r11"), "'r'", "integer >= 1");

    /* tensors: a missing one (the same sites on every block), another module, a wrong shape, an integer dtype */
    char p[600];
    snprintf(p, sizeof p, "%s/" TSR_PEFT_WEIGHTS, lo);
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, p), 0);
    for (int v = 0; v < 4; v++) {
        char dd[64];
        snprintf(dd, sizeof dd, "t%d", v);
        assert_int_equal(tsr_mkdirs(tpath(dd)), 0);
        tsr_st_writer *w = tsr_st_writer_new();
        static const int32_t ints[4 * DIM];
        static const float zeros[4 * MLP];
        for (int i = 0; i < f.n; i++) {
            const tsr_st_tensor *t = &f.t[i];
            if (v == 0 && strstr(t->name, "layer.1.output.dense.lora_B")) continue;
            if (v == 2 && strstr(t->name, "layer.0.attention.attention.key.lora_A")) {
                int64_t sh[2] = {4, DIM + 1};
                tsr_st_writer_add(w, t->name, TSR_DT_F32, 2, sh, zeros);
                continue;
            }
            if (v == 3 && strstr(t->name, "layer.0.attention.attention.key.lora_A")) {
                tsr_st_writer_add(w, t->name, TSR_DT_I32, 2, t->shape, ints);
                continue;
            }
            tsr_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, tsr_st_data(&f, t));
        }
        if (v == 1) {
            int64_t sh[2] = {4, DIM};
            tsr_st_writer_add(w, "base_model.model.vit.embeddings.patch_embeddings.projection.lora_A.weight", TSR_DT_F32,
                              2, sh, zeros);
        }
        char q[600];
        snprintf(q, sizeof q, "%s/" TSR_PEFT_WEIGHTS, tpath(dd));
        assert_int_equal(tsr_st_writer_write(w, q), 0);
        tsr_st_writer_free(w);
        char cp[600], cq[600];
        snprintf(cp, sizeof cp, "%s/" TSR_PEFT_CONFIG, lo);
        snprintf(cq, sizeof cq, "%s/" TSR_PEFT_CONFIG, tpath(dd));
        size_t n;
        char *b = slurp(cp, &n);
        assert_int_equal(tsr_write_file_atomic(cq, b, n), 0);
        free(b);
    }
    tsr_st_close(&f);
    expect_refused(tpath("t0"), "layer.1.output.dense", "lora_B.weight");
    expect_refused(tpath("t1"), "patch_embeddings.projection", "not one of tessera's adapter sites");
    expect_refused(tpath("t2"), "key.lora_A.weight", "model width 17");
    /* an integer dtype: the configuration reads, the load refuses naming the tensor, leaving ad untouched */
    tsr_adapters lo_ad;
    tsr_adapter_config lc = lora_cfg(1);
    make_ad(&lo_ad, &lc, 9);
    float first = lo_ad.params[0];
    assert_int_equal(tsr_peft_load(&lo_ad, tpath("t3")), -1);
    expect_error("key.lora_A.weight", "dtype I32", NULL);
    assert_true(lo_ad.params[0] == first);
    /* loaded into adapters of another shape */
    tsr_adapter_config other = lora_cfg(1);
    other.lora_rank = 2;
    tsr_adapters o2;
    make_ad(&o2, &other, 10);
    assert_int_equal(tsr_peft_load(&o2, lo), -1);
    expect_error("not the ones it describes", NULL);
    tsr_adapters_destroy(&o2);
    tsr_adapters_destroy(&lo_ad);
    /* not a peft directory */
    assert_int_equal(tsr_mkdirs(tpath("empty")), 0);
    expect_refused(tpath("empty"), "adapter_config.json", "missing");
    tsr_adapters_destroy(&ad);
}

static int setup(void **s) {
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_peftio_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **s) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_lora_round_trip), cmocka_unit_test(test_poly_round_trip),
                                       cmocka_unit_test(test_layers_and_timm), cmocka_unit_test(test_export_refusals),
                                       cmocka_unit_test(test_import_refusals)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
