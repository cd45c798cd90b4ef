/* test_collectives.c: the collectives of the distribution layer (src/dist/parallel.c) with real ranks.
 * Run under mpiexec with any number of ranks (ctest: 1, 2, 3 and 8, the last oversubscribed). A plain
 * program with its own checks: rank 0 prints "N passed, M failed" (checks summed over all ranks) and every
 * rank exits non-zero when any rank failed a check. Every vector check runs twice: with the default chunk
 * size (one MPI call per collective) and with a small odd chunk (1000 bytes), which drives the chunked /
 * round-based paths; the sizes are n = 0, 1, 7, 1000003 and one size at the edge of a round of the small
 * chunk. Empty slices (n smaller than the rank count: some ranks own no element, the root of a gather may
 * be one of them) also run through the round-based path, with the smallest chunk (8 bytes). Also: a
 * netCDF-4 file shared by every rank (src/dist/ncpar.c), written independently and read back
 * collectively; and the trainer's task ownership (src/train/sampler.h) at this rank count, where with
 * fewer tasks than ranks some ranks evaluate no task and with a global batch smaller than the rank
 * count some ranks compute no slot of a step. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <netcdf.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "dist/ncpar.h"
#include "dist/parallel.h"
#include "train/sampler.h"

static const char *ctx = "";
#include "mpi_check.h"

static const size_t NS[] = {0, 1, 7, 1000003};
#define NN (sizeof NS / sizeof NS[0])

/* Rank-dependent values whose sums over ranks are exact in float / double / int64. */
static float vf(int r, size_t i) { return (float)(r * 1000 + (int)(i % 1000)); }
static float sum_vf(size_t i) { return (float)(1000 * size_ * (size_ - 1) / 2 + size_ * (int)(i % 1000)); }
static double vd(int r, size_t i) { return r * 0.5 + (double)i; }
static double sum_vd(size_t i) { return size_ * (size_ - 1) / 4.0 + size_ * (double)i; }
static int64_t vi(int r, size_t i) { return (int64_t)r * ((int64_t)1 << 40) + (int64_t)i - r; }
static int64_t sum_vi(size_t i) {
    int64_t t = (int64_t)size_ * (size_ - 1) / 2;
    return t * ((int64_t)1 << 40) + (int64_t)size_ * (int64_t)i - t;
}

/* Owner of element i under tsr_dist_slice. */
static int owner(size_t n, size_t i) {
    for (int r = 0; r < size_; r++) {
        size_t off, len;
        tsr_dist_slice(tsr_comm_world(), n, r, &off, &len);
        if (i >= off && i < off + len) return r;
    }
    return -1;
}

static uint64_t est(size_t bytes, uint64_t num) { return size_ == 1 ? 0 : (uint64_t)bytes * num / (uint64_t)size_; }

static void test_slices(void) {
    ctx = "slice";
    const size_t extra[] = {2, 3, 5, 1000, 1001, 1002};
    for (size_t t = 0; t < NN + sizeof extra / sizeof extra[0]; t++) {
        size_t n = t < NN ? NS[t] : extra[t - NN];
        size_t next = 0, lo = (size_t)-1, hi = 0;
        int ok = 1;
        for (int r = 0; r < size_; r++) {
            size_t off, len;
            tsr_dist_slice(tsr_comm_world(), n, r, &off, &len);
            if (off != next) ok = 0;
            if (len != n / (size_t)size_ + ((size_t)r < n % (size_t)size_ ? 1 : 0)) ok = 0;
            next = off + len;
            if (len < lo) lo = len;
            if (len > hi) hi = len;
        }
        CHECK(ok && next == n && hi - lo <= 1, "n=%zu: slices do not tile [0, n) with the first n %% size longer", n);
        if (n < (size_t)size_) { /* ranks n..size-1 own no element: empty slices at the end */
            int empty = 0, at_end = 1;
            for (int r = 0; r < size_; r++) {
                size_t off, len;
                tsr_dist_slice(tsr_comm_world(), n, r, &off, &len);
                if (len == 0) empty++;
                if ((size_t)r >= n && (len != 0 || off != n)) at_end = 0;
            }
            CHECK(empty == size_ - (int)n && at_end, "n=%zu over %d ranks: %d empty slices, expected %d at offset n",
                  n, size_, empty, size_ - (int)n);
        }
    }
}

