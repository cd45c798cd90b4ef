/* peft_io.c: adapters <-> Hugging Face peft adapter directories (LORA and POLY). See peft_io.h and
 * docs/ADAPTERS.md for the layouts; everything here was written from peft's source as a statement of facts
 * (names, shapes, scales), not copied. */
#define _DEFAULT_SOURCE
#include "adapters/peft_io.h"

#include <jansson.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/adapter_io.h"
#include "core/atomic.h"
#include "core/common.h"
#include "io/safetensors.h"

_Static_assert(sizeof(real) == sizeof(float), "peft files are read and written by the float build");

#define PEFT_PREFIX "base_model.model."

static const char *const site_names[TSR_NLORA] = {"q", "k", "v", "proj", "fc1", "fc2"};

/* Module paths of the six sites, as (before the layer index, after it), per naming family. */
enum { FAM_HF4, FAM_HF5, FAM_TIMM, NFAM };
static const char *const fam_names[NFAM] = {"Hugging Face (transformers 4)", "Hugging Face (transformers 5)", "timm"};
static const char *const site_path[NFAM][TSR_NLORA][2] = {
    {{"encoder.layer.", ".attention.attention.query"},
     {"encoder.layer.", ".attention.attention.key"},
     {"encoder.layer.", ".attention.attention.value"},
     {"encoder.layer.", ".attention.output.dense"},
     {"encoder.layer.", ".intermediate.dense"},
     {"encoder.layer.", ".output.dense"}},
    {{"layers.", ".attention.q_proj"},
     {"layers.", ".attention.k_proj"},
     {"layers.", ".attention.v_proj"},
     {"layers.", ".attention.o_proj"},
     {"layers.", ".mlp.fc1"},
     {"layers.", ".mlp.fc2"}},
    {{NULL, NULL}, {NULL, NULL}, {NULL, NULL}, {"blocks.", ".attn.proj"}, {"blocks.", ".mlp.fc1"}, {"blocks.", ".mlp.fc2"}}};

static int family_of(tsr_naming nm) {
    return nm == TSR_NAMING_TIMM ? FAM_TIMM : TSR_NAMING_IS_HF5(nm) ? FAM_HF5 : FAM_HF4;
}

static tsr_naming naming_from(int fam, int prefixed) {
    if (fam == FAM_TIMM) return TSR_NAMING_TIMM;
    if (fam == FAM_HF5) return prefixed ? TSR_NAMING_HF5 : TSR_NAMING_HF5_NOPREFIX;
    return prefixed ? TSR_NAMING_HF : TSR_NAMING_HF_NOPREFIX;
}

static void module_path(char *buf, size_t n, tsr_naming nm, int site, int layer) {
    int fam = family_of(nm);
    snprintf(buf, n, "%s%s%d%s", TSR_NAMING_PREFIX(nm), site_path[fam][site][0], layer, site_path[fam][site][1]);
}

