/* fuzz_dataset_nc: the validator of a netCDF dataset (tsr_nc_dataset_open, schema tessera-dataset-1) and the
 * reads of what it accepts. In this process (TESSERA_NC_CHECK=0): the forked check would hide a crash of the
 * validator from the fuzzer. HDF5 keeps some allocations for the process's life: leaks are not checked. */
#include "fuzz_util.h"
#include "fuzz_nc.h"
#include "data/dataset_nc.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    setenv("TESSERA_NC_CHECK", "0", 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_quiet();
    const char *p = fuzz_file("ds", ".nc", data, n);
    tsr_nc_dataset d;
    if (!fuzz_nc_library_survives(p)) return 0; /* an HDF5 crash: tsr_nc_probe's business */
    if (tsr_nc_dataset_open(&d, p) != 0) return 0;
    int64_t k = d.n_examples < 4 ? d.n_examples : 4;
    size_t img = (size_t)d.height * d.width * d.channels;
    if (k > 0 && img <= (1 << 20)) {
        float *x = malloc(sizeof(float) * img * (size_t)k), mean[64] = {0}, sd[64];
        int lab[4];
        int8_t sp[4];
        for (int c = 0; c < 64; c++) sd[c] = 1;
        if (d.channels <= 64) (void)tsr_nc_dataset_read(&d, 0, k, mean, sd, x, d.has_labels ? lab : NULL);
        if (d.has_split) (void)tsr_nc_dataset_read_split(&d, 0, k, sp);
        free(x);
    }
    char name[64];
    for (int c = 0; c < d.n_classes && c < 4; c++) (void)tsr_nc_dataset_class_name(&d, c, name, sizeof name);
    tsr_nc_dataset_close(&d);
    return 0;
}
