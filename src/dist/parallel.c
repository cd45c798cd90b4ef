/* parallel.c: the one file that talks to MPI. */
#define _GNU_SOURCE
#include "dist/parallel.h"

#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <sched.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/blas.h"
#include "core/common.h"

tsr_dist tsr_world = {0, 1, 0, 1, 1};
static int mpi_started = 0;
static tsr_comm comm_world = {0, 1, 1}, comm_self = {0, 1, 0};

const tsr_comm *tsr_comm_world(void) { return &comm_world; }
const tsr_comm *tsr_comm_self(void) { return &comm_self; }

tsr_ctx tsr_ctx_world(void) { return (tsr_ctx){&comm_world, tsr_logger_default(), tsr_world.threads}; }

tsr_ctx tsr_ctx_self(int max_level) {
    tsr_logger lg = tsr_logger_default();
    if (lg.level > max_level) lg.level = max_level;
    return (tsr_ctx){&comm_self, lg, tsr_world.threads};
}

/* The MPI communicator behind c (only called with c->size > 1, so never for comm_self). */
static MPI_Comm mpi_comm(const tsr_comm *c) { return c->world ? MPI_COMM_WORLD : MPI_COMM_SELF; }

/* Every MPI call goes through MPI_CALL: a return code other than MPI_SUCCESS is fatal, with MPI's own
 * message and the caller's file:line. */
static void mpi_check(int rc, const char *fn, const char *file, int line) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error code %d", rc);
    tsr_fatal_at(file, line, "%s failed: %s", fn, msg);
}
#define MPI_CALL(fn, ...) mpi_check(fn(__VA_ARGS__), #fn, __FILE__, __LINE__)

static void abort_hook(int code) {
    if (mpi_started) MPI_Abort(MPI_COMM_WORLD, code);
}

void tsr_dist_init(int *argc, char ***argv) {
    int provided;
    MPI_CALL(MPI_Init_thread, argc, argv, MPI_THREAD_FUNNELED, &provided);
    mpi_started = 1;
    tsr_abort_hook = abort_hook;
    /* Errors come back as return codes (MPI_CALL turns them into tsr_fatal); communicators derived
     * from MPI_COMM_WORLD inherit the handler. */
    MPI_CALL(MPI_Comm_set_errhandler, MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_CALL(MPI_Comm_rank, MPI_COMM_WORLD, &tsr_world.rank);
    MPI_CALL(MPI_Comm_size, MPI_COMM_WORLD, &tsr_world.size);
    tsr_log_rank = tsr_world.rank;
    comm_world.rank = tsr_world.rank;
    comm_world.size = tsr_world.size;
    MPI_Comm node;
    MPI_CALL(MPI_Comm_split_type, MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, tsr_world.rank, MPI_INFO_NULL, &node);
    MPI_CALL(MPI_Comm_rank, node, &tsr_world.local_rank);
    MPI_CALL(MPI_Comm_size, node, &tsr_world.local_size);
    MPI_CALL(MPI_Comm_free, &node);
}

static int skip_finalize;
void tsr_dist_skip_finalize(void) { skip_finalize = 1; }

void tsr_dist_finalize(int rc) {
    if (mpi_started && skip_finalize) {
        fflush(NULL);
        _exit(rc != 0 ? rc : 1);
    }
    if (mpi_started) MPI_CALL(MPI_Finalize);
    mpi_started = 0;
}

int tsr_dist_set_threads(int requested) {
    int n = requested;
    /* the cores this rank may run on (mpirun binds a rank to one core by default when ranks <= 2) */
    cpu_set_t set;
    int allowed = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0) allowed = CPU_COUNT(&set);
    if (n <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = (int)(cores / (tsr_world.local_size > 0 ? tsr_world.local_size : 1));
        if (allowed > 0 && n > allowed) n = allowed;
        if (n < 1) n = 1;
    } else if (allowed > 0 && n > allowed) {
        tsr_warn("rank %d may run on %d core(s) but %d threads were asked for: they would share cores and run "
                 "far slower; using %d. HINT: mpirun --bind-to none, or --map-by slot:PE=%d, or srun "
                 "--cpus-per-task=%d", tsr_world.rank, allowed, n, allowed, n, n);
        n = allowed;
    }
    tsr_world.threads = n;
    omp_set_num_threads(n);
    omp_set_max_active_levels(1);
    tsr_blas_set_threads(n);
    return n;
}

