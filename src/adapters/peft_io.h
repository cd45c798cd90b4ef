/* peft_io.h: adapters <-> Hugging Face peft adapter directories (adapter_model.safetensors +
 * adapter_config.json), the format PeftModel.save_pretrained writes and PeftModel.from_pretrained reads.
 * The formats, the layouts and why each mapping is exact: docs/ADAPTERS.md ("Hugging Face peft").
 *
 * tessera -> peft:
 *   S = 1 (no routing: LoRA, shared LoRA, MHR-mu) -> peft_type "LORA": per adapted linear
 *     <module>.lora_A.weight (r, din) = A^T, <module>.lora_B.weight (dout, r) = B^T, lora_alpha = tessera's
 *     alpha (peft's scaling lora_alpha / r equals tessera's alpha / r), lora_dropout 0, bias "none".
 *   S > 1 (Poly, h = 1; MHR, h > 1) -> peft_type "POLY", n_splits = h, n_skills = S, n_tasks = the routing rows:
 *     <module>.poly_lora_A (h, S, din/h, r), <module>.poly_lora_B (h, S, r, dout/h),
 *     <module>.poly_router.module_logits (n_tasks, h*S): tessera's own layouts, element for element. peft's
 *     Poly scales by 1/r, so tessera's lora_alpha must be 1 (refused otherwise).
 *   Tensor names are "base_model.model." + the linear's module path in the backbone's naming (the ".default"
 *   adapter name that peft keeps in memory is not in the file). Bottleneck adapters have no peft counterpart
 *   (refused). A timm backbone's q, k, v are slices of one fused Linear (attn.qkv), which peft adapts as one
 *   module with a rank-r update of the whole (3D, D) matrix: not tessera's three separate adapters (refused);
 *   proj, fc1 and fc2 export exactly.
 * peft -> tessera: the inverse, with a refusal (naming the file, key or tensor and the reason) for every
 * other peft type and for anything tessera cannot represent exactly (dropout, rsLoRA, DoRA, biases, rank or
 * alpha patterns, modules_to_save, targets that are not q, k, v, proj, fc1, fc2 of a ViT block, sites that
 * are not the same on every block of one contiguous range). */
#ifndef TSR_PEFT_IO_H
#define TSR_PEFT_IO_H
#include "adapters/adapters.h"
#include "model/checkpoint.h"

#define TSR_PEFT_WEIGHTS "adapter_model.safetensors"
#define TSR_PEFT_CONFIG "adapter_config.json"

/* 1 when path is a directory (taken as a peft adapter directory), else 0. */
int tsr_peft_is_dir(const char *path);
/* Write ad as a peft adapter directory dir (created if missing; each file written atomically) for a backbone
 * in the given naming (module paths). base_model (may be NULL) becomes base_model_name_or_path. 0 / -1. */
int tsr_peft_export(const tsr_adapters *ad, tsr_naming naming, const char *dir, const char *base_model);
/* The adapter configuration of a peft directory. depth is -1 (a peft file does not record it: the blocks
 * it adapts must exist, which the shapes check); dim and mlp are read off the tensors (-1 where no tensor
 * shows them). *naming (may be NULL) gets the backbone naming of the module paths. 0 / -1 (tsr_error). */
int tsr_peft_load_config(const char *dir, tsr_adapter_config *c, int *depth, int *dim, int *mlp, tsr_naming *naming);
/* Read a peft directory's tensors into ad (created from tsr_peft_load_config's configuration for the
 * backbone's sizes). Every tensor of ad must be present with its exact shape, and no other; on any error
 * ad's parameters are left untouched. 0 / -1. */
int tsr_peft_load(tsr_adapters *ad, const char *dir);
/* `tessera export-peft`: the adapter set of adapters_path (a tessera adapter file, or a peft directory) for
 * the backbone checkpoint (its naming gives the module paths, its tensors the sizes, which must be the
 * adapters') written as the peft directory out_dir. 0 / -1 (tsr_error). */
int tsr_peft_export_file(const char *adapters_path, const char *checkpoint, const char *out_dir, const char *base_model);
#endif
