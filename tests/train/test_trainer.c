/* test_trainer.c: the trainer's own pieces (src/train/): the sampler is independent of the rank count,
 * the augmentation is a reflect-padded crop [+ flip], a training-state
 * checkpoint round trip is exact (also with the block weights in bf16 only, model.precision bf16: the
 * checkpoint holds their fp32 values all the same, and a checkpoint of another backbone is refused), one
 * step of tsr_train_run equals an AdamW update computed by hand from the model's gradient on the same
 * batch, and the prototype head initialisation (run.head_init) is the nearest-class-mean classifier of
 * the training features, computed by hand. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../common/test_util.h"

#include "adapters/adapt_step.h"
#include "adapters/adapters.h"
#include "core/rng.h"
#include "dist/parallel.h"
#include "io/safetensors.h"
#include "io/tsr_config.h"
#include "model/vit.h"
#include "train/optim.h"
#include "train/sampler.h"
#include "train/state.h"
#include "train/tasks.h"
#include "train/trainer.h"

static int setup_dir(void **st) {
    (void)st;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_trainer_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown_dir(void **st) {
    (void)st;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Every slot of every step is computed by exactly one rank, and the (task, example) of each slot is the
 * same for 1 to 6 ranks, with more or fewer tasks than ranks and unequal task sizes. */
static void test_sampler_rank_independent(void **st) {
    (void)st;
    enum { G = 24, STEPS = 30 };
    const int ntask_cases[] = {1, 2, 3, 7};
    for (size_t c = 0; c < sizeof ntask_cases / sizeof ntask_cases[0]; c++) {
        int nt = ntask_cases[c];
        int64_t weight[7];
        for (int t = 0; t < nt; t++) weight[t] = 5 + 13 * t % 7;
        int ref_task[STEPS][G];
        int64_t ref_ex[STEPS][G];
        for (int R = 1; R <= 6; R++) {
            tsr_sampler sp[6];
            for (int r = 0; r < R; r++) {
                tsr_sampler_init(&sp[r], nt, R, weight);
                for (int t = 0; t < nt; t++) sp[r].count[t] = weight[t];
            }
            for (int step = 0; step < STEPS; step++) {
                int seen[G] = {0};
                for (int r = 0; r < R; r++) {
                    int task[G], slot[G];
                    int64_t ex[G];
                    int n = tsr_sampler_local(&sp[r], 1234, step, G, r, task, ex, slot);
                    for (int i = 0; i < n; i++) {
                        int j = slot[i];
                        seen[j]++;
                        assert_true(tsr_sampler_owns(&sp[r], task[i], r));
                        assert_true(ex[i] >= 0 && ex[i] < weight[task[i]]);
                        if (R == 1) {
                            ref_task[step][j] = task[i];
                            ref_ex[step][j] = ex[i];
                        } else {
                            assert_int_equal(task[i], ref_task[step][j]);
                            assert_int_equal(ex[i], ref_ex[step][j]);
                        }
                    }
                }
                for (int j = 0; j < G; j++) assert_int_equal(seen[j], 1);
            }
            for (int r = 0; r < R; r++) tsr_sampler_free(&sp[r]);
        }
    }
}

/* The augmentation depends only on (seed, step, slot) and is a crop with reflection: every output pixel
 * is an input pixel of the same channel. */
static void test_augment_deterministic(void **st) {
    (void)st;
    enum { C = 2, S = 6 };
    float x[C * S * S], a[C * S * S], b[C * S * S], tmp[S * S];
    for (int i = 0; i < C * S * S; i++) x[i] = (float)i;
    memcpy(a, x, sizeof x);
    memcpy(b, x, sizeof x);
    tsr_augment(a, C, S, 7, 3, 5, 1, tmp);
    tsr_augment(b, C, S, 7, 3, 5, 1, tmp);
    assert_memory_equal(a, b, sizeof a);
    int changed = 0;
    for (int step = 0; step < 20; step++) {
        memcpy(a, x, sizeof x);
        tsr_augment(a, C, S, 7, step, 0, 1, tmp);
        for (int i = 0; i < C * S * S; i++) {
            int c = i / (S * S);
            assert_true(a[i] >= c * S * S && a[i] < (c + 1) * S * S);
            changed += a[i] != x[i];
        }
    }
    assert_true(changed > 0);
}

