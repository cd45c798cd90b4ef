/* test_kernel_choice.c: the BLAS kernel decision (src/core/kernel_choice.c) driven with faked CPU
 * detections and library choices, and the CPU feature detection (src/core/cpu.c) held to the flags
 * line of /proc/cpuinfo on whatever CPU runs the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/cpu.h"
#include "core/kernel_choice.h"

static const char *blis09[] = {"skx", "knl", "knc", "haswell", "sandybridge", "penryn", "zen3", "zen2", "zen",
                               "excavator", "steamroller", "piledriver", "bulldozer", "generic", NULL};
static const char *blis_new[] = {"skx", "knl", "haswell", "zen5", "zen4", "zen3", "zen2", "zen", "generic", NULL};

static tsr_cpu_features intel_avx512(void) {
    return (tsr_cpu_features){.avx2 = 1, .fma = 1, .avx512f = 1, .avx512dq = 1, .avx512bw = 1, .avx512vl = 1,
                              .avx512_bf16 = 1, .vendor = TSR_CPU_INTEL, .family = 6, .model = 207};
}
static tsr_cpu_features amd_zen5(void) {
    tsr_cpu_features f = intel_avx512();
    f.vendor = TSR_CPU_AMD;
    f.family = 26;
    f.model = 2;
    return f;
}
static tsr_cpu_features avx2_only(void) {
    return (tsr_cpu_features){.avx2 = 1, .fma = 1, .vendor = TSR_CPU_INTEL, .family = 6, .model = 85};
}
static tsr_kernel_choice run(tsr_cpu_features f, tsr_kernel_inputs in) {
    tsr_kernel_choice c;
    memset(&c, 0x55, sizeof c);
    tsr_kernel_choose(&f, &in, &c);
    assert_true(strlen(c.reason) > 10); /* always a reason for the log */
    return c;
}
#define BLIS(det) ((tsr_kernel_inputs){.lib = TSR_LIB_BLIS, .detected = (det), .available = blis09})
#define OPENBLAS(det) ((tsr_kernel_inputs){.lib = TSR_LIB_OPENBLAS, .detected = (det)})

static void test_blis_selects_avx512(void **state) {
    (void)state;
    /* the Intel Xeon of model 207: BLIS 0.9 picks haswell */
    tsr_kernel_choice c = run(intel_avx512(), BLIS("haswell"));
    assert_string_equal(c.kernel, "skx");
    assert_int_equal(c.warn, 0);
    assert_non_null(strstr(c.reason, "'haswell'")); /* names the actual kernel, not 'generic' */
    /* the Zen 5: BLIS 0.9 picks generic, and has no zen4 / zen5 */
    c = run(amd_zen5(), BLIS("generic"));
    assert_string_equal(c.kernel, "skx");
    assert_non_null(strstr(c.reason, "'generic'"));
    for (const char **k = (const char *[]){"zen", "zen2", "zen3", "sandybridge", "penryn", NULL}; *k; k++)
        assert_string_equal(run(intel_avx512(), BLIS(*k)).kernel, "skx");
    /* a BLIS with zen4 / zen5: AMD family 25 -> zen4, 26 -> zen5, Intel -> skx */
    tsr_kernel_inputs in = BLIS("zen3");
    in.available = blis_new;
    assert_string_equal(run(amd_zen5(), in).kernel, "zen5");
    tsr_cpu_features zen4 = amd_zen5();
    zen4.family = 25;
    assert_string_equal(run(zen4, in).kernel, "zen4");
    assert_string_equal(run(intel_avx512(), in).kernel, "skx");
    /* a BLIS without any AVX-512 set: keep, warn */
    static const char *no512[] = {"haswell", "zen3", "generic", NULL};
    in.available = no512;
    c = run(intel_avx512(), in);
    assert_string_equal(c.kernel, "");
    assert_int_equal(c.warn, 1);
}

