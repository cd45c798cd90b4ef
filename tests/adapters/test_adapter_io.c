/* test_adapter_io.c: adapter files (save / reload bit-exact, every kind of bad file refused naming the tensor
 * or key), MHR-mu skill averaging, fresh routing rows, and merging a LoRA into the backbone. */
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

#include "adapters/adapters.h"
#include "core/common.h"
#include "core/rng.h"
#include "adapters/adapter_io.h"
#include "io/safetensors.h"
#include "model/vit.h"

static char dir[256];
static const tsr_vit_config vcfg = {.image_size = 8, .patch_size = 4, .channels = 3, .dim = 16, .depth = 2,
                                    .heads = 2, .mlp_dim = 32, .num_classes = 5, .ln_eps = 1e-6};
enum { TOKENS = 5, BATCH = 4 };

static void path_of(char *out, const char *name) { snprintf(out, 512, "%s/%s", dir, name); }

static tsr_adapter_config lora_routed(void) {
    tsr_adapter_config c = {0};
    c.lora_sites = (1 << TSR_NLORA) - 1;
    c.lora_rank = 2;
    c.lora_alpha = 4.0;
    c.bn_scale = 0.1;
    c.skills = 3;
    c.heads = 2;
    c.n_tasks = 3;
    c.noise = 1;
    c.tau = 0.5;
    c.layer_min = 0;
    c.layer_max = -1;
    return c;
}

static tsr_adapter_config lora_plain(void) {
    tsr_adapter_config c = lora_routed();
    c.lora_rank = 4;
    c.lora_alpha = 8.0;
    c.skills = 1;
    c.heads = 1;
    c.n_tasks = 1;
    c.noise = 0;
    c.tau = 1.0;
    return c;
}

static tsr_adapter_config bottleneck(void) {
    tsr_adapter_config c = {0};
    c.bn_sites = (1 << TSR_NBN) - 1;
    c.bn_dim = 4;
    c.bn_scale = 0.25;
    c.bn_dropout = 0.1;
    c.bn_relu = 1;
    c.skills = 2;
    c.heads = 2;
    c.n_tasks = 4;
    c.noise = 0;
    c.tau = 1.0;
    c.layer_min = 1;
    c.layer_max = -1;
    return c;
}

/* adapters of vcfg's sizes with every parameter random (normal * sd) */
static void make_ad(tsr_adapters *ad, const tsr_adapter_config *c, uint64_t seed, double sd) {
    assert_int_equal(tsr_adapters_create(ad, c, vcfg.depth, vcfg.dim, vcfg.mlp_dim, TOKENS, BATCH), 0);
    ad->ln_eps = vcfg.ln_eps;
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    for (size_t i = 0; i < ad->num_params; i++) ad->params[i] = (float)(sd * tsr_rng_normal(&r));
}

static void make_vit(tsr_vit *m, uint64_t seed) {
    assert_int_equal(tsr_vit_create(m, &vcfg, BATCH), 0);
    tsr_vit_init_random(m, seed);
    tsr_rng r;
    tsr_rng_seed(&r, seed + 1);
    for (int i = 0; i < vcfg.num_classes * vcfg.dim; i++) m->params.headw[i] = (float)(0.3 * tsr_rng_normal(&r));
}

static float *make_images(uint64_t seed) {
    size_t n = (size_t)BATCH * vcfg.channels * vcfg.image_size * vcfg.image_size;
    float *x = tsr_malloc(sizeof(float) * n);
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)tsr_rng_normal(&r);
    return x;
}

static int ntensors(const tsr_adapters *ad) { return tsr_adapters_tensor_info(ad, ad->params, -1, NULL, 0, NULL, NULL, NULL); }

/* ------------------------------------------------------------------ round trips */

