/* vit.h: the Vision Transformer backbone as timm and Hugging Face compute it.
 *
 * Patch embedding (a GEMM over flattened patches), class token, learned position embeddings, `depth`
 * pre-LN blocks  h = x + Proj(MHSA(LN1(x))),  out = h + FC2(GELU(FC1(LN2(h)))),  final LayerNorm, and
 * a linear head on the class token.
 *
 * Memory (llm.c style): parameters, gradients and activations each live in ONE contiguous allocation
 * carved by a size table; the gradient struct has the parameter struct's type, so an optimizer is one
 * flat loop and a gradient all-reduce is one call.
 *
 * Backward modes: tsr_vit_backward takes which parameter groups are trainable. Frozen groups get no
 * weight gradients; input gradients still flow through them down to the lowest layer that needs one. */
#ifndef TSR_VIT_H
#define TSR_VIT_H
#include <stddef.h>
#include <stdint.h>

#include "core/real.h"
#include "core/rng.h"

typedef struct {
    int image_size, patch_size, channels; /* input (channels, image_size, image_size) */
    int dim, depth, heads, mlp_dim, num_classes;
    double ln_eps; /* timm 1e-6; Hugging Face layer_norm_eps (1e-12 in the Hub's ViT configs) */
} tsr_vit_config;

/* Validate sizes (positive, divisibility); 0 or -1 with tsr_error naming the field. */
#define tsr_vit_config_check TSR_R(tsr_vit_config_check)
int tsr_vit_config_check(const tsr_vit_config *c);
static inline int tsr_vit_tokens(const tsr_vit_config *c) {
    int g = c->image_size / c->patch_size;
    return g * g + 1;
}

/* Parameter tensors; per-block tensors are stacked over blocks (leading dim L). Shapes: D = dim,
 * L = depth, M = mlp_dim, K = num_classes, T = tokens, CPP = channels * patch^2. */
#define TSR_VIT_NTENSORS 20
typedef struct {
    real *patch_w; /* (D, CPP)  = Conv2d weight (D, C, P, P) */
    real *patch_b; /* (D) */
    real *cls;     /* (D) */
    real *pos;     /* (T, D) */
    real *ln1w, *ln1b; /* (L, D) */
    real *qkvw;    /* (L, 3D, D) rows: q then k then v */
    real *qkvb;    /* (L, 3D) */
    real *projw;   /* (L, D, D) */
    real *projb;   /* (L, D) */
    real *ln2w, *ln2b; /* (L, D) */
    real *fc1w;    /* (L, M, D) */
    real *fc1b;    /* (L, M) */
    real *fc2w;    /* (L, D, M) */
    real *fc2b;    /* (L, D) */
    real *lnfw, *lnfb; /* (D) */
    real *headw;   /* (K, D) */
    real *headb;   /* (K) */
} tsr_vit_params;

/* Activations saved by the forward pass for the backward pass. */
typedef struct {
    real *patches;   /* (B, NP, CPP) */
    real *patch_out; /* (B, NP, D) */
    real *resid;     /* (L+1, B, T, D): resid[l] enters block l, resid[L] leaves the last block */
    real *ln1, *ln1_mean, *ln1_rstd; /* (B, T, D): one block's, recomputed in backward; (L, B, T), (L, B, T) */
    real *qkv;       /* (L, B, T, 3D) */
    real *att;       /* (L, B, H, T, T) softmax probabilities, only after tsr_vit_store_attention; NULL
                      * by default: the backward recomputes them from qkv, block by block */
    real *atty;      /* (L, B, T, D) attention output before proj; a block writes its slot only where the
                      * backward reads it (proj's weight gradient, a proj adapter; d_atty otherwise) */
    real *mid;       /* (L, B, T, D) h = x + proj(att) */
    real *ln2, *ln2_mean, *ln2_rstd; /* ln2 = ln1 (one buffer, one block); (L, B, T), (L, B, T) */
    real *fc1;       /* (L, B, T, M) before GELU */
    real *gelu;      /* (B, T, M): one block's GELU output, recomputed from fc1 in backward (= d_fc) */
    real *cls_in;    /* (B, D) class token of resid[L] */
    real *lnf, *lnf_mean, *lnf_rstd; /* (B, D), (B), (B) */
    real *logits;    /* (B, K) */
    real *probs;     /* (B, K) */
} tsr_vit_acts;

