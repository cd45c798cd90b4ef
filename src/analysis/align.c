/* align.c: task-gradient alignment. THE SCALAPACK FILE: the one place in tessera that calls PBLAS and
 * ScaLAPACK (it does not call MPI: the BLACS process grids come from src/dist/grid.h, and the T x T
 * results are combined through the tsr_dist_* collectives of src/dist/parallel.h).
 *
 * Distributed path (tsr_align_scalapack), on every rank of the world (BLACS grids from src/dist/grid.h):
 *   1. The input G (T x P, task t on rank t % R, local rows row-major) is described to ScaLAPACK as its
 *      transpose G^T (P x T) on a 1 x R grid with column blocks of 1 (and one row block of P): a
 *      row-major block of local rows IS the column-major local array of those columns of G^T with
 *      leading dimension P, so the caller's memory is used in place, without a copy.
 *      (This is the "R x 1, one row per block" layout of G, seen transposed.)
 *   2. pdgemr2d moves G^T into the 2-D block-cyclic layout (nb x nb blocks) on the nprow x npcol grid.
 *   3. pdsyrk ('L', 'T') forms the lower triangle of the Gram matrix G G^T = (G^T)^T G^T (T x T,
 *      nb x nb blocks).
 *   4. The lower triangle is summed into a T x T buffer on every rank (each entry is owned by exactly
 *      one grid rank; the others contribute 0, so the sum is exact and identical everywhere); norms and
 *      cosines are formed there, and each grid rank writes the cosines of its own blocks back into the
 *      distributed matrix (the normalisation).
 *   5. pdsyevd ('V', 'L'); the eigenvectors are combined the same way, the eigenvalues are taken from
 *      grid rank 0 = world rank 0 (when T <= nb, pdstedc leaves the eigenvalues only on the process
 *      that owns the matrix: W is not global then).
 *
 * BLACS contexts: two grids are created per call with tsr_grid_make (collective over the world) and
 * released with tsr_grid_free.
 *
 * pdsyevd's workspace: its query (= its documented minimum) is NOT always enough. pdsyevd hands
 * lwork - 2T to pdstedc/pdlasrt and to pdormtr, and ignores pdormtr's error code: with a block as large
 * as the matrix (nb >= T, T >= ~10) pdormtr needs max(NB(NB-1)/2, (MpC0+NqC0) NB) + NB^2 > the query,
 * prints "PDORMTR parameter number 16 had an illegal value" and leaves the eigenvectors of the
 * tridiagonal matrix, not of the input (wrong results with info = 0). pdlasrt has the same kind of gap
 * (NP*(NB+NQ), Reference-ScaLAPACK issue 74). So lwork is the maximum of the query, the documented
 * minimum and the minima of pdormtr and pdlasrt computed here (plus a margin); likewise liwork.
 *
 * Fortran routines get their hidden CHARACTER lengths explicitly (size_t, gfortran's convention);
 * PBLAS and the REDIST routines are C and take none. */
#include "analysis/align.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "dist/grid.h"
#include "dist/parallel.h"

/* ---------------------------------------------------------------- PBLAS / ScaLAPACK / LAPACK
 * (no C header ships with Debian's ScaLAPACK; the BLACS grids come from dist/grid.h) */
void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb, const int *irsrc,
               const int *icsrc, const int *ictxt, const int *lld, int *info);
int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc, const int *nprocs);
void pdgemr2d_(const int *m, const int *n, double *a, const int *ia, const int *ja, const int *desca,
               double *b, const int *ib, const int *jb, const int *descb, const int *gcontext);
void pdsyrk_(const char *uplo, const char *trans, const int *n, const int *k, const double *alpha,
             const double *a, const int *ia, const int *ja, const int *desca, const double *beta,
             double *c, const int *ic, const int *jc, const int *descc);
void pdgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
             const double *alpha, const double *a, const int *ia, const int *ja, const int *desca,
             const double *b, const int *ib, const int *jb, const int *descb, const double *beta,
             double *c, const int *ic, const int *jc, const int *descc);
void pdsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *ia, const int *ja,
              const int *desca, double *w, double *z, const int *iz, const int *jz, const int *descz,
              double *work, const int *lwork, int *iwork, const int *liwork, int *info, size_t ljobz,
              size_t luplo);
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
             double *work, const int *lwork, int *iwork, const int *liwork, int *info, size_t ljobz,
             size_t luplo);