static void test_allreduce(size_t n) {
    ctx = "allreduce";
    float *f = malloc((n ? n : 1) * sizeof *f);
    double *d = malloc((n ? n : 1) * sizeof *d);
    int64_t *q = malloc((n ? n : 1) * sizeof *q);
    for (size_t i = 0; i < n; i++) {
        f[i] = vf(rank_, i);
        d[i] = vd(rank_, i);
        q[i] = vi(rank_, i);
    }
    uint64_t b0 = tsr_dist_bytes_sent();
    tsr_dist_allreduce_sum_f32(tsr_comm_world(), f, n);
    uint64_t b1 = tsr_dist_bytes_sent();
    tsr_dist_allreduce_sum_f64(tsr_comm_world(), d, n);
    uint64_t b2 = tsr_dist_bytes_sent();
    tsr_dist_allreduce_sum_i64(tsr_comm_world(), q, n);
    uint64_t b3 = tsr_dist_bytes_sent();
    size_t bad_f = n, bad_d = n, bad_q = n;
    for (size_t i = n; i-- > 0;) {
        if (f[i] != sum_vf(i)) bad_f = i;
        if (d[i] != sum_vd(i)) bad_d = i;
        if (q[i] != sum_vi(i)) bad_q = i;
    }
    CHECK(bad_f == n, "f32 n=%zu: element %zu = %g, expected %g", n, bad_f, bad_f < n ? f[bad_f] : 0.0,
          bad_f < n ? sum_vf(bad_f) : 0.0);
    CHECK(bad_d == n, "f64 n=%zu: element %zu = %.17g, expected %.17g", n, bad_d, bad_d < n ? d[bad_d] : 0.0,
          bad_d < n ? sum_vd(bad_d) : 0.0);
    CHECK(bad_q == n, "i64 n=%zu: element %zu = %lld, expected %lld", n, bad_q,
          bad_q < n ? (long long)q[bad_q] : 0LL, bad_q < n ? (long long)sum_vi(bad_q) : 0LL);
    ctx = "bytes";
    uint64_t p1 = 2 * ((uint64_t)size_ - 1);
    CHECK(b1 - b0 == est(n * 4, p1), "allreduce f32 n=%zu counted %llu bytes, expected %llu", n,
          (unsigned long long)(b1 - b0), (unsigned long long)est(n * 4, p1));
    CHECK(b2 - b1 == est(n * 8, p1), "allreduce f64 n=%zu counted %llu bytes", n, (unsigned long long)(b2 - b1));
    CHECK(b3 - b2 == est(n * 8, p1), "allreduce i64 n=%zu counted %llu bytes", n, (unsigned long long)(b3 - b2));
    if (size_ > 1 && n > 0) CHECK(b3 > b0, "n=%zu: the byte counter did not increase", n);
    free(f);
    free(d);
    free(q);
}

