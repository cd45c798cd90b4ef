/* cmd_train.c: `tessera train CONFIG`: full training of a ViT backbone (every weight trainable) on the
 * configured data: Fashion-MNIST from Debian's dataset-fashion-mnist, or a tessera netCDF dataset
 * (split train/test). AdamW, linear warmup + cosine decay, global gradient-norm clipping. Writes into
 * run.output_dir: config.yaml (the resolved configuration), train_log.csv (the curve) and
 * backbone.safetensors (timm or Hugging Face naming per model.naming), each atomically.
 * Single rank: multi-rank training is `tessera pretrain`. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "build_info.h"
#include "cmd/commands.h"
#include "core/common.h"
#include "core/rng.h"
#include "train/imageset.h"
#include "dist/parallel.h"
#include "model/checkpoint.h"
#include "io/tsr_config.h"
#include "model/vit.h"
#include "train/optim.h"

static double evaluate(tsr_vit *m, const tsr_imageset *d, int64_t limit, double *loss_out) {
    int64_t n = d->n < limit ? d->n : limit, correct = 0;
    int B = m->max_batch, K = m->cfg.num_classes;
    size_t per = (size_t)d->C * d->S * d->S;
    double loss = 0;
    for (int64_t s = 0; s < n; s += B) {
        int b = (int)(n - s < B ? n - s : B);
        loss += tsr_vit_forward(m, d->x + (size_t)s * per, d->y + s, b) * b;
        for (int i = 0; i < b; i++) {
            const float *z = m->acts.logits + (size_t)i * K;
            int best = 0;
            for (int k = 1; k < K; k++)
                if (z[k] > z[best]) best = k;
            correct += best == d->y[s + i];
        }
    }
    *loss_out = loss / (double)n;
    return (double)correct / (double)n;
}


int tsr_cmd_train(int argc, char **argv) {
    const char *cfg_path;
    int nset;
    char **sets;
    int pr = tsr_parse_config_cmdline("train", "full training of a ViT backbone; see configs/default.yaml for every key", argc, argv, &cfg_path, &nset, &sets);
    if (pr != 0) {
        free(sets);
        return pr == 1 ? 0 : 2;
    }
    int rc = 1;
    tsr_config cfg;
    char *cfg_text = NULL;
    tsr_imageset train = {0}, test = {0};
    tsr_vit m;
    memset(&m, 0, sizeof m);
    tsr_adamw opt;
    memset(&opt, 0, sizeof opt);
    FILE *curve = NULL;
    char curve_tmp[1100] = "", curve_path[1100] = "";
    if (!(cfg_text = tsr_run_setup(&cfg, "train", cfg_path, nset, sets))) goto out;
    char path[1100];
    double t_load = tsr_time();
    if (tsr_imageset_load(&cfg, &train, &test) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    tsr_info("data: %s: %lld train / %lld test images (%.1f s)", cfg.data.path, (long long)train.n,
             (long long)test.n, tsr_time() - t_load);

    tsr_vit_config vc = {(int)cfg.model.image_size, (int)cfg.model.patch_size, (int)cfg.model.channels,
                         (int)cfg.model.dim, (int)cfg.model.depth, (int)cfg.model.heads,
                         (int)cfg.model.mlp_dim, (int)cfg.model.num_classes, cfg.model.ln_eps};
    int B = (int)cfg.train.batch_size;
    if (tsr_vit_create(&m, &vc, B) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    if (cfg.run.init[0]) {
        if (tsr_ckpt_load_vit(&m, cfg.run.init, 0) != 0) {
            tsr_log(TSR_LOG_ERROR, "run.init: %s", tsr_last_error());
            goto out;
        }
        tsr_info("model: initialised from %s", cfg.run.init);
    } else {
        tsr_vit_init_random(&m, (uint64_t)cfg.run.seed);
    }
    tsr_info("model: %s, %zu parameters, %d tokens, batch %d", cfg.model.name, m.num_params, m.tokens, B);
    tsr_adamw_init(&opt, m.num_params, 0.9, 0.999, 1e-8);
    tsr_adamw_add_group(&opt, 0, m.num_params, 1.0, cfg.train.weight_decay);

    snprintf(curve_path, sizeof curve_path, "%s/train_log.csv", cfg.run.output_dir);
    snprintf(curve_tmp, sizeof curve_tmp, "%s.tmp", curve_path);
    curve = fopen(curve_tmp, "w");
    if (!curve) {
        tsr_log(TSR_LOG_ERROR, "%s: cannot create (%s)", curve_tmp, strerror(errno));
        goto out;
    }
    fprintf(curve, "step,lr,train_loss,grad_norm,test_loss,test_accuracy,images_per_s\n");

    size_t per = (size_t)vc.channels * vc.image_size * vc.image_size;
    float *xb = tsr_malloc(sizeof(float) * per * B);
    int *yb = tsr_malloc(sizeof(int) * B);
    int64_t *perm = tsr_malloc(sizeof(int64_t) * (size_t)train.n);
    for (int64_t i = 0; i < train.n; i++) perm[i] = i;
    tsr_rng rng;
    tsr_rng_seed(&rng, (uint64_t)cfg.run.seed ^ 0x5eed);
    int64_t cursor = train.n; /* reshuffle at the start */
    double t_start = tsr_time(), t_win = t_start, loss_win = 0;
    int n_win = 0, diverged = 0;
    long steps = cfg.train.steps;
    for (long step = 0; step < steps; step++) {
        for (int b = 0; b < B; b++) {
            if (cursor >= train.n) {
                for (int64_t i = train.n - 1; i > 0; i--) { /* Fisher-Yates */
                    int64_t j = (int64_t)(tsr_rng_u64(&rng) % (uint64_t)(i + 1)), t = perm[i];
                    perm[i] = perm[j];
                    perm[j] = t;
                }
                cursor = 0;
            }
            int64_t k = perm[cursor++];
            memcpy(xb + (size_t)b * per, train.x + (size_t)k * per, sizeof(float) * per);
            yb[b] = train.y[k];
        }
        double lr = tsr_lr_schedule(step, steps, cfg.train.warmup_steps, cfg.train.lr, 0.0);
        tsr_vit_zero_grad(&m);
        double loss = tsr_vit_forward(&m, xb, yb, B);
        if (!isfinite(loss)) {
            tsr_log(TSR_LOG_ERROR, "train: loss is %g at step %ld: diverged (HINT: lower train.lr, set train.grad_clip)",
                    loss, step);
            diverged = 1;
            break;
        }
        tsr_vit_backward(&m, &TSR_VIT_FULL);
        double gn = tsr_clip_grad_norm(m.grads_mem, &opt, cfg.train.grad_clip);
        tsr_adamw_step(&opt, m.params_mem, m.grads_mem, lr);
        loss_win += loss;
        n_win++;
        int last = step + 1 == steps;
        int do_eval = (cfg.train.eval_every > 0 && (step + 1) % cfg.train.eval_every == 0) || last;
        if ((step + 1) % cfg.train.log_every == 0 || do_eval) {
            double now = tsr_time(), ips = n_win * B / (now - t_win);
            double eta = (steps - step - 1) * (now - t_start) / (step + 1);
            double tl = NAN, ta = NAN;
            if (do_eval) ta = evaluate(&m, &test, last ? (cfg.train.eval_limit > 0 ? cfg.train.eval_limit : test.n) : 2000, &tl);
            tsr_info("step %6ld/%ld  loss %.4f  lr %.2e  |g| %.3f  %7.1f img/s  ETA %4.0f s%s", step + 1, steps,
                     loss_win / n_win, lr, gn, ips, eta, "");
            if (do_eval)
                tsr_info("eval  %6ld  test loss %.4f  test accuracy %.4f (%s)", step + 1, tl, ta,
                         last && cfg.train.eval_limit == 0 ? "full test set" : "first test images");
            fprintf(curve, "%ld,%.6e,%.6f,%.6f,%.6f,%.6f,%.2f\n", step + 1, lr, loss_win / n_win, gn, tl, ta, ips);
            loss_win = 0;
            n_win = 0;
            t_win = tsr_time();
        }
    }
    free(xb);
    free(yb);
    free(perm);
    if (fflush(curve) != 0 || fclose(curve) != 0 || rename(curve_tmp, curve_path) != 0) {
        curve = NULL;
        tsr_log(TSR_LOG_ERROR, "%s: cannot write (%s)", curve_path, strerror(errno));
        goto out;
    }
    curve = NULL;
    if (diverged) goto out; /* keep no checkpoint of a diverged run */
    snprintf(path, sizeof path, "%s/backbone.safetensors", cfg.run.output_dir);
    char steps_s[32];
    snprintf(steps_s, sizeof steps_s, "%ld", steps);
    const char *keys[] = {"tessera_version", "git_commit", "config", "steps"};
    const char *vals[] = {TSR_VERSION, TSR_GIT_COMMIT, cfg_text, steps_s};
    if (tsr_ckpt_save_vit(&m, path, strcmp(cfg.model.naming, "hf") == 0 ? TSR_NAMING_HF : TSR_NAMING_TIMM, 4, keys,
                          vals) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        goto out;
    }
    tsr_info("train: wrote %s, %s/train_log.csv and %s/config.yaml (%.1f s)", path, cfg.run.output_dir,
             cfg.run.output_dir, tsr_time() - t_start);
    rc = 0;
out:
    if (curve) {
        fclose(curve);
        remove(curve_tmp);
    }
    free(sets);
    free(cfg_text);
    tsr_imageset_free(&train);
    tsr_imageset_free(&test);
    if (opt.m) tsr_adamw_free(&opt);
    if (m.params_mem) tsr_vit_destroy(&m);
    return rc;
}
