/* test_hash.c: the hash and seed mixer of src/core/hash.h: the published FNV-1a 64 test vectors, the
 * byte / string / incremental forms agreeing, and tsr_mix3 pinned to values computed independently
 * (Python, 64-bit integer arithmetic) and equal to the formula the trainer used before it moved here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "core/hash.h"
#include "core/rng.h"

static void test_fnv1a_vectors(void **state) {
    (void)state;
    assert_true(tsr_hash64("", 0) == 0xcbf29ce484222325ull);
    assert_true(tsr_hash_str("") == 0xcbf29ce484222325ull);
    assert_true(tsr_hash64("a", 1) == 0xaf63dc4c8601ec8cull);
    assert_true(tsr_hash_str("a") == 0xaf63dc4c8601ec8cull);
    assert_true(tsr_hash_str("foobar") == 0x85944171f73967e8ull);
    /* bytes past a NUL count for tsr_hash64, not for tsr_hash_str */
    assert_true(tsr_hash64("ab\0c", 4) == 0xfd61c083ef200867ull);
    assert_true(tsr_hash_str("ab\0c") == tsr_hash_str("ab"));
    /* high bytes are unsigned */
    const char *s = "caf\xc3\xa9";
    assert_true(tsr_hash_str(s) == tsr_hash64(s, strlen(s)));
}

static void test_incremental(void **state) {
    (void)state;
    assert_true(tsr_hash64_update(tsr_hash64("foo", 3), "bar", 3) == 0x85944171f73967e8ull);
    assert_true(tsr_hash_str_update(tsr_hash_str("foo"), "bar") == 0x85944171f73967e8ull);
    assert_true(tsr_hash_str_update(TSR_FNV64_OFFSET, "foobar") == tsr_hash_str("foobar"));
    assert_true(tsr_hash64_update(12345, "", 0) == 12345);
}

/* The trainer's seed mixer as it was written in src/cmd/cmd_adapt.c. */
static uint64_t mix3_reference(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t x = a ^ (b * 0x9E3779B97F4A7C15ull) ^ (c * 0xC2B2AE3D27D4EB4Full);
    return tsr_splitmix64(&x);
}

static void test_mix3(void **state) {
    (void)state;
    assert_true(tsr_mix3(0, 0, 0) == 0xe220a8397b1dcdafull);
    assert_true(tsr_mix3(1, 2, 3) == 0x1915f685d2b0e282ull);
    assert_true(tsr_mix3(42, 7, UINT64_MAX) == 0xa4eabb48ee3f000full);
    tsr_rng r;
    tsr_rng_seed(&r, 2024);
    for (int i = 0; i < 10000; i++) {
        uint64_t a = tsr_rng_u64(&r), b = tsr_rng_u64(&r) >> (i % 64), c = (uint64_t)i;
        assert_true(tsr_mix3(a, b, c) == mix3_reference(a, b, c));
    }
    /* the arguments are not interchangeable */
    assert_true(tsr_mix3(1, 2, 3) != tsr_mix3(2, 1, 3));
    assert_true(tsr_mix3(1, 2, 3) != tsr_mix3(1, 3, 2));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fnv1a_vectors),
        cmocka_unit_test(test_incremental),
        cmocka_unit_test(test_mix3),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
