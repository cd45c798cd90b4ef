/* test_align.c: task-gradient alignment (src/analysis/align.c) with real ranks. Run under mpiexec with
 * any number of ranks (ctest: 1, 2 and 3). A plain program with its own checks: rank 0 prints
 * "N passed, M failed" (checks summed over all ranks) and every rank exits non-zero when any rank failed.
 *
 * - random gradients, T in {1, 5, 13} x P in {1, 7, 1000}, and T = 23, P = 100000: tsr_align_scalapack
 *   on every grid that fits the rank count (auto, 1x1, 1x2, 2x1, 1x3, 3x1; ranks beyond the grid idle)
 *   and nb in {1, 2, 4, 64} against tsr_align_serial: cosines, norms and eigenvalues to 1e-10,
 *   eigenvectors up to sign to 1e-8 (skipped for eigenvalues closer than 1e-5 to a neighbour), the
 *   results identical on every rank; one T = 3, P = 1000000 case;
 * - structured cases: identical tasks (cosine 1), orthogonal tasks (cosine 0, identity), a zero
 *   gradient, two analytic spectra (2 x 2 with cosine 0.6; equicorrelated 6 tasks at cosine 0.5);
 * - argument errors (every rank returns -1 with a message);
 * - tsr_effective_rank on matrices with known singular values.
 * The largest differences seen are printed on rank 0. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/align.h"
#include "core/common.h"
#include "dist/grid.h"
#include "dist/parallel.h"

static char ctx[160] = "";
#include "../dist/mpi_check.h"

/* largest differences seen against the serial reference */
static double max_cos = 0, max_eval = 0, max_evec = 0, max_norm = 0, max_scalar = 0;
static int n_calls = 0;

