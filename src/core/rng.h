/* rng.h: deterministic random numbers (splitmix64 seeding, xoshiro256** stream). The same seed gives
 * the same stream on every machine and rank count. */
#ifndef TSR_RNG_H
#define TSR_RNG_H
#include <stdint.h>
#include <math.h>

typedef struct { uint64_t s[4]; } tsr_rng;

static inline uint64_t tsr_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline void tsr_rng_seed(tsr_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = tsr_splitmix64(&x);
}
static inline uint64_t tsr_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static inline uint64_t tsr_rng_u64(tsr_rng *r) {
    uint64_t *s = r->s, result = tsr_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = tsr_rotl(s[3], 45);
    return result;
}
/* Uniform in [0, 1) with 53 random bits. */
static inline double tsr_rng_uniform(tsr_rng *r) { return (double)(tsr_rng_u64(r) >> 11) * 0x1.0p-53; }
/* Standard normal (Box-Muller, one value per call). */
static inline double tsr_rng_normal(tsr_rng *r) {
    double u1 = tsr_rng_uniform(r), u2 = tsr_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
/* Normal truncated to [lo, hi] (by rejection), times std. */
static inline double tsr_rng_trunc_normal(tsr_rng *r, double std, double lo, double hi) {
    for (;;) {
        double v = tsr_rng_normal(r) * std;
        if (v >= lo && v <= hi) return v;
    }
}
#endif
