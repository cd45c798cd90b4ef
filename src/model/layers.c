/* layers.c: fast kernels (BLAS for the matmuls, OpenMP for the rest). Naive twins: layers_ref.c.
 * The float build runs GELU, LayerNorm and the softmax exponentials through the SIMD kernels of
 * vec.c (AVX-512 / AVX2 / scalar, chosen at run time); the double build keeps libm's scalar code. */
#include "model/layers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/blas.h"
#include "core/common.h"
#include "model/vec.h"

/* elementwise kernels run over chunks of this many elements, one chunk per OpenMP iteration */
#define CHUNK 4096

void patchify_forward(real *patches, const real *images, int B, int C, int IMG, int P) {
    int G = IMG / P, NP = G * G, CPP = C * P * P;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int p = 0; p < NP; p++) {
            int py = p / G, px = p % G;
            real *dst = patches + ((size_t)b * NP + p) * CPP;
            for (int c = 0; c < C; c++)
                for (int i = 0; i < P; i++) {
                    const real *src = images + (((size_t)b * C + c) * IMG + (size_t)py * P + i) * IMG +
                                      (size_t)px * P;
                    memcpy(dst + (c * P + i) * P, src, sizeof(real) * (size_t)P);
                }
        }
}

void linear_forward(real *out, const real *inp, const real *W, const real *b, int N, int C, int OC) {
    if (b) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, b, sizeof(real) * (size_t)OC);
    }
    tsr_gemm(0, 1, N, OC, C, 1, inp, C, W, C, b ? 1 : 0, out, OC);
}

void linear_backward(real *dinp, real *dW, real *db, const real *dout, const real *inp, const real *W,
                     int N, int C, int OC) {
    if (dinp) tsr_gemm(0, 0, N, C, OC, 1, dout, OC, W, C, 1, dinp, C);
    if (dW) tsr_gemm(1, 0, OC, C, N, 1, dout, OC, inp, C, 1, dW, C);
    if (db) {
#pragma omp parallel for schedule(static)
        for (int o = 0; o < OC; o++) {
            real s = 0;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * OC + o];
            db[o] += s;
        }
    }
}

void layernorm_forward(real *out, real *mean, real *rstd, const real *inp, const real *w, const real *b,
                       int N, int C, double eps) {
#ifndef TSR_F64
    tsr_simd_level(); /* choose the kernels before the threads start */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        tsr_vec_ln_fwd_row(out + (size_t)n * C, mean + n, rstd + n, inp + (size_t)n * C, w, b, C, eps);
#else
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C;
        real *y = out + (size_t)n * C;
        real m = 0;
        for (int i = 0; i < C; i++) m += x[i];
        m /= C;
        real v = 0;
        for (int i = 0; i < C; i++) {
            real d = x[i] - m;
            v += d * d;
        }
        v /= C;
        real s = (real)(1.0 / sqrt((double)v + eps));
        for (int i = 0; i < C; i++) y[i] = (x[i] - m) * s * w[i] + b[i];
        mean[n] = m;
        rstd[n] = s;
    }
#endif
}

