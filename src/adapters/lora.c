/* lora.c: LoRA forward/backward through BLAS, and naive twins. */
#include "adapters/lora.h"

#include <stddef.h>

#include "core/blas.h"

void lora_forward(real *y, real *h, const real *x, const real *A, const real *B, int N, int C, int OC, int r,
                  real scale) {
    tsr_gemm(0, 0, N, r, C, 1, x, C, A, r, 0, h, r);
    tsr_gemm(0, 0, N, OC, r, scale, h, r, B, OC, 1, y, OC);
}

void lora_backward(real *dx, real *dA, real *dB, real *scratch, const real *dy, const real *x, const real *h,
                   const real *A, const real *B, int N, int C, int OC, int r, real scale) {
    if (dB) tsr_gemm(1, 0, r, OC, N, scale, h, r, dy, OC, 1, dB, OC);
    if (!dx && !dA) return;
    real *dh = scratch;
    tsr_gemm(0, 1, N, r, OC, scale, dy, OC, B, OC, 0, dh, r);
    if (dA) tsr_gemm(1, 0, C, r, N, 1, x, C, dh, r, 1, dA, r);
    if (dx) tsr_gemm(0, 1, N, C, r, 1, dh, r, A, r, 1, dx, C);
}

void lora_forward_ref(real *y, real *h, const real *x, const real *A, const real *B, int N, int C, int OC,
                      int r, real scale) {
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < r; k++) {
            double s = 0;
            for (int c = 0; c < C; c++) s += (double)x[(size_t)n * C + c] * A[(size_t)c * r + k];
            h[(size_t)n * r + k] = (real)s;
        }
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int k = 0; k < r; k++) s += (double)h[(size_t)n * r + k] * B[(size_t)k * OC + o];
            y[(size_t)n * OC + o] += (real)(scale * s);
        }
    }
}

/* Through the explicit product W = scale * A B (C, OC): dx = dy W^T, dW = x^T dy, dA = dW B^T * scale,
 * dB = scale * A^T dW. */
void lora_backward_ref(real *dx, real *dA, real *dB, const real *dy, const real *x, const real *A,
                       const real *B, int N, int C, int OC, int r, real scale) {
    for (int c = 0; c < C; c++)
        for (int o = 0; o < OC; o++) {
            double w = 0, dw = 0;
            for (int k = 0; k < r; k++) w += (double)A[(size_t)c * r + k] * B[(size_t)k * OC + o];
            w *= scale;
            for (int n = 0; n < N; n++) {
                if (dx) dx[(size_t)n * C + c] += (real)(dy[(size_t)n * OC + o] * w);
                dw += (double)x[(size_t)n * C + c] * dy[(size_t)n * OC + o];
            }
            for (int k = 0; k < r; k++) {
                if (dA) dA[(size_t)c * r + k] += (real)(scale * dw * B[(size_t)k * OC + o]);
                if (dB) dB[(size_t)k * OC + o] += (real)(scale * dw * A[(size_t)c * r + k]);
            }
        }
}