static void round_trip(const tsr_adapter_config *c, const char *file) {
    tsr_adapters ad, ad2;
    char p[512];
    path_of(p, file);
    make_ad(&ad, c, 7, 0.5);
    const char *keys[] = {"run", "config"}, *vals[] = {"unit-test", "a: 1\nb: [2, 3]\n"};
    assert_int_equal(tsr_adapters_save(&ad, p, 2, keys, vals), 0);

    tsr_adapter_config lc;
    int depth, dim, mlp, tokens;
    double eps;
    assert_int_equal(tsr_adapters_load_config_ex(p, &lc, &depth, &dim, &mlp, &tokens, &eps), 0);
    assert_int_equal(depth, vcfg.depth);
    assert_int_equal(dim, vcfg.dim);
    assert_int_equal(mlp, vcfg.mlp_dim);
    assert_int_equal(tokens, TOKENS);
    assert_true(eps == vcfg.ln_eps);
    assert_int_equal(lc.lora_sites, c->lora_sites);
    assert_int_equal(lc.lora_rank, c->lora_rank);
    assert_true(lc.lora_alpha == c->lora_alpha);
    assert_int_equal(lc.bn_sites, c->bn_sites);
    assert_int_equal(lc.bn_dim, c->bn_dim);
    assert_true(lc.bn_scale == c->bn_scale);
    assert_true(lc.bn_dropout == c->bn_dropout);
    assert_int_equal(lc.bn_relu, c->bn_relu);
    assert_int_equal(lc.skills, c->skills);
    assert_int_equal(lc.heads, c->heads);
    assert_int_equal(lc.n_tasks, c->n_tasks);
    assert_int_equal(lc.noise, c->noise);
    assert_true(lc.tau == c->tau);
    assert_int_equal(lc.layer_min, c->layer_min);
    assert_int_equal(lc.layer_max, c->layer_max);
    int d2, dm2, m2;
    assert_int_equal(tsr_adapters_load_config(p, &lc, &d2, &dm2, &m2), 0);
    assert_int_equal(d2 * 10000 + dm2 * 100 + m2, depth * 10000 + dim * 100 + mlp);

    /* a set built from the file's description reads back every bit */
    assert_int_equal(tsr_adapters_create(&ad2, &lc, depth, dim, mlp, tokens, BATCH), 0);
    ad2.ln_eps = eps;
    assert_int_equal(ad2.num_params, ad.num_params);
    assert_int_equal(tsr_adapters_load(&ad2, p), 0);
    assert_memory_equal(ad2.params, ad.params, sizeof(float) * ad.num_params);

    /* the file: F32 tensors with the adapters' names, the description and the caller's metadata */
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, p), 0);
    assert_int_equal(f.n, ntensors(&ad));
    for (int i = 0; i < f.n; i++) assert_int_equal(f.t[i].dtype, TSR_DT_F32);
    assert_string_equal(tsr_st_meta(&f, "run"), "unit-test");
    assert_string_equal(tsr_st_meta(&f, "config"), vals[1]);
    assert_non_null(tsr_st_meta(&f, TSR_ADAPTERS_META_KEY));
    printf("  %s: %d tensors, %zu parameters, description %s\n", file, f.n, ad.num_params,
           tsr_st_meta(&f, TSR_ADAPTERS_META_KEY));
    tsr_st_close(&f);
    unlink(p);
    tsr_adapters_destroy(&ad);
    tsr_adapters_destroy(&ad2);
}

static void test_round_trip_lora_routed(void **s) {
    (void)s;
    tsr_adapter_config c = lora_routed();
    round_trip(&c, "lora_routed.safetensors");
    c = lora_plain();
    round_trip(&c, "lora_plain.safetensors");
}

static void test_round_trip_bottleneck(void **s) {
    (void)s;
    tsr_adapter_config c = bottleneck();
    round_trip(&c, "bottleneck.safetensors");
    c.skills = 1; /* plain, GELU, one block range */
    c.heads = 1;
    c.bn_relu = 0;
    c.layer_min = c.layer_max = 0;
    round_trip(&c, "bottleneck_plain.safetensors");
}

