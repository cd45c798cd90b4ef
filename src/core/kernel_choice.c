/* kernel_choice.c: the BLAS kernel decision (see kernel_choice.h). */
#include "kernel_choice.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int tsr_kernel_is_avx512(tsr_blas_lib lib, const char *k) {
    /* BLIS: sub-configurations with AVX-512 micro-kernels (zen4 / zen5 exist from BLIS 1.0 on).
     * OpenBLAS: core names as openblas_get_corename() and OPENBLAS_CORETYPE spell them. */
    static const char *blis[] = {"skx", "knl", "zen4", "zen5", NULL};
    static const char *openblas[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    if (!k) return 0;
    if (lib == TSR_LIB_MKL) return 1; /* MKL dispatches by itself and reports no kernel name */
    const char **list = lib == TSR_LIB_BLIS ? blis : openblas;
    for (int i = 0; list[i]; i++)
        if (strcasecmp(k, list[i]) == 0) return 1;
    return 0;
}

static int available(const tsr_kernel_inputs *in, const char *k) {
    if (!in->available) return strcmp(k, "skx") == 0;
    for (int i = 0; in->available[i]; i++)
        if (strcmp(in->available[i], k) == 0) return 1;
    return 0;
}

static void keep(tsr_kernel_choice *o, int warn, const char *fmt, const char *a, const char *b) {
    o->kernel[0] = 0;
    o->warn = warn;
    snprintf(o->reason, sizeof o->reason, fmt, a ? a : "", b ? b : "");
}

void tsr_kernel_choose(const tsr_cpu_features *cpu, const tsr_kernel_inputs *in, tsr_kernel_choice *o) {
    const char *det = in->detected ? in->detected : "unknown";
    if (in->lib == TSR_LIB_MKL) {
        keep(o, 0, "MKL dispatches on the CPU by itself%s%s", NULL, NULL);
        return;
    }
    if (in->lib == TSR_LIB_BLIS && in->blis_arch_type && !isdigit((unsigned char)in->blis_arch_type[0]) &&
        strcmp(in->blis_arch_type, det) != 0) {
        keep(o, 0, "BLIS_ARCH_TYPE=%s is set by the user, but BLIS runs '%s': BLIS 0.9 reads the variable as "
                   "a numeric id (a name reads as 0, 'skx'); kept", in->blis_arch_type, det);
        return;
    }
    if (!tsr_cpu_has_avx512(cpu)) {
        keep(o, 0, "no AVX-512 (F, DQ, BW, VL) on this CPU: the library's '%s' kept%s", det, NULL);
        return;
    }
    if (tsr_kernel_is_avx512(in->lib, det)) {
        keep(o, 0, "the library's '%s' already uses AVX-512%s", det, NULL);
        return;
    }
    if (in->lib == TSR_LIB_BLIS) {
        if (in->blis_arch_type) {
            keep(o, 1, "BLIS_ARCH_TYPE=%s is set by the user: kept, although '%s' has no AVX-512 kernels "
                       "and this CPU has AVX-512", in->blis_arch_type, det);
            return;
        }
        if (in->tessera_blis_arch && strcmp(in->tessera_blis_arch, "auto") == 0) {
            keep(o, 1, "TESSERA_BLIS_ARCH=auto: BLIS's own '%s' kept, although it has no AVX-512 kernels "
                       "and this CPU has AVX-512%s", det, NULL);
            return;
        }
        const char *pick = NULL;
        if (cpu->vendor == TSR_CPU_AMD && cpu->family >= 26 && available(in, "zen5")) pick = "zen5";
        else if (cpu->vendor == TSR_CPU_AMD && cpu->family >= 25 && available(in, "zen4")) pick = "zen4";
        else if (available(in, "skx")) pick = "skx";
        if (!pick) {
            keep(o, 1, "this BLIS build has no AVX-512 kernel set (no skx, zen4, zen5): '%s' kept%s", det, NULL);
            return;
        }
        snprintf(o->kernel, sizeof o->kernel, "%s", pick);
        o->warn = 0;
        snprintf(o->reason, sizeof o->reason,
                 "BLIS picked '%s' (no AVX-512 kernels) on an AVX-512 CPU: '%s' selected through BLIS_ARCH_TYPE "
                 "(TESSERA_BLIS_ARCH=auto or BLIS_ARCH_TYPE keeps another choice)", det, pick);
        return;
    }
    /* OpenBLAS */
    if (in->openblas_coretype) {
        keep(o, 1, "OPENBLAS_CORETYPE=%s is set in the environment (some machines set it to avoid wrong "
                   "results of old OpenBLAS on new CPUs): kept, although '%s' has no AVX-512 kernels and this "
                   "CPU has AVX-512 (about 2x slower sgemm); unset it to let tessera select SkylakeX, which "
                   "its sgemm/dgemm self-check verifies", in->openblas_coretype, det);
        return;
    }
    snprintf(o->kernel, sizeof o->kernel, "SkylakeX");
    o->warn = 0;
    snprintf(o->reason, sizeof o->reason,
             "OpenBLAS picked '%s' (no AVX-512 kernels) on an AVX-512 CPU: 'SkylakeX' selected "
             "(OPENBLAS_CORETYPE set by the user keeps another choice)", det);
}

int tsr_gemm_choose(const tsr_cpu_features *cpu, int have_onednn, const char *user, char *why, int len) {
    if (user && strcmp(user, "blas") == 0) {
        snprintf(why, (size_t)len, "TESSERA_GEMM=blas");
        return 0;
    }
    if (user && strcmp(user, "onednn") == 0) {
        if (have_onednn) {
            snprintf(why, (size_t)len, "TESSERA_GEMM=onednn");
            return 1;
        }
        snprintf(why, (size_t)len, "TESSERA_GEMM=onednn, but this build has no oneDNN (install libdnnl-dev and "
                 "rebuild, or use TESSERA_GEMM=blas|auto)");
        return -1;
    }
    if (user && user[0] && strcmp(user, "auto") != 0) {
        snprintf(why, (size_t)len, "TESSERA_GEMM='%.40s': expected blas, onednn or auto", user);
        return -1;
    }
    if (!have_onednn) {
        snprintf(why, (size_t)len, "auto: this build has no oneDNN");
        return 0;
    }
    if (!cpu->avx2 || !cpu->fma) {
        snprintf(why, (size_t)len, "auto: the CPU has no AVX2 + FMA, where oneDNN's sgemm has no JIT kernel");
        return 0;
    }
    snprintf(why, (size_t)len, "auto: oneDNN JITs its kernels for this CPU (%s)", tsr_cpu_has_avx512(cpu) ? "AVX-512" : "AVX2");
    return 1;
}
