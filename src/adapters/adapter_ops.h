/* adapter_ops.h: the operations on a trained adapter set that few-shot transfer needs: MHR-mu skill
 * averaging, a fresh routing row, and merging a LoRA into the backbone's weights. Arithmetic only (no
 * files): compiled in both precisions like the adapters (TSR_R names; the float program's names are the
 * plain ones). The file format is adapter_io.h. */
#ifndef TSR_ADAPTER_OPS_H
#define TSR_ADAPTER_OPS_H
#include <stdint.h>

#include "adapters/adapters.h"
#include "model/vit.h"

#define tsr_adapters_average_skills TSR_R(tsr_adapters_average_skills)
#define tsr_adapters_copy_skills TSR_R(tsr_adapters_copy_skills)
#define tsr_adapters_merge_into TSR_R(tsr_adapters_merge_into)

/* MHR-mu (METHODS.md): dst was created with src's configuration except skills = 1 (n_tasks as the caller
 * wants). Per module and head q: A[q] = mean_s A[q,s], B[q] = mean_s B[q,s]; down.bias, up.bias = their
 * means over skills; ln copied. The learned routing (Z) is not used. A mismatched dst is a programming
 * error (tsr_fatal). */
void tsr_adapters_average_skills(const tsr_adapters *src, tsr_adapters *dst);
/* A fresh task row for few-shot Poly / MHR: dst has src's configuration except n_tasks. A, B, biases and
 * ln are copied; every routing row of dst is drawn uniform in [-1e-3, 1e-3] from seed. A mismatched dst is
 * a programming error (tsr_fatal). */
void tsr_adapters_copy_skills(const tsr_adapters *src, tsr_adapters *dst, uint64_t seed);
/* Fold the LoRA modules of ad into m's weights for task `task` with the evaluation-mode combination
 * (z = sigmoid(Z[task]) when routed; S = 1: w = 1): W += scale * (A_t B_t)^T, W (out, in). q, k, v are the
 * row blocks [site * D, site * D + D) of the block's qkv weight; proj, fc1, fc2 their own weights.
 * Afterwards m without adapters computes what m with ad (evaluation mode, task `task`) computed.
 * Refused (0 / -1, tsr_error) when ad holds a bottleneck adapter (not linear, cannot be merged), when its
 * sizes are not m's, or when task is out of range; m is then unchanged. */
int tsr_adapters_merge_into(const tsr_adapters *ad, tsr_vit *m, int task);
#endif
