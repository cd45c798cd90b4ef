/* runtime.c: start-up banner and the version command. */
#include <stdio.h>
#include <string.h>

#include "build_info.h"
#include "cmd/commands.h"
#include "core/blas.h"
#include "core/common.h"
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

int tsr_runtime_setup(int threads) {
    char note[512];
    int fail = tsr_blas_init(note, sizeof note) != 0;
    if (fail) tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
    if (tsr_dist_agree_fail(tsr_comm_world(), fail)) return -1;
    int n = tsr_dist_set_threads(threads);
    char v[1024];
    tsr_version_string(v, sizeof v);
    tsr_info("%s", v);
    tsr_info("ranks: %d (%d on this node) x threads: %d", tsr_world.size, tsr_world.local_size, n);
    if (note[0]) tsr_info("blas: %s", note);
    tsr_info("simd: %s elementwise kernels (GELU, exp, LayerNorm; TESSERA_SIMD overrides)",
             tsr_simd_name(tsr_simd_level()));
    if (tsr_blas_generic_on_avx512() && tsr_world.rank == 0)
        tsr_warn("the BLAS runs a generic (non-AVX-512) kernel on this AVX-512 CPU: expect a 3-6x slower "
                 "run. HINT: build with -DTESSERA_BLAS=blis (default), or check BLIS_ARCH_TYPE / "
                 "OPENBLAS_CORETYPE");
    return 0;
}

int tsr_cmd_version(int argc, char **argv) {
    (void)argc;
    (void)argv;
    char note[512];
    if (tsr_blas_init(note, sizeof note) != 0) tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
    char v[1024];
    tsr_version_string(v, sizeof v);
    if (tsr_world.rank == 0) printf("%s\n", v);
    return 0;
}