void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *lda,
             double *s, double *u, const int *ldu, double *vt, const int *ldvt, double *work,
             const int *lwork, int *info, size_t ljobu, size_t ljobvt);

/* descriptor fields (0-based) */
enum { D_DTYPE = 0, D_CTXT, D_M, D_N, D_MB, D_NB, D_RSRC, D_CSRC, D_LLD, DLEN };

/* ---------------------------------------------------------------- shared post-processing */

void tsr_align_free(tsr_align_result *r) {
    if (!r) return;
    free(r->cosine);
    free(r->eigenvalues);
    free(r->eigenvectors);
    free(r->norms);
    memset(r, 0, sizeof *r);
}

static void result_alloc(tsr_align_result *out, int T) {
    memset(out, 0, sizeof *out);
    out->ntasks = T;
    out->cosine = tsr_malloc((size_t)T * T * sizeof(double));
    out->eigenvalues = tsr_malloc((size_t)T * sizeof(double));
    out->eigenvectors = tsr_malloc((size_t)T * T * sizeof(double));
    out->norms = tsr_malloc((size_t)T * sizeof(double));
}

/* exp(-sum p log p) of the nonnegative weights w (p = w / sum w); 0 when the sum is not positive. */
static double exp_entropy(const double *w, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += w[i];
    if (!(s > 0) || !isfinite(s)) return 0;
    double h = 0;
    for (int i = 0; i < n; i++) {
        double p = w[i] / s;
        if (p > 0) h -= p * log(p);
    }
    return exp(h);
}

/* From the full symmetric Gram matrix (row-major): norms and cosines into out. -1 (tsr_error) when the
 * Gram matrix is not finite. */
static int cosines_from_gram(int T, const double *gram, tsr_align_result *out) {
    for (int s = 0; s < T; s++)
        for (int t = 0; t < T; t++)
            if (!isfinite(gram[(size_t)s * T + t]))
                return tsr_error("alignment: the gradient dot product of tasks %d and %d is not finite "
                                 "(NaN/Inf in a gradient, or its squared norm overflows)", s, t);
    for (int t = 0; t < T; t++) {
        double d = gram[(size_t)t * T + t];
        out->norms[t] = d > 0 ? sqrt(d) : 0;
    }
    for (int s = 0; s < T; s++) {
        for (int t = 0; t < T; t++) {
            double ns = out->norms[s], nt = out->norms[t], c;
            if (!(ns > 0) || !(nt > 0)) c = 0;
            else if (s == t) c = 1;
            else {
                c = gram[(size_t)s * T + t] / ns / nt;
                if (c > 1) c = 1;
                if (c < -1) c = -1;
            }
            out->cosine[(size_t)s * T + t] = c;
        }
    }
    double sum = 0;
    for (int s = 0; s < T; s++)
        for (int t = 0; t < T; t++)
            if (s != t) sum += out->cosine[(size_t)s * T + t];
    out->mean_offdiag = T < 2 ? NAN : sum / ((double)T * (T - 1));
    return 0;
}

/* From eigenvalues w (ascending) and eigenvectors zc (column-major: zc[i + k*T] = entry i of vector k):
 * descending order, sign convention, effective rank. */
static void eigen_finish(int T, const double *w, const double *zc, tsr_align_result *out) {
    double *pos = tsr_malloc((size_t)T * sizeof(double));
    for (int k = 0; k < T; k++) {
        int src = T - 1 - k;
        out->eigenvalues[k] = w[src];
        pos[k] = w[src] > 0 ? w[src] : 0;
        const double *v = zc + (size_t)src * T;
        double m = 0;
        for (int i = 0; i < T; i++)
            if (fabs(v[i]) > m) m = fabs(v[i]);
        int imax = 0;
        for (int i = 0; i < T; i++)
            if (fabs(v[i]) >= m * (1 - 1e-9)) {
                imax = i;
                break;
            }
        double sg = v[imax] < 0 ? -1.0 : 1.0;
        for (int i = 0; i < T; i++) out->eigenvectors[(size_t)i * T + k] = sg * v[i];
    }
    out->eff_rank = exp_entropy(pos, T);
    free(pos);
}

/* LAPACK dsyevd on the full symmetric T x T matrix a (destroyed; on return the eigenvectors,
 * column-major). w: ascending eigenvalues. */
