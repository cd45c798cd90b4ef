/* checkpoint.c: ViT weights <-> safetensors in timm and Hugging Face naming; the fp32 block weights of a
 * model in bf16 read again from their source (tsr_param_reader). */
#define _DEFAULT_SOURCE /* realpath */
#include "model/checkpoint.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "io/safetensors.h"

/* One checkpoint tensor: its name in the file, its shape, and where its values go in the model (rows
 * `rows` x `cols` copied into a (.., ld) matrix starting at dst; a plain copy when ld == cols). */
typedef struct {
    char name[160];
    int ndim;
    int64_t shape[4];
    real *dst;
} ck_entry;

static int build_entries(const tsr_vit *m, const tsr_vit_params *p, tsr_naming nm, ck_entry **out) {
    int n = tsr_vit_tensor_info(m, p, -1, NULL, 0, NULL, NULL, NULL);
    ck_entry *e = tsr_calloc((size_t)n + 4 * (size_t)m->cfg.depth, sizeof *e);
    int k = 0;
    const char *pre = TSR_NAMING_PREFIX(nm);
    int64_t D = m->cfg.dim;
    for (int i = 0; i < n; i++) {
        char tn[128];
        int nd;
        int64_t shape[4];
        real *data;
        tsr_vit_tensor_info(m, p, i, tn, sizeof tn, &nd, shape, &data);
        ck_entry *c = &e[k++];
        c->ndim = nd;
        memcpy(c->shape, shape, sizeof shape);
        c->dst = data;
        if (nm == TSR_NAMING_TIMM) {
            snprintf(c->name, sizeof c->name, "%s", tn);
            continue;
        }
        int l;
        char rest[96];
        if (sscanf(tn, "blocks.%d.%95s", &l, rest) == 2) {
            static const char *map[][2] = {
                {"norm1.weight", "layernorm_before.weight"}, {"norm1.bias", "layernorm_before.bias"},
                {"attn.proj.weight", "attention.output.dense.weight"},
                {"attn.proj.bias", "attention.output.dense.bias"},
                {"norm2.weight", "layernorm_after.weight"}, {"norm2.bias", "layernorm_after.bias"},
                {"mlp.fc1.weight", "intermediate.dense.weight"}, {"mlp.fc1.bias", "intermediate.dense.bias"},
                {"mlp.fc2.weight", "output.dense.weight"}, {"mlp.fc2.bias", "output.dense.bias"}};
            static const char *map5[][2] = {
                {"norm1.weight", "layernorm_before.weight"}, {"norm1.bias", "layernorm_before.bias"},
                {"attn.proj.weight", "attention.o_proj.weight"}, {"attn.proj.bias", "attention.o_proj.bias"},
                {"norm2.weight", "layernorm_after.weight"}, {"norm2.bias", "layernorm_after.bias"},
                {"mlp.fc1.weight", "mlp.fc1.weight"}, {"mlp.fc1.bias", "mlp.fc1.bias"},
                {"mlp.fc2.weight", "mlp.fc2.weight"}, {"mlp.fc2.bias", "mlp.fc2.bias"}};
            int v5 = TSR_NAMING_IS_HF5(nm);
            if (strncmp(rest, "attn.qkv.", 9) == 0) {
                /* Hugging Face stores q, k, v as three (D, D) linears: rows 0..D-1, D..2D-1, 2D..3D-1 */
                int is_w = strcmp(rest, "attn.qkv.weight") == 0;
                static const char *part[3] = {"query", "key", "value"}, *part5[3] = {"q_proj", "k_proj", "v_proj"};
                k--;
                for (int j = 0; j < 3; j++) {
                    ck_entry *q = &e[k++];
                    if (v5)
                        snprintf(q->name, sizeof q->name, "%slayers.%d.attention.%s.%s", pre, l, part5[j],
                                 is_w ? "weight" : "bias");
                    else
                        snprintf(q->name, sizeof q->name, "%sencoder.layer.%d.attention.attention.%s.%s", pre, l,
                                 part[j], is_w ? "weight" : "bias");
                    q->ndim = is_w ? 2 : 1;
                    q->shape[0] = D;
                    q->shape[1] = is_w ? D : 0;
                    q->dst = data + (size_t)j * D * (is_w ? D : 1);
                }
                continue;
            }
            for (size_t j = 0; j < sizeof map / sizeof map[0]; j++)
                if (strcmp(rest, map[j][0]) == 0) {
                    if (v5) snprintf(c->name, sizeof c->name, "%slayers.%d.%s", pre, l, map5[j][1]);
                    else snprintf(c->name, sizeof c->name, "%sencoder.layer.%d.%s", pre, l, map[j][1]);
                }
            continue;
        }
        static const char *top[][2] = {
            {"patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"},
            {"patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"},
            {"cls_token", "embeddings.cls_token"}, {"pos_embed", "embeddings.position_embeddings"},
            {"norm.weight", "layernorm.weight"}, {"norm.bias", "layernorm.bias"}};
        for (size_t j = 0; j < sizeof top / sizeof top[0]; j++)
            if (strcmp(tn, top[j][0]) == 0) snprintf(c->name, sizeof c->name, "%s%s", pre, top[j][1]);
        if (strcmp(tn, "head.weight") == 0) snprintf(c->name, sizeof c->name, "classifier.weight");
        if (strcmp(tn, "head.bias") == 0) snprintf(c->name, sizeof c->name, "classifier.bias");
    }
    *out = e;
    return k;
}

