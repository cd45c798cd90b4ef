/* adapter_io.h: adapters in safetensors (export / reload), and the operations on a trained adapter set
 * that few-shot transfer needs: MHR-mu skill averaging, a fresh routing row, and merging a LoRA into the
 * backbone's weights.
 *
 * File: every tensor of tsr_adapters_tensor_info (names blocks.{l}.lora.{site}.{A,B,Z},
 * blocks.{l}.adapter.{pos}.{down.A,down.bias,up.B,up.bias,Z,ln.weight,ln.bias}) as F32, written atomically,
 * with the metadata key "tessera_adapters" holding a JSON object that describes the set completely:
 *   {"format": "tessera-adapters", "version": 1,
 *    "lora_sites": ["q", "k", "v", "proj", "fc1", "fc2"] (any subset, in this order), "lora_rank": int,
 *    "lora_alpha": number, "bn_sites": ["parallel", "houlsby_attn", "mlp_seq"] (any subset), "bn_dim": int,
 *    "bn_scale": number, "bn_dropout": number in [0, 1), "activation": "gelu" | "relu", "skills": int >= 1,
 *    "heads": int >= 1, "n_tasks": int, "noise": 0 | 1 (or a JSON boolean), "tau": number > 0,
 *    "layer_min": int, "layer_max": int (-1: the last block),
 *    "depth": int, "dim": int, "mlp": int, "tokens": int, "ln_eps": number}
 * Every key is required and no other key is accepted; reading refuses a bad file with a message naming
 * the file and the key. Caller metadata pairs (provenance, the run's config) go beside it. */
#ifndef TSR_ADAPTER_IO_H
#define TSR_ADAPTER_IO_H
#include <stdint.h>

#include "adapters/adapters.h"
#include "model/vit.h"

#define TSR_ADAPTERS_META_KEY "tessera_adapters"
#define TSR_ADAPTERS_FORMAT "tessera-adapters"
#define TSR_ADAPTERS_VERSION 1

/* Write every adapter tensor of ad (F32) and the description above, plus nmeta caller pairs (may be 0;
 * a caller key equal to "tessera_adapters" is refused). Atomic (tmp file, fsync, rename). 0 / -1. */
int tsr_adapters_save(const tsr_adapters *ad, const char *path, int nmeta, const char *const *keys,
                      const char *const *vals);
/* The description of an adapter file: the adapter configuration and the backbone sizes it was built for
 * (depth, dim, mlp may be NULL). Every key is validated. 0 / -1 (tsr_error naming the file and key). */
int tsr_adapters_load_config(const char *path, tsr_adapter_config *c, int *depth, int *dim, int *mlp);
/* The same, also giving tokens and ln_eps (either may be NULL). */
int tsr_adapters_load_config_ex(const char *path, tsr_adapter_config *c, int *depth, int *dim, int *mlp,
                                int *tokens, double *ln_eps);
/* Read a file's tensors into ad. The file's description must match ad: backbone sizes (depth, dim, mlp,
 * tokens, ln_eps) and every configuration field (the layer range compared after resolving -1; the LoRA
 * fields only when there are LoRA sites, the bottleneck fields only when there are bottleneck sites).
 * Every tensor of ad must be present with its exact shape, in a float dtype, finite; a tensor of the file
 * that ad does not have is refused. On any error ad's parameters are left untouched. 0 / -1. */
int tsr_adapters_load(tsr_adapters *ad, const char *path);

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
