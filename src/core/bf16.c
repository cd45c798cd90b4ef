/* bf16.c: bf16 x bf16 -> fp32 matrix products through oneDNN's matmul primitive (C API), a small cache
 * of primitives by shape, and the on-the-fly conversion of fp32 activations. */
#include "bf16.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "common.h"

void tsr_bf16_convert(tsr_bf16 *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = tsr_f32_to_bf16(src[i]);
}

#ifdef TSR_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>

/* One cached primitive per shape; the model has a handful (4 linear shapes x forward and backward, per
 * batch size), so a small table with round-robin replacement suffices. */
#define NCACHE 32
typedef struct {
    int used, transB, M, N, K, lda, ldb, ldc, beta;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a, b, c;
} entry;
static entry g_cache[NCACHE];
static int g_next;
static dnnl_engine_t g_eng;
static dnnl_stream_t g_stream;
static tsr_bf16 *g_abuf; /* the converted A */
static size_t g_acap;

static int engine(void) {
    if (g_eng) return 0;
    if (dnnl_engine_create(&g_eng, dnnl_cpu, 0) != dnnl_success) return tsr_error("oneDNN: no CPU engine");
    if (dnnl_stream_create(&g_stream, g_eng, dnnl_stream_default_flags) != dnnl_success)
        return tsr_error("oneDNN: no stream");
    return 0;
}

/* A primitive descriptor for the shape (NULL and a message in err on failure). */
static dnnl_primitive_desc_t make_pd(entry *e, char *err, int len) {
    dnnl_dims_t ad = {e->M, e->K}, as = {e->lda, 1}, bd = {e->K, e->N}, cd = {e->M, e->N}, cs = {e->ldc, 1};
    dnnl_dims_t bs = {e->ldb, 1};
    if (e->transB) bs[0] = 1, bs[1] = e->ldb; /* B stored (N, K): element (k, n) at n * ldb + k */
    dnnl_memory_desc_init_by_strides(&e->a, 2, ad, dnnl_bf16, as);
    dnnl_memory_desc_init_by_strides(&e->b, 2, bd, dnnl_bf16, bs);
    dnnl_memory_desc_init_by_strides(&e->c, 2, cd, dnnl_f32, cs);
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st = dnnl_matmul_desc_init(&md, &e->a, &e->b, NULL, &e->c);
    if (st == dnnl_success) st = dnnl_primitive_attr_create(&attr);
    if (st == dnnl_success && e->beta) {
        st = dnnl_post_ops_create(&po);
        if (st == dnnl_success) st = dnnl_post_ops_append_sum(po, 1.0f);
        if (st == dnnl_success) st = dnnl_primitive_attr_set_post_ops(attr, po);
    }
    if (st == dnnl_success) st = dnnl_primitive_desc_create(&pd, &md, attr, g_eng, NULL);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success) {
        snprintf(err, (size_t)len, "oneDNN refuses a bf16 matmul %dx%dx%d (status %d: unimplemented on this CPU?)",
                 e->M, e->N, e->K, (int)st);
        return NULL;
    }
    return pd;
}

static entry *lookup(int transB, int M, int N, int K, int lda, int ldb, int ldc, int beta) {
    for (int i = 0; i < NCACHE; i++) {
        entry *e = &g_cache[i];
        if (e->used && e->transB == transB && e->M == M && e->N == N && e->K == K && e->lda == lda &&
            e->ldb == ldb && e->ldc == ldc && e->beta == beta)
            return e;
    }
    if (engine() != 0) return NULL;
    entry *e = &g_cache[g_next];
    g_next = (g_next + 1) % NCACHE;
    if (e->used) dnnl_primitive_destroy(e->prim);
    memset(e, 0, sizeof *e);
    *e = (entry){0, transB, M, N, K, lda, ldb, ldc, beta, NULL, {0}, {0}, {0}};
    char err[200];
    dnnl_primitive_desc_t pd = make_pd(e, err, sizeof err);
    if (!pd) {
        tsr_error("%s", err);
        return NULL;
    }
    dnnl_status_t st = dnnl_primitive_create(&e->prim, pd);
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success) {
        tsr_error("oneDNN: creating a bf16 matmul %dx%dx%d failed (status %d)", M, N, K, (int)st);
        return NULL;
    }
    e->used = 1;
    return e;
}

