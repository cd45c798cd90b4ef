/* adapter_io.c: adapter sets <-> safetensors (file format only; the arithmetic on adapter sets is in
 * adapter_ops.c). See adapter_io.h. */
#include "adapters/adapter_io.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "adapters/peft_io.h"
#include "io/safetensors.h"

_Static_assert(sizeof(real) == sizeof(float), "adapter files are read and written by the float build");

static const char *const lora_names[TSR_NLORA] = {"q", "k", "v", "proj", "fc1", "fc2"};
static const char *const bn_names[TSR_NBN] = {"parallel", "houlsby_attn", "mlp_seq"};

#define INT_MAXV (1 << 24) /* upper bound for every integer field: far above any real model */

/* ------------------------------------------------------------------ description (JSON) */

static json_t *site_list(int mask, const char *const *names, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        if (mask & (1 << i)) json_array_append_new(a, json_string(names[i]));
    return a;
}

/* The description of ad as JSON text (malloc'ed), or NULL with tsr_error. */
static char *describe(const tsr_adapters *ad, const char *path) {
    const tsr_adapter_config *c = &ad->cfg;
    double reals[] = {c->lora_alpha, c->bn_scale, c->bn_dropout, c->tau, ad->ln_eps};
    const char *rnames[] = {"lora_alpha", "bn_scale", "bn_dropout", "tau", "ln_eps"};
    for (int i = 0; i < 5; i++)
        if (!isfinite(reals[i]))
            return tsr_error("%s: adapter configuration field '%s' is not finite (%g)", path, rnames[i], reals[i]),
                   NULL;
    json_t *o = json_object();
    json_object_set_new(o, "format", json_string(TSR_ADAPTERS_FORMAT));
    json_object_set_new(o, "version", json_integer(TSR_ADAPTERS_VERSION));
    json_object_set_new(o, "lora_sites", site_list(c->lora_sites, lora_names, TSR_NLORA));
    json_object_set_new(o, "lora_rank", json_integer(c->lora_rank));
    json_object_set_new(o, "lora_alpha", json_real(c->lora_alpha));
    json_object_set_new(o, "bn_sites", site_list(c->bn_sites, bn_names, TSR_NBN));
    json_object_set_new(o, "bn_dim", json_integer(c->bn_dim));
    json_object_set_new(o, "bn_scale", json_real(c->bn_scale));
    json_object_set_new(o, "bn_dropout", json_real(c->bn_dropout));
    json_object_set_new(o, "activation", json_string(c->bn_relu ? "relu" : "gelu"));
    json_object_set_new(o, "skills", json_integer(c->skills));
    json_object_set_new(o, "heads", json_integer(c->heads));
    json_object_set_new(o, "n_tasks", json_integer(c->n_tasks));
    json_object_set_new(o, "noise", json_integer(c->noise ? 1 : 0));
    json_object_set_new(o, "tau", json_real(c->tau));
    json_object_set_new(o, "layer_min", json_integer(c->layer_min));
    json_object_set_new(o, "layer_max", json_integer(c->layer_max));
    json_object_set_new(o, "depth", json_integer(ad->depth));
    json_object_set_new(o, "dim", json_integer(ad->dim));
    json_object_set_new(o, "mlp", json_integer(ad->mlp));
    json_object_set_new(o, "tokens", json_integer(ad->tokens));
    json_object_set_new(o, "ln_eps", json_real(ad->ln_eps));
    char *s = json_dumps(o, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17) | JSON_COMPACT);
    json_decref(o);
    if (!s) tsr_error("%s: could not encode the adapter description as JSON", path);
    return s;
}

/* What the description holds. */
typedef struct {
    tsr_adapter_config c;
    int depth, dim, mlp, tokens;
    double ln_eps;
} desc;

/* A short rendering of a JSON value for error messages. */
static void show(const json_t *v, char *buf, size_t n) {
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    snprintf(buf, n, "%s", s ? s : "(missing)");
    if (strlen(buf) == n - 1 && n > 4) memcpy(buf + n - 4, "...", 3);
    free(s);
}

