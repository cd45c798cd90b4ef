/* align.h: task-gradient alignment (docs/RESULTS_SCHEMA.md, alignment.nc).
 *
 * For T task gradients g_t (each P doubles): the cosine matrix C[s,t] = g_s.g_t / (|g_s| |g_t|), its
 * eigen-decomposition, the mean off-diagonal alignment and the effective rank of the spectrum.
 * tsr_align_scalapack computes it with PBLAS/ScaLAPACK on a 2-D block-cyclic process grid;
 * tsr_align_serial is the plain reference on the full matrix. Both fill the same result. */
#ifndef TSR_ALIGN_H
#define TSR_ALIGN_H
#include <stddef.h>

typedef struct {
    int ntasks;           /* T */
    double *cosine;       /* T*T row-major: C[s,t] = g_s.g_t/(|g_s||g_t|), clamped to [-1, 1]; 0 in the row
                           * and column of a task whose norm is 0; diagonal 1 where the norm is > 0 */
    double *eigenvalues;  /* T, descending */
    double *eigenvectors; /* T*T row-major: column k (entries [i*T + k]) is the unit eigenvector of
                           * eigenvalue k, signed so that its largest-|.| entry is positive (on a tie
                           * within a relative 1e-9, the first such entry) */
    double *norms;        /* T gradient norms |g_t| (sqrt of the Gram diagonal) */
    double mean_offdiag;  /* mean of C[s,t] over s != t; NaN when T < 2 */
    double eff_rank;      /* exp(entropy of p_k = max(lambda_k,0) / sum_j max(lambda_j,0)); 0 when no
                           * eigenvalue is positive (every gradient zero) */
} tsr_align_result;

/* Distributed alignment (collective: every rank of the world calls it with the same T, P, nprow,
 * npcol, nb; MPI must have been started with tsr_dist_init).
 *
 * Input layout: task t lives on rank t % R (R = tsr_world.size); local_rows holds this rank's tasks in
 * increasing t, each a row of P doubles (row-major, leading dimension P). local_rows may be NULL on a
 * rank that holds no task (R > T).
 *
 * The Gram matrix G G^T is computed with pdsyrk on an nprow x npcol BLACS grid with 2-D block-cyclic
 * blocks nb x nb (G is redistributed from the 1-D row layout with pdgemr2d), normalised to cosines and
 * decomposed with pdsyevd. nprow * npcol <= R: ranks outside the grid take part in the redistribution
 * and receive the results. nprow = npcol = 0 picks a near-square grid from R (floor(sqrt(R)) rows).
 * nb larger than T acts as nb = T for the T x T matrices.
 *
 * Results are identical on every rank. Returns 0, or -1 on every rank with tsr_error (bad grid or nb,
 * T < 1, P < 1 or P > INT_MAX, a local block too large for ScaLAPACK's 32-bit indices, a ScaLAPACK
 * failure); out is then zeroed (safe to tsr_align_free). Memory per rank: the local rows, plus the
 * 2-D copy (about P*T/(nprow*npcol) doubles on a grid rank), plus a few T x T buffers. */
int tsr_align_scalapack(int T, size_t P, const double *local_rows, int nprow, int npcol, int nb,
                        tsr_align_result *out);

/* Serial reference on the full T x P row-major matrix G (plain loops for the Gram matrix, LAPACK dsyevd).
 * No communication. Returns 0, or -1 with tsr_error (T < 1, P < 1, G NULL, LAPACK failure). */
int tsr_align_serial(int T, size_t P, const double *G, tsr_align_result *out);

/* Frees the arrays and zeroes the struct (NULL or a zeroed struct is fine). */
void tsr_align_free(tsr_align_result *r);

/* Effective rank of a general m x n row-major matrix (e.g. a routing matrix): exp(entropy of the
 * singular values normalised to sum 1), singular values from LAPACK dgesvd. Serial. Between 1 and
 * min(m, n) for a nonzero matrix; 0 for the zero matrix; NaN with tsr_error on bad input (m or n < 1,
 * A NULL, non-finite entries) or a LAPACK failure. */
double tsr_effective_rank(const double *A, int m, int n);

#endif