static void fill(float *p, size_t n, uint64_t seed) {
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) p[i] = (float)(tsr_rng_u64(&r) % 2001) / 1000.0f - 1.0f;
}

static int reflect_pad_index(int u, int n) { /* numpy.pad(mode="reflect") for a pad of 2 */
    if (u < 0) return -u;
    if (u >= n) return 2 * n - 2 - u;
    return u;
}

/* Is img (C, S, S) a crop (offset dy, dx in [-2, 2], reflect padding) [+ flip] of ref (C, S, S)? */
static int is_augmented(const float *ref, const float *img, int C, int S, int flip_ok, int *was_identity) {
    for (int fl = 0; fl <= flip_ok; fl++)
        for (int dy = -2; dy <= 2; dy++)
            for (int dx = -2; dx <= 2; dx++) {
                int ok = 1;
                for (int c = 0; c < C && ok; c++)
                    for (int y = 0; y < S && ok; y++)
                        for (int x = 0; x < S && ok; x++) {
                            int wx = fl ? S - 1 - x : x; /* flip after the crop */
                            int sy = reflect_pad_index(y + dy, S), sx = reflect_pad_index(wx + dx, S);
                            ok = img[(c * S + y) * S + x] == ref[(c * S + sy) * S + sx];
                        }
                if (ok) {
                    *was_identity = !fl && !dy && !dx;
                    return 1;
                }
            }
    return 0;
}

/* Every augmented image of a batch is a crop at an offset in [-2, 2]^2 of the image padded by
 * reflection as numpy.pad(mode="reflect") (the edge pixel not repeated), optionally flipped after the
 * crop; the same (seed, step, slot) gives the same image; more than half of a batch is changed; without
 * flip no image is flipped. Images with distinct random pixels, so that only the true crop matches. */
static void test_augment_crop_flip(void **st) {
    (void)st;
    enum { C = 3, B = 24, SMAX = 7 };
    const int sizes[] = {6, 7};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        const int S = sizes[k];
        const size_t per = (size_t)C * S * S;
        float ref[B][C * SMAX * SMAX], x[B][C * SMAX * SMAX + 4], x2[C * SMAX * SMAX], tmp[SMAX * SMAX];
        int changed = 0, flips_ok = 1, other_step = 0;
        for (int b = 0; b < B; b++) {
            fill(ref[b], per, 100 + (uint64_t)b);
            memcpy(x[b], ref[b], sizeof(float) * per);
            for (int q = 0; q < 4; q++) x[b][per + (size_t)q] = 777.0f; /* canary */
            tsr_augment(x[b], C, S, 3, 9, b, 1, tmp);
            for (int q = 0; q < 4; q++) assert_true(x[b][per + (size_t)q] == 777.0f); /* shape kept */
            memcpy(x2, ref[b], sizeof(float) * per);
            tsr_augment(x2, C, S, 3, 9, b, 1, tmp);
            assert_memory_equal(x[b], x2, sizeof(float) * per); /* deterministic */
            int ident = 0;
            assert_true(is_augmented(ref[b], x[b], C, S, 1, &ident));
            changed += !ident;
            /* another step: another crop for some slot */
            memcpy(x2, ref[b], sizeof(float) * per);
            tsr_augment(x2, C, S, 3, 10, b, 1, tmp);
            assert_true(is_augmented(ref[b], x2, C, S, 1, &ident));
            other_step |= memcmp(x2, x[b], sizeof(float) * per) != 0;
            /* flip = 0: a crop without flip */
            memcpy(x2, ref[b], sizeof(float) * per);
            tsr_augment(x2, C, S, 3, 9, b, 0, tmp);
            flips_ok &= is_augmented(ref[b], x2, C, S, 0, &ident);
        }
        assert_true(changed > B / 2);
        assert_true(other_step);
        assert_true(flips_ok);
    }
}

/* Save at steps 5, 10, 15 with keep = 2, load into zeroed copies: step 15, every tensor and count exact,
 * only the two newest directories left, no temporary; an incomplete directory (no DONE) is ignored. */
