/* cmd_predict.c: `tessera predict`: logits of a ViT checkpoint (timm or Hugging Face naming) on a batch
 * of images from a safetensors file (`input`, (B, C, H, W) float32, already normalised) or a netCDF
 * dataset (ubyte images, normalised with data.mean / data.std), written to safetensors or netCDF.
 * With --adapters FILE (written by tsr_adapters_save), the adapters the file describes are attached in
 * evaluation mode (routing z = sigmoid(Z[task]), no noise, no dropout) with every image given task
 * --task N (default 0). This is how users and other implementations compare against tessera. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "core/common.h"
#include "train/predict.h"

static void predict_usage(FILE *f) {
    fprintf(f,
            "usage: tessera predict --checkpoint FILE --input FILE --output FILE [options]\n"
            "  --checkpoint FILE   ViT weights, safetensors, timm or Hugging Face naming (F32/F16/BF16)\n"
            "  --input FILE        .safetensors holding `input` (B, C, H, W) float32, or a netCDF dataset (.nc)\n"
            "  --output FILE       .safetensors (tensor `logits`) or .nc (variable `logits`)\n"
            "  --config FILE       YAML configuration (model.heads and model.ln_eps for timm files,\n"
            "                      data.mean / data.std for netCDF input); default: built-in defaults\n"
            "  --hf-config FILE    Hugging Face config.json (default: config.json beside the checkpoint)\n"
            "  --batch N           images per forward pass (default 64)\n"
            "  --adapters FILE     attach the adapters of FILE (tsr_adapters_save format) in evaluation mode\n"
            "  --task N            with --adapters: the task (routing row) of every image (default 0)\n"
            "  --set key=value     override a configuration key (repeatable)\n");
}

int tsr_cmd_predict(int argc, char **argv) {
    const char *ckpt = NULL, *input = NULL, *output = NULL, *cfg_path = NULL, *hf_cfg = NULL, *adapters = NULL;
    int batch = 64, nset = 0, task = -1;
    char **sets = tsr_calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_val = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            predict_usage(stdout);
            free(sets);
            return 0;
        }
#define OPT(flag, dst)                                                                  \
    if (strcmp(a, flag) == 0) {                                                         \
        if (!has_val) {                                                                 \
            tsr_log(TSR_LOG_ERROR, "predict: option %s needs a value", flag);           \
            free(sets);                                                                 \
            return 2;                                                                   \
        }                                                                               \
        dst = argv[++i];                                                                \
        continue;                                                                       \
    }
        OPT("--checkpoint", ckpt)
        OPT("--input", input)
        OPT("--output", output)
        OPT("--config", cfg_path)
        OPT("--hf-config", hf_cfg)
        OPT("--adapters", adapters)
#undef OPT
        if (strcmp(a, "--set") == 0 && has_val) {
            sets[nset++] = argv[++i];
            continue;
        }
        if (strcmp(a, "--batch") == 0 && has_val) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1 << 20) {
                tsr_log(TSR_LOG_ERROR, "predict: --batch expects an integer in [1, 1048576], got '%s'", argv[i]);
                free(sets);
                return 2;
            }
            batch = (int)v;
            continue;
        }
        if (strcmp(a, "--task") == 0 && has_val) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || !*argv[i] || v < 0 || v > 1 << 24) {
                tsr_log(TSR_LOG_ERROR, "predict: --task expects an integer >= 0, got '%s'", argv[i]);
                free(sets);
                return 2;
            }
            task = (int)v;
            continue;
        }
        tsr_log(TSR_LOG_ERROR, "predict: unknown or incomplete option '%s'", a);
        predict_usage(stderr);
        free(sets);
        return 2;
    }
    if (!ckpt || !input || !output) {
        tsr_log(TSR_LOG_ERROR, "predict: --checkpoint, --input and --output are required");
        predict_usage(stderr);
        free(sets);
        return 2;
    }
    if (task >= 0 && !adapters) {
        tsr_log(TSR_LOG_ERROR, "predict: --task needs --adapters (a routing row belongs to an adapter set)");
        free(sets);
        return 2;
    }
    if (task < 0) task = 0;
    tsr_predict_opts o = {ckpt, input, output, cfg_path, hf_cfg, adapters, batch, task, nset, sets, tsr_runtime_setup};
    int rc = tsr_predict_run(&o);
    free(sets);
    return rc;
}