void layernorm_backward(real *dinp, real *dw, real *db, const real *dout, const real *inp, const real *w,
                        const real *mean, const real *rstd, int N, int C) {
#ifndef TSR_F64
    tsr_simd_level();
#endif
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const real *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            real *dx = dinp + (size_t)n * C;
            real m = mean[n], s = rstd[n];
#ifndef TSR_F64
            tsr_vec_ln_bwd_row(dx, dy, x, w, m, s, C);
            continue;
#endif
            real sum_g = 0, sum_gx = 0; /* g = dy * w; xh = (x - m) * s */
            for (int i = 0; i < C; i++) {
                real g = dy[i] * w[i];
                sum_g += g;
                sum_gx += g * (x[i] - m) * s;
            }
            sum_g /= C;
            sum_gx /= C;
            for (int i = 0; i < C; i++) {
                real xh = (x[i] - m) * s;
                dx[i] += s * (dy[i] * w[i] - sum_g - xh * sum_gx);
            }
        }
    }
    if (dw || db) {
        /* column sums over rows: parallel over column blocks, rows in order (deterministic). */
#pragma omp parallel for schedule(static)
        for (int c0 = 0; c0 < C; c0 += 64) {
            int c1 = c0 + 64 < C ? c0 + 64 : C;
            real accw[64], accb[64];
            for (int i = c0; i < c1; i++) accw[i - c0] = accb[i - c0] = 0;
            for (int n = 0; n < N; n++) {
                const real *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
                real m = mean[n], s = rstd[n];
#ifndef TSR_F64
                tsr_vec_ln_wb_row(accw, accb, dy + c0, x + c0, m, s, c1 - c0);
#else
                for (int i = c0; i < c1; i++) {
                    accw[i - c0] += dy[i] * (x[i] - m) * s;
                    accb[i - c0] += dy[i];
                }
#endif
            }
            for (int i = c0; i < c1; i++) {
                if (dw) dw[i] += accw[i - c0];
                if (db) db[i] += accb[i - c0];
            }
        }
    }
}

#define INV_SQRT2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228040143267794

void gelu_forward(real *out, const real *inp, long n) {
#ifndef TSR_F64
    tsr_simd_level();
#pragma omp parallel for schedule(static)
    for (long c = 0; c < n; c += CHUNK) tsr_vec_gelu_fwd(out + c, inp + c, n - c < CHUNK ? n - c : CHUNK);
    return;
#endif
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        real x = inp[i];
        out[i] = (real)0.5 * x * ((real)1 + rerf(x * (real)INV_SQRT2));
    }
}

void gelu_backward(real *dinp, const real *dout, const real *inp, long n) {
#ifndef TSR_F64
    tsr_simd_level();
#pragma omp parallel for schedule(static)
    for (long c = 0; c < n; c += CHUNK)
        tsr_vec_gelu_bwd(dinp + c, dout + c, inp + c, n - c < CHUNK ? n - c : CHUNK);
    return;
#endif
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        real x = inp[i];
        real cdf = (real)0.5 * ((real)1 + rerf(x * (real)INV_SQRT2));
        real pdf = (real)INV_SQRT_2PI * rexp((real)-0.5 * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

#if defined(TSR_HAVE_ONEDNN) && !defined(TSR_F64)
/* Float build with oneDNN: each (image, head) pair's products are small GEMMs on one thread (tsr_sgemm_seq,
 * JIT kernels at about the core's FMA rate), the pairs spread over the OpenMP threads. */

/* One head's P (T, T) = softmax(q k^T * scale), rows of length T; q_i = q + i * ld, k_j = k + j * ld.
 * The forward and the backward's recomputation both call this one compiled copy, so they agree bitwise. */
__attribute__((noinline)) static void softmax_head(real *P, const real *q, const real *k, int ld, int T, int hd,
                                                   real scale) {
    tsr_sgemm_seq(0, 1, T, T, hd, scale, q, ld, k, ld, 0, P, T);
    for (int i = 0; i < T; i++) {
        real *p = P + (size_t)i * T, mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < T; j++) mx = p[j] > mx ? p[j] : mx;
        real inv = 1 / tsr_vec_exp_sum(p, p, mx, T);
#pragma omp simd
        for (int j = 0; j < T; j++) p[j] *= inv;
    }
}

void attention_forward(real *out, real *att, const real *qkv, int B, int T, int D, int H) {
    int hd = D / H, D3 = 3 * D;
    real scale = (real)(1.0 / sqrt((double)hd));
    tsr_simd_level();
#pragma omp parallel
    {
        real *buf = att ? NULL : tsr_malloc(sizeof(real) * (size_t)T * T); /* att NULL: not kept */
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                const real *base = qkv + (size_t)b * T * D3;
                real *P = att ? att + ((size_t)b * H + h) * T * T : buf;
                softmax_head(P, base + h * hd, base + D + h * hd, D3, T, hd, scale);
                /* out_h = P v_h */
                tsr_sgemm_seq(0, 0, T, hd, T, 1, P, T, base + 2 * D + h * hd, D3, 0, out + (size_t)b * T * D + h * hd, D);
            }
        free(buf);
    }
}