static void test_blis_keeps(void **state) {
    (void)state;
    /* AVX2-only CPU: haswell is right */
    tsr_kernel_choice c = run(avx2_only(), BLIS("haswell"));
    assert_string_equal(c.kernel, "");
    assert_int_equal(c.warn, 0);
    /* partial AVX-512 (F without BW/VL, as Knights Landing): not enough for skx */
    tsr_cpu_features p = avx2_only();
    p.avx512f = 1;
    assert_string_equal(run(p, BLIS("haswell")).kernel, "");
    /* AVX-512 set already */
    for (const char **k = (const char *[]){"skx", "knl", "zen4", "zen5", NULL}; *k; k++) {
        c = run(intel_avx512(), BLIS(*k));
        assert_string_equal(c.kernel, "");
        assert_int_equal(c.warn, 0);
    }
    /* the user's BLIS_ARCH_TYPE (a numeric id, as BLIS 0.9 reads it) */
    tsr_kernel_inputs in = BLIS("haswell");
    in.blis_arch_type = "3";
    c = run(intel_avx512(), in);
    assert_string_equal(c.kernel, "");
    assert_int_equal(c.warn, 1);
    assert_non_null(strstr(c.reason, "BLIS_ARCH_TYPE=3"));
    /* a name that BLIS 0.9 read as id 0 (skx): kept, the log says what happened */
    in = BLIS("skx");
    in.blis_arch_type = "haswell";
    c = run(intel_avx512(), in);
    assert_string_equal(c.kernel, "");
    assert_non_null(strstr(c.reason, "numeric id"));
    /* TESSERA_BLIS_ARCH=auto keeps BLIS's choice, and says it is slow */
    in = BLIS("generic");
    in.tessera_blis_arch = "auto";
    c = run(amd_zen5(), in);
    assert_string_equal(c.kernel, "");
    assert_int_equal(c.warn, 1);
    /* any other value of TESSERA_BLIS_ARCH does not stop the selection */
    in.tessera_blis_arch = "yes";
    assert_string_equal(run(amd_zen5(), in).kernel, "skx");
}

static void test_openblas(void **state) {
    (void)state;
    /* AVX-512 CPU, OpenBLAS picked Haswell / Zen / Sandybridge / Prescott on its own: SkylakeX */
    for (const char **k = (const char *[]){"Haswell", "Zen", "Sandybridge", "Prescott", NULL}; *k; k++) {
        tsr_kernel_choice c = run(intel_avx512(), OPENBLAS(*k));
        assert_string_equal(c.kernel, "SkylakeX");
        assert_int_equal(c.warn, 0);
    }
    assert_string_equal(run(amd_zen5(), OPENBLAS("Zen")).kernel, "SkylakeX");
    /* OPENBLAS_CORETYPE set in the environment: kept, with a warning that explains */
    tsr_kernel_inputs in = OPENBLAS("Haswell");
    in.openblas_coretype = "Haswell";
    tsr_kernel_choice c = run(amd_zen5(), in);
    assert_string_equal(c.kernel, "");
    assert_int_equal(c.warn, 1);
    assert_non_null(strstr(c.reason, "OPENBLAS_CORETYPE=Haswell"));
    /* already AVX-512, and AVX2-only CPUs: keep, no warning */
    for (const char **k = (const char *[]){"SkylakeX", "Cooperlake", "SapphireRapids", NULL}; *k; k++)
        assert_int_equal(run(intel_avx512(), OPENBLAS(*k)).kernel[0], 0);
    c = run(avx2_only(), OPENBLAS("Haswell"));
    assert_string_equal(c.kernel, "");
    assert_int_equal(c.warn, 0);
    /* MKL: never touched */
    c = run(intel_avx512(), (tsr_kernel_inputs){.lib = TSR_LIB_MKL, .detected = "mkl-dispatch"});
    assert_string_equal(c.kernel, "");
    assert_int_equal(c.warn, 0);
}

/* 1 when `flag` is a whole word of the flags line. */
static int has_flag(const char *flags, const char *flag) {
    size_t n = strlen(flag);
    for (const char *p = flags; (p = strstr(p, flag)) != NULL; p += n)
        if ((p == flags || p[-1] == ' ' || p[-1] == '\t') && (p[n] == ' ' || p[n] == '\n' || p[n] == 0)) return 1;
    return 0;
}

