/* layers_ref.c: naive reference twins of the fast kernels in layers.c: plain loops, the textbook
 * formula, no BLAS, no threads. The tests hold the fast kernels to these (and these to finite
 * differences). Not used by the program. */
#include "model/layers.h"

#include <math.h>
#include <stdlib.h>

#include "core/common.h"

void linear_forward_ref(real *out, const real *inp, const real *W, const real *b, int N, int C, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0;
            for (int c = 0; c < C; c++) s += (double)inp[(size_t)n * C + c] * W[(size_t)o * C + c];
            out[(size_t)n * OC + o] = (real)s;
        }
}

void linear_backward_ref(real *dinp, real *dW, real *db, const real *dout, const real *inp,
                         const real *W, int N, int C, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            real g = dout[(size_t)n * OC + o];
            if (db) db[o] += g;
            for (int c = 0; c < C; c++) {
                if (dinp) dinp[(size_t)n * C + c] += g * W[(size_t)o * C + c];
                if (dW) dW[(size_t)o * C + c] += g * inp[(size_t)n * C + c];
            }
        }
}

void layernorm_forward_ref(real *out, real *mean, real *rstd, const real *inp, const real *w,
                           const real *b, int N, int C, double eps) {
    for (int n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (int i = 0; i < C; i++) m += inp[(size_t)n * C + i];
        m /= C;
        for (int i = 0; i < C; i++) v += (inp[(size_t)n * C + i] - m) * (inp[(size_t)n * C + i] - m);
        v /= C;
        double s = 1.0 / sqrt(v + eps);
        for (int i = 0; i < C; i++) out[(size_t)n * C + i] = (real)((inp[(size_t)n * C + i] - m) * s * w[i] + b[i]);
        mean[n] = (real)m;
        rstd[n] = (real)s;
    }
}

/* Through the full Jacobian of one row: d xh_i / d x_j = s (delta_ij - 1/C - xh_i xh_j / C). */
void layernorm_backward_ref(real *dinp, real *dw, real *db, const real *dout, const real *inp,
                            const real *w, const real *mean, const real *rstd, int N, int C) {
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        double s = rstd[n], m = mean[n];
        for (int i = 0; i < C; i++) {
            double xh = (x[i] - m) * s;
            if (dw) dw[i] += (real)(dy[i] * xh);
            if (db) db[i] += dy[i];
        }
        if (!dinp) continue;
        for (int j = 0; j < C; j++) {
            double xhj = (x[j] - m) * s, acc = 0;
            for (int i = 0; i < C; i++) {
                double xhi = (x[i] - m) * s;
                double J = s * ((i == j) - 1.0 / C - xhi * xhj / C);
                acc += dy[i] * w[i] * J;
            }
            dinp[(size_t)n * C + j] += (real)acc;
        }
    }
}

void gelu_forward_ref(real *out, const real *inp, long n) {
    for (long i = 0; i < n; i++) out[i] = (real)(0.5 * inp[i] * (1.0 + erf(inp[i] / sqrt(2.0))));
}

void gelu_backward_ref(real *dinp, const real *dout, const real *inp, long n) {
    for (long i = 0; i < n; i++) {
        double x = inp[i];
        double d = 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) * 0.39894228040143267794;
        dinp[i] += (real)(dout[i] * d);
    }
}

/* Materialise Q, K, V per head, S = Q K^T / sqrt(hd), P = softmax(S), O = P V. */
void attention_forward_ref(real *out, real *att, const real *qkv, int B, int T, int D, int H) {
    int hd = D / H;
    double scale = 1.0 / sqrt((double)hd);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
#define Q(t, d) qkv[((size_t)b * T + (t)) * 3 * D + (size_t)h * hd + (d)]
#define K(t, d) qkv[((size_t)b * T + (t)) * 3 * D + D + (size_t)h * hd + (d)]
#define V(t, d) qkv[((size_t)b * T + (t)) * 3 * D + 2 * D + (size_t)h * hd + (d)]
            real *P = att + ((size_t)b * H + h) * T * T;
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += (double)Q(i, d) * K(j, d);
                    P[(size_t)i * T + j] = (real)(s * scale);
                    if (s * scale > mx) mx = s * scale;
                }
                for (int j = 0; j < T; j++) sum += exp(P[(size_t)i * T + j] - mx);
                for (int j = 0; j < T; j++) P[(size_t)i * T + j] = (real)(exp(P[(size_t)i * T + j] - mx) / sum);
                for (int d = 0; d < hd; d++) {
                    double o = 0;
                    for (int j = 0; j < T; j++) o += (double)P[(size_t)i * T + j] * V(j, d);
                    out[((size_t)b * T + i) * D + (size_t)h * hd + d] = (real)o;
                }
            }
        }
}

void attention_backward_ref(real *dqkv, const real *dout, const real *qkv, const real *att, int B, int T,
                            int D, int H) {
    int hd = D / H;
    double scale = 1.0 / sqrt((double)hd);
    double *dP = tsr_malloc(sizeof(double) * (size_t)T * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const real *P = att + ((size_t)b * H + h) * T * T;
#define DY(t, d) dout[((size_t)b * T + (t)) * D + (size_t)h * hd + (d)]
#define DQ(t, d) dqkv[((size_t)b * T + (t)) * 3 * D + (size_t)h * hd + (d)]
#define DK(t, d) dqkv[((size_t)b * T + (t)) * 3 * D + D + (size_t)h * hd + (d)]
#define DV(t, d) dqkv[((size_t)b * T + (t)) * 3 * D + 2 * D + (size_t)h * hd + (d)]
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += (double)DY(i, d) * V(j, d);
                    dP[(size_t)i * T + j] = s;
                }
            for (int j = 0; j < T; j++)
                for (int d = 0; d < hd; d++) {
                    double s = 0;
                    for (int i = 0; i < T; i++) s += (double)P[(size_t)i * T + j] * DY(i, d);
                    DV(j, d) += (real)s;
                }
            /* softmax Jacobian: dS_ij = sum_k dP_ik P_ik (delta_jk - P_ij) */
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) {
                    double ds = 0;
                    for (int k = 0; k < T; k++)
                        ds += dP[(size_t)i * T + k] * P[(size_t)i * T + k] * ((j == k) - P[(size_t)i * T + j]);
                    for (int d = 0; d < hd; d++) {
                        DQ(i, d) += (real)(ds * scale * K(j, d));
                        DK(j, d) += (real)(ds * scale * Q(i, d));
                    }
                }
        }
    free(dP);
}
