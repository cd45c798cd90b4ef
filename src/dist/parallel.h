/* parallel.h: the distribution layer. src/dist is the ONLY folder that names MPI (parallel.c: this file's
 * functions; ncpar.c: parallel netCDF; grid.c: BLACS grids); everything else uses these wrappers.
 * Collectives take a communicator (tsr_comm), short-circuit at size 1 (and when MPI was never started),
 * must be called by every rank of it in the same order with the same n / bytes / root, and
 * only from the thread that called tsr_dist_init (MPI_THREAD_FUNNELED). Any MPI error is fatal:
 * tsr_fatal with MPI's error string (MPI_COMM_WORLD is switched to MPI_ERRORS_RETURN at init so that
 * every return code reaches the wrappers). docs/SCALING.md describes what each call communicates. */
#ifndef TSR_PARALLEL_H
#define TSR_PARALLEL_H
#include <stddef.h>
#include <stdint.h>

#include "core/common.h"

typedef struct {
    int rank, size;             /* in MPI_COMM_WORLD */
    int local_rank, local_size; /* ranks on this node */
    int threads;                /* OpenMP / BLAS threads per rank */
} tsr_dist;

/* Facts about this process, set once by tsr_dist_init and tsr_dist_set_threads and never changed
 * afterwards (work that runs on fewer ranks gets its own tsr_comm and tsr_ctx instead). */
extern tsr_dist tsr_world;

/* A communicator: the ranks that run one piece of work together. Collectives take one; with size 1
 * they are local (no MPI call). Two exist: every rank (tsr_comm_world) and this process alone
 * (tsr_comm_self: an independent work item such as one sweep entry). */
typedef struct tsr_comm {
    int rank, size; /* within the communicator */
    int world;      /* 1: MPI_COMM_WORLD; 0: this process alone */
} tsr_comm;
const tsr_comm *tsr_comm_world(void);
const tsr_comm *tsr_comm_self(void);

/* The run context passed to the library (trainer, sweeps, analysis) instead of globals: the ranks that
 * run the work, how it logs (the rank named in messages, the level) and the threads per rank. */
typedef struct {
    const tsr_comm *comm;
    tsr_logger log;
    int threads;
} tsr_ctx;
/* The whole job: every rank, the process's log rank and level, tsr_world.threads. */
tsr_ctx tsr_ctx_world(void);
/* This process alone (one independent work item), logging at most at max_level as this world rank. */
tsr_ctx tsr_ctx_self(int max_level);

/* MPI_Init, rank discovery, abort hook for tsr_fatal. */
void tsr_dist_init(int *argc, char ***argv);
/* MPI_Finalize, unless tsr_dist_skip_finalize was called: then the process ends here (stdio flushed, exit status
 * rc, 1 if rc is 0) without it. */
void tsr_dist_finalize(int rc);
/* Every rank that calls this (it must be every rank of the job) ends without MPI_Finalize: for a parallel netCDF
 * file whose writes failed (a full disk), which HDF5 would otherwise close inside MPI_Finalize, collectively, and
 * HDF5's error paths leave the ranks in different collectives there (a deadlock: seen with rank 0 in
 * MPI_File_close's barrier and rank 1 in the metadata cache's sync point). */
void tsr_dist_skip_finalize(void);
/* Threads per rank: requested > 0 is used as is; 0 = online cores / ranks on this node (at least 1),
 * so that ranks x threads does not oversubscribe the cores. Sets OpenMP and BLAS threads. */
int tsr_dist_set_threads(int requested);
/* Name of the MPI library (MPI_Get_library_version, first line). */
void tsr_dist_library(char *buf, int len);
/* Every rank reports ok (0) or failure (nonzero); returns the max over ranks. */
int tsr_dist_agree_fail(const tsr_comm *c, int local_fail);
/* Ranks fail together: every rank says whether it failed (the reason in its tsr_last_error()).
 * Returns 0 when no rank did. Otherwise every rank returns 1: a failing rank logs its own message as an
 * error, the others log "stopping: rank R failed: <message>" with the lowest failing rank's message
 * (sent to them), so every rank's output names the cause. Collective over c; call it before the next
 * collective after anything that can fail on one rank only (reading, writing, allocating by input). */
int tsr_dist_fail_together(const tsr_comm *c, int local_fail, const tsr_logger *log);
void tsr_dist_barrier(const tsr_comm *c);

