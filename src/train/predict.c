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

int tsr_predict_run(const tsr_predict_opts *o) {
    const char *ckpt = o->checkpoint, *input = o->input, *output = o->output, *cfg_path = o->config;
    const char *hf_cfg = o->hf_config, *adapters = o->adapters;
    int batch = o->batch, task = o->task, nset = o->nset;
    char **sets = o->sets;
    int rc = 1;
    tsr_config cfg;
    float *images = NULL, *logits = NULL;
    int *labels = NULL, *task_ids = NULL;
    char *cfg_text = NULL;
    tsr_vit m;
    memset(&m, 0, sizeof m);
    tsr_adapters ad;
    memset(&ad, 0, sizeof ad);
    if (tsr_config_load(&cfg, cfg_path, nset, sets) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    if (o->runtime_setup && o->runtime_setup((int)cfg.run.threads) != 0) goto out;

    /* the model's sizes come from the checkpoint (and config.json for Hugging Face files); the head must
     * be in the file too: a backbone without a classifier has no logits to give (refused, naming it) */
    tsr_vit_config vc = {(int)cfg.model.image_size, (int)cfg.model.patch_size, (int)cfg.model.channels,
                         (int)cfg.model.dim, (int)cfg.model.depth, (int)cfg.model.heads,
                         (int)cfg.model.mlp_dim, (int)cfg.model.num_classes, cfg.model.ln_eps};
    tsr_naming naming;
    if (tsr_ckpt_detect(ckpt, &naming) != 0 || tsr_ckpt_infer_config(ckpt, &vc) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    char beside[4096];
    if (naming != TSR_NAMING_TIMM && !hf_cfg) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", ckpt);
        snprintf(beside, sizeof beside, "%s/config.json", dirname(tmp));
        if (access(beside, R_OK) == 0) hf_cfg = beside;
        else tsr_warn("no config.json beside %s: heads and layer_norm_eps come from the tessera config "
                      "(model.heads=%d, model.ln_eps=%g)", ckpt, vc.heads, vc.ln_eps);
    }
    if (hf_cfg && tsr_ckpt_read_hf_config(hf_cfg, &vc) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    if (tsr_vit_config_check(&vc) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s: %s (HINT: set model.heads / model.ln_eps with --set or --config)", ckpt,
                tsr_last_error());
        goto out;
    }
    cfg.model.image_size = vc.image_size; cfg.model.patch_size = vc.patch_size; cfg.model.channels = vc.channels;
    cfg.model.dim = vc.dim; cfg.model.depth = vc.depth; cfg.model.heads = vc.heads; cfg.model.mlp_dim = vc.mlp_dim;
    cfg.model.num_classes = vc.num_classes; cfg.model.ln_eps = vc.ln_eps;
    snprintf(cfg.model.naming, sizeof cfg.model.naming, "%s", naming == TSR_NAMING_TIMM ? "timm" : "hf");
    cfg_text = tsr_config_dump(&cfg);
    tsr_info("resolved configuration:\n%s", cfg_text);

    /* input */
    int64_t n = 0;
    int C = vc.channels, S = vc.image_size;
    if (has_suffix(input, ".nc") || has_suffix(input, ".nc4")) {
        tsr_nc_dataset d;
        if (tsr_nc_dataset_open(&d, input) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        if (d.channels != C || d.height != S || d.width != S) {
            tsr_log(TSR_LOG_ERROR, "%s: images are %dx%dx%d (y, x, channel), the model expects %dx%dx%d", input,
                    d.height, d.width, d.channels, S, S, C);
            tsr_nc_dataset_close(&d);
            goto out;
        }
        if ((int)cfg.data.mean.n != C) {
            tsr_log(TSR_LOG_ERROR, "data.mean has %d entries, the model has %d channels", cfg.data.mean.n, C);
            tsr_nc_dataset_close(&d);
            goto out;
        }
        n = d.n_examples;
        float mean[64], sd[64];
        for (int c = 0; c < C; c++) {
            mean[c] = (float)cfg.data.mean.v[c];
            sd[c] = (float)cfg.data.std.v[c];
        }
        images = tsr_malloc(sizeof(float) * (size_t)(n ? n : 1) * C * S * S);
        labels = d.has_labels ? tsr_malloc(sizeof(int) * (size_t)(n ? n : 1)) : NULL;
        int r = tsr_nc_dataset_read(&d, 0, n, mean, sd, images, labels);
        tsr_nc_dataset_close(&d);
        if (r != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
    } else {
        tsr_st_file f;
        if (tsr_st_open(&f, input) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        const tsr_st_tensor *t = tsr_st_find(&f, "input");
        if (!t || t->ndim != 4 || t->shape[1] != C || t->shape[2] != S || t->shape[3] != S) {
            tsr_log(TSR_LOG_ERROR, "%s: expected a tensor 'input' of shape [B, %d, %d, %d] (float32, normalised)%s",
                    input, C, S, S, t ? "" : ": no tensor named 'input'");
            tsr_st_close(&f);
            goto out;
        }
        n = t->shape[0];
        images = tsr_malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
        int r = tsr_st_read_f32(&f, t, images, t->numel);
        tsr_st_close(&f);
        if (r != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
    }
    if (n == 0) {
        tsr_log(TSR_LOG_ERROR, "%s: no images", input);
        goto out;
    }

    if (batch > n) batch = (int)n;
    if (tsr_vit_create(&m, &vc, batch) != 0 || tsr_ckpt_load_vit(&m, ckpt, 0) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    if (adapters) {
        /* the adapters the file describes, for this backbone */
        tsr_adapter_config ac;
        int adepth, adim, amlp;
        if (tsr_adapters_load_config(adapters, &ac, &adepth, &adim, &amlp) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        if (adepth != vc.depth || adim != vc.dim || amlp != vc.mlp_dim) {
            tsr_log(TSR_LOG_ERROR, "%s: adapters for a backbone of depth %d, dim %d, mlp %d; %s has depth %d, dim %d, "
                    "mlp %d", adapters, adepth, adim, amlp, ckpt, vc.depth, vc.dim, vc.mlp_dim);
            goto out;
        }
        int nt = ac.n_tasks > 0 ? ac.n_tasks : 1;
        if (task >= nt) {
            tsr_log(TSR_LOG_ERROR, "predict: --task %d is outside [0, %d): %s has %d task row(s)", task, nt, adapters, nt);
            goto out;
        }
        if (tsr_adapters_create(&ad, &ac, vc.depth, vc.dim, vc.mlp_dim, m.tokens, batch) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s: %s", adapters, tsr_last_error());
            goto out;
        }
        ad.ln_eps = vc.ln_eps;
        if (tsr_adapters_load(&ad, adapters) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        tsr_adapters_attach(&ad, &m);
        task_ids = tsr_malloc(sizeof(int) * (size_t)batch);
        for (int i = 0; i < batch; i++) task_ids[i] = task;
        tsr_info("predict: %d adapter modules from %s (%d skill(s), %d head(s)), task %d", ad.n_mod, adapters,
                 ac.skills, ac.heads, task);
    }
    int K = vc.num_classes;
    logits = tsr_malloc(sizeof(float) * (size_t)n * K);
    double t0 = tsr_time();
    int64_t correct = 0;
    for (int64_t s = 0; s < n; s += batch) {
        int b = (int)(n - s < batch ? n - s : batch);
        if (task_ids && tsr_adapters_begin(&ad, task_ids, b, 0, 0, 0, NULL) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        tsr_vit_forward(&m, images + (size_t)s * C * S * S, NULL, b);
        memcpy(logits + (size_t)s * K, m.acts.logits, sizeof(float) * (size_t)b * K);
    }
    double dt = tsr_time() - t0;
    for (int64_t i = 0; labels && i < n; i++) correct += tsr_argmax(logits + (size_t)i * K, K) == labels[i];
    tsr_info("predict: %lld images in %.2f s (%.1f images/s)%s", (long long)n, dt, (double)n / dt, "");
    if (labels) tsr_info("predict: accuracy %.4f (%lld / %lld)", (double)correct / (double)n, (long long)correct, (long long)n);

    char task_s[16];
    snprintf(task_s, sizeof task_s, "%d", task);
    const char *keys[] = {"tessera_version", "git_commit", "checkpoint", "input", "config", "adapters", "task"};
    const char *vals[] = {TSR_VERSION, TSR_GIT_COMMIT, ckpt, input, cfg_text, adapters, task_s};
    int nkeys = adapters ? 7 : 5;
    if (tsr_comm_world()->rank == 0) {
        int w;
        if (has_suffix(output, ".nc") || has_suffix(output, ".nc4")) {
            w = tsr_nc_write_logits_ex(output, n, K, logits, labels, nkeys, keys, vals);
        } else {
            tsr_st_writer *sw = tsr_st_writer_new();
            int64_t shape[2] = {n, K};
            tsr_st_writer_add(sw, "logits", TSR_DT_F32, 2, shape, logits);
            for (int i = 0; i < nkeys; i++) tsr_st_writer_meta(sw, keys[i], vals[i]);
            w = tsr_st_writer_write(sw, output);
            tsr_st_writer_free(sw);
        }
        if (w != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            goto out;
        }
        tsr_info("predict: wrote %s (logits %lld x %d)", output, (long long)n, K);
    }
    rc = 0;
out:
    free(images);
    free(labels);
    free(logits);
    free(cfg_text);
    free(task_ids);
    tsr_adapters_destroy(&ad); /* NULL-safe: also after a failed create */
    if (m.params_mem) tsr_vit_destroy(&m);
    return rc;
}