static uint32_t lcg(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static void test_sharded(size_t n) {
    size_t m = n ? n : 1;
    float *a = malloc(m * sizeof *a), *b = malloc(m * sizeof *b);
    size_t off, len;
    tsr_dist_slice(tsr_comm_world(), n, rank_, &off, &len);

    /* reduce-scatter: this rank's slice holds the closed-form sum */
    ctx = "reduce_scatter";
    for (size_t i = 0; i < n; i++) a[i] = vf(rank_, i);
    uint64_t b0 = tsr_dist_bytes_sent();
    tsr_dist_reduce_scatter_sum_f32(tsr_comm_world(), a, n);
    uint64_t b1 = tsr_dist_bytes_sent();
    size_t bad = n;
    for (size_t i = off + len; i-- > off;)
        if (a[i] != sum_vf(i)) bad = i;
    CHECK(bad == n, "n=%zu: slice element %zu = %g, expected %g", n, bad, bad < n ? a[bad] : 0.0,
          bad < n ? sum_vf(bad) : 0.0);
    CHECK(b1 - b0 == est(n * 4, (uint64_t)size_ - 1), "n=%zu counted %llu bytes", n, (unsigned long long)(b1 - b0));

    /* then all-gather: equals allreduce, exactly (integer-valued floats) */
    ctx = "reduce_scatter+allgather";
    tsr_dist_allgather_f32(tsr_comm_world(), a, n);
    uint64_t b2 = tsr_dist_bytes_sent();
    for (size_t i = 0; i < n; i++) b[i] = vf(rank_, i);
    tsr_dist_allreduce_sum_f32(tsr_comm_world(), b, n);
    CHECK(n == 0 || memcmp(a, b, n * sizeof *a) == 0, "n=%zu: differs from allreduce", n);
    CHECK(b2 - b1 == est(n * 4, (uint64_t)size_ - 1), "allgather n=%zu counted %llu bytes", n,
          (unsigned long long)(b2 - b1));

    /* random values: the same within float rounding of a different summation order */
    ctx = "reduce_scatter+allgather random";
    uint32_t s = 12345u + 977u * (uint32_t)rank_;
    for (size_t i = 0; i < n; i++) a[i] = b[i] = (float)lcg(&s) / 16777216.0f - 0.5f;
    tsr_dist_reduce_scatter_sum_f32(tsr_comm_world(), a, n);
    tsr_dist_allgather_f32(tsr_comm_world(), a, n);
    tsr_dist_allreduce_sum_f32(tsr_comm_world(), b, n);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (e > worst) worst = e;
    }
    CHECK(worst <= 1e-6 * size_, "n=%zu: max |difference| %g", n, worst);

    /* all-gather alone: the rest of buf starts as garbage */
    ctx = "allgather";
    for (size_t i = 0; i < n; i++) a[i] = (i >= off && i < off + len) ? vf(rank_, i) : -1.0f;
    tsr_dist_allgather_f32(tsr_comm_world(), a, n);
    bad = n;
    for (size_t i = n; i-- > 0;)
        if (a[i] != vf(owner(n, i), i)) bad = i;
    CHECK(bad == n, "n=%zu: element %zu = %g", n, bad, bad < n ? a[bad] : 0.0);

    /* gather to root 0 and to the last rank */
    ctx = "gather";
    int roots[2] = {0, size_ - 1};
    for (int t = 0; t < (size_ > 1 ? 2 : 1); t++) {
        int root = roots[t];
        for (size_t i = 0; i < n; i++) a[i] = (i >= off && i < off + len) ? vf(rank_, i) : -1.0f;
        uint64_t g0 = tsr_dist_bytes_sent();
        tsr_dist_gather_f32(tsr_comm_world(), a, n, root);
        uint64_t g1 = tsr_dist_bytes_sent();
        bad = n;
        for (size_t i = n; i-- > 0;) {
            float want = rank_ == root ? vf(owner(n, i), i) : (i >= off && i < off + len) ? vf(rank_, i) : -1.0f;
            if (a[i] != want) bad = i;
        }
        CHECK(bad == n, "root %d n=%zu: element %zu = %g", root, n, bad, bad < n ? a[bad] : 0.0);
        uint64_t want_b = (size_ == 1 || rank_ == root) ? 0 : len * 4;
        CHECK(g1 - g0 == want_b, "root %d n=%zu counted %llu bytes, expected %llu", root, n,
              (unsigned long long)(g1 - g0), (unsigned long long)want_b);
    }
    free(a);
    free(b);
}

static void test_bcast(size_t n) {
    ctx = "bcast";
    unsigned char *c = malloc(n ? n : 1);
    int roots[2] = {0, size_ - 1};
    for (int t = 0; t < (size_ > 1 ? 2 : 1); t++) {
        int root = roots[t];
        for (size_t i = 0; i < n; i++) c[i] = rank_ == root ? (unsigned char)(i * 31 + 7 + (size_t)root) : 0;
        uint64_t b0 = tsr_dist_bytes_sent();
        tsr_dist_bcast(tsr_comm_world(), c, n, root);
        uint64_t b1 = tsr_dist_bytes_sent();
        size_t bad = n;
        for (size_t i = n; i-- > 0;)
            if (c[i] != (unsigned char)(i * 31 + 7 + (size_t)root)) bad = i;
        CHECK(bad == n, "root %d n=%zu: byte %zu differs", root, n, bad);
        CHECK(b1 - b0 == (size_ > 1 ? (uint64_t)n : 0), "root %d n=%zu counted %llu bytes", root, n,
              (unsigned long long)(b1 - b0));
    }
    free(c);
}