static void test_detection_matches_cpuinfo(void **state) {
    (void)state;
    FILE *fp = fopen("/proc/cpuinfo", "r");
    if (!fp) skip();
    static char line[8192];
    int found = 0;
    while (fgets(line, sizeof line, fp))
        if (strncmp(line, "flags", 5) == 0) {
            found = 1;
            break;
        }
    fclose(fp);
    if (!found) skip(); /* not x86 Linux */
    tsr_cpu_features f;
    tsr_cpu_detect(&f);
    struct { const char *name; int got; } checks[] = {
        {"avx2", f.avx2}, {"fma", f.fma}, {"avx512f", f.avx512f}, {"avx512dq", f.avx512dq},
        {"avx512bw", f.avx512bw}, {"avx512vl", f.avx512vl}, {"avx512_bf16", f.avx512_bf16},
        {"amx_bf16", f.amx_bf16}, {"amx_tile", f.amx_tile}};
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        int want = has_flag(line, checks[i].name);
        if (want != checks[i].got)
            fail_msg("%s: /proc/cpuinfo says %d, tsr_cpu_detect says %d", checks[i].name, want, checks[i].got);
    }
    assert_true(f.vendor != TSR_CPU_OTHER);
    assert_true(f.family > 0);
    char d[160];
    tsr_cpu_describe(&f, d, sizeof d);
    print_message("detected: %s\n", d);
}

/* the float products' library: the user's choice wins (an unknown one or oneDNN without oneDNN is an error);
 * auto takes oneDNN where it is built and the CPU has AVX2 + FMA */
static void test_gemm_choice(void **state) {
    (void)state;
    char why[200];
    tsr_cpu_features z5 = amd_zen5(), i5 = intel_avx512(), a2 = avx2_only(), none = {0};
    assert_int_equal(tsr_gemm_choose(&z5, 1, NULL, why, sizeof why), 1);
    assert_non_null(strstr(why, "AVX-512"));
    assert_int_equal(tsr_gemm_choose(&i5, 1, "auto", why, sizeof why), 1);
    assert_int_equal(tsr_gemm_choose(&a2, 1, "", why, sizeof why), 1);
    assert_non_null(strstr(why, "AVX2"));
    assert_int_equal(tsr_gemm_choose(&none, 1, NULL, why, sizeof why), 0);
    assert_non_null(strstr(why, "no AVX2"));
    assert_int_equal(tsr_gemm_choose(&z5, 0, NULL, why, sizeof why), 0);
    assert_non_null(strstr(why, "no oneDNN"));
    assert_int_equal(tsr_gemm_choose(&z5, 1, "blas", why, sizeof why), 0);
    assert_int_equal(tsr_gemm_choose(&none, 1, "onednn", why, sizeof why), 1);
    assert_int_equal(tsr_gemm_choose(&z5, 0, "onednn", why, sizeof why), -1);
    assert_non_null(strstr(why, "libdnnl-dev"));
    assert_int_equal(tsr_gemm_choose(&z5, 1, "mkl", why, sizeof why), -1);
    assert_non_null(strstr(why, "'mkl'"));
}

static void test_fma_loop(void **state) {
    (void)state;
    tsr_cpu_features f;
    tsr_cpu_detect(&f);
    float sink = 0;
    double flops = tsr_cpu_fma_loop(&f, 1000, &sink);
    assert_true(flops > 0);
    assert_true(sink == sink && sink > 0); /* finite */
    double g = tsr_cpu_fma_peak_quick(&f, 5);
    assert_true(g > 0.1);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_blis_selects_avx512), cmocka_unit_test(test_blis_keeps),
                                       cmocka_unit_test(test_openblas), cmocka_unit_test(test_detection_matches_cpuinfo),
                                       cmocka_unit_test(test_fma_loop), cmocka_unit_test(test_gemm_choice)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
