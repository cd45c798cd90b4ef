/* hash.h: the one string / byte hash and seed mixer of tessera (header-only, so that every library
 * built from src/core, the double-precision model build included, can use it).
 *
 * tsr_hash64 is FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3): stable across
 * machines, compilers and runs, so it may seed random streams and name things in files. It is not a
 * cryptographic hash. */
#ifndef TSR_HASH_H
#define TSR_HASH_H
#include <stddef.h>
#include <stdint.h>

#include "core/rng.h"

#define TSR_FNV64_OFFSET 0xcbf29ce484222325ull
#define TSR_FNV64_PRIME 0x100000001b3ull

/* Continue an FNV-1a 64 hash h over n bytes (h = TSR_FNV64_OFFSET starts one). */
static inline uint64_t tsr_hash64_update(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * TSR_FNV64_PRIME;
    return h;
}
/* Continue an FNV-1a 64 hash h over the bytes of a NUL-terminated string (the NUL not included). */
static inline uint64_t tsr_hash_str_update(uint64_t h, const char *s) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * TSR_FNV64_PRIME;
    return h;
}
/* FNV-1a 64 of n bytes: tsr_hash64("", 0) = 0xcbf29ce484222325, of "a" 0xaf63dc4c8601ec8c. */
static inline uint64_t tsr_hash64(const void *p, size_t n) { return tsr_hash64_update(TSR_FNV64_OFFSET, p, n); }
/* FNV-1a 64 of a NUL-terminated string (= tsr_hash64(s, strlen(s))). */
static inline uint64_t tsr_hash_str(const char *s) { return tsr_hash_str_update(TSR_FNV64_OFFSET, s); }

/* A seed from three words: a ^ b * golden ratio ^ c * 0xC2B2AE3D27D4EB4F, through one splitmix64 step.
 * The values are fixed (resumed runs and published results depend on them). */
static inline uint64_t tsr_mix3(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t x = a ^ (b * 0x9E3779B97F4A7C15ull) ^ (c * 0xC2B2AE3D27D4EB4Full);
    return tsr_splitmix64(&x);
}
#endif