void tsr_dist_library(char *buf, int len) {
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    MPI_CALL(MPI_Get_library_version, v, &n);
    char *nl = strchr(v, '\n');
    if (nl) *nl = 0;
    char *comma = strchr(v, ',');
    if (comma) *comma = 0;
    snprintf(buf, (size_t)len, "%s", v);
}

/* ---------------------------------------------------------------- traffic estimate */
static uint64_t bytes_sent = 0;

/* floor(bytes * num / p) without overflowing the product. */
static void count_bytes(size_t bytes, uint64_t num, uint64_t p) {
    uint64_t b = (uint64_t)bytes;
    bytes_sent += (b / p) * num + (b % p) * num / p;
}
static void count_allreduce(const tsr_comm *c, size_t bytes) {
    uint64_t p = (uint64_t)c->size;
    count_bytes(bytes, 2 * (p - 1), p);
}

uint64_t tsr_dist_bytes_sent(void) { return bytes_sent; }

int tsr_dist_agree_fail(const tsr_comm *c, int local_fail) {
    if (c->size == 1) return local_fail;
    int out = 0;
    MPI_CALL(MPI_Allreduce, &local_fail, &out, 1, MPI_INT, MPI_MAX, mpi_comm(c));
    count_allreduce(c, sizeof out);
    return out;
}

int tsr_dist_fail_together(const tsr_comm *c, int local_fail, const tsr_logger *log) {
    /* the lowest failing rank (c->size: none) */
    int who = local_fail ? c->rank : c->size;
    if (c->size > 1) {
        int low = who;
        MPI_CALL(MPI_Allreduce, &who, &low, 1, MPI_INT, MPI_MIN, mpi_comm(c));
        count_allreduce(c, sizeof low);
        who = low;
    }
    if (who == c->size) return 0;
    /* a failure that recorded no message still says that something failed, on every rank */
    const char *own = tsr_last_error()[0] ? tsr_last_error() : "failed (no reason was recorded)";
    if (local_fail) tsr_logf(log, TSR_LOG_ERROR, "%s", own);
    if (c->size > 1) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", own);
        tsr_dist_bcast(c, msg, sizeof msg, who);
        msg[sizeof msg - 1] = 0;
        if (!local_fail) tsr_logf(log, TSR_LOG_ERROR, "stopping: rank %d failed: %s", who, msg);
    }
    return 1;
}

void tsr_dist_barrier(const tsr_comm *c) {
    if (c->size > 1) MPI_CALL(MPI_Barrier, mpi_comm(c));
}

/* ---------------------------------------------------------------- chunking */
#define TSR_DIST_CHUNK_DEFAULT ((size_t)256 << 20)
static size_t chunk_bytes = TSR_DIST_CHUNK_DEFAULT;

void tsr_dist_set_chunk_bytes(size_t bytes) {
    if (bytes == 0) bytes = TSR_DIST_CHUNK_DEFAULT;
    if (bytes < 8) bytes = 8;
    if (bytes > (size_t)INT_MAX) bytes = (size_t)INT_MAX;
    chunk_bytes = bytes;
}

size_t tsr_dist_chunk_bytes(void) { return chunk_bytes; }

/* Elements of esize bytes per MPI call: at least 1, at most INT_MAX. */
static size_t chunk_elems(size_t esize) {
    size_t e = chunk_bytes / esize;
    return e ? e : 1;
}

/* ---------------------------------------------------------------- reductions */
static void allreduce_sum(const tsr_comm *cm, void *buf, size_t n, size_t esize, MPI_Datatype type) {
    if (cm->size == 1 || n == 0) return;
    const size_t step = chunk_elems(esize);
    char *p = buf;
    for (size_t i = 0; i < n; i += step) {
        size_t c = n - i < step ? n - i : step;
        MPI_CALL(MPI_Allreduce, MPI_IN_PLACE, p + i * esize, (int)c, type, MPI_SUM, mpi_comm(cm));
    }
    count_allreduce(cm, n * esize);
}