int tsr_peft_is_dir(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ------------------------------------------------------------------ export */

int tsr_peft_export(const tsr_adapters *ad, tsr_naming naming, const char *dir, const char *base_model) {
    const tsr_adapter_config *c = &ad->cfg;
    int fam = family_of(naming), poly = c->skills > 1;
    if (c->bn_sites)
        return tsr_error("export-peft: bottleneck adapters (adapter.kind bottleneck) have no counterpart in peft's "
                         "LORA or POLY: only LoRA skills export");
    if (!c->lora_sites || ad->n_mod == 0) return tsr_error("export-peft: the adapter set has no LoRA module");
    if (fam == FAM_TIMM && (c->lora_sites & ((1 << TSR_LORA_Q) | (1 << TSR_LORA_K) | (1 << TSR_LORA_V))))
        return tsr_error("export-peft: a timm backbone computes q, k and v with one fused Linear (blocks.N.attn.qkv); "
                         "peft adapts that module as one layer (a rank-r update of the whole (3D, D) weight, and "
                         "for Poly/MHR splits over its 3D outputs), which is not tessera's three separate adapters on "
                         "its slices: no exact mapping. Export from a backbone in Hugging Face naming (separate "
                         "query, key, value linears), or adapt only proj, fc1, fc2");
    if (poly && c->lora_alpha != 1.0)
        return tsr_error("export-peft: peft's Poly scales the update by 1/r; this adapter set scales by lora_alpha / r "
                         "with lora_alpha = %g (only lora_alpha = 1 maps exactly)", c->lora_alpha);
    /* LoRA: transposed copies (A^T, B^T) live in one buffer until the write */
    size_t need = 0;
    for (int k = 0; k < ad->n_mod; k++) need += poly ? 0 : ad->mod[k].nA + ad->mod[k].nB;
    float *buf = tsr_malloc(sizeof(float) * (need ? need : 1)), *bp = buf;
    tsr_st_writer *w = tsr_st_writer_new();
    tsr_st_writer_meta(w, "format", "pt"); /* what peft's save_pretrained writes, and nothing else */
    tsr_st_writer_no_checksums(w);
    json_t *targets = json_array();
    for (int k = 0; k < ad->n_mod; k++) {
        const tsr_rlp *md = &ad->mod[k];
        char mp[160], name[256];
        module_path(mp, sizeof mp, naming, md->lora_site, md->layer);
        json_array_append_new(targets, json_string(mp));
        const float *A = ad->params + md->oA, *B = ad->params + md->oB;
        int h = md->h, S = md->S, r = md->r, din = md->din, dout = md->dout, dq = din / h, oq = dout / h;
        if (poly) {
            int64_t sa[4] = {h, S, dq, r}, sb[4] = {h, S, r, oq}, sz[2] = {c->n_tasks, (int64_t)h * S};
            snprintf(name, sizeof name, PEFT_PREFIX "%s.poly_lora_A", mp);
            tsr_st_writer_add(w, name, TSR_DT_F32, 4, sa, A);
            snprintf(name, sizeof name, PEFT_PREFIX "%s.poly_lora_B", mp);
            tsr_st_writer_add(w, name, TSR_DT_F32, 4, sb, B);
            snprintf(name, sizeof name, PEFT_PREFIX "%s.poly_router.module_logits", mp);
            tsr_st_writer_add(w, name, TSR_DT_F32, 2, sz, ad->params + md->oZ);
            continue;
        }
        /* S = 1: A (h, 1, din/h, r) is the row-concatenation = (din, r); lora_A.weight is its transpose (r, din).
         * B (h, 1, r, dout/h) column-concatenates into (r, dout); lora_B.weight[q*oq + j][i] = B[q][i][j]. */
        float *At = bp, *Bt = bp + md->nA;
        bp += md->nA + md->nB;
        for (int i = 0; i < din; i++)
            for (int j = 0; j < r; j++) At[(size_t)j * din + i] = A[(size_t)i * r + j];
        for (int q = 0; q < h; q++)
            for (int i = 0; i < r; i++)
                for (int j = 0; j < oq; j++) Bt[((size_t)q * oq + j) * r + i] = B[((size_t)q * r + i) * oq + j];
        int64_t sa[2] = {r, din}, sb[2] = {dout, r};
        snprintf(name, sizeof name, PEFT_PREFIX "%s.lora_A.weight", mp);
        tsr_st_writer_add(w, name, TSR_DT_F32, 2, sa, At);
        snprintf(name, sizeof name, PEFT_PREFIX "%s.lora_B.weight", mp);
        tsr_st_writer_add(w, name, TSR_DT_F32, 2, sb, Bt);
    }
    /* adapter_config.json: the keys peft's config dataclass defines for the type, with the values that state
     * this adapter set (json.dumps(indent=2, sort_keys=True), as peft writes it) */
    json_t *o = json_object();
    json_object_set_new(o, "auto_mapping", json_null());
    json_object_set_new(o, "base_model_name_or_path", base_model ? json_string(base_model) : json_null());
    json_object_set_new(o, "exclude_modules", json_null());
    json_object_set_new(o, "inference_mode", json_true());
    json_object_set_new(o, "modules_to_save", json_null());
    json_object_set_new(o, "r", json_integer(c->lora_rank));
    json_object_set_new(o, "revision", json_null());
    json_object_set_new(o, "target_modules", targets);
    json_object_set_new(o, "task_type", json_null());
    if (poly) {
        json_object_set_new(o, "peft_type", json_string("POLY"));
        json_object_set_new(o, "poly_type", json_string("poly"));
        json_object_set_new(o, "init_weights", json_true());
        json_object_set_new(o, "n_tasks", json_integer(c->n_tasks));
        json_object_set_new(o, "n_skills", json_integer(c->skills));
        json_object_set_new(o, "n_splits", json_integer(c->heads));
    } else {
        json_object_set_new(o, "peft_type", json_string("LORA"));
        double a = c->lora_alpha;
        json_object_set_new(o, "lora_alpha", a == floor(a) && fabs(a) < 1e15 ? json_integer((json_int_t)a) : json_real(a));
        json_object_set_new(o, "lora_dropout", json_real(0.0));
        json_object_set_new(o, "bias", json_string("none"));
        json_object_set_new(o, "fan_in_fan_out", json_false());
        json_object_set_new(o, "use_rslora", json_false());
        json_object_set_new(o, "use_dora", json_false());
        json_object_set_new(o, "lora_bias", json_false());
        json_object_set_new(o, "init_lora_weights", json_true());
        json_object_set_new(o, "layers_to_transform", json_null());
        json_object_set_new(o, "layers_pattern", json_null());
        json_object_set_new(o, "rank_pattern", json_object());
        json_object_set_new(o, "alpha_pattern", json_object());
    }
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    json_decref(o);
    int rc = -1;
    char path[4200];
    if (!text) {
        tsr_error("%s: cannot format %s", dir, TSR_PEFT_CONFIG);
        goto out;
    }
    if (tsr_mkdirs(dir) != 0) goto out;
    snprintf(path, sizeof path, "%s/%s", dir, TSR_PEFT_WEIGHTS);
    if (tsr_st_writer_write(w, path) != 0) goto out;
    snprintf(path, sizeof path, "%s/%s", dir, TSR_PEFT_CONFIG);
    if (tsr_write_file_atomic(path, text, strlen(text)) != 0) goto out;
    rc = 0;
out:
    free(text);
    tsr_st_writer_free(w);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ import */

enum { T_A, T_B, T_Z, NT };

typedef struct {
    tsr_st_file f;
    json_t *root;
    char cfg_path[4200], st_path[4200];
    int poly, r, n_tasks, n_skills, n_splits;
    double alpha;
    tsr_naming naming;
    int lmin, lmax, sites, dim, mlp;
    int ntensor;
    int *t_layer, *t_site, *t_kind; /* per file tensor */
} peft_dir;

static void peft_dir_free(peft_dir *p) {
    tsr_st_close(&p->f);
    json_decref(p->root);
    free(p->t_layer);
    free(p->t_site);
    free(p->t_kind);
    memset(p, 0, sizeof *p);
}

static void show(const json_t *v, char *buf, size_t n) {
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    snprintf(buf, n, "%s", s ? s : "nothing");
    if (strlen(buf) == n - 1 && n > 4) strcpy(buf + n - 4, "...");
    free(s);
}

static int cfg_int(peft_dir *p, const char *key, int lo, int *out) {
    json_t *v = json_object_get(p->root, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > (1 << 24)) {
        char b[80];
        show(v, b, sizeof b);
        return tsr_error("%s: key '%s': expected an integer >= %d, got %s", p->cfg_path, key, lo, b);
    }
    *out = (int)json_integer_value(v);
    return 0;
}

/* A value that asks for nothing: null, false, 0, "", [] or {}. */
static int neutral(const json_t *v) {
    return !v || json_is_null(v) || json_is_false(v) || (json_is_number(v) && json_number_value(v) == 0) ||
           (json_is_string(v) && json_string_length(v) == 0) || (json_is_array(v) && json_array_size(v) == 0) ||
           (json_is_object(v) && json_object_size(v) == 0);
}

static int in_list(const char *key, const char *const *list) {
    for (int i = 0; list[i]; i++)
        if (strcmp(key, list[i]) == 0) return 1;
    return 0;
}

/* The configuration: type, sizes, and a refusal for every key that asks for something tessera does not do. */
static int parse_config(peft_dir *p) {
    json_error_t jerr;
    p->root = json_load_file(p->cfg_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!p->root) return tsr_error("%s:%d:%d: not valid JSON: %s", p->cfg_path, jerr.line, jerr.column, jerr.text);
    if (!json_is_object(p->root)) return tsr_error("%s: expected a JSON object (a peft adapter_config.json)", p->cfg_path);
    json_t *t = json_object_get(p->root, "peft_type");
    if (!json_is_string(t)) return tsr_error("%s: key 'peft_type': expected a string (\"LORA\" or \"POLY\")", p->cfg_path);
    const char *ty = json_string_value(t);
    if (strcmp(ty, "LORA") != 0 && strcmp(ty, "POLY") != 0)
        return tsr_error("%s: key 'peft_type' is \"%s\": tessera imports only peft's LORA and POLY adapters (its routed "
                         "low-rank pairs); other peft methods compute something else", p->cfg_path, ty);
    p->poly = strcmp(ty, "POLY") == 0;
    if (cfg_int(p, "r", 1, &p->r)) return -1;
    /* keys that only describe (read by nobody here) */
    static const char *const info[] = {"base_model_name_or_path", "revision", "task_type", "auto_mapping", "peft_version",
                                       "inference_mode", "peft_type", "r", "target_modules", NULL};
    static const char *const lora_ok[] = {"lora_alpha", "lora_dropout", "init_lora_weights", "megatron_core",
                                          "qalora_group_size", "runtime_config", "layers_to_transform", "layers_pattern",
                                          "bias", "use_rslora", NULL};
    static const char *const poly_ok[] = {"n_tasks", "n_skills", "n_splits", "poly_type", "init_weights", NULL};
    const char *key;
    json_t *v;
    json_object_foreach(p->root, key, v) {
        if (in_list(key, info) || in_list(key, p->poly ? poly_ok : lora_ok) || neutral(v)) continue;
        char b[120];
        show(v, b, sizeof b);
        if (strcmp(key, "modules_to_save") == 0)
            return tsr_error("%s: key 'modules_to_save' is %s: tessera imports the adapters only, not whole modules "
                             "(a classifier head) saved beside them", p->cfg_path, b);
        return tsr_error("%s: key '%s' is %s: not something tessera's %s can represent exactly (it reads %s keys %s)",
                         p->cfg_path, key, b, p->poly ? "Poly / MHR" : "LoRA", p->poly ? "POLY" : "LORA",
                         p->poly ? "r, n_tasks, n_skills, n_splits, poly_type, target_modules"
                                 : "r, lora_alpha, lora_dropout (0), bias (\"none\"), use_rslora (false), target_modules");
    }
    if (p->poly) {
        if (cfg_int(p, "n_tasks", 1, &p->n_tasks) || cfg_int(p, "n_skills", 1, &p->n_skills) ||
            cfg_int(p, "n_splits", 1, &p->n_splits))
            return -1;
        v = json_object_get(p->root, "poly_type");
        if (v && (!json_is_string(v) || strcmp(json_string_value(v), "poly") != 0))
            return tsr_error("%s: key 'poly_type': expected \"poly\" (peft's only router)", p->cfg_path);
        if (p->n_skills < 2)
            return tsr_error("%s: key 'n_skills' is 1: peft still routes it (w = sigmoid(z) / (sigmoid(z) + 1e-12)), "
                             "tessera's S = 1 has no routing (w = 1); save a single skill as LORA", p->cfg_path);
        p->alpha = 1.0; /* peft's Poly: / r */
        return 0;
    }
    v = json_object_get(p->root, "lora_alpha");
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return tsr_error("%s: key 'lora_alpha': expected a number", p->cfg_path);
    p->alpha = json_number_value(v);
    v = json_object_get(p->root, "lora_dropout");
    if (v && (!json_is_number(v) || json_number_value(v) != 0))
        return tsr_error("%s: key 'lora_dropout' is %g: tessera's LoRA has no dropout (adapter.dropout applies to "
                         "bottleneck adapters only), so training from this adapter would not be what peft trains; "
                         "save it with lora_dropout 0", p->cfg_path, json_is_number(v) ? json_number_value(v) : NAN);
    v = json_object_get(p->root, "bias");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "none") != 0))
        return tsr_error("%s: key 'bias': expected \"none\" (tessera does not train the backbone's biases with a LoRA)",
                         p->cfg_path);
    v = json_object_get(p->root, "use_rslora");
    if (v && !json_is_false(v))
        return tsr_error("%s: key 'use_rslora': rsLoRA scales by lora_alpha / sqrt(r); tessera's scale is alpha / r "
                         "(expected false)", p->cfg_path);
    v = json_object_get(p->root, "init_lora_weights");
    if (v && !json_is_boolean(v) &&
        !(json_is_string(v) && (strcmp(json_string_value(v), "gaussian") == 0)))
        return tsr_error("%s: key 'init_lora_weights' is \"%s\": this initialisation changes the base model's weights "
                         "(or needs its own data), which tessera does not reproduce (accepted: true, false, \"gaussian\")",
                         p->cfg_path, json_is_string(v) ? json_string_value(v) : "?");
    return 0;
}

