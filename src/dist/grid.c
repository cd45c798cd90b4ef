/* grid.c: BLACS process grids (see grid.h). BLACS's system context (Cblacs_get(-1, 0)) is
 * MPI_COMM_WORLD. Cblacs_exit is never called: it would finalize MPI, which tsr_dist_finalize does. */
#include "dist/grid.h"

/* no C header ships with Debian's BLACS */
void Cblacs_pinfo(int *mypnum, int *nprocs);
void Cblacs_get(int ctxt, int what, int *val);
void Cblacs_gridinit(int *ctxt, const char *order, int nprow, int npcol);
void Cblacs_gridinfo(int ctxt, int *nprow, int *npcol, int *myrow, int *mycol);
void Cblacs_gridexit(int ctxt);

int tsr_grid_make(int nprow, int npcol) {
    int ctx = -1;
    Cblacs_get(-1, 0, &ctx); /* the system context: every rank of MPI_COMM_WORLD */
    Cblacs_gridinit(&ctx, "R", nprow, npcol); /* ranks outside the grid get -1 */
    return ctx;
}

void tsr_grid_free(int ctx) {
    if (ctx >= 0) Cblacs_gridexit(ctx);
}

void tsr_grid_info(int ctx, int *nprow, int *npcol, int *myrow, int *mycol) {
    Cblacs_gridinfo(ctx, nprow, npcol, myrow, mycol);
}

void tsr_grid_procs(int *pnum, int *nprocs) { Cblacs_pinfo(pnum, nprocs); }