static void test_state_round_trip(void **st) {
    (void)st;
    tsr_vit_config vc = {8, 4, 1, 8, 1, 2, 16, 3, 1e-6};
    tsr_vit m, m2;
    assert_int_equal(tsr_vit_create(&m, &vc, 2), 0);
    assert_int_equal(tsr_vit_create(&m2, &vc, 2), 0);
    tsr_adapter_config ac = {.lora_sites = 1 << TSR_LORA_Q | 1 << TSR_LORA_V, .lora_rank = 2, .lora_alpha = 2,
                             .skills = 2, .heads = 2, .n_tasks = 3, .tau = 1, .layer_max = -1};
    tsr_adapters ad, ad2;
    assert_int_equal(tsr_adapters_create(&ad, &ac, vc.depth, vc.dim, vc.mlp_dim, m.tokens, 2), 0);
    assert_int_equal(tsr_adapters_create(&ad2, &ac, vc.depth, vc.dim, vc.mlp_dim, m.tokens, 2), 0);
    tsr_adamw om, oa, om2, oa2;
    tsr_adamw_init(&om, m.num_params, 0.9, 0.999, 1e-8);
    tsr_adamw_init(&oa, ad.num_params, 0.9, 0.999, 1e-8);
    tsr_adamw_init(&om2, m.num_params, 0.9, 0.999, 1e-8);
    tsr_adamw_init(&oa2, ad.num_params, 0.9, 0.999, 1e-8);
    fill(m.params_mem, m.num_params, 1);
    fill(om.m, om.n, 2);
    fill(om.v, om.n, 3);
    fill(ad.params, ad.num_params, 4);
    fill(oa.m, oa.n, 5);
    fill(oa.v, oa.n, 6);
    om.t = 15;
    oa.t = 14;
    tsr_train_state s = {&m, &ad, NULL, &om, &oa, NULL};
    const char *out = tpath("run");
    for (long step = 5; step <= 15; step += 5) assert_int_equal(tsr_state_save(&s, out, step, 2, 2.5, "a: 1\n"), 0);
    assert_int_equal(access(tpath("run/checkpoints/step-00000005"), F_OK), -1);
    assert_int_equal(access(tpath("run/checkpoints/step-00000010/DONE"), F_OK), 0);
    assert_int_equal(access(tpath("run/checkpoints/step-00000015/DONE"), F_OK), 0);
    assert_int_equal(access(tpath("run/checkpoints/step-00000015.tmp"), F_OK), -1);
    mkdir(tpath("run/checkpoints/step-00000020"), 0755); /* a checkpoint that never completed */
    tsr_train_state s2 = {&m2, &ad2, NULL, &om2, &oa2, NULL};
    double first = 0;
    assert_int_equal(tsr_state_load_latest(&s2, out, &first), 15);
    assert_true(first == 2.5);
    assert_memory_equal(m2.params_mem, m.params_mem, sizeof(float) * m.num_params);
    assert_memory_equal(ad2.params, ad.params, sizeof(float) * ad.num_params);
    assert_memory_equal(om2.m, om.m, sizeof(float) * om.n);
    assert_memory_equal(om2.v, om.v, sizeof(float) * om.n);
    assert_memory_equal(oa2.m, oa.m, sizeof(float) * oa.n);
    assert_memory_equal(oa2.v, oa.v, sizeof(float) * oa.n);
    assert_int_equal(om2.t, 15);
    assert_int_equal(oa2.t, 14);
    /* a checkpoint of another configuration is refused, naming the tensor */
    tsr_adapter_config ac3 = ac;
    ac3.lora_rank = 3;
    tsr_adapters ad3;
    tsr_adamw oa3;
    assert_int_equal(tsr_adapters_create(&ad3, &ac3, vc.depth, vc.dim, vc.mlp_dim, m.tokens, 2), 0);
    tsr_adamw_init(&oa3, ad3.num_params, 0.9, 0.999, 1e-8);
    tsr_train_state s3 = {&m2, &ad3, NULL, &om2, &oa3, NULL};
    assert_int_equal(tsr_state_load_latest(&s3, out, &first), -1);
    expect_error("'adapters'", "another configuration", NULL);
    tsr_adamw_free(&oa3);
    tsr_adapters_destroy(&ad3);
    tsr_adamw_free(&om);
    tsr_adamw_free(&oa);
    tsr_adamw_free(&om2);
    tsr_adamw_free(&oa2);
    tsr_adapters_destroy(&ad);
    tsr_adapters_destroy(&ad2);
    tsr_vit_destroy(&m);
    tsr_vit_destroy(&m2);
}

