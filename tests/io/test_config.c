/* test_config.c: the generic YAML configuration loader (src/io/config.c) and tessera's
 * configuration (src/io/tsr_config.c): defaults, files, nesting, every error class with its
 * message, --set overrides, dump/reload round trips, cross-key checks and configs/default.yaml. */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/common.h"
#include "io/config.h"
#include "io/tsr_config.h"

/* ------------------------------------------------------------------------------------------------
 * Temporary files */

static char tmpdir[256];
static char *tmpfiles[128];
static int ntmpfiles;

/* Write text to <tmpdir>/<name>; returns the path (valid until teardown). */
static const char *write_tmp(const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
    for (int i = 0; i < ntmpfiles; i++)
        if (!strcmp(tmpfiles[i], path)) return tmpfiles[i];
    assert_true(ntmpfiles < (int)(sizeof tmpfiles / sizeof tmpfiles[0]));
    tmpfiles[ntmpfiles] = strdup(path);
    assert_non_null(tmpfiles[ntmpfiles]);
    return tmpfiles[ntmpfiles++];
}

static int group_setup(void **state) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/tsr_test_config.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state) {
    for (int i = 0; i < ntmpfiles; i++) {
        unlink(tmpfiles[i]);
        free(tmpfiles[i]);
    }
    ntmpfiles = 0;
    return rmdir(tmpdir);
}

/* ------------------------------------------------------------------------------------------------
 * Assertions on error messages */

/* rc must be -1 and tsr_last_error() must contain every string in subs (NULL-terminated). */
static void check_err(int rc, const char *const *subs, const char *file, int line) {
    const char *msg = tsr_last_error();
    if (rc != -1) {
        print_error("%s:%d: expected the call to fail, it returned %d\n", file, line, rc);
        _fail(file, line);
    }
    for (; *subs; subs++) {
        if (!strstr(msg, *subs)) {
            print_error("%s:%d: error message\n    %s\nlacks\n    %s\n", file, line, msg, *subs);
            _fail(file, line);
        }
    }
}
#define assert_err(rc, ...) check_err((rc), (const char *const[]){__VA_ARGS__, NULL}, __FILE__, __LINE__)

/* rc must be -1 and the message must be exactly want. */
static void check_err_exact(int rc, const char *want, const char *file, int line) {
    const char *msg = tsr_last_error();
    if (rc != -1 || strcmp(msg, want) != 0) {
        print_error("%s:%d: rc %d, error message\n    %s\nwanted\n    %s\n", file, line, rc, msg, want);
        _fail(file, line);
    }
}
#define assert_err_exact(rc, want) check_err_exact((rc), (want), __FILE__, __LINE__)

static void check_ok(int rc, const char *file, int line) {
    if (rc != 0) {
        print_error("%s:%d: unexpected failure: %s\n", file, line, tsr_last_error());
        _fail(file, line);
    }
}
#define assert_ok(rc) check_ok((rc), __FILE__, __LINE__)

/* ------------------------------------------------------------------------------------------------
 * A test schema exercising every type, three levels of nesting, a top-level key and sections whose
 * keys are interleaved in the schema. */

typedef struct {
    long i;
    double f;
    bool b;
    char s[CFG_STR_MAX];
    char e[CFG_STR_MAX];
    cfg_int_list il;
    cfg_float_list fl;
    cfg_string_list sl;
    long deep;
    long top;
    long big;
    double any;
    long after;
} tcfg;

#define TF(k, t, m, lo, hi, ch, d, h) {k, t, offsetof(tcfg, m), lo, hi, ch, d, h}
static const cfg_field tschema[] = {
    TF("sec.i", CFG_INT, i, 0, 100, NULL, "7", "an int in [0, 100]"),
    TF("sec.f", CFG_FLOAT, f, -1, 1, NULL, "0.5", "a float in [-1, 1]"),
    TF("sec.b", CFG_BOOL, b, 1, 0, NULL, "false", "a bool"),
    TF("sec.s", CFG_STRING, s, 1, 0, NULL, "\"hello\"", "a string"),
    TF("sec.e", CFG_ENUM, e, 1, 0, "none|red|green", "none", "an enum"),
    TF("lists.il", CFG_INT_LIST, il, 0, 1000, NULL, "[1, 2, 3]", "ints in [0, 1000]"),
    TF("lists.fl", CFG_FLOAT_LIST, fl, 1, 0, NULL, "[]", "floats, any value"),
    TF("lists.sl", CFG_STRING_LIST, sl, 1, 0, NULL, "[a, \"b c\"]", "strings"),
    TF("a.b.c.deep", CFG_INT, deep, 1, 0, NULL, "1", "three levels down"),
    TF("top", CFG_INT, top, 1, 0, NULL, "5", "a top-level key"),
    TF("sec.big", CFG_INT, big, 1, 0, NULL, "0", "an int, any value (section sec again)"),
    TF("a.any", CFG_FLOAT, any, 1, 0, NULL, "0", "a float, any value (section a again)"),
    TF("a.b.after", CFG_INT, after, 1, 0, NULL, "2", "section a.b again"),
};
static const int tn = (int)(sizeof tschema / sizeof tschema[0]);

static int tload(tcfg *c, const char *path, int nset, char *const *sets) {
    return cfg_load(c, tschema, tn, path, nset, sets);
}

/* ------------------------------------------------------------------------------------------------
 * Defaults, files, nesting */

static void assert_tsr_defaults(const tsr_config *c) {
    assert_string_equal(c->model.name, "vit-s-28");
    assert_int_equal(c->model.image_size, 28);
    assert_int_equal(c->model.patch_size, 4);
    assert_int_equal(c->model.channels, 1);
    assert_int_equal(c->model.dim, 192);
    assert_int_equal(c->model.depth, 6);
    assert_int_equal(c->model.heads, 3);
    assert_int_equal(c->model.mlp_dim, 768);
    assert_int_equal(c->model.num_classes, 10);
    assert_true(c->model.ln_eps == 1e-6);
    assert_string_equal(c->model.naming, "timm");
    assert_string_equal(c->data.dataset, "fashion-mnist");
    assert_string_equal(c->data.path, "/usr/share/datasets/fashion-mnist");
    assert_int_equal(c->data.mean.n, 1);
    assert_true(c->data.mean.v[0] == 0.2860);
    assert_int_equal(c->data.std.n, 1);
    assert_true(c->data.std.v[0] == 0.3530);
    assert_int_equal(c->train.steps, 200);
    assert_int_equal(c->train.batch_size, 64);
    assert_true(c->train.lr == 1e-3);
    assert_true(c->train.weight_decay == 0.05);
    assert_int_equal(c->train.warmup_steps, 20);
    assert_true(c->train.grad_clip == 1.0);
    assert_int_equal(c->train.eval_every, 100);
    assert_int_equal(c->train.log_every, 10);
    assert_int_equal(c->run.seed, 1234);
    assert_int_equal(c->run.threads, 0);
    assert_string_equal(c->run.output_dir, "runs/default");
    assert_string_equal(c->run.init, "");
}