void tsr_dist_allreduce_sum_f32(const tsr_comm *c, float *buf, size_t n) { allreduce_sum(c, buf, n, sizeof *buf, MPI_FLOAT); }
void tsr_dist_allreduce_sum_f64(const tsr_comm *c, double *buf, size_t n) { allreduce_sum(c, buf, n, sizeof *buf, MPI_DOUBLE); }
void tsr_dist_allreduce_sum_i64(const tsr_comm *c, int64_t *buf, size_t n) { allreduce_sum(c, buf, n, sizeof *buf, MPI_INT64_T); }

double tsr_dist_allreduce_max_f64(const tsr_comm *c, double v) {
    if (c->size == 1) return v;
    double out = v;
    MPI_CALL(MPI_Allreduce, &v, &out, 1, MPI_DOUBLE, MPI_MAX, mpi_comm(c));
    count_allreduce(c, sizeof out);
    return out;
}

int tsr_dist_allreduce_max_int(const tsr_comm *c, int v) {
    if (c->size == 1) return v;
    int out = v;
    MPI_CALL(MPI_Allreduce, &v, &out, 1, MPI_INT, MPI_MAX, mpi_comm(c));
    count_allreduce(c, sizeof out);
    return out;
}

static void check_root(const tsr_comm *c, int root, const char *what) {
    if (root < 0 || root >= c->size)
        tsr_fatal("%s: root %d is not a rank (communicator size %d)", what, root, c->size);
}

void tsr_dist_bcast(const tsr_comm *cm, void *buf, size_t bytes, int root) {
    check_root(cm, root, "tsr_dist_bcast");
    if (cm->size == 1 || bytes == 0) return;
    const size_t step = chunk_elems(1);
    char *p = buf;
    for (size_t i = 0; i < bytes; i += step) {
        size_t c = bytes - i < step ? bytes - i : step;
        MPI_CALL(MPI_Bcast, p + i, (int)c, MPI_BYTE, root, mpi_comm(cm));
    }
    bytes_sent += (uint64_t)bytes;
}

/* ---------------------------------------------------------------- sharded vectors */
void tsr_dist_slice(const tsr_comm *c, size_t n, int rank, size_t *off, size_t *len) {
    if (rank < 0 || rank >= c->size)
        tsr_fatal("tsr_dist_slice: rank %d is not a rank (communicator size %d)", rank, c->size);
    size_t p = (size_t)c->size, r = (size_t)rank;
    size_t q = n / p, m = n % p;
    *len = q + (r < m ? 1 : 0);
    *off = r * q + (r < m ? r : m);
}

/* How a sharded collective on n floats is cut into MPI calls.
 * direct: the whole vector in one call, counts/displs are the slices themselves (n fits one chunk, so
 * every displacement fits an int).
 * Otherwise rounds: round k moves elements [k*C, (k+1)*C) of every rank's slice (C = chunk / p, so one
 * round moves at most one chunk), packed contiguously in rank order into tmp (p*C floats). */
typedef struct {
    int p, me;
    int direct;
    size_t C, rounds;
    size_t *off, *len;  /* slices, p each */
    int *counts, *displs; /* of the current round (or of the direct call) */
    float *tmp;
} shard_plan;

static void plan_init(const tsr_comm *c, shard_plan *s, size_t n, int need_tmp) {
    s->p = c->size;
    s->me = c->rank;
    size_t p = (size_t)s->p;
    s->off = tsr_malloc(p * sizeof *s->off);
    s->len = tsr_malloc(p * sizeof *s->len);
    s->counts = tsr_malloc(p * sizeof *s->counts);
    s->displs = tsr_malloc(p * sizeof *s->displs);
    for (int r = 0; r < s->p; r++) tsr_dist_slice(c, n, r, &s->off[r], &s->len[r]);
    const size_t E = chunk_elems(sizeof(float));
    s->tmp = NULL;
    if (n <= E) {
        s->direct = 1;
        s->C = s->len[0];
        s->rounds = 1;
        for (int r = 0; r < s->p; r++) {
            s->counts[r] = (int)s->len[r];
            s->displs[r] = (int)s->off[r];
        }
    } else {
        s->direct = 0;
        s->C = E / p ? E / p : 1;
        s->rounds = (s->len[0] + s->C - 1) / s->C; /* slice 0 is the longest */
        if (need_tmp) s->tmp = tsr_malloc(p * s->C * sizeof(float));
    }
}

