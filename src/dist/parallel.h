/* parallel.h: the distribution layer. parallel.c is the ONLY file that calls MPI; everything else uses
 * these wrappers. Collectives short-circuit at world size 1. */
#ifndef TSR_PARALLEL_H
#define TSR_PARALLEL_H
#include <stddef.h>

typedef struct {
    int rank, size;             /* in MPI_COMM_WORLD */
    int local_rank, local_size; /* ranks on this node */
    int threads;                /* OpenMP / BLAS threads per rank */
} tsr_dist;

extern tsr_dist tsr_world;

/* MPI_Init, rank discovery, abort hook for tsr_fatal. */
void tsr_dist_init(int *argc, char ***argv);
void tsr_dist_finalize(void);
/* Threads per rank: requested > 0 is used as is; 0 = online cores / ranks on this node (at least 1),
 * so that ranks x threads does not oversubscribe the cores. Sets OpenMP and BLAS threads. */
int tsr_dist_set_threads(int requested);
/* Name of the MPI library (MPI_Get_library_version, first line). */
void tsr_dist_library(char *buf, int len);
/* Every rank reports ok (0) or failure (nonzero); returns the max over ranks. */
int tsr_dist_agree_fail(int local_fail);
void tsr_dist_barrier(void);
#endif
