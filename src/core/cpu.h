/* cpu.h: what the CPU can do, detected at run time (cpuid and the OS's XCR0 state mask), a nominal
 * fp32 FMA peak from the detected features and the clock, and a short measured fp32 FMA peak
 * (a register-only loop, dispatched on the detected features: AVX-512, AVX2+FMA, or plain SSE). */
#ifndef TSR_CPU_H
#define TSR_CPU_H

typedef enum { TSR_CPU_OTHER = 0, TSR_CPU_INTEL, TSR_CPU_AMD } tsr_cpu_vendor;

/* Each flag is 1 only when the CPU has the feature AND the OS saves its register state (XCR0), as
 * Linux's /proc/cpuinfo flags. */
typedef struct {
    int avx2, fma;
    int avx512f, avx512dq, avx512bw, avx512vl;
    int avx512_bf16;
    int amx_tile, amx_bf16;
    tsr_cpu_vendor vendor;
    int family, model; /* display family and model (base + extended fields) */
} tsr_cpu_features;

/* Detect the running CPU (all zero on a non-x86-64 build). */
void tsr_cpu_detect(tsr_cpu_features *f);
/* 1 when AVX-512 F, DQ, BW and VL are all there: what the AVX-512 BLAS kernels need. */
int tsr_cpu_has_avx512(const tsr_cpu_features *f);
/* e.g. "AMD family 26 model 2: avx2 fma avx512f/dq/bw/vl avx512_bf16, no amx_bf16". */
void tsr_cpu_describe(const tsr_cpu_features *f, char *buf, int len);

/* The clock in MHz and where it was read (source gets e.g. "/proc/cpuinfo 'cpu MHz'"); 0 when unknown.
 * cpuinfo_max_freq (sysfs) is preferred: 'cpu MHz' may be a momentary or a virtualised figure. */
double tsr_cpu_mhz(char *source, int len);
/* Nominal fp32 flop per cycle per core from the features, assuming two FMA units (Intel server cores
 * with two 512-bit FMA ports, AMD Zen 5): AVX-512 2 x 16 lanes x 2 = 64, AVX2+FMA 32, else 8 (SSE
 * add + mul). Some cores have one 512-bit FMA port, or split 512-bit operations in two (Zen 4): half. */
int tsr_cpu_nominal_flop_per_cycle(const tsr_cpu_features *f);

/* The vector width the measured loop uses for these features: "avx512", "avx2" or "sse". */
const char *tsr_cpu_fma_isa(const tsr_cpu_features *f);
/* Run the fp32 FMA throughput loop `iters` times on the calling thread (12 independent accumulators,
 * each iteration 12 FMAs of the ISA's width) and return the flops executed. The result of the
 * arithmetic goes to *sink so that the loop is not removed. Never runs an instruction set the CPU
 * lacks (dispatch on f). */
double tsr_cpu_fma_loop(const tsr_cpu_features *f, long iters, float *sink);
/* A quick measured single-thread fp32 FMA peak in GFLOP/s: the loop timed for about `ms`
 * milliseconds (best of 3 slices, after a warm-up slice). */
double tsr_cpu_fma_peak_quick(const tsr_cpu_features *f, double ms);
#endif