static const char *naming_text(tsr_naming nm) {
    return nm == TSR_NAMING_TIMM ? "timm" : TSR_NAMING_IS_HF5(nm) ? "Hugging Face (transformers 5)" : "Hugging Face";
}

static int naming_of(const tsr_st_file *f, tsr_naming *naming) {
    if (tsr_st_find(f, "patch_embed.proj.weight")) *naming = TSR_NAMING_TIMM;
    else if (tsr_st_find(f, "vit.embeddings.patch_embeddings.projection.weight"))
        *naming = tsr_st_find(f, "vit.layers.0.attention.q_proj.weight") ? TSR_NAMING_HF5 : TSR_NAMING_HF;
    else if (tsr_st_find(f, "embeddings.patch_embeddings.projection.weight"))
        *naming = tsr_st_find(f, "layers.0.attention.q_proj.weight") ? TSR_NAMING_HF5_NOPREFIX : TSR_NAMING_HF_NOPREFIX;
    else
        return tsr_error("%s: not a ViT checkpoint: found neither 'patch_embed.proj.weight' (timm naming) nor "
                         "'[vit.]embeddings.patch_embeddings.projection.weight' (Hugging Face naming)", f->path);
    return 0;
}

int tsr_ckpt_detect(const char *path, tsr_naming *naming) {
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) return -1;
    int rc = naming_of(&f, naming);
    tsr_st_close(&f);
    return rc;
}

