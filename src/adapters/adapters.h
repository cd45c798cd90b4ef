/* adapters.h: adapters attached to a ViT, with routing over a skill inventory.
 *
 * Every adapter is a "routed low-rank pair" (RLP) with input width din, output width dout, rank r,
 * S skills and h heads (METHODS.md, Poly / MHR):
 *   A: (h, S, din/h, r), B: (h, S, r, dout/h), and, when S > 1, routing logits Z: (n_tasks, h*S).
 *   Per task t: z = sigmoid(Z[t]) (or the relaxed Bernoulli sample when training with noise),
 *   w[q,s] = z[q,s] / (sum_s z[q,s] + 1e-12), A_t[q] = sum_s w[q,s] A[q,s], B_t[q] = sum_s w[q,s] B[q,s]
 *   (A_t row-concatenates the heads' blocks, B_t column-concatenates them). S = 1: no routing, w = 1.
 * Kinds:
 *   LoRA at a linear layer (sites q, k, v = the three slices of qkv, proj, fc1, fc2):
 *     y += (alpha / r) (x A_t) B_t
 *   Bottleneck (din = dout = D, r = the bottleneck width), with biases down.bias (S, r), up.bias (S, D):
 *     f(x) = act(x A_t + bd_t) B_t + bu_t, bd_t = sum_s mean_q(w[q,s]) down.bias[s],
 *     bu_t (head q's features) = sum_s w[q,s] up.bias[s] (head q's features)
 *     placements: parallel (AdaptFormer: out = mid + MLP(LN2(mid)) + s f(Dropout? LN_a(mid)) with its own
 *     LayerNorm LN_a, dropout on act's output), houlsby_attn (mid = x + (y + s f(y)), y = the projected
 *     attention output), mlp_seq (out = mid + (y + s f(y)), y = the MLP output).
 * The combination depends only on the task: it is built once per distinct task in the batch, and each
 * run of consecutive examples of one task is one pair of GEMMs. Routing noise (relaxed Bernoulli) is
 * drawn once per (task, step) for the same reason (the authors' code draws it per example).
 *
 * Parameters and gradients of all adapters live in one allocation each (a size table over modules);
 * their names follow tests/torch/adapter_ref.py: blocks.{l}.lora.{q,k,v,proj,fc1,fc2}.{A,B,Z} and
 * blocks.{l}.adapter.{parallel,houlsby_attn,mlp_seq}.{down.A,down.bias,up.B,up.bias,Z,ln.weight,ln.bias}. */
#ifndef TSR_ADAPTERS_H
#define TSR_ADAPTERS_H
#include <stddef.h>
#include <stdint.h>

#include "core/real.h"
#include "model/vit.h"

enum { TSR_LORA_Q, TSR_LORA_K, TSR_LORA_V, TSR_LORA_PROJ, TSR_LORA_FC1, TSR_LORA_FC2, TSR_NLORA };
enum { TSR_BN_PARALLEL, TSR_BN_HOULSBY_ATTN, TSR_BN_MLP_SEQ, TSR_NBN };

typedef struct {
    int lora_sites;     /* bitmask of 1 << TSR_LORA_* */
    int lora_rank;
    double lora_alpha;  /* scale = alpha / rank */
    int bn_sites;       /* bitmask of 1 << TSR_BN_* */
    int bn_dim;         /* bottleneck width */
    double bn_scale;    /* s */
    double bn_dropout;  /* p, on the activation output, training only */
    int bn_relu;        /* activation: 0 = exact GELU, 1 = ReLU */
    int skills;         /* S (1 = a single adapter, no routing) */
    int heads;          /* h (1 = Poly) */
    int n_tasks;        /* routing rows */
    int noise;          /* relaxed Bernoulli routing during training */
    double tau;
    int layer_min, layer_max; /* blocks that get adapters: [layer_min, layer_max] (-1 = last block) */
    int lora_init_peft; /* LoRA A init: 0 = uniform +-1/sqrt(3 din) (authors' code), 1 = peft's kaiming-uniform
                         * a = sqrt(5) per head block: +-1/sqrt(din / h) */
} tsr_adapter_config;

typedef struct {
    char name[64];    /* "blocks.3.lora.q" */
    int layer, lora_site, bn_pos; /* one of lora_site / bn_pos is -1 */
    int din, dout, r, S, h;
    int routed;       /* S > 1 */
    int has_bias, has_ln;
    double scale;
    size_t oA, oB, oZ, obd, obu, olnw, olnb; /* offsets into the parameter buffer */
    size_t nA, nB, nZ;
} tsr_rlp;

#define TSR_AD_MAX_BATCH 4096