void attention_backward(real *dqkv, const real *dout, const real *qkv, const real *att, int B, int T,
                        int D, int H) {
    int hd = D / H, D3 = 3 * D;
    real scale = (real)(1.0 / sqrt((double)hd));
    tsr_simd_level();
#pragma omp parallel
    {
        real *dS = tsr_malloc(sizeof(real) * (size_t)T * T);
        real *buf = att ? NULL : tsr_malloc(sizeof(real) * (size_t)T * T); /* att NULL: recomputed */
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                const real *base = qkv + (size_t)b * T * D3, *dy = dout + (size_t)b * T * D + h * hd;
                real *dbase = dqkv + (size_t)b * T * D3;
                const real *P = att ? att + ((size_t)b * H + h) * T * T : buf;
                if (!att) softmax_head(buf, base + h * hd, base + D + h * hd, D3, T, hd, scale);
                /* dP = dy v^T ; dv += P^T dy */
                tsr_sgemm_seq(0, 1, T, T, hd, 1, dy, D, base + 2 * D + h * hd, D3, 0, dS, T);
                tsr_sgemm_seq(1, 0, T, hd, T, 1, P, T, dy, D, 1, dbase + 2 * D + h * hd, D3);
                /* dS_ij = scale p_ij (dP_ij - sum_k dP_ik p_ik) */
                for (int i = 0; i < T; i++) {
                    real *ds = dS + (size_t)i * T, rowsum = 0;
                    const real *p = P + (size_t)i * T;
#pragma omp simd reduction(+ : rowsum)
                    for (int j = 0; j < T; j++) rowsum += ds[j] * p[j];
#pragma omp simd
                    for (int j = 0; j < T; j++) ds[j] = p[j] * (ds[j] - rowsum) * scale;
                }
                /* dq += dS k ; dk += dS^T q */
                tsr_sgemm_seq(0, 0, T, hd, T, 1, dS, T, base + D + h * hd, D3, 1, dbase + h * hd, D3);
                tsr_sgemm_seq(1, 0, T, hd, T, 1, dS, T, base + h * hd, D3, 1, dbase + D + h * hd, D3);
            }
        free(dS);
        free(buf);
    }
}