/* model.precision bf16: the fp32 block weights are not in memory; the checkpoint gets them from the source (here
 * the seed), equal to an fp32 model's bit for bit; loading checks them instead of reading them. */
static void test_state_bf16(void **st) {
    (void)st;
    tsr_vit_config vc = {8, 4, 1, 32, 2, 2, 64, 3, 1e-6}; /* slices of 1024 to 3072 values: several pages */
    tsr_vit m32, m, m2, m3;
    tsr_vit *ms[4] = {&m32, &m, &m2, &m3};
    const uint64_t seeds[4] = {7, 7, 7, 8};
    tsr_adamw om[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(tsr_vit_create(ms[i], &vc, 2), 0);
        if (i) assert_int_equal(tsr_vit_set_precision(ms[i], 1), 0);
        tsr_vit_init_random(ms[i], seeds[i]);
        tsr_adamw_init(&om[i], ms[i]->num_params, 0.9, 0.999, 1e-8);
    }
    size_t hoff = (size_t)(m.params.headw - m.params_mem), nh = m.num_params - hoff;
    fill(m32.params_mem + hoff, nh, 1); /* a trained head */
    fill(m.params_mem + hoff, nh, 1);
    fill(om[1].m + hoff, nh, 2);
    fill(om[1].v + hoff, nh, 3);
    om[1].t = 4;
    tsr_train_state s = {&m, NULL, NULL, &om[1], NULL, NULL};
    const char *out = tpath("bf16");
    assert_int_equal(tsr_state_save(&s, out, 4, 1, 1.5, "a: 1\n"), 0);
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, tpath("bf16/checkpoints/step-00000004/state.safetensors")), 0);
    const tsr_st_tensor *t = tsr_st_find(&f, "model");
    assert_non_null(t);
    assert_int_equal(t->numel, (int64_t)m.num_params);
    assert_memory_equal(tsr_st_data(&f, t), m32.params_mem, sizeof(float) * m.num_params); /* the fp32 model */
    tsr_st_close(&f);
    double first = 0;
    tsr_train_state s2 = {&m2, NULL, NULL, &om[2], NULL, NULL};
    assert_int_equal(tsr_state_load_latest(&s2, out, &first), 4);
    assert_memory_equal(m2.params_mem + hoff, m.params_mem + hoff, sizeof(float) * nh);
    assert_memory_equal(om[2].m, om[1].m, sizeof(float) * m.num_params);
    assert_non_null(m2.w16_mem);
    assert_memory_equal(m2.w16_mem, m.w16_mem, sizeof(uint16_t) * (m.param_sizes[6] + m.param_sizes[8] +
                                                                  m.param_sizes[12] + m.param_sizes[14]));
    tsr_train_state s3 = {&m3, NULL, NULL, &om[3], NULL, NULL}; /* another seed: another backbone */
    assert_int_equal(tsr_state_load_latest(&s3, out, &first), -1);
    expect_error("'model'", "blocks.0.attn.qkv.weight", "another backbone", NULL);
    for (int i = 0; i < 4; i++) {
        tsr_adamw_free(&om[i]);
        tsr_vit_destroy(ms[i]);
    }
}

/* One step of a linear probe through tsr_train_run (the sampler, the data, the loss, the all-reduce
 * path, AdamW) against the update computed here: the batch drawn by the sampler, the model's gradient of
 * the mean loss, and AdamW's first step by hand: p - lr * g / (|g| + eps) (bias-corrected moments of one
 * step are g and g^2; no weight decay, no clipping, no warmup: the schedule's factor is 1 at step 0). */
