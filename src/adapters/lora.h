/* lora.h: the LoRA update of one linear layer, y += scale * (x A) B (METHODS.md: A (d_in, r),
 * B (r, d_out), scale = alpha / r), forward and backward, with naive twins. The routed variants
 * (Poly / MHR) build A and B per task and then call these. Conventions as in model/layers.h. */
#ifndef TSR_LORA_H
#define TSR_LORA_H
#include "core/real.h"

#define lora_forward TSR_R(lora_forward)
#define lora_backward TSR_R(lora_backward)
#define lora_forward_ref TSR_R(lora_forward_ref)
#define lora_backward_ref TSR_R(lora_backward_ref)
/* y (N, OC) += scale * h B, h (N, r) = x (N, C) A (saved for backward). */
void lora_forward(real *y, real *h, const real *x, const real *A, const real *B, int N, int C, int OC, int r,
                  real scale);
/* dh = scale * dy B^T;  dx (N, C) += dh A^T;  dA (C, r) += x^T dh;  dB (r, OC) += scale * h^T dy.
 * Any of dx, dA, dB may be NULL. scratch: N * r values. */
void lora_backward(real *dx, real *dA, real *dB, real *scratch, const real *dy, const real *x, const real *h,
                   const real *A, const real *B, int N, int C, int OC, int r, real scale);
void lora_forward_ref(real *y, real *h, const real *x, const real *A, const real *B, int N, int C, int OC,
                      int r, real scale);
void lora_backward_ref(real *dx, real *dA, real *dB, const real *dy, const real *x, const real *A,
                       const real *B, int N, int C, int OC, int r, real scale);
#endif