#else /* the double build, and float builds without oneDNN: row-at-a-time loops */
static inline real dot(const real *a, const real *b, int n) {
    real s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void axpy(real *y, real a, const real *x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* Row i of one head's softmax(q k^T * scale): p (T) from q_i (hd) and the keys k_j = kbase + j * D3
 * (hd each). The forward and the backward's recomputation both call this one compiled copy (noinline), so
 * the two agree bitwise. */
__attribute__((noinline)) static void softmax_row(real *p, const real *q, const real *kbase, size_t D3, int T, int hd, real scale) {
    real mx = -INFINITY;
    for (int j = 0; j < T; j++) {
        real s = dot(q, kbase + j * D3, hd) * scale;
        p[j] = s;
        if (s > mx) mx = s;
    }
#ifndef TSR_F64
    real sum = tsr_vec_exp_sum(p, p, mx, T);
#else
    real sum = 0;
    for (int j = 0; j < T; j++) {
        p[j] = rexp(p[j] - mx);
        sum += p[j];
    }
#endif
    real inv = 1 / sum;
    for (int j = 0; j < T; j++) p[j] *= inv;
}

void attention_forward(real *out, real *att, const real *qkv, int B, int T, int D, int H) {
    int hd = D / H;
    size_t D3 = 3 * (size_t)D;
    real scale = (real)(1.0 / sqrt((double)hd));
#ifndef TSR_F64
    tsr_simd_level();
#endif
#pragma omp parallel
    {
        real *row = att ? NULL : tsr_malloc(sizeof(real) * (size_t)T); /* att NULL: one row at a time */
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                const real *base = qkv + (size_t)b * T * D3;
                for (int i = 0; i < T; i++) {
                    real *p = att ? att + (((size_t)b * H + h) * T + i) * T : row;
                    softmax_row(p, base + i * D3 + h * hd, base + D + h * hd, D3, T, hd, scale);
                    real *o = out + ((size_t)b * T + i) * D + h * hd;
                    for (int d = 0; d < hd; d++) o[d] = 0;
                    for (int j = 0; j < T; j++) axpy(o, p[j], base + j * D3 + 2 * D + h * hd, hd);
                }
            }
        free(row);
    }
}

void attention_backward(real *dqkv, const real *dout, const real *qkv, const real *att, int B, int T,
                        int D, int H) {
    int hd = D / H;
    size_t D3 = 3 * (size_t)D;
    real scale = (real)(1.0 / sqrt((double)hd));
#ifndef TSR_F64
    if (!att) tsr_simd_level();
#endif
#pragma omp parallel
    {
        real *dS = tsr_malloc(sizeof(real) * (size_t)T);
        real *row = att ? NULL : tsr_malloc(sizeof(real) * (size_t)T); /* att NULL: recomputed rows */
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                const real *base = qkv + (size_t)b * T * D3;
                real *dbase = dqkv + (size_t)b * T * D3;
                for (int i = 0; i < T; i++) {
                    const real *p;
                    if (att) p = att + (((size_t)b * H + h) * T + i) * T;
                    else {
                        softmax_row(row, base + i * D3 + h * hd, base + D + h * hd, D3, T, hd, scale);
                        p = row;
                    }
                    const real *dy = dout + ((size_t)b * T + i) * D + h * hd;
                    /* dP_ij = dy_i . v_j ; dv_j += p_ij dy_i */
                    real rowsum = 0;
                    for (int j = 0; j < T; j++) {
                        dS[j] = dot(dy, base + j * D3 + 2 * D + h * hd, hd);
                        rowsum += dS[j] * p[j];
                        axpy(dbase + j * D3 + 2 * D + h * hd, p[j], dy, hd);
                    }
                    /* dS_ij = p_ij (dP_ij - sum_k dP_ik p_ik); dq_i += scale dS_ij k_j; dk_j += scale dS_ij q_i */
                    const real *q = base + i * D3 + h * hd;
                    real *dq = dbase + i * D3 + h * hd;
                    for (int j = 0; j < T; j++) {
                        real ds = p[j] * (dS[j] - rowsum) * scale;
                        axpy(dq, ds, base + j * D3 + D + h * hd, hd);
                        axpy(dbase + j * D3 + D + h * hd, ds, q, hd);
                    }
                }
            }
        free(dS);
        free(row);
    }
}

#endif

double softmax_xent_forward(real *probs, const real *logits, const int *labels, int B, int K) {
    double loss = 0;
    for (int b = 0; b < B; b++) {
        const real *z = logits + (size_t)b * K;
        real *p = probs + (size_t)b * K;
        double mx = -INFINITY, sum = 0;
        for (int k = 0; k < K; k++)
            if (z[k] > mx) mx = z[k];
#ifndef TSR_F64
        tsr_vec_exp_sum(p, z, (float)mx, K); /* the exponentials in float, their sum in double */
        for (int k = 0; k < K; k++) sum += p[k];
        for (int k = 0; k < K; k++) p[k] = (real)(p[k] / sum);
#else
        for (int k = 0; k < K; k++) sum += exp((double)z[k] - mx);
        for (int k = 0; k < K; k++) p[k] = (real)(exp((double)z[k] - mx) / sum);
#endif
        if (labels) loss += -((double)z[labels[b]] - mx - log(sum));
    }
    return loss / B;
}

void softmax_xent_backward(real *dlogits, const real *probs, const int *labels, int B, int K, double dloss) {
    real s = (real)(dloss / B);
    for (int b = 0; b < B; b++)
        for (int k = 0; k < K; k++)
            dlogits[(size_t)b * K + k] += s * (probs[(size_t)b * K + k] - (k == labels[b] ? 1 : 0));
}
