/* fuzz_suite_nc: the validator of a suite (tsr_suite_open, schemas tessera-dataset-2 and -1) and reads of the
 * first examples of each task it accepts; in this process (TESSERA_NC_CHECK=0, as fuzz_dataset_nc). */
#include "fuzz_util.h"
#include "fuzz_nc.h"
#include "data/suite.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    setenv("TESSERA_NC_CHECK", "0", 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_quiet();
    const char *p = fuzz_file("suite", ".nc", data, n);
    tsr_suite s;
    if (!fuzz_nc_library_survives(p)) return 0; /* an HDF5 crash: tsr_nc_probe's business */
    if (tsr_suite_open(&s, p) != 0) return 0;
    size_t img = (size_t)s.H * s.W * s.C;
    if (img <= (1 << 20)) {
        uint8_t *px = malloc(img * 2);
        int lab[2];
        int8_t sp[2];
        for (int t = 0; t < s.ntasks && t < 8; t++) {
            int64_t k = s.count[t] < 2 ? s.count[t] : 2;
            (void)tsr_suite_read(&s, t, 0, k, px, lab, sp);
        }
        free(px);
    }
    char buf[128];
    (void)tsr_suite_attr(&s, "title", buf, sizeof buf);
    tsr_suite_close(&s);
    return 0;
}
