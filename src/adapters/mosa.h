/* mosa.h: MoSA (mixture of sparse adapters) masks: split, stochastic draw, effective weights, merge
 * (METHODS.md, section MoSA). Pure functions over flat arrays; the adapter code owns the storage.
 *
 * Storage model (METHODS.md): one dense matrix W per split projection, one module-index map `owner`
 * (owner[j] in [0, N) is the module that owns element j; the masks M_i = [owner == i] are disjoint
 * and cover every element), one optimizer state per element. Module i's weights are
 * W0 + (W - W0) * M_i, i.e. eff[j] = owner[j] == i ? W[j] : W0[j], where W0 is the initial value
 * (W0 = NULL for a zero-initialised matrix such as Up, then eff = W * M_i).
 *
 * N is at most TSR_MOSA_MAX_MODULES (owner is uint8_t); N < 1 or N > 256 is a programming error
 * (tsr_fatal). Element-wise functions allow the output to alias an input of the same length. */
#ifndef TSR_MOSA_H
#define TSR_MOSA_H
#include <stddef.h>
#include <stdint.h>

#include "core/real.h"

#define TSR_MOSA_MAX_MODULES 256

/* FNV-1a 64 of a NUL-terminated name (the key that identifies a split matrix). */
uint64_t tsr_mosa_key(const char *name);

/* Number of elements of module i when n elements are split into N modules: floor(n/N) + (i < n % N). */
size_t tsr_mosa_group_size(size_t n, int N, int i);

/* Split n elements into N modules: draw an i.i.d. uniform 64-bit score per element from a xoshiro256**
 * stream seeded by (seed, key), rank the elements by (score, index), and cut the ranking into N
 * consecutive groups, the first n % N of size ceil(n/N), the others floor(n/N); owner[j] is the group
 * of element j. Deterministic: same (seed, key, n, N) -> same owner on every machine. Allocates n
 * (score, index) pairs of scratch. */
void tsr_mosa_split(uint8_t *owner, size_t n, int N, uint64_t seed, uint64_t key);

/* The module a split projection uses at a training step: uniform in [0, N), a pure function of
 * (seed, step, layer, proj, view) through chained splitmix64 mixing (identical on every rank and
 * independent of the number of ranks and of the call order; view = 0/1 for the two views of the
 * consistency loss). */
int tsr_mosa_draw(uint64_t seed, long step, int layer, int proj, int view, int N);

#define mosa_effective TSR_R(mosa_effective)
#define mosa_mask_grad TSR_R(mosa_mask_grad)
#define mosa_merge TSR_R(mosa_merge)
#define mosa_merge_bias TSR_R(mosa_merge_bias)

/* Effective weights of module i: eff[j] = owner[j] == i ? W[j] : W0[j] (W0 NULL: 0). */
void mosa_effective(real *eff, const real *W, const real *W0, const uint8_t *owner, size_t n, int i);

/* Mask a gradient to module i in place: g[j] = 0 where owner[j] != i. */
void mosa_mask_grad(real *g, const uint8_t *owner, size_t n, int i);

/* Merge: the mean over the N modules of their effective weights,
 * out[j] = (W[j] + (N-1) W0[j]) / N (W0 NULL: W[j] / N). N = 1 gives out = W. */
void mosa_merge(real *out, const real *W, const real *W0, size_t n, int N);

/* Biases are not split: each module owns a bias vector; bias (N, d) row-major.
 * out (d) = mean over the N rows (accumulated in double). */
void mosa_merge_bias(real *out, const real *bias, int N, int d);

/* The fixed-random-mask "sparse adapter" baseline: split as above, train module 0 alone (density
 * about 1/N: mosa_mask_grad(g, owner, n, 0) every step); its evaluation weights are
 * mosa_effective(..., 0), not the merge. */

#endif