#define PFX "%s: metadata '" TSR_ADAPTERS_META_KEY "': key '%s'"

static int get_int(const char *path, json_t *o, const char *key, int lo, int hi, int *out) {
    json_t *v = json_object_get(o, key);
    if (!v) return tsr_error(PFX " is missing", path, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        char b[64];
        show(v, b, sizeof b);
        return tsr_error(PFX ": expected an integer in [%d, %d], got %s", path, key, lo, hi, b);
    }
    *out = (int)json_integer_value(v);
    return 0;
}

/* A finite number in [lo, hi] (hi_open: [lo, hi)); lo_open: (lo, ...]. */
static int get_num(const char *path, json_t *o, const char *key, double lo, int lo_open, double hi, int hi_open,
                   double *out) {
    json_t *v = json_object_get(o, key);
    if (!v) return tsr_error(PFX " is missing", path, key);
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!json_is_number(v) || !isfinite(x) || (lo_open ? x <= lo : x < lo) || (hi_open ? x >= hi : x > hi)) {
        char b[64];
        show(v, b, sizeof b);
        return tsr_error(PFX ": expected a number in %s%g, %g%s, got %s", path, key, lo_open ? "(" : "[", lo, hi,
                         hi_open ? ")" : "]", b);
    }
    *out = x;
    return 0;
}

static int get_sites(const char *path, json_t *o, const char *key, const char *const *names, int n, int *mask) {
    json_t *v = json_object_get(o, key);
    if (!v) return tsr_error(PFX " is missing", path, key);
    char allowed[128] = "";
    for (int i = 0; i < n; i++) {
        strcat(allowed, i ? ", " : "");
        strcat(allowed, names[i]);
    }
    if (!json_is_array(v)) {
        char b[64];
        show(v, b, sizeof b);
        return tsr_error(PFX ": expected a list of site names (%s), got %s", path, key, allowed, b);
    }
    *mask = 0;
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *e = json_array_get(v, i);
        int k = -1;
        for (int j = 0; j < n && json_is_string(e); j++)
            if (strcmp(json_string_value(e), names[j]) == 0) k = j;
        if (k < 0) {
            char b[64];
            show(e, b, sizeof b);
            return tsr_error(PFX ": entry %zu is %s: expected one of %s", path, key, i, b, allowed);
        }
        if (*mask & (1 << k)) return tsr_error(PFX ": site '%s' is listed twice", path, key, names[k]);
        *mask |= 1 << k;
    }
    return 0;
}