int tsr_gemm_bf16(int transB, int M, int N, int K, const float *A, int lda, const tsr_bf16 *B, int ldb,
                  float beta, float *C, int ldc) {
    size_t need = (size_t)M * K;
    if (need > g_acap) {
        free(g_abuf);
        g_abuf = tsr_aligned_alloc(sizeof(tsr_bf16) * need);
        g_acap = need;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) g_abuf[(size_t)i * K + k] = tsr_f32_to_bf16(A[(size_t)i * lda + k]);
    entry *e = lookup(transB, M, N, K, K, ldb, ldc, beta != 0);
    if (!e) return -1;
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    dnnl_status_t st = dnnl_memory_create(&ma, &e->a, g_eng, g_abuf);
    if (st == dnnl_success) st = dnnl_memory_create(&mb, &e->b, g_eng, (void *)B);
    if (st == dnnl_success) st = dnnl_memory_create(&mc, &e->c, g_eng, C);
    if (st == dnnl_success) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        st = dnnl_primitive_execute(e->prim, g_stream, 3, args);
        if (st == dnnl_success) st = dnnl_stream_wait(g_stream);
    }
    if (ma) dnnl_memory_destroy(ma);
    if (mb) dnnl_memory_destroy(mb);
    if (mc) dnnl_memory_destroy(mc);
    if (st != dnnl_success) return tsr_error("oneDNN: bf16 matmul %dx%dx%d failed (status %d)", M, N, K, (int)st);
    return 0;
}

int tsr_bf16_available(char *note, int len) {
    const dnnl_version_t *v = dnnl_version();
    if (engine() != 0) {
        snprintf(note, (size_t)len, "oneDNN %d.%d.%d: no CPU engine", v->major, v->minor, v->patch);
        return 0;
    }
    entry e = {0, 1, 256, 256, 256, 256, 256, 256, 0, NULL, {0}, {0}, {0}};
    char err[200];
    dnnl_primitive_desc_t pd = make_pd(&e, err, sizeof err);
    if (!pd) {
        snprintf(note, (size_t)len, "oneDNN %d.%d.%d: %s", v->major, v->minor, v->patch, err);
        return 0;
    }
    const char *impl = "?";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    snprintf(note, (size_t)len, "oneDNN %d.%d.%d: %s", v->major, v->minor, v->patch, impl);
    dnnl_primitive_desc_destroy(pd);
    return 1;
}

void tsr_bf16_release(void) {
    for (int i = 0; i < NCACHE; i++)
        if (g_cache[i].used) dnnl_primitive_destroy(g_cache[i].prim);
    memset(g_cache, 0, sizeof g_cache);
    g_next = 0;
    if (g_stream) dnnl_stream_destroy(g_stream);
    if (g_eng) dnnl_engine_destroy(g_eng);
    g_stream = NULL;
    g_eng = NULL;
    free(g_abuf);
    g_abuf = NULL;
    g_acap = 0;
}
#else
int tsr_gemm_bf16(int transB, int M, int N, int K, const float *A, int lda, const tsr_bf16 *B, int ldb,
                  float beta, float *C, int ldc) {
    return tsr_error("bf16 matrix products need oneDNN: this tessera was built without it "
                     "(install libdnnl-dev and configure again)");
}
int tsr_bf16_available(char *note, int len) {
    snprintf(note, (size_t)len, "built without oneDNN (install libdnnl-dev and configure again)");
    return 0;
}
void tsr_bf16_release(void) {}
#endif

int tsr_bf16_time_gemm(int M, int N, int K, int reps, double *t_fp32, double *t_bf16) {
    float *A = tsr_aligned_alloc(sizeof(float) * (size_t)M * K), *W = tsr_aligned_alloc(sizeof(float) * (size_t)N * K);
    float *C = tsr_aligned_alloc(sizeof(float) * (size_t)M * N);
    tsr_bf16 *W16 = tsr_aligned_alloc(sizeof(tsr_bf16) * (size_t)N * K);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)((i * 7919u) % 1000u) / 1000.0f - 0.5f;
    for (size_t i = 0; i < (size_t)N * K; i++) W[i] = (float)((i * 104729u) % 1000u) / 25000.0f - 0.02f;
    tsr_bf16_convert(W16, W, (size_t)N * K);
    *t_fp32 = *t_bf16 = 1e30;
    int rc = 0;
    for (int r = -1; r < reps && rc == 0; r++) { /* r = -1: warm-up (JIT, packing buffers, caches) */
        double t0 = tsr_time();
        cblas_sgemm(TSR_CBLAS_ROW_MAJOR, TSR_CBLAS_NO_TRANS, TSR_CBLAS_TRANS, M, N, K, 1, A, K, W, K, 0, C, N);
        double t1 = tsr_time();
        rc = tsr_gemm_bf16(1, M, N, K, A, K, W16, K, 0, C, N);
        double t2 = tsr_time();
        if (r >= 0) {
            if (t1 - t0 < *t_fp32) *t_fp32 = t1 - t0;
            if (t2 - t1 < *t_bf16) *t_bf16 = t2 - t1;
        }
    }
    free(A);
    free(W);
    free(C);
    free(W16);
    return rc;
}
