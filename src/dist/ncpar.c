/* ncpar.c: parallel netCDF-4 files over the world's ranks (see ncpar.h). */
#include "dist/ncpar.h"

#include <mpi.h>
#include <netcdf.h>
#include <netcdf_meta.h>
#include <netcdf_par.h>

#if !defined(NC_HAS_PARALLEL4) || !NC_HAS_PARALLEL4
#error "netCDF was built without parallel netCDF-4: install libnetcdf-mpi-dev (see CMakeLists.txt)"
#endif

int tsr_ncpar_create(const char *path, int cmode, int *ncid) {
    return nc_create_par(path, cmode, MPI_COMM_WORLD, MPI_INFO_NULL, ncid);
}

int tsr_ncpar_open(const char *path, int omode, int *ncid) {
    return nc_open_par(path, omode, MPI_COMM_WORLD, MPI_INFO_NULL, ncid);
}

int tsr_ncpar_var_independent(int ncid, int varid) { return nc_var_par_access(ncid, varid, NC_INDEPENDENT); }

int tsr_ncpar_var_collective(int ncid, int varid) { return nc_var_par_access(ncid, varid, NC_COLLECTIVE); }