static void test_defaults_only(void **state) {
    tsr_config c;
    memset(&c, 0xAB, sizeof c);
    assert_ok(tsr_config_load(&c, NULL, 0, NULL));
    assert_tsr_defaults(&c);

    /* the generic loader with the schema directly gives the same values */
    tsr_config d;
    memset(&d, 0, sizeof d);
    assert_ok(cfg_load(&d, tsr_config_schema, tsr_config_nfields, NULL, 0, NULL));
    assert_tsr_defaults(&d);
    assert_memory_equal(&c, &d, sizeof c);

    tcfg t;
    memset(&t, 0, sizeof t);
    assert_ok(tload(&t, NULL, 0, NULL));
    assert_int_equal(t.i, 7);
    assert_true(t.f == 0.5);
    assert_false(t.b);
    assert_string_equal(t.s, "hello");
    assert_string_equal(t.e, "none");
    assert_int_equal(t.il.n, 3);
    assert_int_equal(t.il.v[2], 3);
    assert_int_equal(t.fl.n, 0);
    assert_int_equal(t.sl.n, 2);
    assert_string_equal(t.sl.v[0], "a");
    assert_string_equal(t.sl.v[1], "b c");
    assert_int_equal(t.deep, 1);
    assert_int_equal(t.top, 5);
    assert_int_equal(t.after, 2);
}

static void test_full_file(void **state) {
    const char *p = write_tmp("full.yaml",
                              "# every key, none at its default\n"
                              "model:\n"
                              "  name: my-vit\n"
                              "  image_size: 32\n"
                              "  patch_size: 8\n"
                              "  channels: 3\n"
                              "  dim: 256\n"
                              "  depth: 4\n"
                              "  heads: 8\n"
                              "  mlp_dim: 1024\n"
                              "  num_classes: 100\n"
                              "  ln_eps: 1e-5\n"
                              "  naming: hf\n"
                              "data:\n"
                              "  dataset: netcdf\n"
                              "  path: 'data/cifar.nc'\n"
                              "  mean: [0.49, 0.48, 0.45]\n"
                              "  std:\n"
                              "    - 0.25\n"
                              "    - 0.24\n"
                              "    - 0.26\n"
                              "train:\n"
                              "  steps: 1000\n"
                              "  batch_size: 128\n"
                              "  lr: 3.0e-4\n"
                              "  weight_decay: 0.1\n"
                              "  warmup_steps: 0\n"
                              "  grad_clip: 0\n"
                              "  eval_every: 250\n"
                              "  log_every: 1\n"
                              "run:\n"
                              "  seed: 2147483647\n"
                              "  threads: 4\n"
                              "  output_dir: \"runs/full test\"\n"
                              "  init: runs/prev/ckpt.safetensors\n");
    tsr_config c;
    memset(&c, 0, sizeof c);
    assert_ok(tsr_config_load(&c, p, 0, NULL));
    assert_string_equal(c.model.name, "my-vit");
    assert_int_equal(c.model.image_size, 32);
    assert_int_equal(c.model.patch_size, 8);
    assert_int_equal(c.model.channels, 3);
    assert_int_equal(c.model.dim, 256);
    assert_int_equal(c.model.depth, 4);
    assert_int_equal(c.model.heads, 8);
    assert_int_equal(c.model.mlp_dim, 1024);
    assert_int_equal(c.model.num_classes, 100);
    assert_true(c.model.ln_eps == 1e-5);
    assert_string_equal(c.model.naming, "hf");
    assert_string_equal(c.data.dataset, "netcdf");
    assert_string_equal(c.data.path, "data/cifar.nc");
    assert_int_equal(c.data.mean.n, 3);
    assert_true(c.data.mean.v[0] == 0.49 && c.data.mean.v[1] == 0.48 && c.data.mean.v[2] == 0.45);
    assert_int_equal(c.data.std.n, 3);
    assert_true(c.data.std.v[0] == 0.25 && c.data.std.v[1] == 0.24 && c.data.std.v[2] == 0.26);
    assert_int_equal(c.train.steps, 1000);
    assert_int_equal(c.train.batch_size, 128);
    assert_true(c.train.lr == 3.0e-4);
    assert_true(c.train.weight_decay == 0.1);
    assert_int_equal(c.train.warmup_steps, 0);
    assert_true(c.train.grad_clip == 0.0);
    assert_int_equal(c.train.eval_every, 250);
    assert_int_equal(c.train.log_every, 1);
    assert_int_equal(c.run.seed, 2147483647);
    assert_int_equal(c.run.threads, 4);
    assert_string_equal(c.run.output_dir, "runs/full test");
    assert_string_equal(c.run.init, "runs/prev/ckpt.safetensors");

    /* a partial file: the other keys keep their defaults */
    p = write_tmp("partial.yaml", "train:\n  steps: 7\n");
    assert_ok(tsr_config_load(&c, p, 0, NULL));
    assert_int_equal(c.train.steps, 7);
    assert_int_equal(c.model.dim, 192);
    assert_string_equal(c.model.name, "vit-s-28");
}