/* Counts and packed displacements of round k (not direct). */
static void plan_round(shard_plan *s, size_t k) {
    size_t start = k * s->C, pos = 0;
    for (int r = 0; r < s->p; r++) {
        size_t c = start < s->len[r] ? s->len[r] - start : 0;
        if (c > s->C) c = s->C;
        s->counts[r] = (int)c;
        s->displs[r] = (int)pos;
        pos += c;
    }
}

static void plan_free(shard_plan *s) {
    free(s->off);
    free(s->len);
    free(s->counts);
    free(s->displs);
    free(s->tmp);
}

void tsr_dist_reduce_scatter_sum_f32(const tsr_comm *c, float *buf, size_t n) {
    if (c->size == 1 || n == 0) return;
    shard_plan s;
    plan_init(c, &s, n, 1);
    const int me = s.me;
    if (s.direct) {
        /* In place: the input is all of buf, the result lands at the start of buf. */
        MPI_CALL(MPI_Reduce_scatter, MPI_IN_PLACE, buf, s.counts, MPI_FLOAT, MPI_SUM, mpi_comm(c));
        if (s.off[me] > 0 && s.len[me] > 0) memmove(buf + s.off[me], buf, s.len[me] * sizeof *buf);
    } else {
        for (size_t k = 0; k < s.rounds; k++) {
            plan_round(&s, k);
            size_t start = k * s.C;
            for (int r = 0; r < s.p; r++)
                if (s.counts[r]) memcpy(s.tmp + s.displs[r], buf + s.off[r] + start, (size_t)s.counts[r] * sizeof *buf);
            float *dst = buf + s.off[me] + (s.counts[me] ? start : 0);
            MPI_CALL(MPI_Reduce_scatter, s.tmp, dst, s.counts, MPI_FLOAT, MPI_SUM, mpi_comm(c));
        }
    }
    plan_free(&s);
    count_bytes(n * sizeof *buf, (uint64_t)c->size - 1, (uint64_t)c->size);
}

void tsr_dist_allgather_f32(const tsr_comm *c, float *buf, size_t n) {
    if (c->size == 1 || n == 0) return;
    shard_plan s;
    plan_init(c, &s, n, 1);
    const int me = s.me;
    if (s.direct) {
        MPI_CALL(MPI_Allgatherv, MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, s.counts, s.displs, MPI_FLOAT,
                 mpi_comm(c));
    } else {
        for (size_t k = 0; k < s.rounds; k++) {
            plan_round(&s, k);
            size_t start = k * s.C;
            const float *src = buf + s.off[me] + (s.counts[me] ? start : 0);
            MPI_CALL(MPI_Allgatherv, src, s.counts[me], MPI_FLOAT, s.tmp, s.counts, s.displs, MPI_FLOAT,
                     mpi_comm(c));
            for (int r = 0; r < s.p; r++)
                if (r != me && s.counts[r])
                    memcpy(buf + s.off[r] + start, s.tmp + s.displs[r], (size_t)s.counts[r] * sizeof *buf);
        }
    }
    plan_free(&s);
    count_bytes(n * sizeof *buf, (uint64_t)c->size - 1, (uint64_t)c->size);
}