static int lapack_syevd(int T, double *a, double *w) {
    int lwork = -1, liwork = -1, info = 0, iq = 0;
    double q = 0;
    dsyevd_("V", "L", &T, a, &T, w, &q, &lwork, &iq, &liwork, &info, 1, 1);
    if (info != 0) return tsr_error("alignment: LAPACK dsyevd workspace query failed (info %d)", info);
    lwork = (int)q;
    if (lwork < 1 + 6 * T + 2 * T * T) lwork = 1 + 6 * T + 2 * T * T;
    liwork = iq > 3 + 5 * T ? iq : 3 + 5 * T;
    double *work = tsr_malloc((size_t)lwork * sizeof(double));
    int *iwork = tsr_malloc((size_t)liwork * sizeof(int));
    dsyevd_("V", "L", &T, a, &T, w, work, &lwork, iwork, &liwork, &info, 1, 1);
    free(work);
    free(iwork);
    if (info != 0) return tsr_error("alignment: LAPACK dsyevd failed (info %d)", info);
    return 0;
}

/* ---------------------------------------------------------------- serial reference */

int tsr_align_serial(int T, size_t P, const double *G, tsr_align_result *out) {
    memset(out, 0, sizeof *out);
    if (T < 1) return tsr_error("alignment: need at least one task (T = %d)", T);
    if (P < 1) return tsr_error("alignment: gradients must have at least one parameter (P = 0)");
    if (!G) return tsr_error("alignment: no gradient matrix (NULL)");
    if ((size_t)T > SIZE_MAX / sizeof(double) / (size_t)T)
        return tsr_error("alignment: T = %d tasks is too many", T);

    double *gram = tsr_malloc((size_t)T * T * sizeof(double));
    for (int s = 0; s < T; s++) {
        const double *gs = G + (size_t)s * P;
        for (int t = 0; t <= s; t++) {
            const double *gt = G + (size_t)t * P;
            double acc = 0;
            for (size_t j = 0; j < P; j++) acc += gs[j] * gt[j];
            gram[(size_t)s * T + t] = gram[(size_t)t * T + s] = acc;
        }
    }
    result_alloc(out, T);
    int rc = cosines_from_gram(T, gram, out);
    if (rc == 0) {
        double *w = tsr_malloc((size_t)T * sizeof(double));
        memcpy(gram, out->cosine, (size_t)T * T * sizeof(double));
        rc = lapack_syevd(T, gram, w);
        if (rc == 0) eigen_finish(T, w, gram, out);
        free(w);
    }
    free(gram);
    if (rc != 0) tsr_align_free(out);
    return rc;
}

/* ---------------------------------------------------------------- distributed */

/* Global index (0-based) of local index l in a block-cyclic dimension: block nb, np processes, this
 * process at coordinate p, first block on process 0. */
static int l2g(int l, int nb, int p, int np) { return (l / nb) * nb * np + p * nb + l % nb; }

static void desc_outside(int *d, int m, int n, int mb, int nb) {
    d[D_DTYPE] = 1;
    d[D_CTXT] = -1; /* not in this grid: what the redistribution routines expect */
    d[D_M] = m;
    d[D_N] = n;
    d[D_MB] = mb;
    d[D_NB] = nb;
    d[D_RSRC] = 0;
    d[D_CSRC] = 0;
    d[D_LLD] = 1;
}