static void test_nested_mapping(void **state) {
    tcfg t;
    memset(&t, 0, sizeof t);
    const char *p = write_tmp("nested.yaml",
                              "a:\n"
                              "  b:\n"
                              "    c: {deep: 42}\n"
                              "    after: 9\n"
                              "  any: -3.5\n"
                              "top: 11\n"
                              "sec.i: 12          # a dotted key at the top level\n"
                              "sec:\n"
                              "  b: yes\n"
                              "  e: green\n"
                              "lists:\n"
                              "  il:\n"
                              "    - 4\n"
                              "    - 5\n"
                              "  sl: [x]\n"
                              "a.b.c:\n"
                              "  {}\n");
    assert_ok(tload(&t, p, 0, NULL));
    assert_int_equal(t.deep, 42);
    assert_int_equal(t.after, 9);
    assert_true(t.any == -3.5);
    assert_int_equal(t.top, 11);
    assert_int_equal(t.i, 12);
    assert_true(t.b);
    assert_string_equal(t.e, "green");
    assert_int_equal(t.il.n, 2);
    assert_int_equal(t.il.v[0], 4);
    assert_int_equal(t.il.v[1], 5);
    assert_int_equal(t.il.v[2], 0); /* unused elements are zeroed */
    assert_int_equal(t.sl.n, 1);
    assert_string_equal(t.sl.v[0], "x");
    assert_int_equal(t.sl.v[1][0], 0);

    /* a section whose keys are all commented out is empty, not an error */
    tsr_config c;
    memset(&c, 0, sizeof c);
    p = write_tmp("empty_section.yaml", "model:\n  # dim: 64\ndata: {}\ntrain:\n  steps: 3\n");
    assert_ok(tsr_config_load(&c, p, 0, NULL));
    assert_int_equal(c.model.dim, 192);
    assert_int_equal(c.train.steps, 3);

    /* flow style for the whole file */
    p = write_tmp("flow.yaml", "{model: {dim: 96, heads: 6}, run: {seed: 7}}\n");
    assert_ok(tsr_config_load(&c, p, 0, NULL));
    assert_int_equal(c.model.dim, 96);
    assert_int_equal(c.model.heads, 6);
    assert_int_equal(c.run.seed, 7);
}

static void test_scalar_forms(void **state) {
    static const struct { const char *text; bool v; } bools[] = {
        {"true", true}, {"false", false}, {"yes", true}, {"no", false}, {"on", true},
        {"off", false}, {"True", true}, {"FALSE", false}, {"Yes", true}, {"OFF", false},
    };
    tcfg t;
    char buf[128];
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        memset(&t, 0, sizeof t);
        snprintf(buf, sizeof buf, "sec:\n  b: %s\n", bools[i].text);
        assert_ok(tload(&t, write_tmp("bool.yaml", buf), 0, NULL));
        assert_int_equal(t.b, bools[i].v);
    }
    static const struct { const char *text; double v; } floats[] = {
        {"1", 1.0}, {"-2.5e-1", -0.25}, {"1E-3", 1e-3}, {".5", 0.5}, {"+0.75", 0.75},
        {"1e-400", 0.0}, /* underflow is accepted */
    };
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) {
        snprintf(buf, sizeof buf, "a:\n  any: %s\n", floats[i].text);
        assert_ok(tload(&t, write_tmp("float.yaml", buf), 0, NULL));
        assert_true(t.any == floats[i].v);
    }
    static const struct { const char *text; long v; } ints[] = {
        {"0", 0}, {"-0", 0}, {"+17", 17}, {"-9223372036854775808", LONG_MIN}, {"9223372036854775807", LONG_MAX},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        snprintf(buf, sizeof buf, "sec:\n  big: %s\n", ints[i].text);
        assert_ok(tload(&t, write_tmp("int.yaml", buf), 0, NULL));
        assert_int_equal(t.big, ints[i].v);
    }
    /* strings: plain, quoted, escapes, block scalars, null */
    assert_ok(tload(&t, write_tmp("str.yaml", "sec:\n  s: \"tab\\there \\u00e9\"\n"), 0, NULL));
    assert_string_equal(t.s, "tab\there \xc3\xa9");
    assert_ok(tload(&t, write_tmp("str.yaml", "sec:\n  s: |\n    two\n    lines\n"), 0, NULL));
    assert_string_equal(t.s, "two\nlines\n");
    assert_ok(tload(&t, write_tmp("str.yaml", "sec:\n  s: 123\n"), 0, NULL));
    assert_string_equal(t.s, "123");
    assert_ok(tload(&t, write_tmp("str.yaml", "sec:\n  s: ~\n"), 0, NULL));
    assert_string_equal(t.s, "");
    assert_ok(tload(&t, write_tmp("str.yaml", "sec:\n  s:\n"), 0, NULL));
    assert_string_equal(t.s, "");
    assert_ok(tload(&t, write_tmp("str.yaml", "sec:\n  s: 'null'\n"), 0, NULL));
    assert_string_equal(t.s, "null");
    /* an enum may be quoted */
    assert_ok(tload(&t, write_tmp("enum.yaml", "sec:\n  e: \"red\"\n"), 0, NULL));
    assert_string_equal(t.e, "red");
}

/* ------------------------------------------------------------------------------------------------
 * Error classes */