static void test_one_step_by_hand(void **st) {
    (void)st;
    char outset[400];
    snprintf(outset, sizeof outset, "run.output_dir=\"%s\"", tpath("probe"));
    char *sets[] = {"model.dim=16", "model.depth=1", "model.heads=2", "model.mlp_dim=32", "train.steps=1",
                    "train.batch_size=8", "train.warmup_steps=0", "train.grad_clip=0", "train.eval_every=1",
                    "train.eval_limit=16", "adapt.mode=probe", "optim.head_lr=0.01", "optim.head_wd=0",
                    "data.augment=false", "run.seed=11", outset};
    int nset = (int)(sizeof sets / sizeof sets[0]);
    tsr_config cfg;
    if (tsr_config_load(&cfg, NULL, nset, sets) != 0) fail_msg("%s", tsr_last_error());
    assert_int_equal(tsr_mkdirs(cfg.run.output_dir), 0);
    tsr_ctx ctx = tsr_ctx_world();
    ctx.log.level = TSR_LOG_ERROR;
    tsr_train_opts o = {.fault_nan_step = -1};
    assert_int_equal(tsr_train_run(&ctx, &cfg, "test", &o, NULL), 0);

    /* by hand: the same initial model, the sampler's batch, the gradient */
    tsr_vit_config vc = {(int)cfg.model.image_size, (int)cfg.model.patch_size, (int)cfg.model.channels,
                         (int)cfg.model.dim, (int)cfg.model.depth, (int)cfg.model.heads,
                         (int)cfg.model.mlp_dim, (int)cfg.model.num_classes, cfg.model.ln_eps};
    int B = (int)cfg.train.batch_size, K = vc.num_classes;
    tsr_vit m;
    assert_int_equal(tsr_vit_create(&m, &vc, B), 0);
    tsr_vit_init_random(&m, (uint64_t)cfg.run.seed);
    tsr_tasks ts;
    assert_int_equal(tsr_tasks_select(&ts, &cfg, K, 0), 0);
    tsr_sampler sp;
    tsr_sampler_init(&sp, ts.ntasks, 1, ts.weight);
    sp.count[0] = tsr_tasks_count(&ts, TSR_SPLIT_TRAIN, 0);
    int task[64], slot[64], y[64];
    int64_t ex[64];
    assert_int_equal(tsr_sampler_local(&sp, (uint64_t)cfg.run.seed, 0, B, 0, task, ex, slot), B);
    size_t per = (size_t)vc.channels * vc.image_size * vc.image_size;
    float *x = malloc(sizeof(float) * per * B);
    for (int i = 0; i < B; i++) assert_int_equal(tsr_tasks_get(&ts, TSR_SPLIT_TRAIN, task[i], ex[i], x + per * i, &y[i]), 0);
    tsr_vit_zero_grad(&m);
    tsr_vit_forward(&m, x, y, B);
    tsr_vit_trainable probe = {0, 0, 0, 1, 0, 0};
    tsr_vit_backward(&m, &probe);

    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, tpath("probe/model.safetensors")), 0);
    const tsr_st_tensor *hw = tsr_st_find(&f, "head.weight");
    assert_non_null(hw);
    size_t nh = (size_t)K * vc.dim;
    float *got = malloc(sizeof(float) * nh);
    assert_int_equal(tsr_st_read_f32(&f, hw, got, (int64_t)nh), 0);
    tsr_st_close(&f);
    double lr = cfg.optim.head_lr, worst = 0;
    int moved = 0;
    for (size_t i = 0; i < nh; i++) {
        double g = m.grads.headw[i], p0 = m.params.headw[i];
        double want = p0 - lr * g / (fabs(g) + 1e-8);
        if (fabs(g) < 1e-6) continue; /* the update's size depends on g's last bits there */
        double d = fabs(got[i] - want);
        if (d > worst) worst = d;
        moved += fabs(got[i] - p0) > 0.5 * lr;
    }
    print_message("  one probe step: %d of %zu head weights moved by ~lr; max |trainer - hand| = %.3g\n", moved, nh, worst);
    assert_true(worst < 1e-6);
    assert_true(moved > (int)(nh / 2));
    free(got);
    free(x);
    tsr_sampler_free(&sp);
    tsr_tasks_free(&ts);
    tsr_vit_destroy(&m);
}