void tsr_dist_gather_f32(const tsr_comm *c, float *buf, size_t n, int root) {
    check_root(c, root, "tsr_dist_gather_f32");
    if (c->size == 1 || n == 0) return;
    shard_plan s;
    const int me = c->rank;
    plan_init(c, &s, n, me == root);
    if (s.direct) {
        if (me == root)
            MPI_CALL(MPI_Gatherv, MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, s.counts, s.displs, MPI_FLOAT, root,
                     mpi_comm(c));
        else
            MPI_CALL(MPI_Gatherv, buf + s.off[me], s.counts[me], MPI_FLOAT, NULL, NULL, NULL, MPI_FLOAT, root,
                     mpi_comm(c));
    } else {
        for (size_t k = 0; k < s.rounds; k++) {
            plan_round(&s, k);
            size_t start = k * s.C;
            if (me == root) {
                /* The root's own part stays where it is (in place); tmp receives the others. */
                MPI_CALL(MPI_Gatherv, MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, s.tmp, s.counts, s.displs, MPI_FLOAT,
                         root, mpi_comm(c));
                for (int r = 0; r < s.p; r++)
                    if (r != me && s.counts[r])
                        memcpy(buf + s.off[r] + start, s.tmp + s.displs[r], (size_t)s.counts[r] * sizeof *buf);
            } else {
                const float *src = buf + s.off[me] + (s.counts[me] ? start : 0);
                MPI_CALL(MPI_Gatherv, src, s.counts[me], MPI_FLOAT, NULL, NULL, NULL, MPI_FLOAT, root,
                         mpi_comm(c));
            }
        }
    }
    if (me != root) bytes_sent += (uint64_t)s.len[me] * sizeof *buf;
    plan_free(&s);
}

/* ---------------------------------------------------------------- stop signals */
static volatile sig_atomic_t stop_flag = 0;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

void tsr_dist_install_stop_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGUSR2, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
        tsr_fatal("installing the stop signal handlers: %s", strerror(errno));
}

int tsr_dist_stop_requested(const tsr_comm *c) {
    int local = stop_flag ? 1 : 0;
    return tsr_dist_agree_fail(c, local);
}

/* ---------------------------------------------------------------- dynamic work distribution */
struct tsr_dist_counter {
    MPI_Win win;
    long *base; /* rank 0: the counter; other ranks: no memory */
    long local; /* world size 1 (or MPI not started): a plain counter */
    int remote;
};

tsr_dist_counter *tsr_dist_counter_create(long start) {
    tsr_dist_counter *c = tsr_calloc(1, sizeof *c);
    c->local = start;
    if (!mpi_started || tsr_world.size == 1) return c;
    c->remote = 1;
    MPI_Aint size = tsr_world.rank == 0 ? (MPI_Aint)sizeof(long) : 0;
    MPI_CALL(MPI_Win_allocate, size, (int)sizeof(long), MPI_INFO_NULL, MPI_COMM_WORLD, &c->base, &c->win);
    if (tsr_world.rank == 0) {
        MPI_CALL(MPI_Win_lock, MPI_LOCK_EXCLUSIVE, 0, 0, c->win);
        *c->base = start;
        MPI_CALL(MPI_Win_unlock, 0, c->win);
    }
    MPI_CALL(MPI_Barrier, MPI_COMM_WORLD);
    return c;
}

long tsr_dist_counter_next(tsr_dist_counter *c) {
    if (!c->remote) return c->local++;
    long one = 1, old = 0;
    MPI_CALL(MPI_Win_lock, MPI_LOCK_SHARED, 0, 0, c->win);
    MPI_CALL(MPI_Fetch_and_op, &one, &old, MPI_LONG, 0, 0, MPI_SUM, c->win);
    MPI_CALL(MPI_Win_unlock, 0, c->win);
    return old;
}

void tsr_dist_counter_add(tsr_dist_counter *c, long n) {
    if (!c->remote) {
        c->local += n;
        return;
    }
    long old = 0;
    MPI_CALL(MPI_Win_lock, MPI_LOCK_SHARED, 0, 0, c->win);
    MPI_CALL(MPI_Fetch_and_op, &n, &old, MPI_LONG, 0, 0, MPI_SUM, c->win);
    MPI_CALL(MPI_Win_unlock, 0, c->win);
}

void tsr_dist_counter_free(tsr_dist_counter *c) {
    if (!c) return;
    if (c->remote) MPI_CALL(MPI_Win_free, &c->win);
    free(c);
}

int tsr_dist_stop_flag_local(void) { return stop_flag ? 1 : 0; }