static int json_int(json_t *root, const char *path, const char *key, int *dst, int lo, int hi) {
    json_t *v = json_object_get(root, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return tsr_error("%s: key '%s': expected an integer in [%d, %d]", path, key, lo, hi);
    *dst = (int)json_integer_value(v);
    return 0;
}

int tsr_ckpt_read_hf_config(const char *path, tsr_vit_config *c) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return tsr_error("%s:%d:%d: not valid JSON: %s", path, jerr.line, jerr.column, jerr.text);
    int rc = -1;
    if (!json_is_object(root)) {
        tsr_error("%s: expected a JSON object (a Hugging Face config.json)", path);
        goto out;
    }
    json_t *mt = json_object_get(root, "model_type");
    if (mt && (!json_is_string(mt) || strcmp(json_string_value(mt), "vit") != 0)) {
        tsr_error("%s: key 'model_type': expected \"vit\"", path);
        goto out;
    }
    json_t *act = json_object_get(root, "hidden_act");
    if (act && (!json_is_string(act) || strcmp(json_string_value(act), "gelu") != 0)) {
        tsr_error("%s: key 'hidden_act': only \"gelu\" (exact erf GELU) is supported, got %s", path,
                  json_is_string(act) ? json_string_value(act) : "a non-string");
        goto out;
    }
    json_t *qb = json_object_get(root, "qkv_bias");
    if (qb && !json_is_true(qb)) {
        tsr_error("%s: key 'qkv_bias': only true is supported", path);
        goto out;
    }
    if (json_int(root, path, "hidden_size", &c->dim, 1, 1 << 20) ||
        json_int(root, path, "num_hidden_layers", &c->depth, 1, 4096) ||
        json_int(root, path, "num_attention_heads", &c->heads, 1, 4096) ||
        json_int(root, path, "intermediate_size", &c->mlp_dim, 1, 1 << 22) ||
        json_int(root, path, "image_size", &c->image_size, 1, 1 << 16) ||
        json_int(root, path, "patch_size", &c->patch_size, 1, 1 << 16) ||
        json_int(root, path, "num_channels", &c->channels, 1, 64) ||
        json_int(root, path, "num_labels", &c->num_classes, 1, 1 << 24))
        goto out;
    json_t *id2 = json_object_get(root, "id2label");
    if (id2 && json_is_object(id2) && json_object_size(id2) > 0 && !json_object_get(root, "num_labels"))
        c->num_classes = (int)json_object_size(id2);
    json_t *eps = json_object_get(root, "layer_norm_eps");
    if (eps) {
        if (!json_is_number(eps) || json_number_value(eps) < 0 || json_number_value(eps) >= 1) {
            tsr_error("%s: key 'layer_norm_eps': expected a number in [0, 1)", path);
            goto out;
        }
        c->ln_eps = json_number_value(eps);
    }
    rc = tsr_vit_config_check(c);
    if (rc) tsr_error_context("%s", path);
out:
    json_decref(root);
    return rc;
}

int tsr_ckpt_infer_config(const char *path, tsr_vit_config *c) {
    tsr_naming nm = TSR_NAMING_TIMM;
    if (tsr_ckpt_detect(path, &nm) != 0) return -1;
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) return -1;
    const char *pre = TSR_NAMING_PREFIX(nm);
    char name[160];
    int rc = -1;
    snprintf(name, sizeof name, nm == TSR_NAMING_TIMM ? "patch_embed.proj.weight"
                                                      : "%sembeddings.patch_embeddings.projection.weight", pre);
    const tsr_st_tensor *pw = tsr_st_find(&f, name);
    snprintf(name, sizeof name, nm == TSR_NAMING_TIMM ? "pos_embed" : "%sembeddings.position_embeddings", pre);
    const tsr_st_tensor *pos = tsr_st_find(&f, name);
    if (!pw || pw->ndim != 4 || pw->shape[2] != pw->shape[3]) {
        tsr_error("%s: tensor '%s' must have shape [dim, channels, patch, patch]", path,
                  pw ? pw->name : "patch embedding weight");
        goto out;
    }
    if (!pos || pos->ndim != 3) {
        tsr_error("%s: tensor '%s' missing or not of shape [1, tokens, dim]", path, name);
        goto out;
    }
    c->dim = (int)pw->shape[0];
    c->channels = (int)pw->shape[1];
    c->patch_size = (int)pw->shape[2];
    int64_t np = pos->shape[1] - 1, g = (int64_t)llround(sqrt((double)np));
    if (g * g != np) {
        tsr_error("%s: tensor '%s' has %lld tokens: expected 1 + a square number of patches", path, name,
                  (long long)pos->shape[1]);
        goto out;
    }
    c->image_size = (int)(g * c->patch_size);
    int depth = 0;
    for (;; depth++) {
        if (nm == TSR_NAMING_TIMM) snprintf(name, sizeof name, "blocks.%d.mlp.fc1.weight", depth);
        else if (TSR_NAMING_IS_HF5(nm)) snprintf(name, sizeof name, "%slayers.%d.mlp.fc1.weight", pre, depth);
        else snprintf(name, sizeof name, "%sencoder.layer.%d.intermediate.dense.weight", pre, depth);
        const tsr_st_tensor *t = tsr_st_find(&f, name);
        if (!t) break;
        if (t->ndim == 2) c->mlp_dim = (int)t->shape[0];
    }
    if (depth == 0) {
        tsr_error("%s: no transformer blocks found (expected '%s')", path, name);
        goto out;
    }
    c->depth = depth;
    const tsr_st_tensor *hd = tsr_st_find(&f, nm == TSR_NAMING_TIMM ? "head.weight" : "classifier.weight");
    if (hd && hd->ndim == 2) c->num_classes = (int)hd->shape[0];
    rc = 0;