/* The head of a run with a new head and run.head_init (train.steps 0: model.safetensors holds the head as
 * initialised): prototype gives W_c = 2 mu_c / tau, b_c = -|mu_c|^2 / tau with mu_c the mean final-LayerNorm
 * feature of class c over the training examples (computed here by hand from the same random backbone) and
 * tau the mean squared distance between class means; every training example is then classified as its
 * nearest class mean; a class without examples can never win; zero gives a zero head; auto is prototype
 * with data.shots > 0 and zero without. */
static void read_head(const char *dir, float *w, float *b, size_t nw, size_t nb) {
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    tsr_st_file f;
    assert_int_equal(tsr_st_open(&f, path), 0);
    const tsr_st_tensor *hw = tsr_st_find(&f, "head.weight"), *hb = tsr_st_find(&f, "head.bias");
    assert_non_null(hw);
    assert_non_null(hb);
    assert_int_equal(tsr_st_read_f32(&f, hw, w, (int64_t)nw), 0);
    assert_int_equal(tsr_st_read_f32(&f, hb, b, (int64_t)nb), 0);
    tsr_st_close(&f);
}

static void run_head(const char *name, const char *head_init, const char *shots, tsr_config *cfg) {
    char outset[400], hi[64], sh[64];
    snprintf(outset, sizeof outset, "run.output_dir=\"%s\"", tpath(name));
    snprintf(hi, sizeof hi, "run.head_init=%s", head_init);
    snprintf(sh, sizeof sh, "data.shots=%s", shots);
    /* 12 classes: two of them never occur in Fashion-MNIST's 10 labels */
    char *sets[] = {"model.dim=16", "model.depth=1", "model.heads=2", "model.mlp_dim=32", "model.num_classes=12",
                    "train.steps=0", "train.batch_size=8", "adapt.mode=probe", "data.augment=false", "run.seed=5",
                    hi, sh, outset};
    if (tsr_config_load(cfg, NULL, (int)(sizeof sets / sizeof sets[0]), sets) != 0) fail_msg("%s", tsr_last_error());
    assert_int_equal(tsr_mkdirs(cfg->run.output_dir), 0);
    tsr_ctx ctx = tsr_ctx_world();
    ctx.log.level = TSR_LOG_ERROR;
    tsr_train_opts o = {.fault_nan_step = -1};
    assert_int_equal(tsr_train_run(&ctx, cfg, "test", &o, NULL), 0);
}