static int parse_desc(const char *path, const char *text, desc *d) {
    static const char *const keys[] = {"format", "version", "lora_sites", "lora_rank", "lora_alpha", "bn_sites",
                                       "bn_dim", "bn_scale", "bn_dropout", "activation", "skills", "heads",
                                       "n_tasks", "noise", "tau", "layer_min", "layer_max", "depth", "dim",
                                       "mlp", "tokens", "ln_eps"};
    const int nkeys = (int)(sizeof keys / sizeof keys[0]);
    memset(d, 0, sizeof *d);
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    if (!o) return tsr_error("%s: metadata '%s' is not valid JSON: %s (line %d)", path, TSR_ADAPTERS_META_KEY, je.text, je.line);
    int rc = -1;
    tsr_adapter_config *c = &d->c;
    if (!json_is_object(o)) {
        tsr_error("%s: metadata '%s': expected a JSON object", path, TSR_ADAPTERS_META_KEY);
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        int known = 0;
        for (int i = 0; i < nkeys; i++) known |= strcmp(k, keys[i]) == 0;
        if (!known) {
            tsr_error(PFX ": unknown key (this reader knows version %d of %s)", path, k, TSR_ADAPTERS_VERSION,
                      TSR_ADAPTERS_FORMAT);
            goto out;
        }
    }
    v = json_object_get(o, "format");
    if (!json_is_string(v) || strcmp(json_string_value(v), TSR_ADAPTERS_FORMAT) != 0) {
        char b[64];
        show(v, b, sizeof b);
        tsr_error(PFX ": expected \"%s\", got %s", path, "format", TSR_ADAPTERS_FORMAT, b);
        goto out;
    }
    int version;
    if (get_int(path, o, "version", TSR_ADAPTERS_VERSION, TSR_ADAPTERS_VERSION, &version)) goto out;
    /* sizes first: the layer range is checked against the depth */
    if (get_int(path, o, "depth", 1, INT_MAXV, &d->depth) || get_int(path, o, "dim", 1, INT_MAXV, &d->dim) ||
        get_int(path, o, "mlp", 1, INT_MAXV, &d->mlp) || get_int(path, o, "tokens", 1, INT_MAXV, &d->tokens) ||
        get_num(path, o, "ln_eps", 0, 0, 1, 1, &d->ln_eps))
        goto out;
    if (get_sites(path, o, "lora_sites", lora_names, TSR_NLORA, &c->lora_sites) ||
        get_int(path, o, "lora_rank", c->lora_sites ? 1 : 0, INT_MAXV, &c->lora_rank) ||
        get_num(path, o, "lora_alpha", -HUGE_VAL, 0, HUGE_VAL, 0, &c->lora_alpha) ||
        get_sites(path, o, "bn_sites", bn_names, TSR_NBN, &c->bn_sites) ||
        get_int(path, o, "bn_dim", c->bn_sites ? 1 : 0, INT_MAXV, &c->bn_dim) ||
        get_num(path, o, "bn_scale", -HUGE_VAL, 0, HUGE_VAL, 0, &c->bn_scale) ||
        get_num(path, o, "bn_dropout", 0, 0, 1, 1, &c->bn_dropout))
        goto out;
    v = json_object_get(o, "activation");
    if (!json_is_string(v) || (strcmp(json_string_value(v), "gelu") && strcmp(json_string_value(v), "relu"))) {
        char b[64];
        show(v, b, sizeof b);
        tsr_error(PFX ": expected \"gelu\" or \"relu\", got %s", path, "activation", b);
        goto out;
    }
    c->bn_relu = strcmp(json_string_value(v), "relu") == 0;
    if (get_int(path, o, "skills", 1, INT_MAXV, &c->skills) || get_int(path, o, "heads", 1, INT_MAXV, &c->heads) ||
        get_int(path, o, "n_tasks", c->skills > 1 ? 1 : 0, INT_MAXV, &c->n_tasks))
        goto out;
    v = json_object_get(o, "noise");
    if (json_is_boolean(v)) c->noise = json_is_true(v);
    else if (get_int(path, o, "noise", 0, 1, &c->noise)) goto out;
    if (get_num(path, o, "tau", 0, 1, HUGE_VAL, 0, &c->tau) ||
        get_int(path, o, "layer_min", -1, d->depth - 1, &c->layer_min) ||
        get_int(path, o, "layer_max", -1, d->depth - 1, &c->layer_max))
        goto out;
    int lmin = c->layer_min < 0 ? 0 : c->layer_min, lmax = c->layer_max < 0 ? d->depth - 1 : c->layer_max;
    if (lmin > lmax) {
        tsr_error("%s: metadata '%s': keys 'layer_min' and 'layer_max': [%d, %d] is an empty range of blocks", path,
                  TSR_ADAPTERS_META_KEY, c->layer_min, c->layer_max);
        goto out;
    }
    rc = 0;
out:
    json_decref(o);
    return rc;
}

static int read_desc(const tsr_st_file *f, desc *d) {
    const char *text = tsr_st_meta(f, TSR_ADAPTERS_META_KEY);
    if (!text)
        return tsr_error("%s: no metadata '%s': not a tessera adapter file (write one with tsr_adapters_save)",
                         f->path, TSR_ADAPTERS_META_KEY);
    return parse_desc(f->path, text, d);
}

/* ------------------------------------------------------------------ save / load */

