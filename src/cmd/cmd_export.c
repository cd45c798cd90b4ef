/* cmd_export.c: `tessera export-peft`: a trained adapter set as a Hugging Face peft adapter directory
 * (adapter_model.safetensors + adapter_config.json) for PeftModel.from_pretrained (src/adapters/peft_io.h,
 * docs/ADAPTERS.md). */
#include <stdio.h>
#include <string.h>

#include "adapters/peft_io.h"
#include "cmd/commands.h"
#include "core/common.h"

static void export_usage(FILE *f) {
    fprintf(f,
            "usage: tessera export-peft --adapters FILE --checkpoint FILE --out DIR [--base-model NAME]\n"
            "  --adapters FILE     the adapter set (adapters.safetensors written by tessera adapt / pretrain, or a\n"
            "                      peft adapter directory)\n"
            "  --checkpoint FILE   the backbone they were trained on (safetensors): its naming (Hugging Face\n"
            "                      transformers 4 or 5, with or without `vit.`, or timm) gives peft's module paths\n"
            "  --out DIR           the peft adapter directory to write (created if missing)\n"
            "  --base-model NAME   base_model_name_or_path in adapter_config.json (default: none)\n"
            "S = 1 (LoRA) exports as peft LORA, S > 1 (Poly, MHR) as peft POLY with n_splits = heads.\n");
}

int tsr_cmd_export_peft(int argc, char **argv) {
    const char *adapters = NULL, *ckpt = NULL, *out = NULL, *base = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            export_usage(stdout);
            return 0;
        }
        const char **dst = strcmp(a, "--adapters") == 0     ? &adapters
                           : strcmp(a, "--checkpoint") == 0 ? &ckpt
                           : strcmp(a, "--out") == 0        ? &out
                           : strcmp(a, "--base-model") == 0 ? &base
                                                            : NULL;
        if (!dst || i + 1 >= argc) {
            tsr_log(TSR_LOG_ERROR, "export-peft: unknown or incomplete option '%s'", a);
            export_usage(stderr);
            return 2;
        }
        *dst = argv[++i];
    }
    if (!adapters || !ckpt || !out) {
        tsr_log(TSR_LOG_ERROR, "export-peft: --adapters, --checkpoint and --out are required");
        export_usage(stderr);
        return 2;
    }
    if (tsr_peft_export_file(adapters, ckpt, out, base) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        return 1;
    }
    return 0;
}
