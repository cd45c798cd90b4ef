/* parallel.c: the one file that talks to MPI. */
#define _GNU_SOURCE
#include "dist/parallel.h"

#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/blas.h"
#include "core/common.h"

tsr_dist tsr_world = {0, 1, 0, 1, 1};
static int mpi_started = 0;

static void abort_hook(int code) {
    if (mpi_started) MPI_Abort(MPI_COMM_WORLD, code);
}

void tsr_dist_init(int *argc, char ***argv) {
    int provided;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    mpi_started = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &tsr_world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &tsr_world.size);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, tsr_world.rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &tsr_world.local_rank);
    MPI_Comm_size(node, &tsr_world.local_size);
    MPI_Comm_free(&node);
    tsr_log_rank = tsr_world.rank;
    tsr_abort_hook = abort_hook;
}

void tsr_dist_finalize(void) {
    if (mpi_started) MPI_Finalize();
    mpi_started = 0;
}

int tsr_dist_set_threads(int requested) {
    int n = requested;
    if (n <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = (int)(cores / (tsr_world.local_size > 0 ? tsr_world.local_size : 1));
        if (n < 1) n = 1;
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
    MPI_Get_library_version(v, &n);
    char *nl = strchr(v, '\n');
    if (nl) *nl = 0;
    char *comma = strchr(v, ',');
    if (comma) *comma = 0;
    snprintf(buf, (size_t)len, "%s", v);
}

int tsr_dist_agree_fail(int local_fail) {
    if (tsr_world.size == 1) return local_fail;
    int out = 0;
    MPI_Allreduce(&local_fail, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return out;
}

void tsr_dist_barrier(void) {
    if (tsr_world.size > 1) MPI_Barrier(MPI_COMM_WORLD);
}