static void test_prototype_head(void **st) {
    (void)st;
    tsr_config cfg;
    run_head("proto", "prototype", "3", &cfg);
    enum { K = 12, D = 16 };
    float w[K * D], b[K];
    read_head(tpath("proto"), w, b, K * D, K);
    /* by hand: the same random backbone, every training example's feature */
    tsr_vit_config vc = {(int)cfg.model.image_size, (int)cfg.model.patch_size, (int)cfg.model.channels, D,
                         (int)cfg.model.depth, (int)cfg.model.heads, (int)cfg.model.mlp_dim, K, cfg.model.ln_eps};
    tsr_vit m;
    assert_int_equal(tsr_vit_create(&m, &vc, 1), 0);
    tsr_vit_init_random(&m, (uint64_t)cfg.run.seed);
    tsr_tasks ts;
    assert_int_equal(tsr_tasks_select(&ts, &cfg, K, 0), 0);
    int mine[1] = {1};
    assert_int_equal(tsr_tasks_load(&ts, &cfg, mine, 0), 0);
    int64_t n = tsr_tasks_count(&ts, TSR_SPLIT_TRAIN, 0);
    assert_int_equal(n, 30); /* 3 shots x 10 classes */
    size_t per = (size_t)vc.channels * vc.image_size * vc.image_size;
    float *x = malloc(sizeof(float) * per), *feat = malloc(sizeof(float) * (size_t)n * D);
    int *y = malloc(sizeof(int) * (size_t)n);
    double mu[K][D] = {{0}}, cnt[K] = {0};
    for (int64_t i = 0; i < n; i++) {
        assert_int_equal(tsr_tasks_get(&ts, TSR_SPLIT_TRAIN, 0, i, x, &y[i]), 0);
        tsr_vit_forward(&m, x, NULL, 1);
        memcpy(feat + i * D, m.acts.lnf, sizeof(float) * D);
        for (int j = 0; j < D; j++) mu[y[i]][j] += m.acts.lnf[j];
        cnt[y[i]] += 1;
    }
    double tau = 0, pairs = 0;
    for (int c = 0; c < K; c++)
        for (int j = 0; j < D && cnt[c] > 0; j++) mu[c][j] /= cnt[c];
    for (int a = 0; a < K; a++)
        for (int c = a + 1; c < K; c++) {
            if (!cnt[a] || !cnt[c]) continue;
            for (int j = 0; j < D; j++) tau += (mu[a][j] - mu[c][j]) * (mu[a][j] - mu[c][j]);
            pairs++;
        }
    tau /= pairs;
    double worst = 0, scale = 0;
    for (int c = 0; c < K; c++) {
        if (!cnt[c]) {
            for (int j = 0; j < D; j++) assert_true(w[c * D + j] == 0.0f); /* absent class: no weights */
            continue;
        }
        double n2 = 0;
        for (int j = 0; j < D; j++) {
            worst = fmax(worst, fabs(w[c * D + j] - 2 * mu[c][j] / tau));
            scale = fmax(scale, fabs(2 * mu[c][j] / tau));
            n2 += mu[c][j] * mu[c][j];
        }
        worst = fmax(worst, fabs(b[c] + n2 / tau));
        scale = fmax(scale, n2 / tau);
    }
    print_message("  prototype head: tau %.4g, max |trainer - hand| %.3g (values up to %.3g)\n", tau, worst, scale);
    assert_true(worst <= 1e-4 * scale);
    /* the head is the nearest-class-mean classifier: on every training example the argmax of its logits is
     * the class whose mean is nearest (and never an absent class) */
    int agree = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *f = feat + i * D;
        int best = -1, near = -1;
        double bl = -INFINITY, bd = INFINITY;
        for (int c = 0; c < K; c++) {
            double l = b[c], d2 = 0;
            for (int j = 0; j < D; j++) l += (double)w[c * D + j] * f[j];
            if (l > bl) bl = l, best = c;
            if (!cnt[c]) continue;
            for (int j = 0; j < D; j++) d2 += (f[j] - mu[c][j]) * (f[j] - mu[c][j]);
            if (d2 < bd) bd = d2, near = c;
        }
        agree += best == near;
        assert_true(cnt[best] > 0);
    }
    print_message("  nearest class mean = argmax of the head on %d of %lld training examples\n", agree, (long long)n);
    assert_int_equal(agree, n);
    free(x);
    free(feat);
    free(y);
    tsr_tasks_free(&ts);
    tsr_vit_destroy(&m);

    /* zero, and auto without shots: a zero head; auto with shots: the prototype head */
    float w2[K * D], b2[K];
    const char *cases[][3] = {{"zero", "zero", "3"}, {"auto0", "auto", "0"}, {"auto3", "auto", "3"}};
    for (int c = 0; c < 3; c++) {
        tsr_config c2;
        run_head(cases[c][0], cases[c][1], cases[c][2], &c2);
        read_head(tpath(cases[c][0]), w2, b2, K * D, K);
        if (c < 2) {
            for (int i = 0; i < K * D; i++) assert_true(w2[i] == 0.0f);
            for (int i = 0; i < K; i++) assert_true(b2[i] == 0.0f);
        } else {
            assert_memory_equal(w2, w, sizeof w);
            assert_memory_equal(b2, b, sizeof b);
        }
    }
    /* a prototype head replaces run.init's classifier: refused without run.reset_head */
    char *bad[] = {"run.head_init=prototype", "run.init=\"x.safetensors\""};
    assert_int_equal(tsr_config_load(&cfg, NULL, 2, bad), -1);
    expect_error("run.head_init", "run.reset_head", NULL);
}

int main(void) {
    tsr_log_level = TSR_LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sampler_rank_independent),
        cmocka_unit_test(test_augment_deterministic),
        cmocka_unit_test(test_augment_crop_flip),
        cmocka_unit_test(test_state_round_trip),
        cmocka_unit_test(test_state_bf16),
        cmocka_unit_test(test_one_step_by_hand),
        cmocka_unit_test(test_prototype_head),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
