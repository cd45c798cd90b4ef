/* test_precision.c: the model.precision decision (src/core/precision.c) with faked CPU features, library
 * availability and timings; the bf16 rounding of core/bf16.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "core/bf16.h"
#include "core/precision.h"

static tsr_precision_choice run(tsr_precision_inputs in) {
    tsr_precision_choice c;
    memset(&c, 0x55, sizeof c);
    tsr_precision_choose(&in, &c);
    assert_true(strlen(c.reason) > 10);
    assert_false(c.error && c.bf16);
    return c;
}
static const tsr_precision_inputs zen5 = {.mode = TSR_PREC_AUTO, .cpu_bf16 = 1, .lib_bf16 = 1,
                                          .lib_note = "oneDNN 2.6.3: brg:avx512_core_bf16"};

static void test_parse(void **st) {
    (void)st;
    assert_int_equal(tsr_precision_parse("fp32"), TSR_PREC_FP32);
    assert_int_equal(tsr_precision_parse("bf16"), TSR_PREC_BF16);
    assert_int_equal(tsr_precision_parse("auto"), TSR_PREC_AUTO);
    assert_int_equal(tsr_precision_parse("fp16"), -1);
}

static void test_auto_by_timing(void **st) {
    (void)st;
    tsr_precision_inputs in = zen5;
    assert_true(tsr_precision_needs_timing(&in));
    /* Zen 5 under load: bf16 ~1.8x faster */
    in.t_fp32 = 0.020, in.t_bf16 = 0.011;
    tsr_precision_choice c = run(in);
    assert_true(c.bf16);
    assert_false(c.error || c.warn);
    assert_non_null(strstr(c.reason, "20.00 ms")); /* both figures logged */
    assert_non_null(strstr(c.reason, "11.00 ms"));
    /* Intel without AMX: bf16 slower */
    in.t_fp32 = 0.010, in.t_bf16 = 0.020;
    assert_false(run(in).bf16);
    /* within the margin: fp32 */
    in.t_fp32 = 0.0105, in.t_bf16 = 0.010;
    assert_false(run(in).bf16);
    in.t_fp32 = 0.0109, in.t_bf16 = 0.010;
    assert_false(run(in).bf16);
    in.t_fp32 = 0.0112, in.t_bf16 = 0.010;
    assert_true(run(in).bf16);
    /* not measured or nonsense: fp32 */
    in.t_fp32 = 0, in.t_bf16 = 0.01;
    assert_false(run(in).bf16);
    in.t_fp32 = 0.02, in.t_bf16 = NAN;
    assert_false(run(in).bf16);
    in.t_fp32 = INFINITY, in.t_bf16 = 0.01;
    assert_false(run(in).bf16);
}

static void test_auto_without_bf16_cpu(void **st) {
    (void)st;
    tsr_precision_inputs in = zen5;
    in.cpu_bf16 = 0; /* an emulating library does not make auto pick bf16, however fast the fake timing */
    in.t_fp32 = 1, in.t_bf16 = 0.001;
    assert_false(tsr_precision_needs_timing(&in));
    tsr_precision_choice c = run(in);
    assert_false(c.bf16 || c.error || c.warn);
    assert_non_null(strstr(c.reason, "avx512_bf16"));
    in = zen5;
    in.lib_bf16 = 0, in.lib_note = "built without oneDNN";
    in.t_fp32 = 1, in.t_bf16 = 0.001;
    assert_false(tsr_precision_needs_timing(&in));
    c = run(in);
    assert_false(c.bf16 || c.error);
    assert_non_null(strstr(c.reason, "without oneDNN"));
}

static void test_explicit(void **st) {
    (void)st;
    tsr_precision_inputs in = zen5;
    in.mode = TSR_PREC_BF16;
    assert_false(tsr_precision_needs_timing(&in));
    in.t_fp32 = 0.01, in.t_bf16 = 0.02; /* explicit bf16 is not second-guessed by timings */
    tsr_precision_choice c = run(in);
    assert_true(c.bf16);
    assert_false(c.warn || c.error);
    /* no native bf16, but the library emulates it: allowed with a warning */
    in.cpu_bf16 = 0;
    c = run(in);
    assert_true(c.bf16 && c.warn);
    assert_non_null(strstr(c.reason, "slower"));
    /* no native bf16 and no library: refused, naming the key and what the CPU lacks */
    in.lib_bf16 = 0, in.lib_note = "oneDNN 2.6.3: oneDNN refuses a bf16 matmul";
    c = run(in);
    assert_true(c.error);
    assert_false(c.bf16);
    assert_non_null(strstr(c.reason, "model.precision"));
    assert_non_null(strstr(c.reason, "avx512_bf16"));
    assert_non_null(strstr(c.reason, "amx_bf16"));
    /* fp32 is fp32 whatever the timings */
    in = zen5;
    in.mode = TSR_PREC_FP32, in.t_fp32 = 1, in.t_bf16 = 0.001;
    c = run(in);
    assert_false(c.bf16 || c.error || c.warn);
}

static void test_full_training(void **st) {
    (void)st;
    tsr_precision_inputs in = zen5;
    in.full = 1, in.t_fp32 = 1, in.t_bf16 = 0.001;
    assert_false(tsr_precision_needs_timing(&in));
    tsr_precision_choice c = run(in);
    assert_false(c.bf16 || c.error);
    assert_non_null(strstr(c.reason, "full"));
    in.mode = TSR_PREC_BF16;
    c = run(in);
    assert_true(c.error);
    assert_false(c.bf16);
    assert_non_null(strstr(c.reason, "model.precision"));
}

static void test_rounding(void **st) {
    (void)st;
    assert_int_equal(tsr_f32_to_bf16(1.0f), 0x3f80);
    assert_true(tsr_bf16_to_f32(tsr_f32_to_bf16(-2.5f)) == -2.5f);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1); 1 + 3 * 2^-8: to 1 + 2^-6 */
    assert_true(tsr_bf16_to_f32(tsr_f32_to_bf16(1.0f + 0x1p-8f)) == 1.0f);
    assert_true(tsr_bf16_to_f32(tsr_f32_to_bf16(1.0f + 3 * 0x1p-8f)) == 1.0f + 0x1p-6f);
    assert_true(isnan(tsr_bf16_to_f32(tsr_f32_to_bf16(NAN))));
    assert_true(isinf(tsr_bf16_to_f32(tsr_f32_to_bf16(INFINITY))));
    /* relative error <= 2^-8 (the unit roundoff of an 8-bit significand) over a sweep */
    double worst = 0;
    for (int i = 1; i < 200000; i++) {
        float x = (float)(i * 1.2345e-3 - 100.0);
        if (x == 0) continue;
        double r = fabs(tsr_bf16_to_f32(tsr_f32_to_bf16(x)) - (double)x) / fabs((double)x);
        if (r > worst) worst = r;
    }
    assert_true(worst <= 0x1p-8);
    assert_true(worst > 0x1p-9); /* and it does round (near the bound) */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),          cmocka_unit_test(test_auto_by_timing),
        cmocka_unit_test(test_auto_without_bf16_cpu), cmocka_unit_test(test_explicit),
        cmocka_unit_test(test_full_training),  cmocka_unit_test(test_rounding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