int tsr_align_scalapack(int T, size_t P, const double *local_rows, int nprow, int npcol, int nb,
                        tsr_align_result *out) {
    memset(out, 0, sizeof *out);
    const int R = tsr_world.size, me = tsr_world.rank;
    /* ---- argument checks: the arguments are the same on every rank, so every rank decides alike */
    if (T < 1) return tsr_error("alignment: need at least one task (T = %d)", T);
    if (P < 1) return tsr_error("alignment: gradients must have at least one parameter (P = 0)");
    if (P > (size_t)INT_MAX)
        return tsr_error("alignment: gradient length P = %zu exceeds ScaLAPACK's 32-bit limit (%d)", P,
                         INT_MAX);
    if (nb < 1) return tsr_error("alignment: block size nb must be >= 1 (got %d)", nb);
    if (nprow < 0 || npcol < 0 || (nprow == 0) != (npcol == 0))
        return tsr_error("alignment: bad process grid %dx%d: give both dimensions >= 1, or 0x0 to choose "
                         "one from the %d rank(s)", nprow, npcol, R);
    if (nprow == 0) {
        nprow = (int)floor(sqrt((double)R));
        while ((long long)(nprow + 1) * (nprow + 1) <= R) nprow++;
        while (nprow > 1 && (long long)nprow * nprow > R) nprow--;
        npcol = R / nprow;
    }
    if ((long long)nprow * npcol > R)
        return tsr_error("alignment: process grid %dx%d needs %lld ranks but only %d are running", nprow,
                         npcol, (long long)nprow * npcol, R);
    const int Pi = (int)P;
    const int nbt = nb < T ? nb : T; /* block of the T x T matrices (a block larger than T is one block) */
    const int zero = 0, one = 1;
    /* largest local arrays (process 0 holds the most of every block-cyclic dimension) */
    long long loc1 = (long long)P * numroc_(&T, &one, &zero, &zero, &R);
    long long loc2 = (long long)numroc_(&Pi, &nb, &zero, &zero, &nprow) *
                     numroc_(&T, &nbt, &zero, &zero, &npcol);
    if (loc1 > INT_MAX || loc2 > INT_MAX)
        return tsr_error("alignment: %d x %zu gradients need %lld doubles on one rank, beyond ScaLAPACK's "
                         "32-bit indexing (%d): use more ranks or a larger grid", T, P,
                         loc1 > loc2 ? loc1 : loc2, INT_MAX);
    const int nloc = numroc_(&T, &one, &me, &zero, &R); /* tasks held here */
    if (tsr_dist_agree_fail(tsr_comm_world(), nloc > 0 && !local_rows) != 0)
        return tsr_error("alignment: a rank that holds tasks passed no gradient rows (NULL)%s",
                         nloc > 0 && !local_rows ? " (this rank)" : "");

    /* ---- BLACS grids: ctx1 = 1 x R (every rank), ctx2 = nprow x npcol (ranks 0 .. nprow*npcol-1) */
    int pnum = -1, nprocs = 0;
    tsr_grid_procs(&pnum, &nprocs);
    const int ctx1 = tsr_grid_make(1, R);
    const int ctx2 = tsr_grid_make(nprow, npcol);
    int g1r = -1, g1c = -1, myrow = -1, mycol = -1, dummy_r, dummy_c;
    if (ctx1 >= 0) tsr_grid_info(ctx1, &dummy_r, &dummy_c, &g1r, &g1c);
    const int in_grid = ctx2 >= 0;
    if (in_grid) tsr_grid_info(ctx2, &dummy_r, &dummy_c, &myrow, &mycol);
    int bad_map = nprocs != R || pnum != me || ctx1 < 0 || g1r != 0 || g1c != me ||
                  in_grid != (me < nprow * npcol) || (in_grid && (myrow * npcol + mycol != me));
    int rc = 0;
    double *A2 = NULL, *C = NULL, *Z = NULL, *work = NULL, *buf = NULL;
    int *iwork = NULL;
    if (tsr_dist_agree_fail(tsr_comm_world(), bad_map) != 0) {
        rc = tsr_error("alignment: BLACS process numbering does not match the world's ranks (BLACS %d of %d, "
                       "rank %d of %d): was MPI started with tsr_dist_init?", pnum, nprocs, me, R);
        goto done;
    }

    /* ---- descriptors */
    int d1[DLEN], d2[DLEN], dc[DLEN], info = 0;
    {
        const int lld1 = Pi;
        descinit_(d1, &Pi, &T, &Pi, &one, &zero, &zero, &ctx1, &lld1, &info);
        if (info != 0) rc = -1;
    }
    int mp = 0, nq = 0, tp = 0, tq = 0; /* local rows / cols of G^T (2-D) and of the T x T matrices */
    if (in_grid) {
        mp = numroc_(&Pi, &nb, &myrow, &zero, &nprow);
        nq = numroc_(&T, &nbt, &mycol, &zero, &npcol);
        tp = numroc_(&T, &nbt, &myrow, &zero, &nprow);
        tq = nq;
        int lld2 = mp > 1 ? mp : 1, lldc = tp > 1 ? tp : 1, i2 = 0, ic = 0;
        descinit_(d2, &Pi, &T, &nb, &nbt, &zero, &zero, &ctx2, &lld2, &i2);
        descinit_(dc, &T, &T, &nbt, &nbt, &zero, &zero, &ctx2, &lldc, &ic);
        if (i2 != 0 || ic != 0) {
            rc = -1;
            info = i2 != 0 ? i2 : ic;
        }
        A2 = tsr_calloc((size_t)(mp > 0 ? mp : 1) * (size_t)(nq > 0 ? nq : 1), sizeof(double));
        C = tsr_calloc((size_t)lldc * (size_t)(tq > 0 ? tq : 1), sizeof(double));
        Z = tsr_calloc((size_t)lldc * (size_t)(tq > 0 ? tq : 1), sizeof(double));
    } else {
        desc_outside(d2, Pi, T, nb, nbt);
        desc_outside(dc, T, T, nbt, nbt);
    }
    if (tsr_dist_agree_fail(tsr_comm_world(), rc != 0) != 0) {
        rc = tsr_error("alignment: ScaLAPACK descinit rejected a descriptor (info %d; T %d, P %zu, grid "
                       "%dx%d, nb %d)", info, T, P, nprow, npcol, nb);
        goto done;
    }

    /* ---- 1-D (G^T on 1 x R) -> 2-D block-cyclic */
    {
        double dummy = 0;
        double *src = nloc > 0 ? (double *)local_rows : &dummy; /* read only */
        double *dst = in_grid ? A2 : &dummy;
        pdgemr2d_(&Pi, &T, src, &one, &one, d1, dst, &one, &one, d2, &ctx1);
    }

    /* ---- Gram (lower triangle) and its sum onto every rank */
    const size_t TT = (size_t)T * T;
    buf = tsr_calloc(TT + (size_t)T, sizeof(double));
    if (in_grid) {
        const double alpha = 1.0, beta = 0.0;
        pdsyrk_("L", "T", &T, &Pi, &alpha, A2, &one, &one, d2, &beta, C, &one, &one, dc);
        free(A2);
        A2 = NULL;
        const int lldc = dc[D_LLD];
        for (int lj = 0; lj < tq; lj++) {
            int gj = l2g(lj, nbt, mycol, npcol);
            for (int li = 0; li < tp; li++) {
                int gi = l2g(li, nbt, myrow, nprow);
                if (gi >= gj) buf[(size_t)gi * T + gj] = C[(size_t)lj * lldc + li];
            }
        }
    }
    tsr_dist_allreduce_sum_f64(tsr_comm_world(), buf, TT);
    for (int s = 0; s < T; s++)
        for (int t = s + 1; t < T; t++) buf[(size_t)s * T + t] = buf[(size_t)t * T + s];
    result_alloc(out, T);
    rc = cosines_from_gram(T, buf, out); /* same data on every rank: the same decision everywhere */
    if (rc != 0) goto done;

    /* ---- normalise the distributed matrix, eigen-decomposition */
    info = 0;
    if (in_grid) {
        const int lldc = dc[D_LLD];
        for (int lj = 0; lj < tq; lj++) {
            int gj = l2g(lj, nbt, mycol, npcol);
            for (int li = 0; li < tp; li++) {
                int gi = l2g(li, nbt, myrow, nprow);
                C[(size_t)lj * lldc + li] = out->cosine[(size_t)gi * T + gj];
            }
        }
        double *w = buf + TT; /* T doubles */
        double wq = 0;
        int iq = 0, lwork = -1, liwork = -1;
        pdsyevd_("V", "L", &T, C, &one, &one, dc, w, Z, &one, &one, dc, &wq, &lwork, &iq, &liwork, &info,
                 1, 1);
        if (info == 0) {
            /* documented minima, and pdlasrt's need inside pdstedc (it gets lwork - 2T) */
            long long lw = (long long)wq;
            long long trilw = 3LL * T + (nbt * (long long)(tp + 1) > 3LL * nbt ? nbt * (long long)(tp + 1)
                                                                                 : 3LL * nbt);
            long long docw = (1 + 6LL * T + 2LL * tp * tq > trilw ? 1 + 6LL * T + 2LL * tp * tq : trilw) +
                             2LL * T;
            long long srtw = 2LL * T + (T > (long long)tp * (nbt + tq) ? T : (long long)tp * (nbt + tq));
            /* pdormtr ('L', 'L'), which pdsyevd calls with lwork - 2T and whose failure it ignores:
             * max(NB(NB-1)/2, (MpC0 + NqC0) NB) + NB^2 for the rows 2..T of Z */
            int tm1 = T - 1, roff = 1 % nbt, mi = tm1 + roff, crow = (1 / nbt) % nprow;
            long long mpc0 = numroc_(&mi, &nbt, &myrow, &crow, &nprow);
            long long nqc0 = numroc_(&T, &nbt, &mycol, &zero, &npcol);
            long long half = (long long)nbt * (nbt - 1) / 2, pan = (mpc0 + nqc0) * nbt;
            long long ormw = 2LL * T + (half > pan ? half : pan) + (long long)nbt * nbt;
            if (docw > lw) lw = docw;
            if (srtw > lw) lw = srtw;
            if (ormw > lw) lw = ormw;
            long long liw = iq;
            long long docl = 7LL * T + 8LL * npcol + 2, srtl = (long long)T + 2LL * nbt + 2LL * npcol;
            if (docl > liw) liw = docl;
            if (srtl > liw) liw = srtl;
            lw += 64;
            liw += 64;
            if (lw > INT_MAX || liw > INT_MAX) {
                info = INT_MIN;
            } else {
                lwork = (int)lw;
                liwork = (int)liw;
                work = tsr_malloc((size_t)lwork * sizeof(double));
                iwork = tsr_malloc((size_t)liwork * sizeof(int));
                pdsyevd_("V", "L", &T, C, &one, &one, dc, w, Z, &one, &one, dc, work, &lwork, iwork,
                         &liwork, &info, 1, 1);
            }
        }
    }
    int any_info = tsr_dist_allreduce_max_int(tsr_comm_world(), info != 0 ? 1 : 0);
    if (any_info) {
        rc = tsr_error("alignment: ScaLAPACK pdsyevd failed (info %d on rank %d; T %d, grid %dx%d, nb %d)",
                       info, me, T, nprow, npcol, nb);
        goto done;
    }

    /* ---- eigenvectors (column-major in buf) and eigenvalues (from rank 0) onto every rank */
    {
        double *w = buf + TT;
        memset(buf, 0, TT * sizeof(double));
        if (me != 0) memset(w, 0, (size_t)T * sizeof(double));
        if (in_grid) {
            const int lldc = dc[D_LLD];
            for (int lj = 0; lj < tq; lj++) {
                int gj = l2g(lj, nbt, mycol, npcol);
                for (int li = 0; li < tp; li++) {
                    int gi = l2g(li, nbt, myrow, nprow);
                    buf[(size_t)gj * T + gi] = Z[(size_t)lj * lldc + li];
                }
            }
        }
        tsr_dist_allreduce_sum_f64(tsr_comm_world(), buf, TT + (size_t)T);
        eigen_finish(T, w, buf, out);
    }

done:
    free(A2);
    free(C);
    free(Z);
    free(work);
    free(iwork);
    free(buf);
    tsr_grid_free(ctx2);
    tsr_grid_free(ctx1);
    if (rc != 0) tsr_align_free(out);
    return rc;
}