out:
    tsr_st_close(&f);
    return rc;
}

/* The block weight slice (tsr_vit_slice) that ends at element `end` of params_mem, or -1. */
static int slice_ending_at(const tsr_vit *m, size_t end) {
    for (int s = 0; s < 4 * m->cfg.depth; s++) {
        size_t off, n;
        tsr_vit_slice(m, s, &off, &n);
        if (off + n == end) return s;
    }
    return -1;
}

int tsr_ckpt_load_vit(tsr_vit *m, const char *path, int allow_missing_head) {
    tsr_naming nm = TSR_NAMING_TIMM;
    tsr_st_file f;
    if (tsr_st_open(&f, path) != 0) return -1;
    if (naming_of(&f, &nm) != 0) {
        tsr_st_close(&f);
        return -1;
    }
    ck_entry *e;
    int n = build_entries(m, &m->params, nm, &e), rc = -1;
    char *used = tsr_calloc((size_t)f.n + 1, 1);
    /* the model in bf16 (tsr_vit_set_precision before the load): each block weight slice is converted and
     * its fp32 pages given back as soon as its last tensor is read, and each tensor's file pages once read */
    int bf16 = m->w16_mem != NULL;
    m->w32_src = TSR_W32_NONE; /* until the whole file is read */
    for (int i = 0; i < n; i++) {
        int is_head = strstr(e[i].name, "head.") == e[i].name || strstr(e[i].name, "classifier.") == e[i].name;
        if (is_head && allow_missing_head == 2) continue; /* a new head: the file's is ignored */
        const tsr_st_tensor *t = tsr_st_find(&f, e[i].name);
        if (!t) {
            if (is_head && allow_missing_head) continue;
            tsr_error("%s: tensor '%s' is missing (%s naming, depth %d)", path, e[i].name,
                      naming_text(nm), m->cfg.depth);
            goto out;
        }
        if (t->dtype != TSR_DT_F32 && t->dtype != TSR_DT_F16 && t->dtype != TSR_DT_BF16 && t->dtype != TSR_DT_F64) {
            tsr_error("%s: tensor '%s' has dtype %s: expected F32, F16, BF16 or F64", path, e[i].name,
                      tsr_dtype_name(t->dtype));
            goto out;
        }
        if (!tsr_st_expect(&f, e[i].name, e[i].ndim, e[i].shape)) goto out;
        int64_t cnt = 1;
        for (int d = 0; d < e[i].ndim; d++) cnt *= e[i].shape[d];
#ifdef TSR_F64
        if (tsr_st_read_f64(&f, t, e[i].dst, cnt) != 0) goto out;
#else
        if (tsr_st_read_f32(&f, t, e[i].dst, cnt) != 0) goto out;
#endif
        for (int64_t j = 0; j < cnt; j++)
            if (!isfinite(e[i].dst[j])) {
                tsr_error("%s: tensor '%s' holds a non-finite value at element %lld", path, e[i].name, (long long)j);
                goto out;
            }
        used[t - f.t] = 1;
        tsr_st_drop(&f, t);
        int s = bf16 ? slice_ending_at(m, (size_t)(e[i].dst - m->params_mem) + (size_t)cnt) : -1;
        if (s >= 0) tsr_vit_slice_commit(m, s);
    }
    for (int i = 0; i < f.n; i++) {
        if (used[i]) continue;
        const char *nmi = f.t[i].name;
        if (strstr(nmi, "pooler.") == nmi || strstr(nmi, "vit.pooler.") == nmi) continue; /* unused by ViT */
        if (allow_missing_head == 2 && (strstr(nmi, "head.") == nmi || strstr(nmi, "classifier.") == nmi)) continue;
        tsr_error("%s: unexpected tensor '%s': it belongs to no part of a ViT with depth %d in %s naming", path,
                  nmi, m->cfg.depth, naming_text(nm));
        goto out;
    }
    /* where the fp32 block weights can be read again (an absolute path: the working directory may change) */
    free(m->w32_path);
    m->w32_path = realpath(path, NULL);
    if (!m->w32_path) {
        m->w32_path = tsr_malloc(strlen(path) + 1);
        strcpy(m->w32_path, path);
    }
    m->w32_src = TSR_W32_FILE;
    rc = 0;
out:
    free(used);
    free(e);
    tsr_st_close(&f);
    return rc;
}