/* Is module path `mod` of the form pre<digits>post? */
static int match_site(const char *mod, const char *pre, const char *post, int *layer) {
    size_t n = strlen(pre);
    if (strncmp(mod, pre, n) != 0) return 0;
    const char *s = mod + n;
    if (*s < '0' || *s > '9') return 0;
    long l = 0;
    while (*s >= '0' && *s <= '9' && l < 1000000) l = l * 10 + (*s++ - '0');
    if (strcmp(s, post) != 0) return 0;
    *layer = (int)l;
    return 1;
}

/* peft's matching of a module path against target_modules: a string is a regular expression that must match
 * the whole path (re.fullmatch; read here as POSIX extended, with \d, \w and (?: translated); a list matches
 * an entry equal to the path or a suffix after a dot. 1 / 0, -1 on a bad pattern. */
static int target_matches(const peft_dir *p, const char *mod) {
    json_t *tm = json_object_get(p->root, "target_modules");
    if (json_is_array(tm)) {
        size_t i;
        json_t *e;
        json_array_foreach(tm, i, e) {
            if (!json_is_string(e)) continue;
            const char *t = json_string_value(e);
            size_t lm = strlen(mod), lt = strlen(t);
            if (strcmp(mod, t) == 0 || (lm > lt && strcmp(mod + lm - lt, t) == 0 && mod[lm - lt - 1] == '.')) return 1;
        }
        return 0;
    }
    if (!json_is_string(tm)) return 0;
    const char *t = json_string_value(tm);
    size_t n = strlen(t);
    char *re = tsr_malloc(4 * n + 16), *o = re;
    *o++ = '^';
    *o++ = '(';
    for (size_t i = 0; i < n; i++) {
        if (t[i] == '\\' && i + 1 < n && t[i + 1] == 'd') o += sprintf(o, "[0-9]"), i++;
        else if (t[i] == '\\' && i + 1 < n && t[i + 1] == 'w') o += sprintf(o, "[A-Za-z0-9_]"), i++;
        else if (t[i] == '(' && i + 2 < n && t[i + 1] == '?' && t[i + 2] == ':') *o++ = '(', i += 2;
        else *o++ = t[i];
    }
    *o++ = ')';
    *o++ = '$';
    *o = 0;
    regex_t rx;
    int rc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB);
    free(re);
    if (rc != 0) return -1;
    rc = regexec(&rx, mod, 0, NULL, 0) == 0;
    regfree(&rx);
    return rc;
}