/* ------------------------------------------------------------------ refusals */

/* Write ad's tensors with one change (mode 0 drop victim, 1 add 'victim' as an extra tensor, 2 victim with a
 * wrong shape, 3 a NaN in victim, -1 none) and metadata `json` (NULL: none). */
static void write_variant(const tsr_adapters *ad, const char *out, const char *victim, int mode, const char *json) {
    static float fbuf[1 << 14];
    tsr_st_writer *w = tsr_st_writer_new();
    int n = ntensors(ad);
    for (int i = 0; i < n; i++) {
        char name[128];
        int nd;
        int64_t shape[4], cnt = 1;
        float *data;
        tsr_adapters_tensor_info(ad, ad->params, i, name, sizeof name, &nd, shape, &data);
        for (int k = 0; k < nd; k++) cnt *= shape[k];
        if (victim && strcmp(name, victim) == 0) {
            if (mode == 0) continue;
            if (mode == 2) {
                shape[nd - 1] += 1;
                tsr_st_writer_add(w, name, TSR_DT_F32, nd, shape, fbuf);
                continue;
            }
            if (mode == 3) {
                memcpy(fbuf, data, sizeof(float) * (size_t)cnt);
                fbuf[cnt - 1] = NAN;
                tsr_st_writer_add(w, name, TSR_DT_F32, nd, shape, fbuf);
                continue;
            }
        }
        tsr_st_writer_add(w, name, TSR_DT_F32, nd, shape, data);
    }
    if (mode == 1) {
        int64_t one = 1;
        tsr_st_writer_add(w, victim, TSR_DT_F32, 1, &one, fbuf);
    }
    if (json) tsr_st_writer_meta(w, TSR_ADAPTERS_META_KEY, json);
    assert_int_equal(tsr_st_writer_write(w, out), 0);
    tsr_st_writer_free(w);
}

static void expect_load_refused(tsr_adapters *ad, const char *file, const char *substr) {
    float *before = tsr_malloc(sizeof(float) * ad->num_params);
    memcpy(before, ad->params, sizeof(float) * ad->num_params);
    int rc = tsr_adapters_load(ad, file);
    printf("  refused: %s\n", tsr_last_error());
    assert_int_equal(rc, -1);
    assert_non_null(strstr(tsr_last_error(), substr));
    assert_non_null(strstr(tsr_last_error(), file));
    assert_memory_equal(before, ad->params, sizeof(float) * ad->num_params); /* untouched */
    free(before);
}

