/* predict.c: logits of a checkpoint (with adapters) on a file of images (predict.h). */
#define _POSIX_C_SOURCE 200809L
#include "train/predict.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/adapter_io.h"
#include "adapters/adapters.h"
#include "build_info.h"
#include "core/common.h"
#include "data/dataset_nc.h"
#include "dist/parallel.h"
#include "io/safetensors.h"
#include "io/tsr_config.h"
#include "model/checkpoint.h"
#include "model/vit.h"
#include "train/evaluate.h"

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

static int is_nc(const char *path) { return has_suffix(path, ".nc") || has_suffix(path, ".nc4"); }

typedef struct {
    tsr_config cfg;
    tsr_vit_config vc;
    tsr_vit m;
    tsr_adapters ad;
    float *images, *logits;
    int *labels, *task_ids;
    int64_t n;
    char *cfg_text;
} predict_run;

/* The model's sizes come from the checkpoint (and config.json for Hugging Face files); the head must be
 * in the file too: a backbone without a classifier has no logits to give (refused, naming it). */
static int resolve_model(predict_run *P, const tsr_predict_opts *o) {
    tsr_config *cfg = &P->cfg;
    const char *ckpt = o->checkpoint, *hf_cfg = o->hf_config;
    tsr_vit_config vc = {(int)cfg->model.image_size, (int)cfg->model.patch_size, (int)cfg->model.channels,
                         (int)cfg->model.dim, (int)cfg->model.depth, (int)cfg->model.heads,
                         (int)cfg->model.mlp_dim, (int)cfg->model.num_classes, cfg->model.ln_eps};
    tsr_naming naming;
    if (tsr_ckpt_detect(ckpt, &naming) != 0 || tsr_ckpt_infer_config(ckpt, &vc) != 0) return -1;
    char beside[4096];
    if (naming != TSR_NAMING_TIMM && !hf_cfg) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", ckpt);
        snprintf(beside, sizeof beside, "%s/config.json", dirname(tmp));
        if (access(beside, R_OK) == 0) hf_cfg = beside;
        else tsr_warn("no config.json beside %s: heads and layer_norm_eps come from the tessera config "
                      "(model.heads=%d, model.ln_eps=%g)", ckpt, vc.heads, vc.ln_eps);
    }
    if (hf_cfg && tsr_ckpt_read_hf_config(hf_cfg, &vc) != 0) return -1;
    if (tsr_vit_config_check(&vc) != 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", tsr_last_error());
        return tsr_error("%s: %s (HINT: set model.heads / model.ln_eps with --set or --config)", ckpt, msg);
    }
    cfg->model.image_size = vc.image_size;
    cfg->model.patch_size = vc.patch_size;
    cfg->model.channels = vc.channels;
    cfg->model.dim = vc.dim;
    cfg->model.depth = vc.depth;
    cfg->model.heads = vc.heads;
    cfg->model.mlp_dim = vc.mlp_dim;
    cfg->model.num_classes = vc.num_classes;
    cfg->model.ln_eps = vc.ln_eps;
    snprintf(cfg->model.naming, sizeof cfg->model.naming, "%s", naming == TSR_NAMING_TIMM ? "timm" : "hf");
    P->vc = vc;
    return 0;
}

/* A netCDF dataset: every example, normalised with data.mean / data.std, and its labels if any. */
static int read_nc(predict_run *P, const char *input) {
    int C = P->vc.channels, S = P->vc.image_size;
    tsr_nc_dataset d;
    if (tsr_nc_dataset_open(&d, input) != 0) return -1;
    int rc = -1;
    if (d.channels != C || d.height != S || d.width != S) {
        tsr_error("%s: images are %dx%dx%d (y, x, channel), the model expects %dx%dx%d", input, d.height, d.width,
                  d.channels, S, S, C);
        goto out;
    }
    if ((int)P->cfg.data.mean.n != C) {
        tsr_error("data.mean has %d entries, the model has %d channels", P->cfg.data.mean.n, C);
        goto out;
    }
    int64_t n = P->n = d.n_examples;
    float mean[64], sd[64];
    for (int c = 0; c < C; c++) {
        mean[c] = (float)P->cfg.data.mean.v[c];
        sd[c] = (float)P->cfg.data.std.v[c];
    }
    size_t img_bytes, lab_bytes, logit_bytes;
    if (tsr_size_bytes(sizeof(float), n, (size_t)C * S * S, &img_bytes) != 0 ||
        tsr_size_bytes(sizeof(int), n, 1, &lab_bytes) != 0 ||
        tsr_size_bytes(sizeof(float), n, (size_t)P->vc.num_classes, &logit_bytes) != 0) {
        tsr_error("%s: dimension 'example' has %lld examples of %dx%dx%d: their float32 pixels (and logits) "
                  "would take more than %zu bytes; refusing the file",
                  input, (long long)n, S, S, C, (size_t)SIZE_MAX);
        goto out;
    }
    P->images = tsr_malloc(n ? img_bytes : sizeof(float));
    P->labels = d.has_labels ? tsr_malloc(n ? lab_bytes : sizeof(int)) : NULL;
    rc = tsr_nc_dataset_read(&d, 0, n, mean, sd, P->images, P->labels);
out:
    tsr_nc_dataset_close(&d);
    return rc;
}