/* Open and check a peft directory completely: configuration, every tensor's module and kind, the sites and
 * layer range, the sizes the shapes imply. */
static int open_dir(peft_dir *p, const char *dir) {
    memset(p, 0, sizeof *p);
    snprintf(p->cfg_path, sizeof p->cfg_path, "%s/%s", dir, TSR_PEFT_CONFIG);
    snprintf(p->st_path, sizeof p->st_path, "%s/%s", dir, TSR_PEFT_WEIGHTS);
    struct stat st;
    if (stat(p->cfg_path, &st) != 0)
        return tsr_error("%s: not a peft adapter directory: %s is missing", dir, TSR_PEFT_CONFIG);
    if (stat(p->st_path, &st) != 0)
        return tsr_error("%s: not a peft adapter directory that tessera reads: %s is missing (adapter_model.bin, "
                         "pickled torch, is not read)", dir, TSR_PEFT_WEIGHTS);
    if (parse_config(p) != 0 || tsr_st_open(&p->f, p->st_path) != 0) return -1;
    if (!json_is_array(json_object_get(p->root, "target_modules")) && !json_is_string(json_object_get(p->root, "target_modules")))
        return tsr_error("%s: key 'target_modules': expected a list of module names or a regular expression", p->cfg_path);
    int n = p->f.n;
    if (n == 0) return tsr_error("%s: no tensors", p->st_path);
    p->t_layer = tsr_calloc((size_t)n, sizeof(int));
    p->t_site = tsr_calloc((size_t)n, sizeof(int));
    p->t_kind = tsr_calloc((size_t)n, sizeof(int));
    static const char *const lora_suf[NT] = {".lora_A.weight", ".lora_B.weight", NULL};
    static const char *const poly_suf[NT] = {".poly_lora_A", ".poly_lora_B", ".poly_router.module_logits"};
    const char *const *suf = p->poly ? poly_suf : lora_suf;
    int fam0 = -1, pre0 = -1, lmin = 1 << 30, lmax = -1;
    p->dim = p->mlp = -1;
    for (int i = 0; i < n; i++) {
        const tsr_st_tensor *t = &p->f.t[i];
        const char *nm = t->name;
        if (strncmp(nm, PEFT_PREFIX, strlen(PEFT_PREFIX)) != 0)
            return tsr_error("%s: tensor '%s': expected a name starting with '" PEFT_PREFIX "' (peft's key of a "
                             "module of the base model)", p->st_path, nm);
        char mod[256];
        int kind = -1;
        for (int k = 0; k < NT && kind < 0; k++) {
            if (!suf[k]) continue;
            size_t ln = strlen(nm), ls = strlen(suf[k]);
            if (ln > ls && strcmp(nm + ln - ls, suf[k]) == 0) {
                kind = k;
                snprintf(mod, sizeof mod, "%.*s", (int)(ln - ls - strlen(PEFT_PREFIX)), nm + strlen(PEFT_PREFIX));
            }
        }
        if (kind < 0)
            return tsr_error("%s: tensor '%s': a %s adapter holds only <module>%s, <module>%s%s%s per adapted linear "
                             "(a bias, a magnitude vector or another adapter's tensors cannot be represented)",
                             p->st_path, nm, p->poly ? "POLY" : "LORA", suf[0], suf[1], p->poly ? " and <module>" : "",
                             p->poly ? suf[2] : "");
        int fam = -1, pre = 0, site = -1, layer = -1;
        for (int f = 0; f < NFAM && site < 0; f++)
            for (int px = 0; px < (f == FAM_TIMM ? 1 : 2) && site < 0; px++) {
                const char *m = mod + (px ? 4 : 0);
                if (px && strncmp(mod, "vit.", 4) != 0) continue;
                for (int s = 0; s < TSR_NLORA && site < 0; s++)
                    if (site_path[f][s][0] && match_site(m, site_path[f][s][0], site_path[f][s][1], &layer)) {
                        fam = f;
                        pre = px;
                        site = s;
                    }
            }
        if (site < 0) {
            int l;
            if (match_site(mod, "blocks.", ".attn.qkv", &l))
                return tsr_error("%s: tensor '%s': peft adapted timm's fused qkv Linear as one module (one update of "
                                 "the whole (3D, D) weight); tessera adapts q, k and v separately: no exact mapping",
                                 p->st_path, nm);
            return tsr_error("%s: tensor '%s': module '%s' is not one of tessera's adapter sites (q, k, v, proj, fc1, "
                             "fc2 of a ViT block, in timm, Hugging Face or transformers-5 naming)", p->st_path, nm, mod);
        }
        if (fam0 < 0) fam0 = fam, pre0 = pre;
        if (fam != fam0 || pre != pre0)
            return tsr_error("%s: tensor '%s' is in %s%s naming, earlier tensors in %s%s naming: one backbone has one "
                             "naming", p->st_path, nm, fam_names[fam], pre ? " (vit.)" : "", fam_names[fam0],
                             pre0 ? " (vit.)" : "");
        int tm = target_matches(p, mod);
        if (tm < 0)
            return tsr_error("%s: key 'target_modules': the regular expression cannot be read as a POSIX extended "
                             "one", p->cfg_path);
        if (!tm)
            return tsr_error("%s: tensor '%s': its module '%s' is not matched by target_modules in %s (peft would not "
                             "load it)", p->st_path, nm, mod, p->cfg_path);
        p->t_layer[i] = layer;
        p->t_site[i] = site;
        p->t_kind[i] = kind;
        if (layer < lmin) lmin = layer;
        if (layer > lmax) lmax = layer;
        p->sites |= 1 << site;
    }
    p->naming = naming_from(fam0, pre0);
    p->lmin = lmin;
    p->lmax = lmax;
    /* every site on every block of [lmin, lmax], each with all its tensors, once */
    int nl = lmax - lmin + 1, nk = p->poly ? 3 : 2;
    int *seen = tsr_calloc((size_t)nl * TSR_NLORA * NT, sizeof(int));
    for (int i = 0; i < n; i++) seen[((p->t_layer[i] - lmin) * TSR_NLORA + p->t_site[i]) * NT + p->t_kind[i]]++;
    int rc = 0;
    for (int l = 0; l < nl && !rc; l++)
        for (int s = 0; s < TSR_NLORA && !rc; s++) {
            if (!(p->sites & (1 << s))) continue;
            for (int k = 0; k < nk && !rc; k++)
                if (seen[(l * TSR_NLORA + s) * NT + k] != 1) {
                    char mp[160];
                    module_path(mp, sizeof mp, p->naming, s, lmin + l);
                    rc = tsr_error("%s: module '%s' has no '%s' tensor: tessera puts the same sites (here %s%s) on "
                                   "every block of one contiguous range (here blocks %d..%d), each with all its "
                                   "tensors", p->st_path, mp, suf[k] + 1, site_names[s],
                                   p->sites & ~(1 << s) ? " and others" : "", lmin, lmax);
                }
        }
    free(seen);
    if (rc) return rc;
    /* sizes from the shapes: dim (q, k, v, proj, fc1 inputs; fc2 output) and mlp (fc1 output, fc2 input) */
    for (int i = 0; i < n; i++) {
        const tsr_st_tensor *t = &p->f.t[i];
        int s = p->t_site[i], kind = p->t_kind[i];
        if (kind == T_Z) continue;
        int64_t in, out;
        if (p->poly) {
            if (t->ndim != 4) goto shape;
            int64_t h = t->shape[0];
            in = kind == T_A ? h * t->shape[2] : -1;
            out = kind == T_B ? h * t->shape[3] : -1;
        } else {
            if (t->ndim != 2) goto shape;
            in = kind == T_A ? t->shape[1] : -1;
            out = kind == T_B ? t->shape[0] : -1;
        }
        int64_t d = s == TSR_LORA_FC2 ? out : in, m = s == TSR_LORA_FC1 ? out : s == TSR_LORA_FC2 ? in : -1;
        if (s != TSR_LORA_FC1 && s != TSR_LORA_FC2) d = in >= 0 ? in : out;
        if (d > 0) {
            if (p->dim >= 0 && p->dim != d)
                return tsr_error("%s: tensor '%s' implies model width %lld, other tensors %d", p->st_path, t->name,
                                 (long long)d, p->dim);
            p->dim = (int)d;
        }
        if (m > 0) {
            if (p->mlp >= 0 && p->mlp != m)
                return tsr_error("%s: tensor '%s' implies MLP width %lld, other tensors %d", p->st_path, t->name,
                                 (long long)m, p->mlp);
            p->mlp = (int)m;
        }
        continue;
    shape:
        return tsr_error("%s: tensor '%s' has %d dimensions: expected %d", p->st_path, t->name, t->ndim, p->poly ? 4 : 2);
    }
    return 0;
}