/* ---------------------------------------------------------------- effective rank of a matrix */

double tsr_effective_rank(const double *A, int m, int n) {
    if (!A || m < 1 || n < 1) {
        tsr_error("effective rank: need a matrix of at least 1 x 1 (got %d x %d%s)", m, n, A ? "" : ", NULL");
        return NAN;
    }
    size_t mn = (size_t)m * (size_t)n;
    for (size_t i = 0; i < mn; i++)
        if (!isfinite(A[i])) {
            tsr_error("effective rank: entry (%zu, %zu) of the %d x %d matrix is not finite", i / (size_t)n,
                      i % (size_t)n, m, n);
            return NAN;
        }
    /* The row-major m x n matrix is the column-major n x m matrix A^T: same singular values. */
    double *a = tsr_malloc(mn * sizeof(double));
    memcpy(a, A, mn * sizeof(double));
    int k = m < n ? m : n, info = 0, lwork = -1, ldu = 1;
    double *s = tsr_malloc((size_t)k * sizeof(double));
    double q = 0, du = 0, dvt = 0;
    dgesvd_("N", "N", &n, &m, a, &n, s, &du, &ldu, &dvt, &ldu, &q, &lwork, &info, 1, 1);
    double r = NAN;
    if (info == 0) {
        lwork = (int)q;
        int big = m > n ? m : n, minw = 3 * k + big > 5 * k ? 3 * k + big : 5 * k;
        if (lwork < minw) lwork = minw;
        double *work = tsr_malloc((size_t)lwork * sizeof(double));
        dgesvd_("N", "N", &n, &m, a, &n, s, &du, &ldu, &dvt, &ldu, work, &lwork, &info, 1, 1);
        free(work);
    }
    if (info != 0) tsr_error("effective rank: LAPACK dgesvd failed on the %d x %d matrix (info %d)", m, n, info);
    else r = exp_entropy(s, k);
    free(a);
    free(s);
    return r;
}