int tsr_adapters_save(const tsr_adapters *ad, const char *path, int nmeta, const char *const *keys,
                      const char *const *vals) {
    for (int i = 0; i < nmeta; i++)
        if (keys[i] && strcmp(keys[i], TSR_ADAPTERS_META_KEY) == 0)
            return tsr_error("%s: metadata key '%s' is reserved for the adapter description", path,
                             TSR_ADAPTERS_META_KEY);
    char *text = describe(ad, path);
    if (!text) return -1;
    tsr_st_writer *w = tsr_st_writer_new();
    int n = tsr_adapters_tensor_info(ad, ad->params, -1, NULL, 0, NULL, NULL, NULL);
    for (int i = 0; i < n; i++) {
        char name[128];
        int nd;
        int64_t shape[4];
        real *data;
        tsr_adapters_tensor_info(ad, ad->params, i, name, sizeof name, &nd, shape, &data);
        tsr_st_writer_add(w, name, TSR_DT_F32, nd, shape, data);
    }
    tsr_st_writer_meta(w, TSR_ADAPTERS_META_KEY, text);
    int has_format = 0;
    for (int i = 0; i < nmeta; i++) has_format |= keys[i] && strcmp(keys[i], "format") == 0;
    if (!has_format) tsr_st_writer_meta(w, "format", "pt");
    for (int i = 0; i < nmeta; i++) tsr_st_writer_meta(w, keys[i], vals[i]);
    int rc = tsr_st_writer_write(w, path);
    tsr_st_writer_free(w);
    free(text);
    return rc;
}

int tsr_adapters_load_config_ex(const char *path, tsr_adapter_config *c, int *depth, int *dim, int *mlp,
                                int *tokens, double *ln_eps) {
    if (tsr_peft_is_dir(path)) { /* a Hugging Face peft adapter directory (peft_io.h) */
        if (tokens) *tokens = -1;
        if (ln_eps) *ln_eps = -1;
        return tsr_peft_load_config(path, c, depth, dim, mlp, NULL);
    }
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) return -1;
    desc d;
    int rc = read_desc(&f, &d);
    tsr_st_close(&f);
    if (rc) return -1;
    *c = d.c;
    if (depth) *depth = d.depth;
    if (dim) *dim = d.dim;
    if (mlp) *mlp = d.mlp;
    if (tokens) *tokens = d.tokens;
    if (ln_eps) *ln_eps = d.ln_eps;
    return 0;
}

int tsr_adapters_load_config(const char *path, tsr_adapter_config *c, int *depth, int *dim, int *mlp) {
    return tsr_adapters_load_config_ex(path, c, depth, dim, mlp, NULL, NULL);
}