static void config_of(const peft_dir *p, tsr_adapter_config *c) {
    memset(c, 0, sizeof *c);
    c->lora_sites = p->sites;
    c->lora_rank = p->r;
    c->lora_alpha = p->alpha;
    c->skills = p->poly ? p->n_skills : 1;
    c->heads = p->poly ? p->n_splits : 1;
    c->n_tasks = p->poly ? p->n_tasks : 1;
    c->noise = p->poly; /* peft's router samples a relaxed Bernoulli (temperature 1) whenever it trains */
    c->tau = 1.0;
    c->layer_min = p->lmin;
    c->layer_max = p->lmax;
    c->lora_init_peft = 1;
}

int tsr_peft_load_config(const char *dir, tsr_adapter_config *c, int *depth, int *dim, int *mlp, tsr_naming *naming) {
    peft_dir p;
    int rc = open_dir(&p, dir);
    if (rc == 0) {
        config_of(&p, c);
        if (depth) *depth = -1;
        if (dim) *dim = p.dim;
        if (mlp) *mlp = p.mlp;
        if (naming) *naming = p.naming;
    }
    peft_dir_free(&p);
    return rc;
}

int tsr_peft_load(tsr_adapters *ad, const char *dir) {
    peft_dir p;
    if (open_dir(&p, dir) != 0) {
        peft_dir_free(&p);
        return -1;
    }
    tsr_adapter_config fc;
    config_of(&p, &fc);
    const tsr_adapter_config *a = &ad->cfg;
    int rc = -1;
    real *tmp = NULL, *rd = NULL;
    int al = a->layer_min < 0 ? 0 : a->layer_min, ah = a->layer_max < 0 ? ad->depth - 1 : a->layer_max;
    if (a->bn_sites || fc.lora_sites != a->lora_sites || fc.lora_rank != a->lora_rank || fc.skills != a->skills ||
        fc.heads != a->heads || (fc.skills > 1 && fc.n_tasks != a->n_tasks) ||
        fc.lora_alpha / fc.lora_rank != a->lora_alpha / a->lora_rank || fc.layer_min != al || fc.layer_max != ah) {
        tsr_error("%s: the adapters it is loaded into are not the ones it describes (sites, rank, scale, skills, "
                  "heads, routing rows or blocks differ)", dir);
        goto out;
    }
    tmp = tsr_malloc(sizeof(real) * (ad->num_params ? ad->num_params : 1));
    memcpy(tmp, ad->params, sizeof(real) * ad->num_params);
    size_t rmax = 0;
    for (int k = 0; k < ad->n_mod; k++) {
        size_t m = ad->mod[k].nA > ad->mod[k].nB ? ad->mod[k].nA : ad->mod[k].nB;
        if (ad->mod[k].nZ > m) m = ad->mod[k].nZ;
        if (m > rmax) rmax = m;
    }
    rd = tsr_malloc(sizeof(real) * (rmax ? rmax : 1));
    for (int k = 0; k < ad->n_mod; k++) {
        const tsr_rlp *md = &ad->mod[k];
        if (md->lora_site < 0) continue;
        char mp[160], name[256];
        module_path(mp, sizeof mp, p.naming, md->lora_site, md->layer);
        int h = md->h, S = md->S, r = md->r, din = md->din, dout = md->dout, dq = din / h, oq = dout / h;
        int nk = p.poly ? 3 : 2;
        for (int kind = 0; kind < nk; kind++) {
            int64_t shape[4];
            int nd;
            real *dst = tmp + (kind == T_A ? md->oA : kind == T_B ? md->oB : md->oZ);
            if (p.poly) {
                static const char *const sfx[3] = {"poly_lora_A", "poly_lora_B", "poly_router.module_logits"};
                snprintf(name, sizeof name, PEFT_PREFIX "%s.%s", mp, sfx[kind]);
                if (kind == T_A) nd = 4, shape[0] = h, shape[1] = S, shape[2] = dq, shape[3] = r;
                else if (kind == T_B) nd = 4, shape[0] = h, shape[1] = S, shape[2] = r, shape[3] = oq;
                else nd = 2, shape[0] = a->n_tasks, shape[1] = (int64_t)h * S;
            } else {
                snprintf(name, sizeof name, PEFT_PREFIX "%s.%s", mp, kind == T_A ? "lora_A.weight" : "lora_B.weight");
                nd = 2;
                shape[0] = kind == T_A ? r : dout;
                shape[1] = kind == T_A ? din : r;
            }
            const tsr_st_tensor *t = tsr_st_expect(&p.f, name, nd, shape);
            if (!t) goto out;
            if (t->dtype != TSR_DT_F32 && t->dtype != TSR_DT_F16 && t->dtype != TSR_DT_BF16 && t->dtype != TSR_DT_F64) {
                tsr_error("%s: tensor '%s' has dtype %s: expected F32, F16, BF16 or F64", p.st_path, name,
                          tsr_dtype_name(t->dtype));
                goto out;
            }
            real *to = p.poly ? dst : rd;
            if (tsr_st_read_f32(&p.f, t, to, t->numel) != 0) goto out;
            for (int64_t j = 0; j < t->numel; j++)
                if (!isfinite(to[j])) {
                    tsr_error("%s: tensor '%s' holds a non-finite value at element %lld", p.st_path, name, (long long)j);
                    goto out;
                }
            if (p.poly) continue;
            if (kind == T_A) /* (r, din) -> (din, r) */
                for (int i = 0; i < din; i++)
                    for (int j = 0; j < r; j++) dst[(size_t)i * r + j] = rd[(size_t)j * din + i];
            else /* (dout, r) -> h blocks (r, dout/h) */
                for (int q = 0; q < h; q++)
                    for (int i = 0; i < r; i++)
                        for (int j = 0; j < oq; j++) dst[((size_t)q * r + i) * oq + j] = rd[((size_t)q * oq + j) * r + i];
        }
    }
    /* every file tensor was matched to a module of ad by open_dir (sites and blocks equal ad's), so none is left */
    memcpy(ad->params, tmp, sizeof(real) * ad->num_params);
    rc = 0;
out:
    free(tmp);
    free(rd);
    peft_dir_free(&p);
    return rc;
}