static void test_max(void) {
    ctx = "max";
    CHECK(tsr_dist_allreduce_max_f64(tsr_comm_world(), rank_ * 1.5 - 10) == (size_ - 1) * 1.5 - 10, "f64 of rank*1.5-10");
    CHECK(tsr_dist_allreduce_max_f64(tsr_comm_world(), -1.0 - rank_) == -1.0, "f64 of -1-rank (max is not a sum)");
    CHECK(tsr_dist_allreduce_max_int(tsr_comm_world(), 7 * rank_ - 3) == 7 * (size_ - 1) - 3, "int of 7*rank-3");
    CHECK(tsr_dist_allreduce_max_int(tsr_comm_world(), -5 - rank_) == -5, "int of -5-rank");
    CHECK(tsr_dist_allreduce_max_int(tsr_comm_world(), rank_ == size_ - 1 ? 42 : 0) == 42, "int: only the last rank has 42");
    ctx = "agree_fail";
    CHECK(tsr_dist_agree_fail(tsr_comm_world(), 0) == 0, "nobody failed");
    CHECK(tsr_dist_agree_fail(tsr_comm_world(), rank_ == size_ - 1) == 1, "the last rank failed");
}

/* The trainer's ownership at this rank count (src/train/sampler.h, src/train/trainer.c setup_data): the
 * global batch is the same as at one rank, every slot is computed by exactly one rank, every task is
 * evaluated by exactly one rank (its first owner), and with the gradient-example split (task t on rank
 * t % size) every task by one rank. The cases that matter at many ranks are asserted to occur: fewer tasks
 * than ranks (ranks that evaluate no task, or own none in the split), a batch smaller than the rank count
 * (ranks with no slot: they contribute zeros to the sums). Uneven task sizes decide the dealing when
 * there are at least as many tasks as ranks. */
static void test_ownership(void) {
    const int ntasks_list[] = {1, 2, 3, 5, size_, size_ + 3};
    const int G_list[] = {1, 3, size_ > 1 ? size_ - 1 : 1, 24};
    int saw_no_eval = 0, saw_no_slot = 0;
    for (size_t a = 0; a < sizeof ntasks_list / sizeof ntasks_list[0]; a++) {
        int nt = ntasks_list[a];
        int64_t *w = malloc(sizeof(int64_t) * (size_t)nt);
        for (int t = 0; t < nt; t++) w[t] = 3 + (t * 7) % 11; /* uneven task sizes */
        tsr_sampler sp, one;
        tsr_sampler_init(&sp, nt, size_, w);
        tsr_sampler_init(&one, nt, 1, w);
        for (int t = 0; t < nt; t++) sp.count[t] = one.count[t] = w[t];
        /* tasks: owners, first owners (evaluation), the split by t % size */
        ctx = "ownership";
        int64_t *own = calloc((size_t)3 * nt, sizeof(int64_t));
        int mine = 0, evals = 0;
        for (int t = 0; t < nt; t++) {
            int o = tsr_sampler_owns(&sp, t, rank_), f = tsr_sampler_first_owner(&sp, t) == rank_;
            CHECK(!f || o, "%d tasks: rank %d is the first owner of task %d but does not own it", nt, rank_, t);
            own[t] = o, own[nt + t] = f, own[2 * nt + t] = t % size_ == rank_;
            mine += o, evals += f;
        }
        tsr_dist_allreduce_sum_i64(tsr_comm_world(), own, (size_t)3 * nt);
        int bad = 0;
        for (int t = 0; t < nt; t++) bad += own[t] < 1 || own[nt + t] != 1 || own[2 * nt + t] != 1;
        CHECK(bad == 0, "%d tasks over %d ranks: %d tasks without an owner or not evaluated / split exactly once", nt,
              size_, bad);
        /* with fewer tasks than ranks every rank shares one task; otherwise every rank owns at least one */
        CHECK(mine >= 1 && (nt >= size_ || mine == 1), "%d tasks: rank %d owns %d tasks", nt, rank_, mine);
        int64_t nev[1] = {evals == 0};
        tsr_dist_allreduce_sum_i64(tsr_comm_world(), nev, 1);
        CHECK(nev[0] == (nt < size_ ? size_ - nt : 0), "%d tasks over %d ranks: %lld ranks evaluate no task", nt,
              size_, (long long)nev[0]);
        saw_no_eval |= nev[0] > 0;
        free(own);
        /* slots: the union over ranks is the one-rank batch, each slot once */
        for (size_t b = 0; b < sizeof G_list / sizeof G_list[0]; b++) {
            int G = G_list[b];
            ctx = "ownership: slots";
            int *task = malloc(sizeof(int) * (size_t)G), *slot = malloc(sizeof(int) * (size_t)G);
            int *task1 = malloc(sizeof(int) * (size_t)G), *slot1 = malloc(sizeof(int) * (size_t)G);
            int64_t *ex = malloc(sizeof(int64_t) * (size_t)G), *ex1 = malloc(sizeof(int64_t) * (size_t)G);
            int64_t *got = malloc(sizeof(int64_t) * (size_t)(3 * G + 1));
            for (long step = 0; step < 4; step++) {
                int n = tsr_sampler_local(&sp, 77, step, G, rank_, task, ex, slot);
                int n1 = tsr_sampler_local(&one, 77, step, G, 0, task1, ex1, slot1);
                memset(got, 0, sizeof(int64_t) * (size_t)(3 * G + 1));
                for (int i = 0; i < n; i++) {
                    got[slot[i]] += 1;
                    got[G + slot[i]] += task[i] + 1;
                    got[2 * G + slot[i]] += ex[i] + 1;
                }
                got[3 * G] = n == 0; /* ranks without a slot this step */
                tsr_dist_allreduce_sum_i64(tsr_comm_world(), got, (size_t)(3 * G + 1));
                int wrong = n1 != G;
                for (int i = 0; i < n1; i++)
                    wrong += got[slot1[i]] != 1 || got[G + slot1[i]] != task1[i] + 1 || got[2 * G + slot1[i]] != ex1[i] + 1;
                CHECK(wrong == 0, "%d tasks, batch %d, step %ld: %d slots differ from the one-rank batch or are not "
                      "computed exactly once", nt, G, step, wrong);
                if (G < size_)
                    CHECK(got[3 * G] >= size_ - G, "%d tasks, batch %d: only %lld of %d ranks without a slot", nt, G,
                          (long long)got[3 * G], size_);
                saw_no_slot |= got[3 * G] > 0;
            }
            free(task), free(slot), free(task1), free(slot1), free(ex), free(ex1), free(got);
        }
        tsr_sampler_free(&sp);
        tsr_sampler_free(&one);
        free(w);
    }
    ctx = "ownership";
    if (size_ > 1) {
        CHECK(saw_no_eval, "no case with a rank that evaluates no task");
        CHECK(saw_no_slot, "no case with a rank that computes no slot");
    }
}