/* The valid description of ad with one key set (value JSON text) or, with value NULL, removed. */
static char *edited(const char *valid, const char *key, const char *value) {
    json_t *o = json_loads(valid, 0, NULL);
    assert_non_null(o);
    if (value) {
        json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
        assert_non_null(v);
        json_object_set_new(o, key, v);
    } else {
        json_object_del(o, key);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static void test_refusals(void **s) {
    (void)s;
    tsr_adapter_config c = lora_routed();
    c.bn_sites = 1 << TSR_BN_PARALLEL;
    c.bn_dim = 3;
    tsr_adapters ad, other;
    make_ad(&ad, &c, 3, 0.5);
    char good[512], bad[512];
    path_of(good, "good.safetensors");
    path_of(bad, "bad.safetensors");
    assert_int_equal(tsr_adapters_save(&ad, good, 0, NULL, NULL), 0);
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, good), 0);
    char *valid = strdup(tsr_st_meta(&f, TSR_ADAPTERS_META_KEY));
    tsr_st_close(&f);

    /* tensors: missing, extra, mis-shaped, non-finite */
    write_variant(&ad, bad, "blocks.1.lora.fc1.B", 0, valid);
    expect_load_refused(&ad, bad, "'blocks.1.lora.fc1.B' not found");
    write_variant(&ad, bad, "blocks.0.lora.q.Z", 0, valid);
    expect_load_refused(&ad, bad, "blocks.0.lora.q.Z");
    write_variant(&ad, bad, "blocks.0.lora.gate.A", 1, valid);
    expect_load_refused(&ad, bad, "unexpected tensor 'blocks.0.lora.gate.A'");
    write_variant(&ad, bad, "blocks.0.adapter.parallel.up.bias", 2, valid);
    expect_load_refused(&ad, bad, "'blocks.0.adapter.parallel.up.bias' has shape");
    write_variant(&ad, bad, "blocks.1.adapter.parallel.ln.weight", 3, valid);
    expect_load_refused(&ad, bad, "'blocks.1.adapter.parallel.ln.weight' holds a non-finite");
    write_variant(&ad, bad, NULL, -1, NULL);
    expect_load_refused(&ad, bad, "no metadata 'tessera_adapters'");
    write_variant(&ad, bad, NULL, -1, "{not json");
    expect_load_refused(&ad, bad, "not valid JSON");

    /* every key validated: wrong type, out of range, unknown, missing */
    const char *cases[][3] = {
        {"lora_rank", "\"two\"", "'lora_rank'"},      {"lora_rank", "0", "'lora_rank'"},
        {"lora_alpha", "\"8\"", "'lora_alpha'"},       {"lora_sites", "[\"q\", \"gate\"]", "'lora_sites'"},
        {"lora_sites", "[\"q\", \"q\"]", "listed twice"}, {"lora_sites", "\"q\"", "'lora_sites'"},
        {"bn_sites", "[\"serial\"]", "'bn_sites'"},    {"bn_dim", "-1", "'bn_dim'"},
        {"bn_scale", "null", "'bn_scale'"},            {"bn_dropout", "1.5", "'bn_dropout'"},
        {"activation", "\"tanh\"", "'activation'"},    {"skills", "0", "'skills'"},
        {"skills", "2.5", "'skills'"},                 {"heads", "0", "'heads'"},
        {"n_tasks", "0", "'n_tasks'"},                 {"noise", "2", "'noise'"},
        {"tau", "0", "'tau'"},                         {"layer_min", "2", "'layer_min'"},
        {"layer_max", "-2", "'layer_max'"},            {"depth", "0", "'depth'"},
        {"dim", "\"16\"", "'dim'"},                    {"mlp", "[]", "'mlp'"},
        {"tokens", "0", "'tokens'"},                   {"ln_eps", "-1e-6", "'ln_eps'"},
        {"format", "\"lora\"", "'format'"},            {"version", "2", "'version'"},
        {"adapter_heads", "2", "'adapter_heads': unknown key"},
        {"tau", NULL, "'tau' is missing"},             {"activation", NULL, "'activation'"},
        {"layer_min", "1", "empty range"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *js = edited(valid, cases[i][0], cases[i][1]);
        if (strcmp(cases[i][0], "layer_min") == 0 && cases[i][1] && strcmp(cases[i][1], "1") == 0) {
            free(js); /* an empty range: layer_min 1 > layer_max 0 */
            char *t = edited(valid, "layer_max", "0");
            js = edited(t, "layer_min", "1");
            free(t);
        }
        write_variant(&ad, bad, NULL, -1, js);
        tsr_adapter_config lc;
        int rc = tsr_adapters_load_config(bad, &lc, NULL, NULL, NULL);
        printf("  %s = %s refused: %s\n", cases[i][0], cases[i][1] ? cases[i][1] : "(removed)", tsr_last_error());
        assert_int_equal(rc, -1);
        assert_non_null(strstr(tsr_last_error(), cases[i][2]));
        assert_non_null(strstr(tsr_last_error(), bad));
        expect_load_refused(&ad, bad, cases[i][2]);
        free(js);
    }
    /* a JSON boolean is accepted for noise */
    char *js = edited(valid, "noise", "true");
    write_variant(&ad, bad, NULL, -1, js);
    free(js);
    assert_int_equal(tsr_adapters_load(&ad, bad), 0);

    /* description mismatch: the file is fine, the adapters it is loaded into differ */
    struct { const char *field; tsr_adapter_config c; int dim; double eps; } mm[6];
    for (int i = 0; i < 6; i++) {
        mm[i].c = c;
        mm[i].dim = vcfg.dim;
        mm[i].eps = vcfg.ln_eps;
    }
    mm[0].field = "'skills'"; mm[0].c.skills = 2;
    mm[1].field = "'lora_alpha'"; mm[1].c.lora_alpha = 2.0;
    mm[2].field = "'lora_sites'"; mm[2].c.lora_sites = 1 << TSR_LORA_Q;
    mm[3].field = "'dim'"; mm[3].dim = 32;
    mm[4].field = "'ln_eps'"; mm[4].eps = 1e-12;
    mm[5].field = "'layer_min'"; mm[5].c.layer_min = 1;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(tsr_adapters_create(&other, &mm[i].c, vcfg.depth, mm[i].dim, vcfg.mlp_dim, TOKENS, BATCH), 0);
        other.ln_eps = mm[i].eps;
        expect_load_refused(&other, good, mm[i].field);
        tsr_adapters_destroy(&other);
    }
    /* the same range written two ways (-1 = the last block) is not a mismatch */
    tsr_adapter_config same = c;
    same.layer_max = vcfg.depth - 1;
    assert_int_equal(tsr_adapters_create(&other, &same, vcfg.depth, vcfg.dim, vcfg.mlp_dim, TOKENS, BATCH), 0);
    other.ln_eps = vcfg.ln_eps;
    assert_int_equal(tsr_adapters_load(&other, good), 0);
    assert_memory_equal(other.params, ad.params, sizeof(float) * ad.num_params);
    tsr_adapters_destroy(&other);

    /* the description key is reserved */
    const char *k[] = {TSR_ADAPTERS_META_KEY}, *v[] = {"{}"};
    assert_int_equal(tsr_adapters_save(&ad, bad, 1, k, v), -1);
    assert_non_null(strstr(tsr_last_error(), "reserved"));
    free(valid);
    unlink(good);
    unlink(bad);
    tsr_adapters_destroy(&ad);
}