/* The file's description against ad: 0, or -1 naming the first field that differs. */
static int check_match(const char *path, const desc *d, const tsr_adapters *ad) {
    const tsr_adapter_config *f = &d->c, *a = &ad->cfg;
#define MISMATCH(key, fmt, fv, av)                                                                               \
    return tsr_error("%s: the adapters do not match the file: '%s' is " fmt " in the file, " fmt                  \
                     " in the adapters it is loaded into",                                                       \
                     path, key, fv, av)
#define CMP_INT(key, fv, av) \
    if ((fv) != (av)) MISMATCH(key, "%d", (int)(fv), (int)(av))
#define CMP_REAL(key, fv, av) \
    if ((fv) != (av)) MISMATCH(key, "%.17g", (double)(fv), (double)(av))
    CMP_INT("depth", d->depth, ad->depth);
    CMP_INT("dim", d->dim, ad->dim);
    CMP_INT("mlp", d->mlp, ad->mlp);
    CMP_INT("tokens", d->tokens, ad->tokens);
    CMP_REAL("ln_eps", d->ln_eps, ad->ln_eps);
    if (f->lora_sites != a->lora_sites) {
        char fs[64], as[64];
        json_t *x = site_list(f->lora_sites, lora_names, TSR_NLORA), *y = site_list(a->lora_sites, lora_names, TSR_NLORA);
        show(x, fs, sizeof fs);
        show(y, as, sizeof as);
        json_decref(x);
        json_decref(y);
        MISMATCH("lora_sites", "%s", fs, as);
    }
    if (f->bn_sites != a->bn_sites) {
        char fs[64], as[64];
        json_t *x = site_list(f->bn_sites, bn_names, TSR_NBN), *y = site_list(a->bn_sites, bn_names, TSR_NBN);
        show(x, fs, sizeof fs);
        show(y, as, sizeof as);
        json_decref(x);
        json_decref(y);
        MISMATCH("bn_sites", "%s", fs, as);
    }
    if (f->lora_sites) {
        CMP_INT("lora_rank", f->lora_rank, a->lora_rank);
        CMP_REAL("lora_alpha", f->lora_alpha, a->lora_alpha);
    }
    if (f->bn_sites) {
        CMP_INT("bn_dim", f->bn_dim, a->bn_dim);
        CMP_REAL("bn_scale", f->bn_scale, a->bn_scale);
        CMP_REAL("bn_dropout", f->bn_dropout, a->bn_dropout);
        if (f->bn_relu != a->bn_relu) MISMATCH("activation", "%s", f->bn_relu ? "relu" : "gelu", a->bn_relu ? "relu" : "gelu");
    }
    CMP_INT("skills", f->skills, a->skills);
    CMP_INT("heads", f->heads, a->heads);
    if (f->skills > 1) { /* routing: rows, noise and temperature matter only then */
        CMP_INT("n_tasks", f->n_tasks, a->n_tasks);
        CMP_INT("noise", f->noise != 0, a->noise != 0);
        CMP_REAL("tau", f->tau, a->tau);
    }
    int fl = f->layer_min < 0 ? 0 : f->layer_min, fh = f->layer_max < 0 ? d->depth - 1 : f->layer_max;
    int al = a->layer_min < 0 ? 0 : a->layer_min, ah = a->layer_max < 0 ? ad->depth - 1 : a->layer_max;
    CMP_INT("layer_min", fl, al);
    CMP_INT("layer_max", fh, ah);
#undef CMP_INT
#undef CMP_REAL
#undef MISMATCH
    return 0;
}

int tsr_adapters_load(tsr_adapters *ad, const char *path) {
    if (tsr_peft_is_dir(path)) return tsr_peft_load(ad, path); /* a peft adapter directory (peft_io.h) */
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) return -1;
    desc d;
    int rc = -1;
    real *tmp = NULL;
    char *used = tsr_calloc((size_t)f.n + 1, 1);
    if (read_desc(&f, &d) || check_match(path, &d, ad)) goto out;
    tmp = tsr_malloc(sizeof(real) * (ad->num_params ? ad->num_params : 1));
    memcpy(tmp, ad->params, sizeof(real) * ad->num_params);
    int n = tsr_adapters_tensor_info(ad, tmp, -1, NULL, 0, NULL, NULL, NULL);
    for (int i = 0; i < n; i++) {
        char name[128];
        int nd;
        int64_t shape[4];
        real *dst;
        tsr_adapters_tensor_info(ad, tmp, i, name, sizeof name, &nd, shape, &dst);
        const tsr_st_tensor *t = tsr_st_expect(&f, name, nd, shape);
        if (!t) goto out;
        if (t->dtype != TSR_DT_F32 && t->dtype != TSR_DT_F16 && t->dtype != TSR_DT_BF16 && t->dtype != TSR_DT_F64) {
            tsr_error("%s: tensor '%s' has dtype %s: expected F32, F16, BF16 or F64", path, name,
                      tsr_dtype_name(t->dtype));
            goto out;
        }
        if (tsr_st_read_f32(&f, t, dst, t->numel) != 0) goto out;
        for (int64_t j = 0; j < t->numel; j++)
            if (!isfinite(dst[j])) {
                tsr_error("%s: tensor '%s' holds a non-finite value at element %lld", path, name, (long long)j);
                goto out;
            }
        used[t - f.t] = 1;
    }
    for (int i = 0; i < f.n; i++)
        if (!used[i]) {
            tsr_error("%s: unexpected tensor '%s': the adapters described by the file have no such tensor", path,
                      f.t[i].name);
            goto out;
        }
    memcpy(ad->params, tmp, sizeof(real) * ad->num_params);
    rc = 0;
out:
    free(used);
    free(tmp);
    tsr_st_close(&f);
    return rc;
}