/* A parallel netCDF-4 file: every rank writes its own entry (independent access), then every rank reads
 * all of them back through tsr_ncpar_open (collective access). */
static void test_ncpar(void) {
    ctx = "ncpar";
    char dir[64] = "";
    if (rank_ == 0 && !mkdtemp(strcpy(dir, "/tmp/tsr_test_ncpar_XXXXXX"))) dir[0] = 0;
    tsr_dist_bcast(tsr_comm_world(), dir, sizeof dir, 0);
    CHECK(dir[0] != 0, "no scratch directory");
    if (!dir[0]) return;
    char path[128];
    snprintf(path, sizeof path, "%s/par.nc", dir);
    int ncid = -1, dim, var, st;
    st = tsr_ncpar_create(path, NC_NETCDF4 | NC_CLOBBER, &ncid);
    CHECK(st == NC_NOERR, "create: %s", nc_strerror(st));
    if (st == NC_NOERR) {
        CHECK(nc_def_dim(ncid, "rank", (size_t)size_, &dim) == NC_NOERR, "def_dim");
        CHECK(nc_def_var(ncid, "value", NC_INT, 1, &dim, &var) == NC_NOERR, "def_var");
        CHECK(nc_enddef(ncid) == NC_NOERR, "enddef");
        st = tsr_ncpar_var_independent(ncid, var);
        CHECK(st == NC_NOERR, "independent: %s", nc_strerror(st));
        size_t at = (size_t)rank_;
        int v = 100 + 7 * rank_;
        st = nc_put_var1_int(ncid, var, &at, &v);
        CHECK(st == NC_NOERR, "put on rank %d: %s", rank_, nc_strerror(st));
        CHECK(nc_close(ncid) == NC_NOERR, "close");
    }
    st = tsr_ncpar_open(path, NC_NOWRITE, &ncid);
    CHECK(st == NC_NOERR, "open: %s", nc_strerror(st));
    if (st == NC_NOERR) {
        CHECK(nc_inq_varid(ncid, "value", &var) == NC_NOERR, "inq_varid");
        st = tsr_ncpar_var_collective(ncid, var);
        CHECK(st == NC_NOERR, "collective: %s", nc_strerror(st));
        int *all = calloc((size_t)size_, sizeof *all);
        st = nc_get_var_int(ncid, var, all);
        CHECK(st == NC_NOERR, "get: %s", nc_strerror(st));
        for (int r = 0; r < size_; r++) CHECK(all[r] == 100 + 7 * r, "entry %d is %d", r, all[r]);
        free(all);
        CHECK(nc_close(ncid) == NC_NOERR, "close after reading");
    }
    tsr_dist_barrier(tsr_comm_world());
    if (rank_ == 0) {
        unlink(path);
        rmdir(dir);
    }
    tsr_dist_barrier(tsr_comm_world());
    /* a missing file is an error on every rank, with netCDF's status */
    st = tsr_ncpar_open(path, NC_NOWRITE, &ncid);
    CHECK(st != NC_NOERR, "opening a removed file succeeded");
}