/* A safetensors file with `input` (B, C, S, S) float32, already normalised. */
static int read_st(predict_run *P, const char *input) {
    int C = P->vc.channels, S = P->vc.image_size;
    tsr_st_file f;
    if (tsr_st_open(&f, input) != 0) return -1;
    int rc = -1;
    const tsr_st_tensor *t = tsr_st_find(&f, "input");
    if (!t || t->ndim != 4 || t->shape[1] != C || t->shape[2] != S || t->shape[3] != S) {
        tsr_error("%s: expected a tensor 'input' of shape [B, %d, %d, %d] (float32, normalised)%s", input, C, S, S,
                  t ? "" : ": no tensor named 'input'");
        goto out;
    }
    size_t img_bytes, logit_bytes;
    if (tsr_size_bytes(sizeof(float), t->numel, 1, &img_bytes) != 0 ||
        tsr_size_bytes(sizeof(float), t->shape[0], (size_t)P->vc.num_classes, &logit_bytes) != 0) {
        tsr_error("%s: tensor 'input' of shape [%lld, %d, %d, %d]: its float32 values (and logits) would take "
                  "more than %zu bytes; refusing the file",
                  input, (long long)t->shape[0], C, S, S, (size_t)SIZE_MAX);
        goto out;
    }
    P->n = t->shape[0];
    P->images = tsr_malloc(t->numel ? img_bytes : sizeof(float));
    rc = tsr_st_read_f32(&f, t, P->images, t->numel);
out:
    tsr_st_close(&f);
    return rc;
}

/* The adapters the file describes, for this backbone, attached in evaluation mode on one task. */
static int attach_adapters(predict_run *P, const tsr_predict_opts *o, int batch) {
    const tsr_vit_config *vc = &P->vc;
    tsr_adapter_config ac;
    int adepth, adim, amlp;
    if (tsr_adapters_load_config(o->adapters, &ac, &adepth, &adim, &amlp) != 0) return -1;
    /* -1: not recorded (a peft adapter directory); its tensor shapes are checked against the model on load */
    if ((adepth >= 0 && adepth != vc->depth) || (adim >= 0 && adim != vc->dim) || (amlp >= 0 && amlp != vc->mlp_dim))
        return tsr_error("%s: adapters for a backbone of depth %d, dim %d, mlp %d; %s has depth %d, dim %d, mlp %d",
                         o->adapters, adepth, adim, amlp, o->checkpoint, vc->depth, vc->dim, vc->mlp_dim);
    int nt = ac.n_tasks > 0 ? ac.n_tasks : 1;
    if (o->task >= nt)
        return tsr_error("predict: --task %d is outside [0, %d): %s has %d task row(s)", o->task, nt, o->adapters, nt);
    if (tsr_adapters_create(&P->ad, &ac, vc->depth, vc->dim, vc->mlp_dim, P->m.tokens, batch) != 0)
        return tsr_error_context("%s", o->adapters);
    P->ad.ln_eps = vc->ln_eps;
    if (tsr_adapters_load(&P->ad, o->adapters) != 0) return -1;
    tsr_adapters_attach(&P->ad, &P->m);
    P->task_ids = tsr_malloc(sizeof(int) * (size_t)batch);
    for (int i = 0; i < batch; i++) P->task_ids[i] = o->task;
    tsr_info("predict: %d adapter modules from %s (%d skill(s), %d head(s)), task %d", P->ad.n_mod, o->adapters,
             ac.skills, ac.heads, o->task);
    return 0;
}

