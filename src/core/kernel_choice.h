/* kernel_choice.h: which BLAS kernel set to run, decided from the detected CPU features, the
 * library's own choice and the user's environment. A pure function (no environment, no BLAS call)
 * so that tests can drive it with faked detections; src/core/blas.c gathers the inputs, applies the
 * choice, checks it (sgemm/dgemm against a naive loop) and falls back to the library's choice. */
#ifndef TSR_KERNEL_CHOICE_H
#define TSR_KERNEL_CHOICE_H
#include "cpu.h"

typedef enum { TSR_LIB_BLIS = 0, TSR_LIB_OPENBLAS, TSR_LIB_MKL } tsr_blas_lib;

typedef struct {
    tsr_blas_lib lib;
    const char *detected;             /* the kernel set the library picks on its own ("haswell") */
    const char *const *available;     /* BLIS: the sub-configuration names it knows, NULL-terminated;
                                         NULL = unknown (then 'skx' is assumed to exist) */
    const char *blis_arch_type;       /* getenv("BLIS_ARCH_TYPE"): the user's choice, or NULL */
    const char *tessera_blis_arch;    /* getenv("TESSERA_BLIS_ARCH"): "auto" keeps BLIS's choice */
    const char *openblas_coretype;    /* getenv("OPENBLAS_CORETYPE") at start-up, or NULL */
} tsr_kernel_inputs;

typedef struct {
    char kernel[32];  /* the kernel set to select; "" = keep the library's choice */
    int warn;         /* 1: the kept choice runs without AVX-512 on an AVX-512 CPU (say so in the log) */
    char reason[320]; /* one sentence for the log */
} tsr_kernel_choice;

/* 1 when `kernel` names one of the library's kernel sets with AVX-512 micro-kernels. */
int tsr_kernel_is_avx512(tsr_blas_lib lib, const char *kernel);
/* The decision (table in docs/ARCHITECTURE.md, "BLAS"). */
void tsr_kernel_choose(const tsr_cpu_features *cpu, const tsr_kernel_inputs *in, tsr_kernel_choice *out);

/* Which library runs the float matrix products of the model (tsr_gemm): the BLAS above, or oneDNN's
 * sgemm (JIT kernels for the CPU it runs on: AVX2, AVX-512, AMX). user: getenv("TESSERA_GEMM"),
 * "blas" | "onednn" | "auto" (NULL or "" = auto). auto: oneDNN when the build has it and the CPU has AVX2
 * and FMA, else the BLAS (measured on Zen 5: oneDNN 1.10-1.35x BLIS skx on every benchmark workload).
 * 1 = oneDNN, 0 = the BLAS, -1 = an unknown value or "onednn" without oneDNN. why: one sentence. */
int tsr_gemm_choose(const tsr_cpu_features *cpu, int have_onednn, const char *user, char *why, int len);
#endif
