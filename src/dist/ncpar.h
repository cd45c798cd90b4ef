/* ncpar.h: netCDF-4 files shared by every rank of the world for parallel I/O (netCDF-4 / HDF5 over
 * MPI-IO, on the full world even while tsr_dist_narrow_to_self is in effect). The netCDF calls that take
 * a communicator, and netcdf_par.h (which includes the MPI header), stay inside src/dist: a module
 * that writes such a file includes <netcdf.h> and this header.
 *
 * Each function returns the netCDF status of the call it wraps (NC_NOERR = 0; nc_strerror gives the
 * text), so that callers handle it like any other netCDF call. */
#ifndef TSR_NCPAR_H
#define TSR_NCPAR_H

/* Collective: create path (cmode as for nc_create, e.g. NC_NETCDF4 | NC_CLOBBER) for parallel access by
 * every rank; *ncid receives the id. */
int tsr_ncpar_create(const char *path, int cmode, int *ncid);
/* Collective: open an existing netCDF-4 file (omode as for nc_open, e.g. NC_WRITE) for parallel access
 * by every rank. */
int tsr_ncpar_open(const char *path, int omode, int *ncid);
/* Access mode of one variable of a parallel file: independent (each rank reads / writes on its own,
 * no filters such as compression) or collective (every rank takes part in each access). */
int tsr_ncpar_var_independent(int ncid, int varid);
int tsr_ncpar_var_collective(int ncid, int varid);
#endif