/* ---------------------------------------------------------------- collectives
 * Large vectors are sent in chunks of at most tsr_dist_chunk_bytes() bytes per MPI call, so n may
 * exceed INT_MAX elements. */

/* In-place sums over ranks (MPI_Allreduce, MPI_SUM). */
void tsr_dist_allreduce_sum_f32(const tsr_comm *c, float *buf, size_t n);
void tsr_dist_allreduce_sum_f64(const tsr_comm *c, double *buf, size_t n);
void tsr_dist_allreduce_sum_i64(const tsr_comm *c, int64_t *buf, size_t n);
/* Maximum over ranks of one value. */
double tsr_dist_allreduce_max_f64(const tsr_comm *c, double v);
int tsr_dist_allreduce_max_int(const tsr_comm *c, int v);
/* Broadcast bytes from root to every rank (in place). */
void tsr_dist_bcast(const tsr_comm *c, void *buf, size_t bytes, int root);

/* Sharded optimizer support: the flat vector of n floats is split into size contiguous slices, slice
 * r = [off(r), off(r)+len(r)) with len as equal as possible (the first n % size slices get one more).
 * Pure arithmetic on the communicator's size; no communication. */
void tsr_dist_slice(const tsr_comm *c, size_t n, int rank, size_t *off, size_t *len);
/* Reduce-scatter (sum) of buf (n, in place): afterwards only this rank's slice of buf holds the summed
 * values; the rest of buf is unspecified. */
void tsr_dist_reduce_scatter_sum_f32(const tsr_comm *c, float *buf, size_t n);
/* All-gather: every rank contributes its slice of buf; afterwards buf holds all slices on every rank. */
void tsr_dist_allgather_f32(const tsr_comm *c, float *buf, size_t n);
/* Gather every rank's slice to root (full vector valid on root only; other ranks' buf is unchanged). */
void tsr_dist_gather_f32(const tsr_comm *c, float *buf, size_t n, int root);

/* Bytes sent by this rank in collectives since start, counted by the wrappers with the standard
 * algorithm-independent estimate (B = payload bytes, p = ranks, floor): allreduce (also the scalar
 * max, agree_fail and stop_requested) 2(p-1)/p B, reduce-scatter and allgather (p-1)/p B, bcast B
 * (every rank), gather: this rank's slice (non-root ranks only); 0 at p = 1. The barrier counts 0.
 * For the scaling report (docs/SCALING.md). */
uint64_t tsr_dist_bytes_sent(void);

/* Chunk size of the vector collectives in bytes (default 256 MiB). Setting 0 restores the default;
 * values are clamped to [8, INT_MAX]. Must be the same on every rank. Exposed so that the tests can
 * exercise the chunked paths on small vectors. */
void tsr_dist_set_chunk_bytes(size_t bytes);
size_t tsr_dist_chunk_bytes(void);

/* ---------------------------------------------------------------- stop signals */
/* Install handlers for SIGUSR2 and SIGTERM that only set a flag (async-signal-safe). The flag stays
 * set once raised. */
void tsr_dist_install_stop_signals(void);
/* At a step boundary: all ranks agree (allreduce max) whether any rank got a stop signal. Collective. */
int tsr_dist_stop_requested(const tsr_comm *c);

/* ---------------------------------------------------------------- dynamic work distribution
 * A counter that ranks draw work items from, each at its own pace (no rank waits for another): MPI
 * one-sided MPI_Fetch_and_op on a window held by rank 0 (passive target; with shared memory and RDMA
 * networks rank 0 needs not take part; on transports without hardware atomics progress may need rank
 * 0 to enter MPI, which it does between items). create and free are collective; next is not. */
typedef struct tsr_dist_counter tsr_dist_counter;
tsr_dist_counter *tsr_dist_counter_create(long start);
long tsr_dist_counter_next(tsr_dist_counter *c); /* returns the counter and adds 1, atomically */
/* Adds n (atomically): a rank that must stop the work pushes the counter past the last item, so every rank
 * leaves its loop after its current item. */
void tsr_dist_counter_add(tsr_dist_counter *c, long n);
void tsr_dist_counter_free(tsr_dist_counter *c);

/* Whether this rank got a stop signal (no communication). */
int tsr_dist_stop_flag_local(void);
#endif
