/* peak.c (target bench_peak): the machine's arithmetic peaks, measured with register-only loops.
 *   fp32 FMA per core and for 1..N threads (OpenMP), through src/core/cpu.c's loop (12 independent
 *     accumulators; AVX-512, else AVX2+FMA, else SSE, dispatched on the detected features);
 *   bf16 dot product vdpbf16ps (AVX512_BF16) where the CPU has it: 12 zmm accumulators, each
 *     instruction 16 lanes x 2 pairs x 2 flops = 64 flops;
 *   AMX bf16 (tdpbf16ps) where the CPU has amx_bf16 and Linux grants the tile data permission
 *     (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): 4 accumulator tiles of 16 x 16 fp32, each
 *     instruction 16 x 16 x 32 x 2 = 16384 flops.
 * Every loop runs only when the CPU and OS have its instructions; otherwise a `skip` line says why.
 * usage: bench_peak [MAX_THREADS=online cores] [SECONDS_PER_FIGURE=0.3]
 * Output lines: `peak KIND threads=N gflops=X` (KIND fp32_fma, bf16_dot, amx_bf16).
 *
 * Verified with `objdump -d --no-show-raw-insn build/CMakeFiles/bench_peak.dir/bench/peak.c.o` (and
 * tessera_core's cpu.c.o for the fp32 loop), gcc 12 -O3: the inner loops are 12 vdpbf16ps /
 * vfmadd132ps with zmm register operands only, a compare and a branch. A first version started the
 * bf16 accumulators all at zero: gcc merged the 12 identical chains into one vdpbf16ps per iteration
 * and the figure came out 12x too high. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <omp.h>

#include "core/common.h"
#include "core/cpu.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <sys/syscall.h>
#define PEAK_X86 1
#endif

typedef double (*kernel_fn)(long iters, float *sink); /* runs iters iterations, returns flops */

static tsr_cpu_features cpu;

static double fp32_kernel(long iters, float *sink) { return tsr_cpu_fma_loop(&cpu, iters, sink); }

#ifdef PEAK_X86
__attribute__((target("avx512f,avx512bf16"), noinline)) static float dot_bf16(long iters) {
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80); /* bf16 1.0 */
    __m512bh b = (__m512bh)_mm512_set1_epi16(0x3580); /* bf16 2^-20 */
    /* distinct starting values: equal ones let the compiler merge the 12 chains into one */
    __m512 c0 = _mm512_set1_ps(0.f), c1 = _mm512_set1_ps(1.f), c2 = _mm512_set1_ps(2.f),
           c3 = _mm512_set1_ps(3.f), c4 = _mm512_set1_ps(4.f), c5 = _mm512_set1_ps(5.f),
           c6 = _mm512_set1_ps(6.f), c7 = _mm512_set1_ps(7.f), c8 = _mm512_set1_ps(8.f),
           c9 = _mm512_set1_ps(9.f), c10 = _mm512_set1_ps(10.f), c11 = _mm512_set1_ps(11.f);
    for (long i = 0; i < iters; i++) {
        c0 = _mm512_dpbf16_ps(c0, a, b); c1 = _mm512_dpbf16_ps(c1, a, b); c2 = _mm512_dpbf16_ps(c2, a, b);
        c3 = _mm512_dpbf16_ps(c3, a, b); c4 = _mm512_dpbf16_ps(c4, a, b); c5 = _mm512_dpbf16_ps(c5, a, b);
        c6 = _mm512_dpbf16_ps(c6, a, b); c7 = _mm512_dpbf16_ps(c7, a, b); c8 = _mm512_dpbf16_ps(c8, a, b);
        c9 = _mm512_dpbf16_ps(c9, a, b); c10 = _mm512_dpbf16_ps(c10, a, b); c11 = _mm512_dpbf16_ps(c11, a, b);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                             _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)));
    return _mm512_reduce_add_ps(s);
}
static double bf16_kernel(long iters, float *sink) {
    *sink += dot_bf16(iters);
    return (double)iters * 12 * 64;
}

