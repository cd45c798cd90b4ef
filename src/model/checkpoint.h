/* checkpoint.h: ViT weights in safetensors, in timm naming or Hugging Face Hub naming.
 *
 * Loading detects the naming (timm: patch_embed.proj.weight; Hugging Face: [vit.]embeddings.*) and
 * validates every tensor against the model: name, dtype (F32, F16, BF16, F64), shape, finiteness.
 * Missing tensors and tensors that belong to no ViT of this shape are refused with a message naming
 * them; never a silent zero. Known-unused tensors (Hugging Face's pooler) are skipped. */
#ifndef TSR_CHECKPOINT_H
#define TSR_CHECKPOINT_H
#include "model/vit.h"

typedef enum { TSR_NAMING_TIMM = 0, TSR_NAMING_HF = 1, TSR_NAMING_HF_NOPREFIX = 2 } tsr_naming;

/* Which naming a file uses; -1 (tsr_error) if neither. */
int tsr_ckpt_detect(const char *path, tsr_naming *naming);
/* Model sizes from a Hugging Face config.json (hidden_size, num_hidden_layers, num_attention_heads,
 * intermediate_size, image_size, patch_size, num_channels, layer_norm_eps, num_labels / id2label,
 * hidden_act must be "gelu"). Keys not present keep the value already in *c. */
int tsr_ckpt_read_hf_config(const char *json_path, tsr_vit_config *c);
/* Sizes that the tensors of a checkpoint imply (all but heads and ln_eps, which stay as in *c). */
int tsr_ckpt_infer_config(const char *path, tsr_vit_config *c);
/* Load weights into m (created with the right config). allow_missing_head 1: a backbone without a
 * classifier (Hugging Face ImageNet-21k files) keeps the head already in m; 2: the file's classifier
 * (of any shape) is ignored and m keeps its own head (a new head for new tasks). 0 / -1 (tsr_error). */
int tsr_ckpt_load_vit(tsr_vit *m, const char *path, int allow_missing_head);
/* Write m's weights (F32) in the given naming, atomically, with metadata pairs (may be 0). */
int tsr_ckpt_save_vit(const tsr_vit *m, const char *path, tsr_naming naming, int nmeta,
                      const char *const *keys, const char *const *vals);
#endif