/* ------------------------------------------------------------------ skills */

/* Parameter of tensor `name` in ad at flat index i. */
static float *tensor_of(const tsr_adapters *ad, const char *name, int64_t shape[4], int *nd) {
    int n = ntensors(ad);
    for (int i = 0; i < n; i++) {
        char nm[128];
        float *p;
        tsr_adapters_tensor_info(ad, ad->params, i, nm, sizeof nm, nd, shape, &p);
        if (strcmp(nm, name) == 0) return p;
    }
    return NULL;
}

static double logits_diff(const float *a, const float *b) {
    double e = 0;
    for (int i = 0; i < BATCH * vcfg.num_classes; i++) e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}

static void test_average_skills(void **s) {
    (void)s;
    tsr_adapter_config c = lora_routed(), c1;
    c.lora_sites = 1 << TSR_LORA_Q | 1 << TSR_LORA_FC2;
    c.bn_sites = 1 << TSR_BN_PARALLEL | 1 << TSR_BN_MLP_SEQ;
    c.bn_dim = 4;
    c.bn_relu = 0;
    c1 = c;
    c1.skills = 1;
    c1.n_tasks = 1;
    tsr_adapters src, dst;
    make_ad(&src, &c, 11, 0.5);
    assert_int_equal(tsr_adapters_create(&dst, &c1, vcfg.depth, vcfg.dim, vcfg.mlp_dim, TOKENS, BATCH), 0);
    dst.ln_eps = vcfg.ln_eps;
    tsr_adapters_average_skills(&src, &dst);
    /* every tensor of dst against explicit means over the skills of src's tensor of that name */
    int n = ntensors(&dst), checked = 0;
    for (int i = 0; i < n; i++) {
        char name[128];
        int nd, snd;
        int64_t shape[4], sshape[4];
        float *d;
        tsr_adapters_tensor_info(&dst, dst.params, i, name, sizeof name, &nd, shape, &d);
        assert_null(strstr(name, ".Z")); /* S = 1: no routing rows */
        const float *sp = tensor_of(&src, name, sshape, &snd);
        assert_non_null(sp);
        int S = c.skills;
        double worst = 0;
        if (nd == 4) { /* A / B: (h, S, a, b) */
            assert_int_equal(shape[1], 1);
            int64_t blk = shape[2] * shape[3];
            for (int64_t q = 0; q < shape[0]; q++)
                for (int64_t j = 0; j < blk; j++) {
                    double mean = 0;
                    for (int s2 = 0; s2 < S; s2++) mean += sp[(q * S + s2) * blk + j];
                    mean /= S;
                    worst = fmax(worst, fabs(d[q * blk + j] - mean));
                }
        } else if (nd == 2) { /* biases (S, width) */
            for (int64_t j = 0; j < shape[1]; j++) {
                double mean = 0;
                for (int s2 = 0; s2 < S; s2++) mean += sp[s2 * shape[1] + j];
                worst = fmax(worst, fabs(d[j] - mean / S));
            }
        } else { /* ln: copied */
            assert_memory_equal(d, sp, sizeof(float) * (size_t)shape[0]);
        }
        assert_true(worst <= 1e-7);
        checked++;
    }
    assert_int_equal(checked, n);

    /* with every skill of a head equal, routing is irrelevant: src (any task) and its average compute the same */
    for (int k = 0; k < src.n_mod; k++) {
        tsr_rlp *m = &src.mod[k];
        size_t nA = m->nA / (size_t)(m->S * m->h), nB = m->nB / (size_t)(m->S * m->h);
        for (int q = 0; q < m->h; q++)
            for (int s2 = 1; s2 < m->S; s2++) {
                memcpy(src.params + m->oA + (size_t)(q * m->S + s2) * nA, src.params + m->oA + (size_t)(q * m->S) * nA, sizeof(float) * nA);
                memcpy(src.params + m->oB + (size_t)(q * m->S + s2) * nB, src.params + m->oB + (size_t)(q * m->S) * nB, sizeof(float) * nB);
            }
        for (int s2 = 1; s2 < m->S; s2++) {
            memcpy(src.params + m->obd + (size_t)s2 * m->r, src.params + m->obd, sizeof(float) * m->r);
            memcpy(src.params + m->obu + (size_t)s2 * m->dout, src.params + m->obu, sizeof(float) * m->dout);
        }
    }
    tsr_adapters_average_skills(&src, &dst);
    tsr_vit m;
    make_vit(&m, 5);
    float *x = make_images(6), l1[BATCH * 5], l2[BATCH * 5], l0[BATCH * 5];
    int tasks[BATCH] = {2, 0, 1, 2};
    tsr_vit_forward(&m, x, NULL, BATCH);
    memcpy(l0, m.acts.logits, sizeof l0);
    tsr_adapters_attach(&src, &m);
    assert_int_equal(tsr_adapters_begin(&src, tasks, BATCH, 0, 0, 0, NULL), 0);
    tsr_vit_forward(&m, x, NULL, BATCH);
    memcpy(l1, m.acts.logits, sizeof l1);
    tsr_adapters_attach(&dst, &m);
    assert_int_equal(tsr_adapters_begin(&dst, NULL, BATCH, 0, 0, 0, NULL), 0);
    tsr_vit_forward(&m, x, NULL, BATCH);
    memcpy(l2, m.acts.logits, sizeof l2);
    printf("  equal skills: routed vs averaged logits max diff %.2e (adapters move the logits by %.2e)\n",
           logits_diff(l1, l2), logits_diff(l1, l0));
    assert_true(logits_diff(l1, l2) <= 1e-5);
    assert_true(logits_diff(l1, l0) > 1e-2);
    free(x);
    tsr_vit_destroy(&m);
    tsr_adapters_destroy(&src);
    tsr_adapters_destroy(&dst);
}