/* Which parameter groups get weight gradients. */
typedef struct {
    int embed;  /* patch_w, patch_b, cls, pos */
    int blocks; /* every block tensor */
    int norm;   /* final LayerNorm */
    int head;
    int input_grad; /* compute d loss / d resid[0] (the token embeddings) even when nothing below needs it */
    int adapters;   /* gradients of the attached adapters */
} tsr_vit_trainable;
static const tsr_vit_trainable TSR_VIT_FULL = {1, 1, 1, 1, 1, 1};
static const tsr_vit_trainable TSR_VIT_FROZEN = {0, 0, 0, 1, 1, 1}; /* frozen backbone, trained head */
static const tsr_vit_trainable TSR_VIT_ADAPTERS = {0, 0, 0, 1, 0, 1}; /* adapters and head */

/* Sites of a block where an attached extension (the adapters) acts. At each (layer, site) the forward
 * pass calls hooks->forward(ctx, k, y, ldy, x, ldx) with k = hooks->find(ctx, layer, site) >= 0, which
 * adds to y (rows B*T, leading dimension ldy) a function of x (rows B*T, ldx), and the backward pass calls
 * hooks->backward with the same x and the gradient of y:
 *   Q, K, V: y = the slice of qkv (ldy 3D), x = LN1's output;   PROJ: y = the projected attention
 *   output, x = the attention output;   FC1: y = fc1's output, x = LN2's output;   FC2: y = fc2's
 *   output, x = the GELU output;   HOULSBY_ATTN: y = x = the projected attention output (sequential);
 *   MLP_SEQ: y = x = the MLP's output (sequential);   PARALLEL: y = the MLP's output, x = the block's
 *   mid-stream h = x + attn (before the residual add of the MLP).
 * In one block the forward order is Q, K, V, PROJ, HOULSBY_ATTN, FC1, FC2, MLP_SEQ, PARALLEL. */
enum {
    TSR_VIT_SITE_Q, TSR_VIT_SITE_K, TSR_VIT_SITE_V, TSR_VIT_SITE_PROJ, TSR_VIT_SITE_FC1, TSR_VIT_SITE_FC2,
    TSR_VIT_SITE_PARALLEL, TSR_VIT_SITE_HOULSBY_ATTN, TSR_VIT_SITE_MLP_SEQ, TSR_VIT_NSITES
};

/* What the model calls on an attached extension (tsr_adapters_attach fills it). ctx is the extension's
 * state, passed back to every call. One call of find per site per layer and pass; forward / backward
 * only where find answered a module k >= 0; no per-element indirection. */
typedef struct {
    /* module acting at (layer, site TSR_VIT_SITE_*), or -1 */
    int (*find)(const void *ctx, int layer, int site);
    /* y (rows, ldy) += f_k(x), x (rows, ldx); for the sequential sites x aliases y */
    void (*forward)(void *ctx, int k, real *y, int ldy, const real *x, int ldx);
    /* dy (rows, ldy) given: dx (rows, ldx) += the input gradient (dx NULL: skip), and the extension's own
     * parameter gradients; x as in forward (NULL for the sequential sites) */
    void (*backward)(void *ctx, int k, real *dx, int ldx, const real *dy, int ldy, const real *x, int ldx_in);
    /* the lowest layer with a module (depth: none, and then nothing else is called in backward) */
    int (*lowest_layer)(const void *ctx);
    /* the order to run a batch of B examples in: internal example i is the caller's example perm[i];
     * NULL for the identity */
    const int *(*batch_perm)(const void *ctx, int B);
    /* after the backward pass through the blocks */
    void (*end_backward)(void *ctx);
} tsr_vit_hooks;

