/* precision.h: the choice of model.precision (fp32 | bf16 | auto), a pure function of what was detected
 * and measured, so that the tests can fake both (tests/core/test_precision.c). */
#ifndef TSR_PRECISION_H
#define TSR_PRECISION_H

typedef enum { TSR_PREC_FP32 = 0, TSR_PREC_BF16, TSR_PREC_AUTO } tsr_precision_mode;

/* bf16 must be at least this much faster (t_fp32 / t_bf16) for auto to pick it. */
#define TSR_PREC_AUTO_MARGIN 1.10

typedef struct {
    tsr_precision_mode mode;
    int cpu_bf16;   /* the CPU has avx512_bf16 or amx_bf16 (native bf16 dot products) */
    int lib_bf16;   /* a bf16 matmul can be made here (oneDNN present; natively, or emulated on AVX-512) */
    const char *lib_note; /* why not / which implementation, for the messages (may be NULL) */
    int full;       /* the backbone is trained (full fine-tuning): always fp32 */
    double t_fp32, t_bf16; /* seconds of the representative product; <= 0 or not finite: not measured */
} tsr_precision_inputs;

typedef struct {
    int bf16;        /* 1: frozen backbone weights in bf16 */
    int error;       /* 1: refuse (reason names the key and what is missing) */
    int warn;        /* 1: log reason as a warning */
    char reason[400];
} tsr_precision_choice;

/* "fp32" | "bf16" | "auto" -> mode; -1 for anything else. */
int tsr_precision_parse(const char *s);
/* 1 when auto needs the two timings (CPU and library can do bf16, not full training). */
int tsr_precision_needs_timing(const tsr_precision_inputs *in);
/* The decision:
 *   full training: fp32 (explicit bf16 is an error; auto says why it stays fp32);
 *   fp32: fp32;
 *   bf16: bf16 when the library can make the product; a warning when the CPU lacks native bf16
 *         (emulated: slow); an error when the library cannot (naming the key and what the CPU lacks);
 *   auto: fp32 unless the CPU has native bf16, the library can make the product, and the measured
 *         bf16 product is faster by the margin (t_fp32 > TSR_PREC_AUTO_MARGIN * t_bf16). */
void tsr_precision_choose(const tsr_precision_inputs *in, tsr_precision_choice *out);
#endif