static void test_copy_skills(void **s) {
    (void)s;
    tsr_adapter_config c = lora_routed(), c1;
    c.bn_sites = 1 << TSR_BN_PARALLEL | 1 << TSR_BN_HOULSBY_ATTN;
    c.bn_dim = 4;
    c1 = c;
    c1.n_tasks = 1;
    tsr_adapters src, dst, dst2;
    make_ad(&src, &c, 13, 0.5);
    assert_int_equal(tsr_adapters_create(&dst, &c1, vcfg.depth, vcfg.dim, vcfg.mlp_dim, TOKENS, BATCH), 0);
    assert_int_equal(tsr_adapters_create(&dst2, &c1, vcfg.depth, vcfg.dim, vcfg.mlp_dim, TOKENS, BATCH), 0);
    tsr_adapters_copy_skills(&src, &dst, 42);
    int n = ntensors(&dst), nz = 0;
    assert_int_equal(n, ntensors(&src));
    for (int i = 0; i < n; i++) {
        char name[128];
        int nd, snd;
        int64_t shape[4], sshape[4], cnt = 1;
        float *d;
        tsr_adapters_tensor_info(&dst, dst.params, i, name, sizeof name, &nd, shape, &d);
        for (int k = 0; k < nd; k++) cnt *= shape[k];
        const float *sp = tensor_of(&src, name, sshape, &snd);
        assert_non_null(sp);
        size_t l = strlen(name);
        if (strcmp(name + l - 2, ".Z") == 0) {
            assert_int_equal(shape[0], 1);
            int distinct = 0;
            for (int64_t j = 0; j < cnt; j++) {
                assert_true(d[j] >= -1e-3f && d[j] <= 1e-3f);
                distinct += j > 0 && d[j] != d[0];
            }
            assert_true(distinct > 0);
            nz++;
        } else {
            assert_memory_equal(d, sp, sizeof(float) * (size_t)cnt);
        }
    }
    assert_int_equal(nz, src.n_mod);
    /* deterministic for a seed, different for another */
    tsr_adapters_copy_skills(&src, &dst2, 42);
    assert_memory_equal(dst.params, dst2.params, sizeof(float) * dst.num_params);
    tsr_adapters_copy_skills(&src, &dst2, 43);
    assert_memory_not_equal(dst.params, dst2.params, sizeof(float) * dst.num_params);
    tsr_adapters_destroy(&src);
    tsr_adapters_destroy(&dst);
    tsr_adapters_destroy(&dst2);
}

