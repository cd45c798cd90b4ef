/* grid.h: BLACS process grids over the ranks of the world, for ScaLAPACK (src/analysis/align.c).
 * Contexts are plain ints, as ScaLAPACK's descriptors take them. MPI must have been started with
 * tsr_dist_init. */
#ifndef TSR_GRID_H
#define TSR_GRID_H

/* Collective over every rank of the world: an nprow x npcol grid (nprow * npcol <= ranks) on ranks
 * 0 .. nprow*npcol - 1, numbered row-major (rank r is at row r / npcol, column r % npcol). Returns the
 * grid's context on the ranks in it and -1 on the others. Release it with tsr_grid_free. */
int tsr_grid_make(int nprow, int npcol);
/* Release a context from tsr_grid_make (a negative one is ignored). Not collective. */
void tsr_grid_free(int ctx);
/* This rank's place in a grid: its shape and this rank's row and column. Only for ctx >= 0. */
void tsr_grid_info(int ctx, int *nprow, int *npcol, int *myrow, int *mycol);
/* BLACS's own numbering of the processes: this process and the count (the world's rank and size when
 * BLACS runs on the world, which tsr_align_scalapack checks). */
void tsr_grid_procs(int *pnum, int *nprocs);
#endif