typedef struct tsr_adapters {
    tsr_adapter_config cfg;
    double ln_eps;       /* the model's LayerNorm eps, for the parallel adapter's LN_a */
    int rmax;
    int depth, dim, mlp, tokens, max_batch;
    int n_mod;
    tsr_rlp *mod;
    int *index;          /* (depth, TSR_NLORA + TSR_NBN) -> module index or -1 */
    size_t num_params;
    size_t off_bias, off_Z; /* [0, off_bias) A and B; [off_bias, off_Z) biases, LN; [off_Z, num_params) routing */
    real *params, *grads;
    /* this batch: runs of consecutive examples with one task, and the distinct tasks */
    int batch, nseg, ndt;
    int seg_start[TSR_AD_MAX_BATCH + 1], seg_dt[TSR_AD_MAX_BATCH], dt_task[TSR_AD_MAX_BATCH];
    /* The model runs the batch grouped by task (one run per task, whatever the caller's order):
     * internal example i is the caller's example perm[i]; permuted = 0 when that is the identity. */
    int perm[TSR_AD_MAX_BATCH], permuted;
    int training;        /* routing noise and dropout on */
    real *noise;         /* per module (n_tasks, h*S) uniforms for this step (training with noise) */
    /* per module x distinct task: z, w (h*S each), A_t (din*r), B_t (r*dout), bd_t (r), bu_t (dout) */
    size_t *comb_off, comb_stride_max;
    real *comb, *dcomb;
    /* saved activations per module: hid (rows, r) pre-activation, act (rows, r) after act+dropout,
     * drop (rows, r) dropout scale, xin (rows, din) a copy of the input for sequential bottlenecks,
     * ln (rows, D), ln_mean, ln_rstd (rows) for the parallel one */
    size_t *act_off;
    real *acts;
    real *scratch;       /* (rows, 2 rmax + D) */
    uint64_t dropout_seed;
    long step;
    int view;            /* MoSA's consistency views (0 / 1): mixed into the dropout and routing-noise seeds, so
                          * the two views of a step draw independent masks and a recomputed view redraws its
                          * own; 0 outside MoSA. Set by tsr_mosa_begin (before tsr_adapters_begin), reset by
                          * tsr_mosa_end; tsr_adapters_begin leaves it as it is. */
} tsr_adapters;

#define tsr_adapters_create TSR_R(tsr_adapters_create)
#define tsr_adapters_destroy TSR_R(tsr_adapters_destroy)
#define tsr_adapters_init TSR_R(tsr_adapters_init)
#define tsr_adapters_tensor_info TSR_R(tsr_adapters_tensor_info)
#define tsr_adapters_begin TSR_R(tsr_adapters_begin)
#define tsr_adapters_end_backward TSR_R(tsr_adapters_end_backward)
#define tsr_ad_forward TSR_R(tsr_ad_forward)
#define tsr_ad_backward TSR_R(tsr_ad_backward)
#define tsr_ad_find TSR_R(tsr_ad_find)
#define tsr_ad_lowest_layer TSR_R(tsr_ad_lowest_layer)
#define tsr_adapters_zero_grad TSR_R(tsr_adapters_zero_grad)
#define tsr_adapters_attach TSR_R(tsr_adapters_attach)

/* Build the modules for a backbone of the given sizes. 0 / -1 (tsr_error naming the key). */
int tsr_adapters_create(tsr_adapters *ad, const tsr_adapter_config *c, int depth, int dim, int mlp, int tokens,
                        int max_batch);
void tsr_adapters_destroy(tsr_adapters *ad);
/* Initialise: LoRA A uniform +-1/sqrt(3 din) (authors' code; cfg.lora_init_peft: +-1/sqrt(din/h)), B = 0, up.bias = down.bias = 0 (bottleneck
 * Down kaiming-uniform a=sqrt(5): +-1/sqrt(din)), Z uniform [-1e-3, 1e-3], LN (1, 0). */
void tsr_adapters_init(tsr_adapters *ad, uint64_t seed);
void tsr_adapters_zero_grad(tsr_adapters *ad);
/* Tensor i of n (i = -1 returns n): name, ndim, shape, pointer into p (params or grads). */
int tsr_adapters_tensor_info(const tsr_adapters *ad, const real *p, int i, char *name, size_t len, int *ndim,
                             int64_t shape[4], real **data);
/* Start a batch: task ids (B) in [0, n_tasks) (NULL: all task 0), training flag, step (dropout stream).
 * Groups the examples by task (tsr_vit_forward then runs them in that order and returns logits and
 * probabilities in the caller's order) and builds every task's combined weights. noise (optional, training): per module
 * (n_tasks, h*S) uniforms in (0,1), concatenated in module order for routed modules; NULL = draw them
 * from `seed` and the step. 0 / -1 (task id out of range). */
int tsr_adapters_begin(tsr_adapters *ad, const int *task_ids, int B, int training, long step, uint64_t seed,
                       const real *noise);
/* Module index for (layer, lora site) or (layer, TSR_NLORA + bn pos); -1 if none. */
int tsr_ad_find(const tsr_adapters *ad, int layer, int slot);
int tsr_ad_lowest_layer(const tsr_adapters *ad); /* depth if no module */
/* Module k over the batch rows (B*T): y (rows, ldy) += scale * f(x) where x (rows, ldx).
 * For sequential bottlenecks x may alias y (the input is copied first). */
void tsr_ad_forward(tsr_adapters *ad, int k, real *y, int ldy, const real *x, int ldx);
/* Backward of module k: dy (rows, ldy) given; dx (rows, ldx) += input gradient (NULL: skip);
 * accumulates the combined-weight gradients of every distinct task. x as in forward (for sequential
 * bottlenecks the saved copy is used). */
void tsr_ad_backward(tsr_adapters *ad, int k, real *dx, int ldx, const real *dy, int ldy, const real *x, int ldx_in);
/* After the backward pass: turn the combined-weight gradients into skill and routing gradients. */
void tsr_adapters_end_backward(tsr_adapters *ad);
/* Attach ad to m: m's forward and backward passes then run ad's modules at their sites (through m's
 * tsr_vit_hooks, ctx = ad) and the batch in ad's task order; call tsr_adapters_begin before each forward.
 * ad = NULL detaches whatever is attached. ad must outlive the attachment; attaching again replaces it. */
void tsr_adapters_attach(tsr_adapters *ad, tsr_vit *m);
#endif