/* ------------------------------------------------------------------ merge */

static void merge_case(const tsr_adapter_config *c, int task, const char *what) {
    tsr_vit m, mm;
    tsr_adapters ad;
    make_vit(&m, 21);
    make_vit(&mm, 21);
    make_ad(&ad, c, 22, 0.2);
    float *x = make_images(23), base[BATCH * 5], with[BATCH * 5], merged[BATCH * 5];
    int tasks[BATCH];
    for (int i = 0; i < BATCH; i++) tasks[i] = task;
    tsr_vit_forward(&m, x, NULL, BATCH);
    memcpy(base, m.acts.logits, sizeof base);
    tsr_adapters_attach(&ad, &m);
    assert_int_equal(tsr_adapters_begin(&ad, tasks, BATCH, 0, 0, 0, NULL), 0);
    tsr_vit_forward(&m, x, NULL, BATCH);
    memcpy(with, m.acts.logits, sizeof with);
    assert_int_equal(tsr_adapters_merge_into(&ad, &mm, task), 0);
    tsr_vit_forward(&mm, x, NULL, BATCH);
    memcpy(merged, mm.acts.logits, sizeof merged);
    double err = logits_diff(with, merged), moved = logits_diff(with, base);
    double big = 0;
    for (int i = 0; i < BATCH * 5; i++) big = fmax(big, fabs(with[i]));
    printf("  merge %s, task %d: max |merged - with adapters| %.2e (adapters move the logits by %.2e, "
           "max |logit| %.2f)\n", what, task, err, moved, big);
    assert_true(err <= 1e-5);
    assert_true(moved > 1e-2);
    /* only the adapted weights changed */
    assert_memory_equal(mm.params.headw, m.params.headw, sizeof(float) * 5 * vcfg.dim);
    assert_memory_equal(mm.params.qkvb, m.params.qkvb, sizeof(float) * 3 * vcfg.dim * vcfg.depth);
    free(x);
    tsr_vit_destroy(&m);
    tsr_vit_destroy(&mm);
    tsr_adapters_destroy(&ad);
}

