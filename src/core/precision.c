/* precision.c: the model.precision decision (pure: no detection, no timing). */
#include "precision.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int tsr_precision_parse(const char *s) {
    if (strcmp(s, "fp32") == 0) return TSR_PREC_FP32;
    if (strcmp(s, "bf16") == 0) return TSR_PREC_BF16;
    if (strcmp(s, "auto") == 0) return TSR_PREC_AUTO;
    return -1;
}

int tsr_precision_needs_timing(const tsr_precision_inputs *in) {
    return in->mode == TSR_PREC_AUTO && !in->full && in->cpu_bf16 && in->lib_bf16;
}

static int measured(double t) { return isfinite(t) && t > 0; }

void tsr_precision_choose(const tsr_precision_inputs *in, tsr_precision_choice *out) {
    memset(out, 0, sizeof *out);
    const char *lib = in->lib_note ? in->lib_note : "no bf16 library";
#define SAY(...) snprintf(out->reason, sizeof out->reason, __VA_ARGS__)
    if (in->mode == TSR_PREC_FP32) {
        SAY("model.precision fp32");
        return;
    }
    if (in->full) {
        if (in->mode == TSR_PREC_BF16) {
            out->error = 1;
            SAY("model.precision bf16 applies to a frozen backbone only: full fine-tuning (adapt.mode full, "
                "tessera train) trains in fp32; set model.precision to fp32 or auto");
        } else {
            SAY("model.precision auto: fp32 (full fine-tuning trains the backbone in fp32)");
        }
        return;
    }
    if (in->mode == TSR_PREC_BF16) {
        if (!in->lib_bf16) {
            out->error = 1;
            SAY("model.precision bf16: no bf16 matrix product on this machine (%s)%s; set model.precision to fp32 "
                "or auto", lib, in->cpu_bf16 ? "" : "; the CPU has neither avx512_bf16 nor amx_bf16");
            return;
        }
        out->bf16 = 1;
        if (!in->cpu_bf16) {
            out->warn = 1;
            SAY("model.precision bf16: the CPU has neither avx512_bf16 nor amx_bf16; %s emulates bf16, expect "
                "it to be slower than fp32", lib);
        } else {
            SAY("model.precision bf16 (%s)", lib);
        }
        return;
    }
    /* auto */
    if (!in->cpu_bf16) {
        SAY("model.precision auto: fp32 (the CPU has neither avx512_bf16 nor amx_bf16)");
        return;
    }
    if (!in->lib_bf16) {
        SAY("model.precision auto: fp32 (no bf16 matrix product: %s)", lib);
        return;
    }
    if (!measured(in->t_fp32) || !measured(in->t_bf16)) {
        SAY("model.precision auto: fp32 (the start-up products were not measured)");
        return;
    }
    double speedup = in->t_fp32 / in->t_bf16;
    out->bf16 = speedup > TSR_PREC_AUTO_MARGIN;
    SAY("model.precision auto: %s (representative product: fp32 %.2f ms, bf16 %.2f ms, bf16 %.2fx; bf16 needs > "
        "%.2fx; %s)", out->bf16 ? "bf16" : "fp32", in->t_fp32 * 1e3, in->t_bf16 * 1e3, speedup,
        TSR_PREC_AUTO_MARGIN, lib);
#undef SAY
}
