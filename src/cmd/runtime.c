/* runtime.c: start-up banner and the version command. */
#include <stdio.h>
#include <string.h>

#include "build_info.h"
#include "cmd/commands.h"
#include "core/blas.h"
#include "core/common.h"
#include "core/cpu.h"
#include "dist/parallel.h"
#include "model/vec.h"

void tsr_version_string(char *buf, int len) {
    char blas[256], mpi[256];
    tsr_blas_describe(blas, sizeof blas);
    tsr_dist_library(mpi, sizeof mpi);
    snprintf(buf, (size_t)len,
             "tessera %s (git %s)\n"
             "compiler: %s %s, %s build, flags:%s\n"
             "blas: %s\n"
             "mpi: %s",
             TSR_VERSION, TSR_GIT_COMMIT,
#if defined(__clang__)
             "clang",
#else
             "gcc",
#endif
             __VERSION__, TSR_BUILD_TYPE, TSR_C_FLAGS, blas, mpi);
}

/* The machine's fp32 FMA peak per core for the banner: a 20 ms register-only loop (src/core/cpu.c, the
 * kernel of bench/bench_peak) and the nominal figure from the features and the clock. */
static void peak_line(char *buf, int len) {
    tsr_cpu_features f;
    tsr_cpu_detect(&f);
    char src[64];
    double mhz = tsr_cpu_mhz(src, sizeof src), measured = tsr_cpu_fma_peak_quick(&f, 20);
    int fpc = tsr_cpu_nominal_flop_per_cycle(&f);
    char nominal[160];
    if (mhz > 0)
        snprintf(nominal, sizeof nominal, "nominal %.0f GFLOP/s (%d flop/cycle, assuming 2 FMA units, x %.0f MHz "
                 "from %s)", fpc * mhz * 1e-3, fpc, mhz, src);
    else snprintf(nominal, sizeof nominal, "nominal %d flop/cycle (clock unknown)", fpc);
    snprintf(buf, (size_t)len, "fp32 FMA peak per core: measured %.0f GFLOP/s (%s loop, 20 ms, 1 thread), %s",
             measured, tsr_cpu_fma_isa(&f), nominal);
}

int tsr_runtime_setup(int threads) {
    char note[1024];
    int fail = tsr_blas_init(note, sizeof note) != 0;
    if (fail) tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
    if (tsr_dist_agree_fail(tsr_comm_world(), fail)) return -1;
    int n = tsr_dist_set_threads(threads);
    char v[1024];
    tsr_version_string(v, sizeof v);
    tsr_info("%s", v);
    tsr_info("ranks: %d (%d on this node) x threads: %d", tsr_world.size, tsr_world.local_size, n);
    if (tsr_world.rank == 0) {
        tsr_info("blas: %s", note);
        char peak[384];
        peak_line(peak, sizeof peak);
        tsr_info("%s", peak);
        tsr_info("simd: %s elementwise kernels (GELU, exp, LayerNorm; TESSERA_SIMD overrides)",
                 tsr_simd_name(tsr_simd_level()));
        char slow[1024];
        if (tsr_blas_slow_kernel(slow, sizeof slow))
            tsr_warn("%s. HINT: unset BLIS_ARCH_TYPE / TESSERA_BLIS_ARCH / OPENBLAS_CORETYPE, or build with "
                     "-DTESSERA_BLAS=blis (default)", slow);
    }
    return 0;
}

int tsr_cmd_version(int argc, char **argv) {
    (void)argc;
    (void)argv;
    char note[1024];
    if (tsr_blas_init(note, sizeof note) != 0) tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
    char v[1024];
    tsr_version_string(v, sizeof v);
    if (tsr_world.rank == 0) printf("%s\n", v);
    return 0;
}