static void test_merge(void **s) {
    (void)s;
    tsr_adapter_config c = lora_routed();
    merge_case(&c, 1, "routed LoRA (S=3, h=2, q k v proj fc1 fc2)");
    merge_case(&c, 2, "routed LoRA (S=3, h=2, q k v proj fc1 fc2)");
    c = lora_plain();
    merge_case(&c, 0, "plain LoRA (q k v proj fc1 fc2)");
    c.lora_sites = 1 << TSR_LORA_V | 1 << TSR_LORA_FC2;
    c.layer_min = c.layer_max = 1;
    merge_case(&c, 0, "plain LoRA (v, fc2, block 1)");

    /* refusals leave the model unchanged */
    tsr_vit m;
    tsr_adapters ad;
    make_vit(&m, 31);
    float *before = tsr_malloc(sizeof(float) * m.num_params);
    memcpy(before, m.params_mem, sizeof(float) * m.num_params);
    c = lora_routed();
    c.bn_sites = 1 << TSR_BN_MLP_SEQ;
    c.bn_dim = 2;
    make_ad(&ad, &c, 32, 0.4);
    assert_int_equal(tsr_adapters_merge_into(&ad, &m, 0), -1);
    printf("  refused: %s\n", tsr_last_error());
    assert_non_null(strstr(tsr_last_error(), "blocks.0.adapter.mlp_seq is a bottleneck"));
    tsr_adapters_destroy(&ad);
    c = lora_routed();
    make_ad(&ad, &c, 32, 0.4);
    assert_int_equal(tsr_adapters_merge_into(&ad, &m, 3), -1);
    printf("  refused: %s\n", tsr_last_error());
    assert_non_null(strstr(tsr_last_error(), "task 3"));
    assert_int_equal(tsr_adapters_merge_into(&ad, &m, -1), -1);
    tsr_adapters_destroy(&ad);
    assert_int_equal(tsr_adapters_create(&ad, &c, vcfg.depth, vcfg.dim, 64, TOKENS, BATCH), 0);
    assert_int_equal(tsr_adapters_merge_into(&ad, &m, 0), -1);
    printf("  refused: %s\n", tsr_last_error());
    assert_non_null(strstr(tsr_last_error(), "mlp"));
    tsr_adapters_destroy(&ad);
    assert_memory_equal(before, m.params_mem, sizeof(float) * m.num_params);
    free(before);
    tsr_vit_destroy(&m);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/tsr_adio_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_round_trip_lora_routed),
                                       cmocka_unit_test(test_round_trip_bottleneck), cmocka_unit_test(test_refusals),
                                       cmocka_unit_test(test_average_skills), cmocka_unit_test(test_copy_skills),
                                       cmocka_unit_test(test_merge)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(dir);
    return rc;
}