int tsr_peft_export_file(const char *adapters_path, const char *checkpoint, const char *out_dir, const char *base_model) {
    tsr_naming nm;
    tsr_vit_config vc;
    memset(&vc, 0, sizeof vc);
    if (tsr_ckpt_detect(checkpoint, &nm) != 0 || tsr_ckpt_infer_config(checkpoint, &vc) != 0) return -1;
    tsr_adapter_config c;
    int depth, dim, mlp, tokens;
    double ln_eps;
    if (tsr_adapters_load_config_ex(adapters_path, &c, &depth, &dim, &mlp, &tokens, &ln_eps) != 0) return -1;
    if ((depth >= 0 && depth != vc.depth) || (dim >= 0 && dim != vc.dim) || (mlp >= 0 && mlp != vc.mlp_dim))
        return tsr_error("export-peft: %s holds adapters for a backbone of depth %d, dim %d, mlp %d; %s has depth %d, "
                         "dim %d, mlp %d", adapters_path, depth, dim, mlp, checkpoint, vc.depth, vc.dim, vc.mlp_dim);
    int g = vc.patch_size > 0 ? vc.image_size / vc.patch_size : 0;
    tsr_adapters ad;
    memset(&ad, 0, sizeof ad);
    if (tsr_adapters_create(&ad, &c, vc.depth, vc.dim, vc.mlp_dim, tokens > 0 ? tokens : g * g + 1, 1) != 0)
        return tsr_error_context("export-peft: %s", adapters_path);
    ad.ln_eps = ln_eps >= 0 ? ln_eps : 0;
    int rc = tsr_adapters_load(&ad, adapters_path);
    if (rc == 0) rc = tsr_peft_export(&ad, nm, out_dir, base_model);
    if (rc == 0)
        tsr_info("export-peft: %d modules (%s, %d skill(s), %d split(s), rank %d) of %s -> %s (module paths in %s "
                 "naming, from %s)", ad.n_mod, c.skills > 1 ? "POLY" : "LORA", c.skills, c.heads, c.lora_rank,
                 adapters_path, out_dir, nm == TSR_NAMING_TIMM ? "timm" : TSR_NAMING_IS_HF5(nm) ? "transformers 5" : "Hugging Face",
                 checkpoint);
    tsr_adapters_destroy(&ad);
    return rc;
}