static void test_yaml_syntax_error(void **state) {
    tsr_config c;
    const char *p = write_tmp("syntax.yaml", "model:\n  dim: 64\n  heads: 4: 5\n");
    char want[600];
    snprintf(want, sizeof want, "%s:3:", p);
    assert_err(tsr_config_load(&c, p, 0, NULL), want, "YAML syntax error", "mapping values are not allowed");

    p = write_tmp("syntax2.yaml", "model:\n  dim: [1, 2\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), p, "YAML syntax error", "line 2");

    p = write_tmp("syntax3.yaml", "model:\n\tdim: 64\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), p, "YAML syntax error");

    p = write_tmp("badutf8.yaml", "model:\n  name: \"\xff\xfe\"\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), p, "invalid input");

    p = write_tmp("twodocs.yaml", "model:\n  dim: 64\n---\nmodel:\n  dim: 32\n");
    snprintf(want, sizeof want, "%s:4: only one YAML document is allowed", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    snprintf(want, sizeof want, "%s/does-not-exist.yaml", tmpdir);
    assert_err(tsr_config_load(&c, want, 0, NULL), want, "cannot open");
}

static void test_unknown_key(void **state) {
    tsr_config c;
    char want[600];
    const char *p = write_tmp("unknown.yaml", "model:\n  dim: 64\nmodle.dim: 3\n");
    snprintf(want, sizeof want, "%s:3: unknown key 'modle.dim' (did you mean 'model.dim'?)", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    /* a misspelt section is reported at its first key */
    p = write_tmp("unknown2.yaml", "# comment\nmodle:\n  heads: 4\n");
    snprintf(want, sizeof want, "%s:3: unknown key 'modle.heads' (did you mean 'model.heads'?)", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    /* a transposition inside a section */
    p = write_tmp("unknown3.yaml", "train:\n  stpes: 4\n");
    snprintf(want, sizeof want, "%s:2: unknown key 'train.stpes' (did you mean 'train.steps'?)", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    /* nothing close: no suggestion */
    p = write_tmp("unknown4.yaml", "train:\n  momentum: 0.9\n");
    snprintf(want, sizeof want, "%s:2: unknown key 'train.momentum'", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    p = write_tmp("unknown5.yaml", "optimizer: {}\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "unknown key 'optimizer'");

    /* a section given a value */
    p = write_tmp("section.yaml", "model: 3\n");
    snprintf(want, sizeof want, "%s:1: key 'model' is a section: expected a mapping, got '3'", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    /* an alias to an enclosing mapping is a loop: refused, not followed forever */
    p = write_tmp("aliasloop.yaml", "x: &a\n  y: *a\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), p, "alias loop");

    /* keys must be scalars */
    p = write_tmp("complexkey.yaml", "? [a, b]\n: 1\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), p, "keys must be scalars");
}

static void test_wrong_type(void **state) {
    tsr_config c;
    char want[600];
    const char *p = write_tmp("type.yaml", "model:\n  dim: abc\n");
    snprintf(want, sizeof want, "%s:2: key 'model.dim': expected an integer in [1, 65536], got 'abc'", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    static const struct { const char *text, *got; } bad_ints[] = {
        {"1.5", "got '1.5'"},
        {"12abc", "got '12abc'"},
        {"1e3", "got '1e3'"},
        {"0x40", "got '0x40'"},
        {"010", "got '010'"},
        {"1_000", "got '1_000'"},
        {"99999999999999999999999", "got '99999999999999999999999' (overflow)"},
        {"\"64\"", "got a quoted string '64'"},
        {"{a: 1}", "got a mapping"},
        {"[64]", "got a list"},
        {"", "got an empty value"},
        {"true", "got 'true'"},
    };
    char buf[256];
    for (size_t i = 0; i < sizeof bad_ints / sizeof bad_ints[0]; i++) {
        snprintf(buf, sizeof buf, "model:\n  name: x\n  dim: %s\n", bad_ints[i].text);
        p = write_tmp("badint.yaml", buf);
        snprintf(want, sizeof want, "%s:3:", p);
        assert_err(tsr_config_load(&c, p, 0, NULL), want, "key 'model.dim': expected an integer in [1, 65536]",
                   bad_ints[i].got);
    }

    static const struct { const char *text, *got; } bad_floats[] = {
        {"abc", "got 'abc'"},
        {"nan", "got 'nan'"},
        {".nan", "got '.nan'"},
        {"inf", "got 'inf'"},
        {"-.inf", "got '-.inf'"},
        {"1e999", "got '1e999' (overflow)"},
        {"0x1p-3", "got '0x1p-3'"},
        {"1e-3x", "got '1e-3x'"},
        {"1e", "got '1e'"},
        {"'0.1'", "got a quoted string '0.1'"},
        {"[0.1]", "got a list"},
    };
    for (size_t i = 0; i < sizeof bad_floats / sizeof bad_floats[0]; i++) {
        snprintf(buf, sizeof buf, "train:\n  lr: %s\n", bad_floats[i].text);
        p = write_tmp("badfloat.yaml", buf);
        snprintf(want, sizeof want, "%s:2:", p);
        assert_err(tsr_config_load(&c, p, 0, NULL), want, "key 'train.lr': expected a number in [0, 10]",
                   bad_floats[i].got);
    }

    /* a scalar or a mapping where a list is expected, a nested list inside a list */
    p = write_tmp("badlist.yaml", "data:\n  mean: 0.5\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), p, ":2:", "key 'data.mean': expected a list of at most 256 numbers",
               "got '0.5'");
    p = write_tmp("badlist2.yaml", "data:\n  mean: {r: 0.5}\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "key 'data.mean'", "got a mapping");
    p = write_tmp("badlist3.yaml", "data:\n  mean: [[0.5]]\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "key 'data.mean[0]': expected a number", "got a list");
    p = write_tmp("badlist4.yaml", "data:\n  mean:\n    - 0.5\n    - x\n");
    snprintf(want, sizeof want, "%s:4: key 'data.mean[1]': expected a number in [-1e+06, 1e+06], got 'x'", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    /* booleans, strings given a list */
    tcfg t;
    p = write_tmp("badbool.yaml", "sec:\n  b: maybe\n");
    assert_err(tload(&t, p, 0, NULL), "key 'sec.b': expected a boolean (true/false, yes/no, on/off), got 'maybe'");
    p = write_tmp("badbool2.yaml", "sec:\n  b: 1\n");
    assert_err(tload(&t, p, 0, NULL), "key 'sec.b': expected a boolean", "got '1'");
    p = write_tmp("badstr.yaml", "model:\n  name: [a, b]\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "key 'model.name': expected a string", "got a list");
    p = write_tmp("nul.yaml", "model:\n  name: \"a\\0b\"\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "key 'model.name'", "NUL");
}

static void test_out_of_range(void **state) {
    tsr_config c;
    char want[600];
    const char *p = write_tmp("range.yaml", "model:\n  heads: 0\n");
    snprintf(want, sizeof want, "%s:2: key 'model.heads': expected an integer in [1, 1024], got '0'", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    p = write_tmp("range2.yaml", "run:\n  seed: 2147483648\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "key 'run.seed': expected an integer in [0, 2147483647]",
               "got '2147483648'");
    p = write_tmp("range3.yaml", "train:\n  lr: 10.5\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "key 'train.lr': expected a number in [0, 10], got '10.5'");
    p = write_tmp("range4.yaml", "model:\n  ln_eps: -1e-6\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "key 'model.ln_eps': expected a number in [0, 1]", "got '-1e-6'");
    p = write_tmp("range5.yaml", "data:\n  std: [0.5, -0.1]\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "key 'data.std[1]': expected a number in [0, 1e+06]",
               "got '-0.1'");
    tcfg t;
    p = write_tmp("range6.yaml", "lists:\n  il: [1, 2000]\n");
    assert_err(tload(&t, p, 0, NULL), "key 'lists.il[1]': expected an integer in [0, 1000], got '2000'");
}

static void test_enum_choices(void **state) {
    tsr_config c;
    char want[600];
    const char *p = write_tmp("enum.yaml", "model:\n  naming: tim\n");
    snprintf(want, sizeof want, "%s:2: key 'model.naming': expected one of: timm, hf, got 'tim'", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);
    p = write_tmp("enum2.yaml", "data:\n  dataset: cifar10\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "key 'data.dataset': expected one of: fashion-mnist, netcdf",
               "got 'cifar10'");
    p = write_tmp("enum3.yaml", "model:\n  naming: TIMM\n"); /* case matters */
    assert_err(tsr_config_load(&c, p, 0, NULL), "expected one of: timm, hf");
    tcfg t;
    p = write_tmp("enum4.yaml", "sec:\n  e: [red]\n");
    assert_err(tload(&t, p, 0, NULL), "key 'sec.e': expected one of: none, red, green, got a list");
}

static void test_list_too_long(void **state) {
    char buf[16384];
    size_t k = (size_t)snprintf(buf, sizeof buf, "lists:\n  fl: [");
    for (int i = 0; i < CFG_LIST_MAX; i++) k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%d.5", i ? ", " : "", i);
    snprintf(buf + k, sizeof buf - k, "]\n");
    tcfg t;
    memset(&t, 0, sizeof t);
    assert_ok(tload(&t, write_tmp("list64.yaml", buf), 0, NULL));
    assert_int_equal(t.fl.n, CFG_LIST_MAX);
    assert_true(t.fl.v[CFG_LIST_MAX - 1] == CFG_LIST_MAX - 1 + 0.5);

    snprintf(buf + k, sizeof buf - k, ", 1]\n");
    const char *p = write_tmp("list65.yaml", buf);
    char want[600];
    snprintf(want, sizeof want, "%s:2: key 'lists.fl': expected a list of at most %d numbers, got %d elements", p,
             CFG_LIST_MAX, CFG_LIST_MAX + 1);
    assert_err_exact(tload(&t, p, 0, NULL), want);
}

static void test_string_too_long(void **state) {
    char buf[1024], s[400];
    tcfg t;
    memset(s, 'x', sizeof s);
    s[CFG_STR_MAX - 1] = 0; /* 255 bytes: fits */
    snprintf(buf, sizeof buf, "sec:\n  s: %s\n", s);
    assert_ok(tload(&t, write_tmp("str255.yaml", buf), 0, NULL));
    assert_int_equal(strlen(t.s), CFG_STR_MAX - 1);

    s[CFG_STR_MAX - 1] = 'x';
    s[CFG_STR_MAX] = 0; /* 256 bytes: too long */
    snprintf(buf, sizeof buf, "sec:\n  s: \"%s\"\n", s);
    const char *p = write_tmp("str256.yaml", buf);
    assert_err(tload(&t, p, 0, NULL), p, ":2:", "key 'sec.s': expected a string of at most 255 bytes",
               "got a string of 256 bytes");

    memset(s, 'y', sizeof s);
    s[CFG_LIST_STR_MAX - 1] = 0; /* 63 bytes: fits a list element */
    snprintf(buf, sizeof buf, "lists:\n  sl: [a, %s]\n", s);
    assert_ok(tload(&t, write_tmp("sl63.yaml", buf), 0, NULL));
    assert_string_equal(t.sl.v[1], s);
    s[CFG_LIST_STR_MAX - 1] = 'y';
    s[CFG_LIST_STR_MAX] = 0;
    snprintf(buf, sizeof buf, "lists:\n  sl: [a, %s]\n", s);
    assert_err(tload(&t, write_tmp("sl64.yaml", buf), 0, NULL),
               "key 'lists.sl[1]': expected a string of at most 63 bytes", "got a string of 64 bytes");
}

static void test_duplicate_keys(void **state) {
    tsr_config c;
    char want[600];
    const char *p = write_tmp("dup.yaml", "model:\n  dim: 64\n  dim: 128\n");
    snprintf(want, sizeof want, "%s:3: duplicate key 'model.dim' (first given at line 2)", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    /* the same key twice through flattening */
    p = write_tmp("dup2.yaml", "model.dim: 64\nmodel:\n  dim: 128\n");
    snprintf(want, sizeof want, "%s:3: duplicate key 'model.dim' (first given at line 1)", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    /* a section twice (YAML readers would silently drop the first one) */
    p = write_tmp("dup3.yaml", "model:\n  dim: 64\ntrain:\n  steps: 1\nmodel:\n  heads: 4\n");
    snprintf(want, sizeof want, "%s:5: duplicate key 'model' (first given at line 1)", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);
}

static void test_top_level(void **state) {
    tsr_config c, d;
    char want[600];
    const char *p = write_tmp("toplist.yaml", "# a list\n- model\n- data\n");
    snprintf(want, sizeof want, "%s:2: the top level must be a mapping of keys, got a list", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);
    p = write_tmp("topscalar.yaml", "42\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), p, "the top level must be a mapping of keys, got '42'");

    /* an empty file, or one with only comments, gives the defaults */
    memset(&c, 0, sizeof c);
    memset(&d, 0, sizeof d);
    assert_ok(tsr_config_load(&d, NULL, 0, NULL));
    assert_ok(tsr_config_load(&c, write_tmp("empty.yaml", ""), 0, NULL));
    assert_memory_equal(&c, &d, sizeof c);
    assert_ok(tsr_config_load(&c, write_tmp("comments.yaml", "# nothing\n\n# here\n"), 0, NULL));
    assert_memory_equal(&c, &d, sizeof c);
    assert_ok(tsr_config_load(&c, write_tmp("docstart.yaml", "---\n"), 0, NULL));
    assert_memory_equal(&c, &d, sizeof c);
}

typedef struct {
    long x;
    long y;
} rcfg;

static void test_required_key(void **state) {
    static const cfg_field rs[] = {
        {"need.x", CFG_INT, offsetof(rcfg, x), 0, 10, NULL, NULL, "required"},
        {"need.y", CFG_INT, offsetof(rcfg, y), 0, 10, NULL, "1", "optional"},
    };
    rcfg r = {0, 0};
    assert_err_exact(cfg_load(&r, rs, 2, NULL, 0, NULL), "(no configuration file): required key 'need.x' is missing");
    const char *p = write_tmp("req.yaml", "need:\n  y: 2\n");
    char want[600];
    snprintf(want, sizeof want, "%s: required key 'need.x' is missing", p);
    assert_err_exact(cfg_load(&r, rs, 2, p, 0, NULL), want);
    char *sets[] = {"need.x=3"};
    assert_ok(cfg_load(&r, rs, 2, p, 1, sets));
    assert_int_equal(r.x, 3);
    assert_int_equal(r.y, 2);
    p = write_tmp("req2.yaml", "need: {x: 4}\n");
    assert_ok(cfg_load(&r, rs, 2, p, 0, NULL));
    assert_int_equal(r.x, 4);
    assert_int_equal(r.y, 1);
}

static void test_bad_schema(void **state) {
    rcfg r;
    static const cfg_field bad_def[] = {{"a.x", CFG_INT, offsetof(rcfg, x), 0, 10, NULL, "11", NULL}};
    assert_err(cfg_load(&r, bad_def, 1, NULL, 0, NULL), "default of 'a.x'", "expected an integer in [0, 10], got '11'");
    static const cfg_field bad_nest[] = {
        {"a", CFG_INT, offsetof(rcfg, x), 1, 0, NULL, "1", NULL},
        {"a.y", CFG_INT, offsetof(rcfg, y), 1, 0, NULL, "1", NULL},
    };
    assert_err(cfg_load(&r, bad_nest, 2, NULL, 0, NULL), "config schema", "cannot also be a section");
    static const cfg_field bad_key[] = {{"a..x", CFG_INT, offsetof(rcfg, x), 1, 0, NULL, "1", NULL}};
    assert_err(cfg_load(&r, bad_key, 1, NULL, 0, NULL), "config schema: key 'a..x' is not a dotted name");
    static const cfg_field bad_key2[] = {{"a: b", CFG_INT, offsetof(rcfg, x), 1, 0, NULL, "1", NULL}};
    assert_err(cfg_load(&r, bad_key2, 1, NULL, 0, NULL), "config schema: key 'a: b' is not a dotted name");
    static const cfg_field dup_key[] = {
        {"a.x", CFG_INT, offsetof(rcfg, x), 1, 0, NULL, "1", NULL},
        {"a.x", CFG_INT, offsetof(rcfg, y), 1, 0, NULL, "1", NULL},
    };
    assert_err(cfg_load(&r, dup_key, 2, NULL, 0, NULL), "config schema: key 'a.x' appears twice");
    static const cfg_field bad_enum[] = {{"e", CFG_ENUM, 0, 1, 0, NULL, "a", NULL}};
    char e[CFG_STR_MAX];
    assert_err(cfg_load(e, bad_enum, 1, NULL, 0, NULL), "config schema", "no choices");
}

/* On error the destination is not modified. */
static void test_error_leaves_dst(void **state) {
    tsr_config c, before;
    memset(&c, 0, sizeof c);
    char *sets[] = {"model.dim=64", "model.heads=4"};
    assert_ok(tsr_config_load(&c, NULL, 2, sets));
    memcpy(&before, &c, sizeof c);
    const char *p = write_tmp("late_error.yaml", "model:\n  depth: 2\n  name: changed\ntrain:\n  lr: x\n");
    assert_err(tsr_config_load(&c, p, 0, NULL), "train.lr");
    assert_memory_equal(&c, &before, sizeof c);
    assert_err(cfg_load(&c, tsr_config_schema, tsr_config_nfields, p, 0, NULL), "train.lr");
    assert_memory_equal(&c, &before, sizeof c);
    char *bad[] = {"model.depth=2", "model.heads=5"}; /* 64 % 5 */
    assert_err(tsr_config_load(&c, NULL, 2, bad), "model.heads");
    assert_memory_equal(&c, &before, sizeof c);
}

/* ------------------------------------------------------------------------------------------------
 * --set */

static void test_set_overrides(void **state) {
    const char *p = write_tmp("base.yaml", "model:\n  dim: 128\n  heads: 4\n  depth: 3\ntrain:\n  steps: 10\n");
    char *sets[] = {
        "model.dim=64",
        "model.channels=3",
        "data.mean=[0.5,0.5,0.5]",
        "data.std=[0.25, 0.25, 0.125]",
        "model.name='my model'",
        "run.init=",
        "model={depth: 2, mlp_dim: 96}",
        "model.depth=5", /* a later override wins */
        " train.lr = 2e-4",
        "model.naming=hf",
        "run.output_dir=runs/a b",
    };
    const int nset = (int)(sizeof sets / sizeof sets[0]);
    tsr_config c;
    memset(&c, 0, sizeof c);
    assert_ok(tsr_config_load(&c, p, nset, sets));
    assert_int_equal(c.model.dim, 64);
    assert_int_equal(c.model.heads, 4);
    assert_int_equal(c.model.channels, 3);
    assert_int_equal(c.data.mean.n, 3);
    assert_true(c.data.mean.v[0] == 0.5 && c.data.mean.v[2] == 0.5);
    assert_int_equal(c.data.std.n, 3);
    assert_true(c.data.std.v[2] == 0.125);
    assert_string_equal(c.model.name, "my model");
    assert_string_equal(c.run.init, "");
    assert_int_equal(c.model.depth, 5);
    assert_int_equal(c.model.mlp_dim, 96);
    assert_true(c.train.lr == 2e-4);
    assert_int_equal(c.train.steps, 10); /* from the file */
    assert_string_equal(c.model.naming, "hf");
    assert_string_equal(c.run.output_dir, "runs/a b");

    /* overrides without a file; a list override replaces the whole list */
    tcfg t;
    memset(&t, 0, sizeof t);
    char *tsets[] = {"lists.il=[9]", "sec.b=on", "a.b.c.deep=-4", "top=0", "lists.sl=[]"};
    assert_ok(tload(&t, NULL, 5, tsets));
    assert_int_equal(t.il.n, 1);
    assert_int_equal(t.il.v[0], 9);
    assert_int_equal(t.il.v[1], 0);
    assert_true(t.b);
    assert_int_equal(t.deep, -4);
    assert_int_equal(t.top, 0);
    assert_int_equal(t.sl.n, 0);
    assert_int_equal(t.sl.v[0][0], 0);
}

static void test_set_errors(void **state) {
    tsr_config c;
    char *s1[] = {"modle.dim=3"};
    assert_err_exact(tsr_config_load(&c, NULL, 1, s1), "--set modle.dim=3: unknown key 'modle.dim' (did you mean 'model.dim'?)");
    char *s2[] = {"model.heads=0"};
    assert_err_exact(tsr_config_load(&c, NULL, 1, s2),
                     "--set model.heads=0: key 'model.heads': expected an integer in [1, 1024], got '0'");
    char *s3[] = {"model.dim"};
    assert_err_exact(tsr_config_load(&c, NULL, 1, s3), "--set model.dim: expected key=value");
    char *s4[] = {"=3"};
    assert_err(tsr_config_load(&c, NULL, 1, s4), "--set =3", "the key is empty");
    char *s5[] = {"data.mean=[0.5"};
    assert_err(tsr_config_load(&c, NULL, 1, s5), "--set data.mean=[0.5: YAML syntax error");
    char *s6[] = {"model.dim=64", "optimizer.beta=0.9"};
    assert_err_exact(tsr_config_load(&c, NULL, 2, s6), "--set optimizer.beta=0.9: unknown key 'optimizer.beta'");
    char *s7[] = {"model={dim: 64, dmi: 3}"};
    assert_err(tsr_config_load(&c, NULL, 1, s7), "--set model={dim: 64, dmi: 3}: unknown key 'model.dmi'",
               "did you mean 'model.dim'?");
    char *s8[] = {"model=3"};
    assert_err(tsr_config_load(&c, NULL, 1, s8), "key 'model' is a section");
    char *s9[] = {"data.mean=0.5"};
    assert_err(tsr_config_load(&c, NULL, 1, s9), "--set data.mean=0.5: key 'data.mean': expected a list");
    char *s10[] = {"train.lr=1e999"};
    assert_err(tsr_config_load(&c, NULL, 1, s10), "--set train.lr=1e999", "overflow");
    char *s11[] = {"model.dim=64\n---\n32"};
    assert_err(tsr_config_load(&c, NULL, 1, s11), "only one YAML document");
}

/* ------------------------------------------------------------------------------------------------
 * Dump and reload */

/* Dump src, write it to a file, load it back into a zeroed struct and compare bytes. */
static void roundtrip_tsr(const tsr_config *src, const char *name) {
    char *text = tsr_config_dump(src);
    assert_non_null(text);
    const char *p = write_tmp(name, text);
    tsr_config back;
    memset(&back, 0, sizeof back);
    if (tsr_config_load(&back, p, 0, NULL) != 0) {
        print_error("reload failed: %s\n--- dump ---\n%s\n", tsr_last_error(), text);
        fail();
    }
    if (memcmp(&back, src, sizeof back) != 0) {
        print_error("reloaded config differs\n--- dump ---\n%s\n", text);
        fail();
    }
    free(text);
}

static void test_roundtrip_tsr(void **state) {
    tsr_config c;
    memset(&c, 0, sizeof c);
    assert_ok(tsr_config_load(&c, NULL, 0, NULL));
    roundtrip_tsr(&c, "rt_default.yaml");

    char *text = tsr_config_dump(&c);
    /* nested mappings with one comment per key */
    assert_non_null(strstr(text, "model:\n  # model name, recorded in checkpoints and logs\n  name: \"vit-s-28\"\n"));
    assert_non_null(strstr(text, "  # embedding width; must be divisible by model.heads\n  dim: 192\n"));
    assert_non_null(strstr(text, "  ln_eps: 1.0e-06\n"));
    assert_non_null(strstr(text, "  mean: [0.286]\n"));
    assert_non_null(strstr(text, "  lr: 0.001\n"));
    assert_non_null(strstr(text, "  grad_clip: 1.0\n"));
    assert_non_null(strstr(text, "run:\n"));
    assert_non_null(strstr(text, "  init: \"\"\n"));
    free(text);

    char *sets[] = {
        "model.name=\"q\\\"uote \\\\ back\\tslash \\u00e9\\u2028\\x85\\x01\"",
        "model.channels=3",
        "data.mean=[0.1, 0.2, 0.30000000000000004]",
        "data.std=[1e-300, 5e-324, 999999.99999999988]",
        "train.lr=0.3333333333333333",
        "train.weight_decay=0",
        "model.ln_eps=4.9406564584124654e-324",
        "run.seed=2147483647",
        "run.init=\"#not a comment: [x]\"",
        "run.output_dir=\"  spaces  \"",
        "data.path=\"\\r\\n\"",
    };
    memset(&c, 0, sizeof c);
    assert_ok(tsr_config_load(&c, NULL, (int)(sizeof sets / sizeof sets[0]), sets));
    assert_string_equal(c.model.name, "q\"uote \\ back\tslash \xc3\xa9\xe2\x80\xa8\xc2\x85\x01");
    assert_string_equal(c.run.init, "#not a comment: [x]");
    roundtrip_tsr(&c, "rt_odd.yaml");
}

static void test_roundtrip_generic(void **state) {
    const char *p = write_tmp("gen.yaml",
                              "sec:\n"
                              "  i: 100\n"
                              "  f: -0.0\n"
                              "  b: true\n"
                              "  s: \"line1\\nline2 \\\"q\\\" \\u00fc \\U0001F600 \\x7f \\xa0\\uFEFF\"\n"
                              "  e: green\n"
                              "  big: -9223372036854775808\n"
                              "lists:\n"
                              "  il: [0, 1000, 7]\n"
                              "  fl: [1e-310, -2.5, 0.1, 1e300]\n"
                              "  sl: [\"\", 'it''s', \"a,b\", \"[x]\", \"{y}\", \"#z\", \"k: v\", \"true\", \"1.5\"]\n"
                              "a:\n"
                              "  any: 123456789.123456789\n"
                              "  b: {c: {deep: -1}, after: 3}\n"
                              "top: 42\n");
    tcfg t;
    memset(&t, 0, sizeof t);
    assert_ok(tload(&t, p, 0, NULL));
    assert_true(t.f == 0.0 && signbit(t.f));
    assert_string_equal(t.sl.v[1], "it's");
    assert_string_equal(t.sl.v[7], "true");
    char *text = cfg_dump(&t, tschema, tn);
    assert_non_null(text);

    /* interleaved schema keys still give one mapping per section, in order of first appearance */
    assert_non_null(strstr(text, "sec:\n  # an int in [0, 100]\n  i: 100\n"));
    assert_non_null(strstr(text, "  # an int, any value (section sec again)\n  big: -9223372036854775808\n"));
    assert_non_null(strstr(text, "a:\n  b:\n    c:\n      # three levels down\n      deep: -1\n    # section a.b again\n    after: 3\n  # a float"));
    assert_non_null(strstr(text, "# a top-level key\ntop: 42\n"));
    int nsec = 0;
    for (const char *q = text; (q = strstr(q, "\nsec:\n")); q++) nsec++;
    if (!strncmp(text, "sec:\n", 5)) nsec++;
    assert_int_equal(nsec, 1);
    assert_null(strstr(text, "\na:\n  any")); /* "a:" appears once, any after b */
    assert_non_null(strstr(text, "  f: -0.0\n"));
    assert_non_null(strstr(text, "  b: true\n"));

    const char *p2 = write_tmp("gen_dump.yaml", text);
    tcfg back;
    memset(&back, 0, sizeof back);
    if (tload(&back, p2, 0, NULL) != 0) {
        print_error("reload failed: %s\n--- dump ---\n%s\n", tsr_last_error(), text);
        fail();
    }
    if (memcmp(&back, &t, sizeof t) != 0) {
        print_error("reloaded config differs\n--- dump ---\n%s\n", text);
        fail();
    }
    free(text);

    /* defaults, and an empty schema */
    memset(&t, 0, sizeof t);
    assert_ok(tload(&t, NULL, 0, NULL));
    text = cfg_dump(&t, tschema, tn);
    memset(&back, 0, sizeof back);
    assert_ok(tload(&back, write_tmp("gen_default.yaml", text), 0, NULL));
    assert_memory_equal(&back, &t, sizeof t);
    free(text);
    text = cfg_dump(&t, tschema, 0);
    assert_string_equal(text, "");
    free(text);
}

/* ------------------------------------------------------------------------------------------------
 * tessera's cross-key checks and configs/default.yaml */

static void test_tsr_cross_checks(void **state) {
    tsr_config c;
    char *s1[] = {"model.dim=100", "model.heads=3"};
    assert_err_exact(tsr_config_load(&c, NULL, 2, s1),
                     "configuration (with --set overrides): model.dim (100) must be divisible by model.heads (3)");
    char *s2[] = {"model.patch_size=5"};
    assert_err(tsr_config_load(&c, NULL, 1, s2), "model.image_size (28) must be divisible by model.patch_size (5)");
    char *s3[] = {"model.channels=3"};
    assert_err(tsr_config_load(&c, NULL, 1, s3), "data.mean has 1 entries but model.channels is 3");
    char *s4[] = {"model.channels=2", "data.mean=[0.5, 0.5]"};
    assert_err(tsr_config_load(&c, NULL, 2, s4), "data.std has 1 entries but model.channels is 2");
    char *s5[] = {"data.std=[0]"};
    assert_err(tsr_config_load(&c, NULL, 1, s5), "data.std[0] must be > 0, got 0");
    char *s6[] = {"data.mean=[]"};
    assert_err(tsr_config_load(&c, NULL, 1, s6), "data.mean has 0 entries but model.channels is 1");
    char *s7[] = {"run.output_dir=\"\""};
    assert_err(tsr_config_load(&c, NULL, 1, s7), "run.output_dir must not be empty");
    char *s8[] = {"data.path="};
    assert_err(tsr_config_load(&c, NULL, 1, s8), "data.path must not be empty");

    const char *p = write_tmp("cross.yaml", "model:\n  image_size: 30\n");
    char want[600];
    snprintf(want, sizeof want, "%s: model.image_size (30) must be divisible by model.patch_size (4)", p);
    assert_err_exact(tsr_config_load(&c, p, 0, NULL), want);

    /* consistent changes pass */
    char *ok[] = {"model.dim=100", "model.heads=4", "model.image_size=30", "model.patch_size=5", "model.channels=2",
                  "data.mean=[0.5,0.4]", "data.std=[0.2,0.3]"};
    assert_ok(tsr_config_load(&c, NULL, 7, ok));
    assert_int_equal(c.model.dim, 100);
}

static void test_default_yaml(void **state) {
    const char *path = "configs/default.yaml";
#ifdef TSR_SOURCE_DIR
    if (access(path, R_OK) != 0) path = TSR_SOURCE_DIR "/configs/default.yaml";
#endif
    tsr_config c, d;
    memset(&c, 0, sizeof c);
    memset(&d, 0, sizeof d);
    assert_ok(tsr_config_load(&c, path, 0, NULL));
    assert_ok(tsr_config_load(&d, NULL, 0, NULL));
    assert_memory_equal(&c, &d, sizeof c); /* the file states exactly the schema defaults */
    assert_tsr_defaults(&c);

    /* every key is written out (with its section) */
    char *text = NULL;
    size_t n = 0;
    assert_ok(tsr_read_file(path, &text, &n));
    for (int i = 0; i < tsr_config_nfields; i++) {
        const char *key = tsr_config_schema[i].key, *dot = strchr(key, '.');
        assert_non_null(dot);
        char sec[64], leaf[128];
        snprintf(sec, sizeof sec, "\n%.*s:\n", (int)(dot - key), key);
        snprintf(leaf, sizeof leaf, "\n  %s: ", dot + 1);
        if (!strstr(text, sec) || !strstr(text, leaf)) {
            print_error("%s does not list key '%s'\n", path, key);
            fail();
        }
    }
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_only),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_nested_mapping),
        cmocka_unit_test(test_scalar_forms),
        cmocka_unit_test(test_yaml_syntax_error),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_enum_choices),
        cmocka_unit_test(test_list_too_long),
        cmocka_unit_test(test_string_too_long),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_top_level),
        cmocka_unit_test(test_required_key),
        cmocka_unit_test(test_bad_schema),
        cmocka_unit_test(test_error_leaves_dst),
        cmocka_unit_test(test_set_overrides),
        cmocka_unit_test(test_set_errors),
        cmocka_unit_test(test_roundtrip_tsr),
        cmocka_unit_test(test_roundtrip_generic),
        cmocka_unit_test(test_tsr_cross_checks),
        cmocka_unit_test(test_default_yaml),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
