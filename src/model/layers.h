/* layers.h: the ViT's layers as free functions, forward and backward.
 *
 * Conventions (as in llm.c): outputs first, then inputs, then weights, then sizes. Every shape is in
 * the comment. Backward functions ACCUMULATE (+=) into every gradient output, so the caller zeroes
 * gradient buffers once per step; a NULL gradient output is skipped (that is how a frozen layer
 * passes its input gradient without computing its weight gradients).
 * Every fast kernel has a naive twin named *_ref (layers_ref.c) used by the tests.
 * All names go through TSR_R() so that the double build (-DTSR_F64) links beside the float one. */
#ifndef TSR_LAYERS_H
#define TSR_LAYERS_H
#include "core/real.h"

/* images (B, C, IMG, IMG) -> patches (B, NP, C*P*P), NP = (IMG/P)^2, flattened (channel, row, col)
 * exactly like a Conv2d kernel (D, C, P, P). */
#define patchify_forward TSR_R(patchify_forward)
void patchify_forward(real *patches, const real *images, int B, int C, int IMG, int P);

/* out (N, OC) = inp (N, C) W^T + b;  W (OC, C), b (OC) or NULL. */
#define linear_forward TSR_R(linear_forward)
#define linear_backward TSR_R(linear_backward)
#define linear_forward_ref TSR_R(linear_forward_ref)
#define linear_backward_ref TSR_R(linear_backward_ref)
void linear_forward(real *out, const real *inp, const real *W, const real *b, int N, int C, int OC);
/* dinp (N, C) += dout W;  dW (OC, C) += dout^T inp;  db (OC) += sum_n dout. */
void linear_backward(real *dinp, real *dW, real *db, const real *dout, const real *inp, const real *W,
                     int N, int C, int OC);
void linear_forward_ref(real *out, const real *inp, const real *W, const real *b, int N, int C, int OC);
void linear_backward_ref(real *dinp, real *dW, real *db, const real *dout, const real *inp,
                         const real *W, int N, int C, int OC);

/* LayerNorm over the last dimension: out (N, C) = (inp - mean) * rstd * w + b; mean, rstd (N) saved. */
#define layernorm_forward TSR_R(layernorm_forward)
#define layernorm_backward TSR_R(layernorm_backward)
#define layernorm_forward_ref TSR_R(layernorm_forward_ref)
#define layernorm_backward_ref TSR_R(layernorm_backward_ref)
void layernorm_forward(real *out, real *mean, real *rstd, const real *inp, const real *w, const real *b,
                       int N, int C, double eps);
/* dinp (N, C) += ...; dw, db (C) += ... (either may be NULL). */
void layernorm_backward(real *dinp, real *dw, real *db, const real *dout, const real *inp, const real *w,
                        const real *mean, const real *rstd, int N, int C);
void layernorm_forward_ref(real *out, real *mean, real *rstd, const real *inp, const real *w,
                           const real *b, int N, int C, double eps);
void layernorm_backward_ref(real *dinp, real *dw, real *db, const real *dout, const real *inp,
                            const real *w, const real *mean, const real *rstd, int N, int C);

/* Exact GELU: out = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), n elements. dinp += dout * gelu'(inp). */
#define gelu_forward TSR_R(gelu_forward)
#define gelu_backward TSR_R(gelu_backward)
#define gelu_forward_ref TSR_R(gelu_forward_ref)
#define gelu_backward_ref TSR_R(gelu_backward_ref)
void gelu_forward(real *out, const real *inp, long n);
void gelu_backward(real *dinp, const real *dout, const real *inp, long n);
void gelu_forward_ref(real *out, const real *inp, long n);
void gelu_backward_ref(real *dinp, const real *dout, const real *inp, long n);

/* Multi-head self-attention core. qkv (B, T, 3D) holds [q | k | v] along features, head h owns
 * features h*hd .. h*hd+hd-1 of each (hd = D / H). att (B, H, T, T) saves the softmax probabilities;
 * out (B, T, D) = heads concatenated. Scale 1/sqrt(hd).
 * att may be NULL in both (the fast kernels, not the _ref twins): the forward then keeps one row at a time
 * and the backward recomputes each row of softmax(q k^T) from qkv with the forward's own code, so its
 * gradients equal the stored-probabilities ones bitwise; the cost is the q k^T products and the
 * exponentials once more. */
#define attention_forward TSR_R(attention_forward)
#define attention_backward TSR_R(attention_backward)
#define attention_forward_ref TSR_R(attention_forward_ref)
#define attention_backward_ref TSR_R(attention_backward_ref)
void attention_forward(real *out, real *att, const real *qkv, int B, int T, int D, int H);
/* dqkv (B, T, 3D) += gradient from dout (B, T, D). */
void attention_backward(real *dqkv, const real *dout, const real *qkv, const real *att, int B, int T,
                        int D, int H);
void attention_forward_ref(real *out, real *att, const real *qkv, int B, int T, int D, int H);
void attention_backward_ref(real *dqkv, const real *dout, const real *qkv, const real *att, int B, int T,
                            int D, int H);

/* Softmax cross-entropy. probs (B, K) from logits (B, K); returns the mean loss over the batch
 * (labels in [0, K)). Backward: dlogits (B, K) += (probs - onehot(labels)) * dloss / B. */
#define softmax_xent_forward TSR_R(softmax_xent_forward)
#define softmax_xent_backward TSR_R(softmax_xent_backward)
double softmax_xent_forward(real *probs, const real *logits, const int *labels, int B, int K);
void softmax_xent_backward(real *dlogits, const real *probs, const int *labels, int B, int K, double dloss);

#endif
