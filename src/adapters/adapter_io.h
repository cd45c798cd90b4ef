/* adapter_io.h: adapters in safetensors (export / reload). The operations on a trained adapter set that
 * few-shot transfer needs (MHR-mu skill averaging, a fresh routing row, merging a LoRA into the backbone's
 * weights) are in adapter_ops.h, included here.
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

#include "adapters/adapter_ops.h"
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
 * (depth, dim, mlp may be NULL). Every key is validated. 0 / -1 (tsr_error naming the file and key).
 * A directory is read as a Hugging Face peft adapter directory (peft_io.h): its sizes that the directory does
 * not record are -1 (depth always; tokens and ln_eps always; dim, mlp where no tensor shows them), and
 * tsr_adapters_load then reads it with tsr_peft_load. */
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
#endif