int main(int argc, char **argv) {
    tsr_dist_init(&argc, &argv);
    rank_ = tsr_world.rank;
    size_ = tsr_world.size;
    tsr_dist_install_stop_signals();

    ctx = "stop (nobody raised)";
    CHECK(tsr_dist_stop_requested(tsr_comm_world()) == 0, "stop requested although no rank got a signal");

    test_slices();
    test_max();
    test_ncpar();
    const size_t chunks[2] = {0, 1000};
    for (int c = 0; c < 2; c++) {
        tsr_dist_set_chunk_bytes(chunks[c]);
        for (size_t t = 0; t <= NN; t++) {
            /* last: n whose slice 0 is one element longer than a whole number of rounds of the small
             * chunk (250 floats / size per rank and round), so slice 0 needs one more round than the rest */
            size_t n = t < NN ? NS[t] : (size_t)size_ * (250 / (size_t)size_) * 3 + 1;
            test_allreduce(n);
            test_sharded(n);
            test_bcast(n);
        }
    }
    /* empty slices (n < ranks) through the direct path and, with the smallest chunk, the round-based one */
    const size_t chunks_small[2] = {0, 8};
    const size_t small[4] = {2, 5, size_ > 1 ? (size_t)size_ - 1 : 3, (size_t)size_ + 3};
    for (int c = 0; c < 2; c++) {
        tsr_dist_set_chunk_bytes(chunks_small[c]);
        for (int t = 0; t < 4; t++) {
            test_allreduce(small[t]);
            test_sharded(small[t]);
            test_bcast(small[t]);
        }
    }
    test_ownership();
    tsr_dist_set_chunk_bytes(0);
    ctx = "chunk";
    CHECK(tsr_dist_chunk_bytes() == (size_t)256 << 20, "default chunk %zu", tsr_dist_chunk_bytes());

    /* Stop signals: rank 1 (rank 0 when alone) raises SIGUSR2; every rank must see the request. Then
     * SIGTERM must be caught too (an uncaught SIGTERM would kill this rank and fail the run). */
    ctx = "stop (rank 1 raised SIGUSR2)";
    int raiser = size_ > 1 ? 1 : 0;
    if (rank_ == raiser) raise(SIGUSR2);
    CHECK(tsr_dist_stop_requested(tsr_comm_world()) == 1, "stop not seen on rank %d", rank_);
    ctx = "stop (SIGTERM)";
    raise(SIGTERM);
    CHECK(tsr_dist_stop_requested(tsr_comm_world()) == 1, "still requested after SIGTERM");

    int64_t tot[2] = {n_pass, n_fail};
    tsr_dist_allreduce_sum_i64(tsr_comm_world(), tot, 2);
    if (rank_ == 0) {
        printf("test_collectives (%d rank%s): %lld passed, %lld failed\n", size_, size_ > 1 ? "s" : "",
               (long long)tot[0], (long long)tot[1]);
        fflush(stdout);
    }
    tsr_dist_finalize(0);
    return tot[1] ? 1 : 0;
}