typedef struct {
    tsr_vit_config cfg;
    /* attached extension (NULL: none): set by its attach call (tsr_adapters_attach), never by hand */
    const tsr_vit_hooks *hooks;
    void *hooks_ctx;
    int max_batch, batch;  /* capacity, and batch of the last forward */
    int tokens, npatch;
    tsr_vit_params params, grads;
    real *params_mem, *grads_mem;
    size_t param_sizes[TSR_VIT_NTENSORS];
    size_t num_params;
    tsr_vit_acts acts;
    real *acts_mem;
    size_t num_acts;
    real *att_mem;   /* acts.att when stored (tsr_vit_store_attention), else NULL */
    /* the backward the forwards prepare for (tsr_vit_plan_backward; none: every block's activations kept),
     * and the lowest block whose activations the last forward kept */
    tsr_vit_trainable plan;
    int has_plan, kept_from, kept_wg; /* kept_wg: the last forward kept what block weight gradients need */
    /* backward scratch */
    real *scratch_mem;
    real *d_a, *d_b;   /* (B, T, D) residual-stream gradients (ping-pong) */
    real *d_ln;        /* (B, T, D) */
    real *d_atty;      /* (B, T, D) */
    real *d_qkv;       /* (B, T, 3D) */
    real *d_fc;        /* (B, T, M) */
    real *d_fc2;       /* (B, T, M) */
    real *d_small;     /* (B, D) x3 and (B, K) */
    /* optional: d loss / d resid[l] for every l, (L+1, B, T, D); NULL unless tsr_vit_keep_resid_grads */
    real *d_resid_all;
    int has_labels;
    const int *labels;     /* the caller's, in the caller's order */
    /* when attached adapters group the batch by task: the permuted images and labels, and a buffer */
    real *perm_images;     /* (B, C, IMG, IMG) */
    int *perm_labels;      /* (B) */
    real *perm_buf;        /* (B, K) */
    /* model.precision bf16 (float build; tsr_vit_set_precision): the frozen block weights in bf16, laid out
     * like their fp32 twins ((L, 3D, D), (L, D, D), (L, M, D), (L, D, M)); NULL in fp32. The forward
     * products and the input-gradient products of qkv, proj, fc1, fc2 read them.
     * While they exist the fp32 block weights are NOT in memory: their pages were given back (they read
     * as zero). They are stored once, in bf16. Whoever needs their fp32 values reads them through
     * tsr_param_reader (checkpoint.h: restored from where they came from, and checked), and code that
     * would read or write them in place asks tsr_vit_released first and refuses, naming the tensor. */
    uint16_t *w16_mem, *qkvw16, *projw16, *fc1w16, *fc2w16;
    /* Where the fp32 block weights came from, to restore them: TSR_W32_SEED (tsr_vit_init_random: w32_rng,
     * the random stream's state at the start of each slice), TSR_W32_FILE (tsr_ckpt_load_vit: w32_path),
     * TSR_W32_NONE (unknown: zeros from tsr_vit_create, or a load that failed). w32_hash: FNV-1a 64 of
     * each slice's fp32 bytes when its bf16 copy was made; a restore must give the same bytes. */
    int w32_src;
    char *w32_path;
    tsr_rng *w32_rng;   /* (4 L) */
    uint64_t *w32_hash; /* (4 L) */
} tsr_vit;

enum { TSR_W32_NONE = 0, TSR_W32_SEED, TSR_W32_FILE };

#define tsr_vit_create TSR_R(tsr_vit_create)
#define tsr_vit_destroy TSR_R(tsr_vit_destroy)
#define tsr_vit_init_random TSR_R(tsr_vit_init_random)
#define tsr_vit_forward TSR_R(tsr_vit_forward)
#define tsr_vit_backward TSR_R(tsr_vit_backward)
#define tsr_vit_zero_grad TSR_R(tsr_vit_zero_grad)
#define tsr_vit_keep_resid_grads TSR_R(tsr_vit_keep_resid_grads)
#define tsr_vit_tensor_info TSR_R(tsr_vit_tensor_info)

/* Allocate a model for batches of up to max_batch images. Parameters start at zero. 0 / -1. */
int tsr_vit_create(tsr_vit *m, const tsr_vit_config *c, int max_batch);
void tsr_vit_destroy(tsr_vit *m);
/* timm-style initialisation: truncated normal (std 0.02) weights, zero biases, LayerNorm (1, 0),
 * pos_embed std 0.02, cls 1e-6 std, head zero. Deterministic for a seed. */
void tsr_vit_init_random(tsr_vit *m, uint64_t seed);
/* images (B, C, IMG, IMG) normalised floats. labels (B) or NULL. Returns the mean cross-entropy (0
 * when labels is NULL). Logits land in m->acts.logits. */
double tsr_vit_forward(tsr_vit *m, const real *images, const int *labels, int B);
/* Accumulate gradients of the mean loss of the last forward (which needs labels). */
void tsr_vit_backward(tsr_vit *m, const tsr_vit_trainable *tr);
/* The same from a given gradient of the logits (B, K) (e.g. a consistency loss); labels not needed. */
#define tsr_vit_backward_from TSR_R(tsr_vit_backward_from)
void tsr_vit_backward_from(tsr_vit *m, const tsr_vit_trainable *tr, const real *dlogits);
/* Zero every gradient. */
void tsr_vit_zero_grad(tsr_vit *m);
/* Zero only the gradients of the groups tr trains (embed, blocks, norm, head), the only ones a backward
 * with tr writes; the others are left as they are (never touched, so their pages never become resident:
 * a frozen backbone's gradient buffer costs no memory). */
