/* make_seeds.c: writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) with tessera's own
 * writers, small: a ViT checkpoint in both namings and an adapter file (safetensors), the adapter description
 * they carry (adapter_desc), a journal entry in the layout of sweep.c's journal_write with the fingerprint
 * fuzz_journal expects, a dataset and a two-task suite (netCDF). The YAML, config.json and image seeds are
 * files of the repository or the system (scripts/fuzz.sh --seeds copies them).
 * usage: fuzz_make_seeds CORPUS_DIR */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter_io.h"
#include "adapters/adapters.h"
#include "core/common.h"
#include "data/dataset_nc.h"
#include "data/suite.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

static char root[512];
static const char *at(const char *rel) {
    static char p[8][800];
    static int i;
    i = (i + 1) % 8;
    snprintf(p[i], sizeof p[i], "%s/%s", root, rel);
    return p[i];
}
static void ok(int rc) {
    if (rc != 0) {
        fprintf(stderr, "make_seeds: %s\n", tsr_last_error());
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    snprintf(root, sizeof root, "%s", argv[1]);
    const char *dirs[] = {"safetensors", "adapter_desc", "journal", "dataset_nc", "suite_nc"};
    for (int i = 0; i < 5; i++) ok(tsr_mkdirs(at(dirs[i])));

    tsr_vit_config vc = {8, 4, 3, 16, 1, 2, 32, 5, 1e-6};
    tsr_vit m;
    ok(tsr_vit_create(&m, &vc, 2));
    tsr_vit_init_random(&m, 1);
    const char *k[] = {"tessera_version"}, *v[] = {"seed"};
    ok(tsr_ckpt_save_vit(&m, at("safetensors/vit_timm.safetensors"), TSR_NAMING_TIMM, 1, k, v));
    ok(tsr_ckpt_save_vit(&m, at("safetensors/vit_hf.safetensors"), TSR_NAMING_HF, 0, NULL, NULL));

    tsr_adapter_config c = {0};
    c.lora_sites = (1 << TSR_NLORA) - 1;
    c.lora_rank = 2;
    c.lora_alpha = 4.0;
    c.skills = 2;
    c.heads = 2;
    c.n_tasks = 3;
    c.tau = 1.0;
    c.layer_max = -1;
    tsr_adapters ad;
    ok(tsr_adapters_create(&ad, &c, vc.depth, vc.dim, vc.mlp_dim, 5, 2));
    ad.ln_eps = vc.ln_eps;
    ok(tsr_adapters_save(&ad, at("safetensors/adapters.safetensors"), 0, NULL, NULL));
    tsr_adapters_destroy(&ad);
    tsr_st_file f;
    ok(tsr_st_open(&f, at("safetensors/adapters.safetensors")));
    const char *desc = tsr_st_meta(&f, TSR_ADAPTERS_META_KEY);
    ok(tsr_write_file_atomic(at("adapter_desc/lora_mhr.json"), desc, strlen(desc)));
    tsr_st_close(&f);
    tsr_vit_destroy(&m);

    /* a journal entry: the layout of sweep.c's journal_write */
    tsr_st_writer *w = tsr_st_writer_new();
    int64_t steps[3] = {0, 5, 10}, sh[1] = {3};
    double loss[3] = {2.3, 1.9, 1.5}, val[3] = {0.1, 0.3, 0.4}, test[3] = {0.12, 0.28, 0.41};
    tsr_st_writer_add(w, "eval_step", TSR_DT_I64, 1, sh, steps);
    tsr_st_writer_add(w, "train_loss", TSR_DT_F64, 1, sh, loss);
    tsr_st_writer_add(w, "val_accuracy", TSR_DT_F64, 1, sh, val);
    tsr_st_writer_add(w, "test_accuracy", TSR_DT_F64, 1, sh, test);
    const char *jk[] = {"fingerprint", "test_accuracy", "best_val_accuracy", "best_val_step", "test_accuracy_at_best_val",
                        "final_train_loss", "trainable_parameters", "wall_time", "rank", "steps_run", "config"};
    const char *jv[] = {"0123456789abcdef", "0.41", "0.4", "10", "0.41", "1.5", "10772", "1.250000", "0", "10",
                        "model:\n  dim: 16\n"};
    for (int i = 0; i < 11; i++) tsr_st_writer_meta(w, jk[i], jv[i]);
    ok(tsr_st_writer_write(w, at("journal/mhr__latin__k5__s0.st")));
    tsr_st_writer_free(w);

    enum { N = 6, H = 4, W = 4 };
    uint8_t img[N * H * W];
    int lab[N];
    int8_t split[N];
    for (int i = 0; i < N * H * W; i++) img[i] = (uint8_t)(i * 13);
    for (int i = 0; i < N; i++) {
        lab[i] = i % 2;
        split[i] = (int8_t)(i % 3);
    }
    const char *cn[] = {"alpha", "beta"};
    tsr_nc_provenance prov = {.task_name = "seed", .title = "fuzz seed"};
    ok(tsr_nc_dataset_write(at("dataset_nc/small.nc"), N, H, W, 1, img, lab, split, 2, cn, &prov));
    tsr_suite_task t[2] = {{"latin", 2, cn, 3, img, lab, split}, {"greek", 2, NULL, 3, img + 3 * H * W, lab + 3, split + 3}};
    tsr_suite_prov sp = {.title = "fuzz seed suite"};
    ok(tsr_suite_write(at("suite_nc/two_tasks.nc"), H, W, 1, 2, t, &sp));
    ok(tsr_nc_dataset_write(at("suite_nc/v1_dataset.nc"), N, H, W, 1, img, lab, split, 2, cn, &prov));
    printf("make_seeds: wrote the seeds under %s\n", root);
    return 0;
}