/* ---------------------------------------------------------------- the fp32 parameters, wherever they are */

struct tsr_param_reader {
    const tsr_vit *m;
    tsr_st_file f; /* the source file (w32_path), opened at the first slice read from it */
    int opened;
    ck_entry *e;   /* its tensors, in its naming */
    int ne;
    real *buf;     /* one slice, for reads of part of it */
    int cached;    /* the slice in buf, -1: none */
};

tsr_param_reader *tsr_param_reader_new(const tsr_vit *m) {
    tsr_param_reader *r = tsr_calloc(1, sizeof *r);
    r->m = m;
    r->cached = -1;
    return r;
}

void tsr_param_reader_free(tsr_param_reader *r) {
    if (!r) return;
    tsr_st_close(&r->f);
    free(r->e);
    free(r->buf);
    free(r);
}

/* Slice s's fp32 values from the model's source into dst (n values), checked against the hash recorded when
 * its bf16 copy was made. 0 / -1 (tsr_error naming the tensor). */
static int restore_slice(tsr_param_reader *r, int s, real *dst) {
    const tsr_vit *m = r->m;
    char nm[64];
    tsr_vit_slice_name(m, s, nm, sizeof nm);
    size_t off, n;
    tsr_vit_slice(m, s, &off, &n);
    if (m->w32_src == TSR_W32_SEED) {
        tsr_vit_slice_from_seed(m, s, dst);
        return tsr_vit_slice_check(m, s, dst, "the seed of tsr_vit_init_random");
    }
    if (m->w32_src != TSR_W32_FILE || !m->w32_path)
        return tsr_error("model: the fp32 values of %s are not in memory (model.precision bf16 keeps the frozen block "
                         "weights in bf16 only) and cannot be restored: the model's weights came neither from a "
                         "checkpoint file (tsr_ckpt_load_vit) nor from tsr_vit_init_random", nm);
    if (!r->opened) {
        tsr_naming fnm = TSR_NAMING_TIMM;
        if (tsr_st_open(&r->f, m->w32_path) != 0 || naming_of(&r->f, &fnm) != 0) {
            tsr_st_close(&r->f);
            return tsr_error_context("model: restoring the fp32 values of %s (not in memory: model.precision bf16) "
                                     "from the checkpoint the model was loaded from", nm);
        }
        r->ne = build_entries(m, &m->params, fnm, &r->e);
        r->opened = 1;
    }
    size_t got = 0;
    for (int i = 0; i < r->ne; i++) {
        const ck_entry *e = &r->e[i];
        size_t eo = (size_t)(e->dst - m->params_mem);
        if (eo < off || eo >= off + n) continue;
        const tsr_st_tensor *t = tsr_st_expect(&r->f, e->name, e->ndim, e->shape);
        size_t cnt = (size_t)(t ? t->numel : 0);
        if (!t || tsr_st_read_f32(&r->f, t, dst + (eo - off), (int64_t)cnt) != 0)
            return tsr_error_context("model: restoring the fp32 values of %s (not in memory: model.precision bf16)", nm);
        tsr_st_drop(&r->f, t);
        got += cnt;
    }
    if (got != n)
        return tsr_error("model: restoring the fp32 values of %s: %s holds %zu of its %zu values", nm, m->w32_path, got, n);
    return tsr_vit_slice_check(m, s, dst, m->w32_path);
}