/* AMX: palette 1; tiles 0-3 accumulators (16 rows x 64 bytes fp32), 4-5 A (16 x 32 bf16), 6-7 B. */
struct tile_config {
    unsigned char palette, start_row, reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
};
__attribute__((target("amx-tile,amx-bf16"), noinline)) static float amx_bf16(long iters) {
    static unsigned short src[16 * 32] __attribute__((aligned(64)));
    static float dst[16 * 16] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 32; i++) src[i] = 0x3580;
    struct tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, src, 64); _tile_loadd(5, src, 64); _tile_loadd(6, src, 64); _tile_loadd(7, src, 64);
    for (long i = 0; i < iters; i++) {
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, dst, 64);
    _tile_release();
    return dst[0];
}
static double amx_kernel(long iters, float *sink) {
    *sink += amx_bf16(iters);
    return (double)iters * 4 * 16 * 16 * 32 * 2;
}

/* Linux: a process must ask for the AMX tile data state before using it. 0 when granted. */
static int amx_permission(char *why, int len) {
    long r = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
    if (r != 0) snprintf(why, (size_t)len, "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) refused (Linux < 5.16?)");
    return r == 0 ? 0 : -1;
}
#endif

/* GFLOP/s of `threads` threads each running the kernel, timed for about `seconds` (best of 3). */
static double measure(kernel_fn k, int threads, double seconds) {
    float sink = 0;
    long iters = 4096;
    double t0 = tsr_time(), fl = k(iters, &sink), dt = tsr_time() - t0;
    while (dt < 0.02) { /* size the slice from a run of at least 20 ms */
        iters *= 4;
        t0 = tsr_time();
        fl = k(iters, &sink);
        dt = tsr_time() - t0;
    }
    iters = (long)(iters * (seconds / 3) / dt) + 1;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double total = 0;
        t0 = tsr_time();
#pragma omp parallel num_threads(threads) reduction(+ : total)
        {
            float s = 0;
            total += k(iters, &s);
            if (s == 12345.f) fprintf(stderr, " ");
        }
        dt = tsr_time() - t0;
        if (total / dt > best) best = total / dt;
    }
    (void)fl;
    if (sink == 12345.f) fprintf(stderr, " ");
    return best * 1e-9;
}

static void series(const char *kind, kernel_fn k, int max_threads, double seconds) {
    for (int t = 1; t <= max_threads; t *= 2) {
        printf("peak %s threads=%d gflops=%.1f\n", kind, t, measure(k, t, seconds));
        fflush(stdout);
        if (t < max_threads && t * 2 > max_threads) t = max_threads / 2; /* end on max_threads */
    }
}

int main(int argc, char **argv) {
    int max_threads = argc > 1 ? atoi(argv[1]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    double seconds = argc > 2 ? atof(argv[2]) : 0.3;
    if (max_threads < 1) max_threads = 1;
    tsr_cpu_detect(&cpu);
    char d[160], src[64];
    tsr_cpu_describe(&cpu, d, sizeof d);
    double mhz = tsr_cpu_mhz(src, sizeof src);
    printf("cpu %s\n", d);
    printf("clock mhz=%.0f source=%s\n", mhz, src);
    printf("nominal fp32_fma flop_per_cycle=%d gflops_per_core=%.1f (assumes 2 FMA units)\n",
           tsr_cpu_nominal_flop_per_cycle(&cpu), tsr_cpu_nominal_flop_per_cycle(&cpu) * mhz * 1e-3);
    printf("# fp32 loop: %s\n", tsr_cpu_fma_isa(&cpu));
    series("fp32_fma", fp32_kernel, max_threads, seconds);
#ifdef PEAK_X86
    if (cpu.avx512_bf16) series("bf16_dot", bf16_kernel, max_threads, seconds);
    else printf("skip bf16_dot: no AVX512_BF16 on this CPU\n");
    char why[128];
    if (!cpu.amx_bf16 || !cpu.amx_tile) printf("skip amx_bf16: no AMX (amx_tile, amx_bf16) on this CPU\n");
    else if (amx_permission(why, sizeof why) != 0) printf("skip amx_bf16: %s\n", why);
    else series("amx_bf16", amx_kernel, max_threads, seconds);
#else
    printf("skip bf16_dot: not an x86-64 build\nskip amx_bf16: not an x86-64 build\n");
#endif
    return 0;
}