/* Logits of every image, batch by batch; the accuracy when the input has labels. */
static int forward_all(predict_run *P, int batch) {
    int K = P->vc.num_classes;
    size_t per = (size_t)P->vc.channels * P->vc.image_size * P->vc.image_size;
    size_t bytes;
    if (tsr_size_bytes(sizeof(float), P->n, (size_t)K, &bytes) != 0)
        return tsr_error("predict: %lld images x %d classes of logits do not fit in memory", (long long)P->n, K);
    P->logits = tsr_malloc(bytes);
    double t0 = tsr_time();
    for (int64_t s = 0; s < P->n; s += batch) {
        int b = (int)(P->n - s < batch ? P->n - s : batch);
        if (P->task_ids && tsr_adapters_begin(&P->ad, P->task_ids, b, 0, 0, 0, NULL) != 0) return -1;
        tsr_vit_forward(&P->m, P->images + (size_t)s * per, NULL, b);
        memcpy(P->logits + (size_t)s * K, P->m.acts.logits, sizeof(float) * (size_t)b * K);
    }
    double dt = tsr_time() - t0;
    tsr_info("predict: %lld images in %.2f s (%.1f images/s)", (long long)P->n, dt, (double)P->n / dt);
    if (!P->labels) return 0;
    int64_t correct = 0;
    for (int64_t i = 0; i < P->n; i++) correct += tsr_argmax(P->logits + (size_t)i * K, K) == P->labels[i];
    tsr_info("predict: accuracy %.4f (%lld / %lld)", (double)correct / (double)P->n, (long long)correct,
             (long long)P->n);
    return 0;
}

/* The logits (and labels) with provenance, as netCDF or safetensors, atomically. */
static int write_output(predict_run *P, const tsr_predict_opts *o) {
    int K = P->vc.num_classes;
    char task_s[16];
    snprintf(task_s, sizeof task_s, "%d", o->task);
    const char *keys[] = {"tessera_version", "git_commit", "checkpoint", "input", "config", "adapters", "task"};
    const char *vals[] = {TSR_VERSION, TSR_GIT_COMMIT, o->checkpoint, o->input, P->cfg_text, o->adapters, task_s};
    int nkeys = o->adapters ? 7 : 5, w;
    if (is_nc(o->output)) {
        w = tsr_nc_write_logits_ex(o->output, P->n, K, P->logits, P->labels, nkeys, keys, vals);
    } else {
        tsr_st_writer *sw = tsr_st_writer_new();
        int64_t shape[2] = {P->n, K};
        tsr_st_writer_add(sw, "logits", TSR_DT_F32, 2, shape, P->logits);
        for (int i = 0; i < nkeys; i++) tsr_st_writer_meta(sw, keys[i], vals[i]);
        w = tsr_st_writer_write(sw, o->output);
        tsr_st_writer_free(sw);
    }
    if (w == 0) tsr_info("predict: wrote %s (logits %lld x %d)", o->output, (long long)P->n, K);
    return w;
}

static int predict(predict_run *P, const tsr_predict_opts *o) {
    if (tsr_config_load(&P->cfg, o->config, o->nset, o->sets) != 0) return -1;
    if (o->runtime_setup && o->runtime_setup((int)P->cfg.run.threads) != 0) return -1;
    if (resolve_model(P, o) != 0) return -1;
    P->cfg_text = tsr_config_dump(&P->cfg);
    tsr_info("resolved configuration:\n%s", P->cfg_text);
    if ((is_nc(o->input) ? read_nc(P, o->input) : read_st(P, o->input)) != 0) return -1;
    if (P->n == 0) return tsr_error("%s: no images", o->input);
    int batch = o->batch > P->n ? (int)P->n : o->batch;
    if (tsr_vit_create(&P->m, &P->vc, batch) != 0 || tsr_ckpt_load_vit(&P->m, o->checkpoint, 0) != 0) return -1;
    if (o->adapters && attach_adapters(P, o, batch) != 0) return -1;
    if (forward_all(P, batch) != 0) return -1;
    return tsr_comm_world()->rank == 0 ? write_output(P, o) : 0;
}

int tsr_predict_run(const tsr_predict_opts *o) {
    predict_run *P = tsr_calloc(1, sizeof *P);
    int rc = predict(P, o) == 0 ? 0 : 1;
    if (rc) tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
    free(P->images);
    free(P->labels);
    free(P->logits);
    free(P->cfg_text);
    free(P->task_ids);
    tsr_adapters_destroy(&P->ad); /* NULL-safe: also after a failed create */
    if (P->m.params_mem) tsr_vit_destroy(&P->m);
    free(P);
    return rc;
}