int tsr_param_reader_get(tsr_param_reader *r, size_t off, size_t n, real *dst) {
    const tsr_vit *m = r->m;
    if (off > m->num_params || n > m->num_params - off)
        return tsr_error("model: parameters [%zu, %zu) are outside the model's %zu", off, off + n, m->num_params);
    while (n > 0) {
        int s = tsr_vit_released(m, off, n);
        if (s < 0) {
            memcpy(dst, m->params_mem + off, sizeof(real) * n);
            return 0;
        }
        size_t so, sn;
        tsr_vit_slice(m, s, &so, &sn);
        if (so > off) { /* in memory up to the slice */
            size_t g = so - off;
            memcpy(dst, m->params_mem + off, sizeof(real) * g);
            dst += g, off += g, n -= g;
        }
        size_t a = off - so, k = sn - a < n ? sn - a : n;
        if (a == 0 && k == sn) { /* the whole slice: straight into dst */
            if (restore_slice(r, s, dst) != 0) return -1;
        } else {
            if (r->cached != s) {
                if (!r->buf) {
                    size_t most = 0;
                    for (int q = 0; q < 4; q++) {
                        size_t qo, qn;
                        tsr_vit_slice(m, q * m->cfg.depth, &qo, &qn);
                        if (qn > most) most = qn;
                    }
                    r->buf = tsr_malloc(sizeof(real) * most);
                }
                r->cached = -1;
                if (restore_slice(r, s, r->buf) != 0) return -1;
                r->cached = s;
            }
            memcpy(dst, r->buf + a, sizeof(real) * k);
        }
        dst += k, off += k, n -= k;
    }
    return 0;
}

int tsr_ckpt_restore_fp32(tsr_vit *m) {
    if (!m->w16_mem) return 0;
    tsr_param_reader *r = tsr_param_reader_new(m);
    int S = 4 * m->cfg.depth, s, rc = 0;
    for (s = 0; s < S && rc == 0; s++) {
        size_t off, n;
        tsr_vit_slice(m, s, &off, &n);
        rc = tsr_param_reader_get(r, off, n, m->params_mem + off);
    }
    if (rc != 0) /* back to what it was: every slice released (s - 1 failed, possibly half written) */
        for (int q = 0; q < s; q++) {
            size_t off, n;
            tsr_vit_slice(m, q, &off, &n);
            tsr_lazy_zero(m->params_mem + off, sizeof(real) * n);
        }
    tsr_param_reader_free(r);
    return rc;
}

/* A tensor of tsr_ckpt_save_vit written through a tsr_param_reader (its values are not all in memory). */
typedef struct {
    tsr_param_reader *r;
    size_t off; /* in params_mem */
} fill_ctx;

static int fill_params(void *ctx, void *dst, uint64_t offset, size_t n) {
    const fill_ctx *c = ctx;
    return tsr_param_reader_get(c->r, c->off + (size_t)(offset / sizeof(real)), n / sizeof(real), dst);
}

int tsr_ckpt_save_vit(const tsr_vit *m, const char *path, tsr_naming naming, int nmeta,
                      const char *const *keys, const char *const *vals) {
    ck_entry *e;
    int n = build_entries(m, &m->params, naming, &e);
    tsr_st_writer *w = tsr_st_writer_new();
    /* model.precision bf16: the block weights are read again from their source, a piece at a time */
    tsr_param_reader *r = tsr_vit_released(m, 0, m->num_params) >= 0 ? tsr_param_reader_new(m) : NULL;
    fill_ctx *fc = tsr_calloc((size_t)n, sizeof *fc);
    tsr_dtype dt = sizeof(real) == 8 ? TSR_DT_F64 : TSR_DT_F32;
    for (int i = 0; i < n; i++) {
        size_t off = (size_t)(e[i].dst - m->params_mem), cnt = 1;
        for (int d = 0; d < e[i].ndim; d++) cnt *= (size_t)e[i].shape[d];
        if (r && tsr_vit_released(m, off, cnt) >= 0) {
            fc[i] = (fill_ctx){r, off};
            tsr_st_writer_add_fill(w, e[i].name, dt, e[i].ndim, e[i].shape, fill_params, &fc[i]);
        } else
            tsr_st_writer_add(w, e[i].name, dt, e[i].ndim, e[i].shape, e[i].dst);
    }
    tsr_st_writer_meta(w, "format", "pt");
    for (int i = 0; i < nmeta; i++) tsr_st_writer_meta(w, keys[i], vals[i]);
    int rc = tsr_st_writer_write(w, path);
    tsr_st_writer_free(w);
    tsr_param_reader_free(r);
    free(fc);
    free(e);
    return rc;
}
