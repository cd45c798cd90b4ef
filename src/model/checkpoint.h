/* checkpoint.h: ViT weights in safetensors, in timm naming or Hugging Face Hub naming.
 *
 * Loading detects the naming (timm: patch_embed.proj.weight; Hugging Face: [vit.]embeddings.*) and
 * validates every tensor against the model: name, dtype (F32, F16, BF16, F64), shape, finiteness.
 * Missing tensors and tensors that belong to no ViT of this shape are refused with a message naming
 * them; never a silent zero. Known-unused tensors (Hugging Face's pooler) are skipped. */
#ifndef TSR_CHECKPOINT_H
#define TSR_CHECKPOINT_H
#include "model/vit.h"

/* HF / HF_NOPREFIX: transformers 4.x Hub files ([vit.]encoder.layer.N.attention.attention.query, ...);
 * HF5 / HF5_NOPREFIX: transformers 5 naming ([vit.]layers.N.attention.{q,k,v,o}_proj, mlp.fc1 / fc2,
 * layernorm_before / layernorm_after; embeddings and the final layernorm as in 4.x). The two are told apart
 * by the name of block 0's query weight. */
typedef enum {
    TSR_NAMING_TIMM = 0,
    TSR_NAMING_HF = 1,
    TSR_NAMING_HF_NOPREFIX = 2,
    TSR_NAMING_HF5 = 3,
    TSR_NAMING_HF5_NOPREFIX = 4
} tsr_naming;
#define TSR_NAMING_IS_HF5(nm) ((nm) == TSR_NAMING_HF5 || (nm) == TSR_NAMING_HF5_NOPREFIX)
#define TSR_NAMING_PREFIX(nm) ((nm) == TSR_NAMING_HF || (nm) == TSR_NAMING_HF5 ? "vit." : "")

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
 * (of any shape) is ignored and m keeps its own head (a new head for new tasks). 0 / -1 (tsr_error).
 * The file is mapped, and each tensor's pages are given back once read. A model in bf16
 * (tsr_vit_set_precision before the load) gets each block weight slice converted to bf16 and its fp32
 * pages given back as soon as it is read: the fp32 block weights are never all in memory. The model
 * remembers the file (its absolute path) as the source of its fp32 block weights (tsr_param_reader). */
int tsr_ckpt_load_vit(tsr_vit *m, const char *path, int allow_missing_head);
/* Write m's weights (F32) in the given naming, atomically, with metadata pairs (may be 0). Block weights
 * that model.precision bf16 keeps in bf16 only are read again from their source through a
 * tsr_param_reader, a piece at a time; -1 with tsr_error naming the tensor (and no file written) when
 * they cannot be restored. */
int tsr_ckpt_save_vit(const tsr_vit *m, const char *path, tsr_naming naming, int nmeta,
                      const char *const *keys, const char *const *vals);

/* The model's fp32 parameters wherever they are: in memory, or, for the block weights of a model in bf16
 * (tsr_vit_released), restored from their source (w32_src: the checkpoint file the model was loaded from,
 * or the seed of tsr_vit_init_random) and checked bit for bit against the bytes the bf16 copy was made from.
 * Reads of part of a slice keep that slice in a buffer (sequential pieces read it once). */
typedef struct tsr_param_reader tsr_param_reader;
tsr_param_reader *tsr_param_reader_new(const tsr_vit *m);
/* Elements [off, off + n) of params_mem into dst. 0, or -1 with tsr_error naming the tensor when a block
 * weight cannot be restored (no source, the file is gone or changed, the weights were changed after init or
 * load). */
int tsr_param_reader_get(tsr_param_reader *r, size_t off, size_t n, real *dst);
void tsr_param_reader_free(tsr_param_reader *r); /* NULL-safe */
/* Put the fp32 block weights of a model in bf16 back in memory (tsr_vit_set_precision(m, 0) calls it), all or
 * none: on failure (tsr_error naming the tensor) every slice is released again and the bf16 copy is kept. */
int tsr_ckpt_restore_fp32(tsr_vit *m);
#endif