#define tsr_vit_zero_grad_for TSR_R(tsr_vit_zero_grad_for)
void tsr_vit_zero_grad_for(tsr_vit *m, const tsr_vit_trainable *tr);
void tsr_vit_keep_resid_grads(tsr_vit *m);
/* bf16 = 1: make the bf16 copy of the block weights from the fp32 ones, slice by slice, each slice's fp32
 * pages given back as soon as it is converted (nothing when the model is in bf16 already). The block
 * weights are then frozen (a backward pass that asks for their gradients stops with an error). Called
 * before the weights are written (right after tsr_vit_create), tsr_vit_init_random and tsr_ckpt_load_vit
 * convert and release each slice as they write it, so the fp32 block weights are never all in memory.
 * bf16 = 0: back to fp32: the fp32 block weights restored from their source (the seed or the checkpoint
 * file) and checked against the bytes the bf16 copy was made from, then the copy freed; -1 with tsr_error
 * naming the tensor when that is impossible (no source, the file changed or is gone, the weights were
 * changed after init or load), and the model stays in bf16. Float build only (the double build refuses
 * bf16). 0 / -1. */
#define tsr_vit_set_precision TSR_R(tsr_vit_set_precision)
int tsr_vit_set_precision(tsr_vit *m, int bf16);
/* The block weight matrices in slices: slice s in [0, 4 L) is matrix s / L (0 qkv, 1 proj, 2 fc1, 3 fc2)
 * of block s % L, elements [*off, *off + *n) of params_mem; slices are in memory order. */
#define tsr_vit_slice TSR_R(tsr_vit_slice)
void tsr_vit_slice(const tsr_vit *m, int s, size_t *off, size_t *n);
/* A slice's checkpoint name (timm naming, "blocks.3.mlp.fc1.weight"). */
#define tsr_vit_slice_name TSR_R(tsr_vit_slice_name)
void tsr_vit_slice_name(const tsr_vit *m, int s, char *name, size_t len);
/* The first slice that elements [off, off + n) of params_mem overlap whose fp32 values are not in memory
 * (model.precision bf16), or -1 when the whole range is in memory. */
#define tsr_vit_released TSR_R(tsr_vit_released)
int tsr_vit_released(const tsr_vit *m, size_t off, size_t n);
/* For readers and loaders in src/model: slice s's values from the seed (w32_src TSR_W32_SEED) into dst;
 * check that vals are the bytes slice s's bf16 copy was made from (0, or -1 with tsr_error naming the
 * tensor and `what` they came from); slice s was just written in fp32 in place: make its bf16 copy, record
 * its hash and give its pages back (model in bf16 only). */
#define tsr_vit_slice_from_seed TSR_R(tsr_vit_slice_from_seed)
void tsr_vit_slice_from_seed(const tsr_vit *m, int s, real *dst);
#define tsr_vit_slice_check TSR_R(tsr_vit_slice_check)
int tsr_vit_slice_check(const tsr_vit *m, int s, const real *vals, const char *what);
#define tsr_vit_slice_commit TSR_R(tsr_vit_slice_commit)
void tsr_vit_slice_commit(tsr_vit *m, int s);
/* Keep the attention probabilities of every block, L B H T^2 values, instead of recomputing them in the
 * backward (same gradients bitwise; one q k^T product and softmax per block less in the backward). */
#define tsr_vit_store_attention TSR_R(tsr_vit_store_attention)
void tsr_vit_store_attention(tsr_vit *m);
/* Declare the backward (trainable groups, with the attached extension's lowest module) that follows the
 * next forwards: blocks below the lowest one it reads keep no activations (a probe: none; adapters only
 * in the top blocks: only those). A later backward that needs more is a fatal error. Without a plan every
 * block keeps its activations. Call after attaching an extension (or again after changing it). */
#define tsr_vit_plan_backward TSR_R(tsr_vit_plan_backward)
void tsr_vit_plan_backward(tsr_vit *m, const tsr_vit_trainable *tr);

/* Enumerate checkpoint tensors in timm naming: i in [0, n) where n = 4 + 12*depth + 4 (returned by
 * calling with i = -1). Fills name, ndim, shape, and the pointer to the data inside `p` (params or
 * grads). Returns the count for i = -1, 0 on success, -1 for i out of range. In bf16 the block weights
 * under those pointers are not in memory (tsr_vit_released): read them through a tsr_param_reader. */
int tsr_vit_tensor_info(const tsr_vit *m, const tsr_vit_params *p, int i, char *name, size_t name_len,
                        int *ndim, int64_t shape[4], real **data);
#endif