/* ---------------------------------------------------------------- helpers */
static uint64_t rng_state;
static double urand(void) { /* splitmix64 -> [-1, 1) */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

/* This rank's rows of the full T x P matrix: tasks t with t % size == rank, in increasing t. */
static double *local_of(int T, size_t P, const double *G) {
    int n = 0;
    for (int t = rank_; t < T; t += size_) n++;
    if (n == 0) return NULL;
    double *L = malloc((size_t)n * P * sizeof(double));
    int i = 0;
    for (int t = rank_; t < T; t += size_) memcpy(L + (size_t)(i++) * P, G + (size_t)t * P, P * sizeof(double));
    return L;
}

static double maxabs_diff(const double *a, const double *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* Every rank holds the same values: max and min over ranks of a few sums agree bit for bit. */
static int same_on_all_ranks(const tsr_align_result *r) {
    int T = r->ntasks;
    double s[6] = {0, 0, 0, 0, r->mean_offdiag, r->eff_rank};
    for (int i = 0; i < T * T; i++) {
        s[0] += r->cosine[i] * (1 + i % 7);
        s[1] += r->eigenvectors[i] * (1 + i % 5);
    }
    for (int i = 0; i < T; i++) {
        s[2] += r->eigenvalues[i] * (1 + i);
        s[3] += r->norms[i] * (1 + i);
    }
    int ok = 1;
    for (int k = 0; k < 6; k++) {
        if (isnan(s[k])) s[k] = 12345.678; /* NaN mean_offdiag at T = 1 */
        double hi = tsr_dist_allreduce_max_f64(tsr_comm_world(), s[k]), lo = -tsr_dist_allreduce_max_f64(tsr_comm_world(), -s[k]);
        if (hi != lo) ok = 0;
    }
    return ok;
}

/* Compare a distributed result with the serial reference. */
static void compare(const tsr_align_result *ref, const tsr_align_result *got) {
    int T = ref->ntasks;
    CHECK(got->ntasks == T, "ntasks %d, expected %d", got->ntasks, T);
    if (got->ntasks != T || !got->cosine) return;
    double dc = maxabs_diff(ref->cosine, got->cosine, (size_t)T * T);
    double de = maxabs_diff(ref->eigenvalues, got->eigenvalues, (size_t)T);
    double dn = 0;
    for (int t = 0; t < T; t++) {
        double d = fabs(ref->norms[t] - got->norms[t]) / (ref->norms[t] > 1 ? ref->norms[t] : 1);
        if (!(d <= dn)) dn = d;
    }
    CHECK(dc <= 1e-10, "cosine differs from the serial reference by %.3g", dc);
    CHECK(de <= 1e-10, "eigenvalues differ from the serial reference by %.3g", de);
    CHECK(dn <= 1e-12, "norms differ (relative) from the serial reference by %.3g", dn);
    for (int k = 1; k < T; k++)
        CHECK(got->eigenvalues[k] <= got->eigenvalues[k - 1], "eigenvalues not descending at %d", k);
    double dv = 0;
    for (int k = 0; k < T; k++) {
        double gap = INFINITY;
        if (k > 0) gap = fmin(gap, ref->eigenvalues[k - 1] - ref->eigenvalues[k]);
        if (k + 1 < T) gap = fmin(gap, ref->eigenvalues[k] - ref->eigenvalues[k + 1]);
        if (gap < 1e-5) continue; /* degenerate: the eigenvector is not unique */
        double dp = 0, dm = 0, nrm = 0;
        for (int i = 0; i < T; i++) {
            double a = ref->eigenvectors[(size_t)i * T + k], b = got->eigenvectors[(size_t)i * T + k];
            dp = fmax(dp, fabs(a - b));
            dm = fmax(dm, fabs(a + b));
            nrm += b * b;
        }
        double d = fmin(dp, dm);
        if (!(d <= dv)) dv = d;
        CHECK(fabs(nrm - 1) < 1e-10, "eigenvector %d has norm^2 %.17g", k, nrm);
    }
    CHECK(dv <= 1e-8, "eigenvectors differ (up to sign) from the serial reference by %.3g", dv);
    double dm = T < 2 ? (isnan(got->mean_offdiag) ? 0 : INFINITY) : fabs(ref->mean_offdiag - got->mean_offdiag);
    double dr = fabs(ref->eff_rank - got->eff_rank);
    CHECK(dm <= 1e-10, "mean_offdiag %.17g vs %.17g", got->mean_offdiag, ref->mean_offdiag);
    CHECK(dr <= 1e-9, "eff_rank %.17g vs %.17g", got->eff_rank, ref->eff_rank);
    CHECK(same_on_all_ranks(got), "results differ between ranks");
    max_cos = fmax(max_cos, dc);
    max_eval = fmax(max_eval, de);
    max_evec = fmax(max_evec, dv);
    max_norm = fmax(max_norm, dn);
    if (T >= 2) max_scalar = fmax(max_scalar, dm);
    max_scalar = fmax(max_scalar, dr);
}

/* Every grid that fits the rank count (0x0 = automatic). */
/* 2x2, 2x3, 3x2: only when run by hand with 4 or 6 ranks */
static const int GRIDS[][2] = {{0, 0}, {1, 1}, {1, 2}, {2, 1}, {1, 3}, {3, 1}, {2, 2}, {2, 3}, {3, 2}};
#define NGRIDS (int)(sizeof GRIDS / sizeof GRIDS[0])
static const int NBS[] = {1, 2, 4, 64};
#define NNB (int)(sizeof NBS / sizeof NBS[0])

/* The serial reference, then every grid x nb through ScaLAPACK. check(result) adds case-specific checks. */
static void run_case(const char *name, int T, size_t P, const double *G,
                     void (*check)(const tsr_align_result *r, int T)) {
    tsr_align_result ref;
    snprintf(ctx, sizeof ctx, "%s T=%d P=%zu serial", name, T, P);
    int rc = tsr_align_serial(T, P, G, &ref);
    CHECK(rc == 0, "tsr_align_serial failed: %s", tsr_last_error());
    if (rc != 0) return;
    if (check) check(&ref, T);
    double *L = local_of(T, P, G);
    double t0 = tsr_time();
    for (int g = 0; g < NGRIDS; g++) {
        if (GRIDS[g][0] * GRIDS[g][1] > size_) continue;
        for (int b = 0; b < NNB; b++) {
            snprintf(ctx, sizeof ctx, "%s T=%d P=%zu grid %dx%d nb %d", name, T, P, GRIDS[g][0], GRIDS[g][1],
                     NBS[b]);
            tsr_align_result r;
            rc = tsr_align_scalapack(T, P, L, GRIDS[g][0], GRIDS[g][1], NBS[b], &r);
            n_calls++;
            CHECK(rc == 0, "tsr_align_scalapack failed: %s", tsr_last_error());
            if (rc == 0) {
                compare(&ref, &r);
                if (check) check(&r, T);
            }
            tsr_align_free(&r);
        }
    }
    double dt = tsr_time() - t0;
    if (rank_ == 0 && dt > 1.0) {
        printf("  %s T=%d P=%zu: all grids and block sizes in %.1f s\n", name, T, P, dt);
        fflush(stdout);
    }
    free(L);
    tsr_align_free(&ref);
}

/* ---------------------------------------------------------------- structured cases */
static double tol_struct = 1e-12;

static void check_identical(const tsr_align_result *r, int T) { /* tasks 0 and 2 identical (T = 3) */
    CHECK(fabs(r->cosine[0 * T + 2] - 1) <= tol_struct && fabs(r->cosine[2 * T + 0] - 1) <= tol_struct,
          "identical tasks: cosine %.17g / %.17g", r->cosine[2], r->cosine[2 * T]);
    CHECK(fabs(r->norms[0] - r->norms[2]) <= 1e-12 * r->norms[0], "identical tasks: norms differ");
}
static void check_identical2(const tsr_align_result *r, int T) { /* two identical tasks, T = 2 */
    for (int i = 0; i < 4; i++) CHECK(fabs(r->cosine[i] - 1) <= tol_struct, "cosine[%d] = %.17g", i, r->cosine[i]);
    CHECK(fabs(r->eigenvalues[0] - 2) <= 1e-12 && fabs(r->eigenvalues[1]) <= 1e-12, "eigenvalues %.17g %.17g",
          r->eigenvalues[0], r->eigenvalues[1]);
    CHECK(fabs(r->mean_offdiag - 1) <= tol_struct, "mean %.17g", r->mean_offdiag);
    CHECK(fabs(r->eff_rank - 1) <= 1e-10, "eff_rank %.17g", r->eff_rank);
    double s = 1 / sqrt(2.0);
    CHECK(fabs(r->eigenvectors[0] - s) <= 1e-10 && fabs(r->eigenvectors[2] - s) <= 1e-10,
          "top eigenvector (%.17g, %.17g), expected +(1,1)/sqrt2", r->eigenvectors[0], r->eigenvectors[2]);
}
static void check_orthogonal(const tsr_align_result *r, int T) {
    double d = 0;
    for (int s = 0; s < T; s++)
        for (int t = 0; t < T; t++) d = fmax(d, fabs(r->cosine[s * T + t] - (s == t ? 1.0 : 0.0)));
    CHECK(d <= tol_struct, "orthogonal tasks: cosine differs from the identity by %.3g", d);
    for (int k = 0; k < T; k++) CHECK(fabs(r->eigenvalues[k] - 1) <= 1e-12, "eigenvalue %d = %.17g", k, r->eigenvalues[k]);
    CHECK(fabs(r->mean_offdiag) <= tol_struct, "mean %.17g", r->mean_offdiag);
    CHECK(fabs(r->eff_rank - T) <= 1e-10, "eff_rank %.17g, expected %d", r->eff_rank, T);
}
static void check_zero_row(const tsr_align_result *r, int T) { /* task 2 is zero */
    CHECK(r->norms[2] == 0, "norm of the zero gradient %.17g", r->norms[2]);
    int ok = 1;
    for (int t = 0; t < T; t++) {
        if (r->cosine[2 * T + t] != 0 || r->cosine[t * T + 2] != 0) ok = 0;
        if (t != 2 && r->cosine[t * T + t] != 1) ok = 0;
    }
    CHECK(ok, "zero gradient: its cosine row/column must be 0 and every other diagonal entry 1");
    CHECK(r->norms[0] > 0, "norm of task 0 is %.17g", r->norms[0]);
}
static void check_angle(const tsr_align_result *r, int T) { /* g0 = (2,0,0), g1 = (3,4,0): cos 0.6 */
    CHECK(fabs(r->cosine[1] - 0.6) <= 1e-15 && fabs(r->cosine[2] - 0.6) <= 1e-15, "cosine %.17g", r->cosine[1]);
    CHECK(fabs(r->norms[0] - 2) <= 1e-15 && fabs(r->norms[1] - 5) <= 1e-15, "norms %.17g %.17g", r->norms[0],
          r->norms[1]);
    CHECK(fabs(r->eigenvalues[0] - 1.6) <= 1e-14 && fabs(r->eigenvalues[1] - 0.4) <= 1e-14,
          "eigenvalues %.17g %.17g, expected 1.6 0.4", r->eigenvalues[0], r->eigenvalues[1]);
    double s = 1 / sqrt(2.0);
    /* columns: (1,1)/sqrt2 and (1,-1)/sqrt2 (tie in |.|: the first entry is made positive) */
    CHECK(fabs(r->eigenvectors[0] - s) <= 1e-12 && fabs(r->eigenvectors[2] - s) <= 1e-12 &&
              fabs(r->eigenvectors[1] - s) <= 1e-12 && fabs(r->eigenvectors[3] + s) <= 1e-12,
          "eigenvectors [%.17g %.17g; %.17g %.17g]", r->eigenvectors[0], r->eigenvectors[1], r->eigenvectors[2],
          r->eigenvectors[3]);
    double h = -(0.8 * log(0.8) + 0.2 * log(0.2));
    CHECK(fabs(r->eff_rank - exp(h)) <= 1e-12, "eff_rank %.17g, expected %.17g", r->eff_rank, exp(h));
    CHECK(fabs(r->mean_offdiag - 0.6) <= 1e-15, "mean %.17g", r->mean_offdiag);
}
static void check_equicorrelated(const tsr_align_result *r, int T) { /* C = 0.5 (I + 11^T) */
    double d = 0;
    for (int s = 0; s < T; s++)
        for (int t = 0; t < T; t++) d = fmax(d, fabs(r->cosine[s * T + t] - (s == t ? 1.0 : 0.5)));
    CHECK(d <= 1e-15, "cosine differs from 0.5 (I + 11^T) by %.3g", d);
    double top = 1 + 0.5 * (T - 1);
    CHECK(fabs(r->eigenvalues[0] - top) <= 1e-12, "top eigenvalue %.17g, expected %.17g", r->eigenvalues[0], top);
    for (int k = 1; k < T; k++)
        CHECK(fabs(r->eigenvalues[k] - 0.5) <= 1e-12, "eigenvalue %d = %.17g, expected 0.5", k, r->eigenvalues[k]);
    double dv = 0;
    for (int i = 0; i < T; i++) dv = fmax(dv, fabs(r->eigenvectors[(size_t)i * T] - 1 / sqrt((double)T)));
    CHECK(dv <= 1e-12, "top eigenvector differs from +1/sqrt(T) by %.3g", dv);
    double h = 0, p0 = top / T, p1 = 0.5 / T;
    h = -(p0 * log(p0) + (T - 1) * p1 * log(p1));
    CHECK(fabs(r->eff_rank - exp(h)) <= 1e-12, "eff_rank %.17g, expected %.17g", r->eff_rank, exp(h));
    CHECK(fabs(r->mean_offdiag - 0.5) <= 1e-15, "mean %.17g", r->mean_offdiag);
    for (int t = 0; t < T; t++)
        CHECK(fabs(r->norms[t] - (t + 1) * sqrt(2.0)) <= 1e-14 * (t + 1), "norm %d = %.17g", t, r->norms[t]);
}

static void test_structured(void) {
    /* tasks 0 and 2 identical */
    {
        int T = 3;
        size_t P = 50;
        double *G = malloc(T * P * sizeof(double));
        for (size_t i = 0; i < T * P; i++) G[i] = urand();
        memcpy(G + 2 * P, G, P * sizeof(double));
        run_case("identical", T, P, G, check_identical);
        free(G);
    }
    {
        int T = 2;
        size_t P = 33;
        double *G = malloc(T * P * sizeof(double));
        for (size_t i = 0; i < P; i++) G[i] = G[P + i] = urand();
        run_case("identical pair", T, P, G, check_identical2);
        free(G);
    }
    /* orthogonal: scaled unit vectors, and the rows of a Sylvester-Hadamard matrix (entries +-1) */
    {
        int T = 4;
        size_t P = 10;
        double *G = calloc(T * P, sizeof(double));
        for (int t = 0; t < T; t++) G[(size_t)t * P + 2 * t] = t + 1.5;
        run_case("unit vectors", T, P, G, check_orthogonal);
        free(G);
        T = 7;
        P = 8;
        G = malloc(T * P * sizeof(double));
        for (int t = 0; t < T; t++)
            for (size_t j = 0; j < P; j++) G[t * P + j] = (__builtin_popcount((unsigned)((t + 1) & j)) & 1) ? -3.0 : 3.0;
        run_case("hadamard", T, P, G, check_orthogonal);
        free(G);
    }
    /* a zero gradient */
    {
        int T = 5;
        size_t P = 40;
        double *G = malloc(T * P * sizeof(double));
        for (size_t i = 0; i < T * P; i++) G[i] = urand();
        memset(G + 2 * P, 0, P * sizeof(double));
        run_case("zero row", T, P, G, check_zero_row);
        free(G);
    }
    /* all gradients zero: cosine 0, eigenvalues 0, effective rank 0 */
    {
        int T = 3;
        size_t P = 4;
        double *G = calloc(T * P, sizeof(double));
        tsr_align_result r;
        snprintf(ctx, sizeof ctx, "all zero");
        int rc = tsr_align_scalapack(T, P, G, 0, 0, 2, &r); /* every row is zero: G serves as anyone's rows */
        CHECK(rc == 0, "failed: %s", tsr_last_error());
        if (rc == 0) {
            double m = 0;
            for (int i = 0; i < T * T; i++) m = fmax(m, fabs(r.cosine[i]));
            for (int i = 0; i < T; i++) m = fmax(m, fabs(r.eigenvalues[i]) + r.norms[i]);
            CHECK(m == 0, "expected all zeros, max |.| %.3g", m);
            CHECK(r.eff_rank == 0, "eff_rank %.17g, expected 0", r.eff_rank);
            CHECK(r.mean_offdiag == 0, "mean %.17g", r.mean_offdiag);
        }
        tsr_align_free(&r);
        free(G);
    }
    /* analytic: 2 tasks at cosine 0.6 */
    {
        double G[6] = {2, 0, 0, 3, 4, 0};
        run_case("angle", 2, 3, G, check_angle);
    }
    /* analytic: g_t = (t+1)(e_0 + e_{t+1}), 6 tasks */
    {
        int T = 6;
        size_t P = 9;
        double *G = calloc(T * P, sizeof(double));
        for (int t = 0; t < T; t++) G[t * P] = G[t * P + t + 1] = t + 1;
        run_case("equicorrelated", T, P, G, check_equicorrelated);
        free(G);
    }
}

/* ---------------------------------------------------------------- errors */
static void test_errors(void) {
    double row[4] = {1, 2, 3, 4};
    const double *L = row; /* T = 1 or 2 tasks of P <= 2: rank 0 holds task 0 (and task 1 at 1 rank) */
    struct {
        int T;
        size_t P;
        int nprow, npcol, nb;
        const char *what;
    } cases[] = {
        {0, 2, 1, 1, 2, "T = 0"},
        {-3, 2, 1, 1, 2, "T < 0"},
        {1, 0, 1, 1, 2, "P = 0"},
        {1, 2, 1, 1, 0, "nb = 0"},
        {1, 2, 1, 1, -4, "nb < 0"},
        {1, 2, 1, 0, 2, "npcol = 0 alone"},
        {1, 2, 0, 2, 2, "nprow = 0 alone"},
        {1, 2, -1, 1, 2, "nprow < 0"},
        {1, 2, size_ + 1, 1, 2, "grid larger than the world (rows)"},
        {1, 2, 1, size_ + 1, 2, "grid larger than the world (cols)"},
        {1, 2, 2, size_, 2, "grid larger than the world (2 x R)"},
        {1, (size_t)1 << 31, 1, 1, 2, "P beyond INT_MAX"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(ctx, sizeof ctx, "error: %s", cases[i].what);
        tsr_align_result r;
        memset(&r, 0xAB, sizeof r);
        tsr_error("%s", "");
        int rc = tsr_align_scalapack(cases[i].T, cases[i].P, L, cases[i].nprow, cases[i].npcol, cases[i].nb, &r);
        CHECK(rc == -1, "returned %d, expected -1", rc);
        CHECK(strlen(tsr_last_error()) > 10, "no error message (\"%s\")", tsr_last_error());
        CHECK(r.cosine == NULL && r.eigenvalues == NULL && r.eigenvectors == NULL && r.norms == NULL,
              "out not zeroed on error");
        tsr_align_free(&r);
        if (rank_ == 0 && i == 8) printf("  example message: %s\n", tsr_last_error());
    }
    /* NULL local rows on a rank that holds a task: every rank must fail */
    snprintf(ctx, sizeof ctx, "error: NULL rows");
    tsr_align_result r;
    int rc = tsr_align_scalapack(1, 2, rank_ == 0 ? NULL : L, 1, 1, 2, &r);
    CHECK(rc == -1, "returned %d, expected -1 on every rank", rc);
    tsr_align_free(&r);
    /* serial errors */
    snprintf(ctx, sizeof ctx, "error: serial");
    CHECK(tsr_align_serial(0, 3, row, &r) == -1, "T = 0 accepted");
    CHECK(tsr_align_serial(1, 0, row, &r) == -1, "P = 0 accepted");
    CHECK(tsr_align_serial(1, 3, NULL, &r) == -1, "NULL accepted");
    /* non-finite gradients are refused (on every rank) */
    snprintf(ctx, sizeof ctx, "error: NaN gradient");
    double bad[4] = {1, NAN, 3, 4};
    rc = tsr_align_scalapack(2, 2, bad, 1, 1, 2, &r); /* at R = 1: both tasks; else task 0 (or 1) */
    CHECK(rc == -1, "NaN gradient accepted (rc %d)", rc);
    tsr_align_free(&r);
    CHECK(tsr_align_serial(2, 2, bad, &r) == -1, "serial: NaN gradient accepted");
    tsr_align_free(NULL);
}

/* ---------------------------------------------------------------- effective rank of a matrix */
static void test_effective_rank(void) {
    snprintf(ctx, sizeof ctx, "effective rank");
    double I4[16] = {0};
    for (int i = 0; i < 4; i++) I4[i * 5] = 1;
    double er = tsr_effective_rank(I4, 4, 4);
    CHECK(fabs(er - 4) <= 1e-12, "identity 4x4: %.17g", er);
    /* rotation * diag(3, 1) padded to 2 x 3: singular values 3 and 1 */
    double c = cos(0.7), s = sin(0.7);
    double A[6] = {3 * c, -s, 0, 3 * s, c, 0};
    double h = -(0.75 * log(0.75) + 0.25 * log(0.25));
    er = tsr_effective_rank(A, 2, 3);
    CHECK(fabs(er - exp(h)) <= 1e-12, "2x3 with singular values 3, 1: %.17g, expected %.17g", er, exp(h));
    double At[6] = {A[0], A[3], A[1], A[4], A[2], A[5]}; /* its transpose, 3 x 2 */
    er = tsr_effective_rank(At, 3, 2);
    CHECK(fabs(er - exp(h)) <= 1e-12, "3x2 transpose: %.17g, expected %.17g", er, exp(h));
    double R1[15];
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 3; j++) R1[i * 3 + j] = (i + 1.0) * (j - 1.5);
    er = tsr_effective_rank(R1, 5, 3);
    CHECK(fabs(er - 1) <= 1e-12, "rank one 5x3: %.17g", er);
    double Z[6] = {0};
    er = tsr_effective_rank(Z, 2, 3);
    CHECK(er == 0, "zero matrix: %.17g, expected 0", er);
    double one = -2.5;
    er = tsr_effective_rank(&one, 1, 1);
    CHECK(fabs(er - 1) <= 1e-15, "1x1: %.17g", er);
    /* random 8 x 20: between 1 and 8 */
    double M[160];
    for (int i = 0; i < 160; i++) M[i] = urand();
    er = tsr_effective_rank(M, 8, 20);
    CHECK(er > 1 && er <= 8 + 1e-12, "random 8x20: %.17g", er);
    CHECK(isnan(tsr_effective_rank(M, 0, 3)), "m = 0 accepted");
    CHECK(isnan(tsr_effective_rank(NULL, 2, 3)), "NULL accepted");
    double nanm[2] = {1, NAN};
    CHECK(isnan(tsr_effective_rank(nanm, 1, 2)), "NaN entry accepted");
}

/* ---------------------------------------------------------------- random gradients */
static void test_random(void) {
    const int Ts[] = {1, 5, 13};
    const size_t Ps[] = {1, 7, 1000};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            int T = Ts[a];
            size_t P = Ps[b];
            double *G = malloc((size_t)T * P * sizeof(double));
            for (size_t i = 0; i < (size_t)T * P; i++) G[i] = urand();
            run_case("random", T, P, G, NULL);
            free(G);
        }
    /* correlated tasks (a shared component): a spread spectrum, T = 23, P = 100000 */
    {
        int T = 23;
        size_t P = 100000;
        double *G = malloc((size_t)T * P * sizeof(double));
        for (size_t j = 0; j < P; j++) G[j] = urand();
        for (int t = 1; t < T; t++)
            for (size_t j = 0; j < P; j++) G[(size_t)t * P + j] = 0.3 * t * G[j] / T + urand() * (1 + t % 4);
        run_case("random", T, P, G, NULL);
        free(G);
    }
    /* large P, few tasks: automatic grid, two block sizes */
    {
        int T = 3;
        size_t P = 1000000;
        double *G = malloc((size_t)T * P * sizeof(double));
        for (size_t i = 0; i < (size_t)T * P; i++) G[i] = urand() + (i >= P ? 0.5 * G[i % P] : 0);
        tsr_align_result ref, r;
        snprintf(ctx, sizeof ctx, "large P serial");
        int rc = tsr_align_serial(T, P, G, &ref);
        CHECK(rc == 0, "serial failed: %s", tsr_last_error());
        double *L = local_of(T, P, G);
        const int nbs[2] = {64, 1};
        for (int k = 0; k < 2 && rc == 0; k++) {
            snprintf(ctx, sizeof ctx, "large P T=3 P=1e6 grid auto nb %d", nbs[k]);
            double t0 = tsr_time();
            int rc2 = tsr_align_scalapack(T, P, L, 0, 0, nbs[k], &r);
            double dt = tsr_time() - t0;
            n_calls++;
            CHECK(rc2 == 0, "failed: %s", tsr_last_error());
            if (rc2 == 0) compare(&ref, &r);
            tsr_align_free(&r);
            if (rank_ == 0) printf("  T=3 P=1e6 automatic grid, nb %d: %.2f s\n", nbs[k], dt);
        }
        tsr_align_free(&ref);
        free(L);
        free(G);
    }
}

/* The BLACS grids of src/dist/grid.c: every grid that fits, row-major placement, -1 outside the grid,
 * contexts released (made and freed many times). */
static void test_grids(void) {
    snprintf(ctx, sizeof ctx, "grids");
    int pnum = -1, nprocs = 0;
    tsr_grid_procs(&pnum, &nprocs);
    CHECK(pnum == rank_ && nprocs == size_, "BLACS process %d of %d, rank %d of %d", pnum, nprocs, rank_, size_);
    for (int rep = 0; rep < 20; rep++)
        for (int r = 1; r <= size_; r++)
            for (int c = 1; r * c <= size_; c++) {
                int g = tsr_grid_make(r, c);
                int in = rank_ < r * c;
                CHECK((g >= 0) == in, "grid %dx%d: context %d on rank %d", r, c, g, rank_);
                if (g >= 0) {
                    int nr = -1, nc = -1, myr = -1, myc = -1;
                    tsr_grid_info(g, &nr, &nc, &myr, &myc);
                    CHECK(nr == r && nc == c && myr == rank_ / c && myc == rank_ % c,
                          "grid %dx%d: rank %d at %d,%d of %dx%d", r, c, rank_, myr, myc, nr, nc);
                }
                tsr_grid_free(g);
            }
    tsr_grid_free(-1); /* ignored */
}

int main(int argc, char **argv) {
    tsr_dist_init(&argc, &argv);
    rank_ = tsr_world.rank;
    size_ = tsr_world.size;
    rng_state = 20240611; /* the same on every rank: every rank builds the same full matrices */
    double t0 = tsr_time();

    test_grids();
    test_errors();
    test_effective_rank();
    test_structured();
    test_random();

    int64_t tot[2] = {n_pass, n_fail};
    tsr_dist_allreduce_sum_i64(tsr_comm_world(), tot, 2);
    double m[5] = {max_cos, max_eval, max_evec, max_norm, max_scalar};
    for (int i = 0; i < 5; i++) m[i] = tsr_dist_allreduce_max_f64(tsr_comm_world(), m[i]);
    if (rank_ == 0) {
        printf("largest differences from the serial reference over %d ScaLAPACK calls: cosine %.3g, "
               "eigenvalues %.3g, eigenvectors (up to sign) %.3g, norms (relative) %.3g, mean/eff_rank %.3g "
               "(%.1f s)\n",
               n_calls, m[0], m[1], m[2], m[3], m[4], tsr_time() - t0);
        printf("test_align (%d rank%s): %lld passed, %lld failed\n", size_, size_ > 1 ? "s" : "",
               (long long)tot[0], (long long)tot[1]);
        fflush(stdout);
    }
    tsr_dist_finalize(0);
    return tot[1] ? 1 : 0;
}
