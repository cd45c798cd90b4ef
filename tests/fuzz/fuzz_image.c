/* fuzz_image: image decoding of `tessera prepare folder` (tsr_import_decode_image: stb_image, then the resize),
 * at a small output size in both resize modes and 1 and 3 channels. */
#include "fuzz_util.h"
#include "data/import.h"

/* at most 2^20 pixels (1024 x 1024): the same decoding paths, without minutes spent on a few huge images */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    tsr_import_set_max_pixels((size_t)1 << 20);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_quiet();
    const char *p = fuzz_file("img", ".img", data, n);
    uint8_t dst[16 * 16 * 3];
    char msg[512];
    int mode = n ? data[n - 1] & 1 : 0, C = n > 1 && (data[n - 2] & 1) ? 3 : 1;
    (void)tsr_import_decode_image(p, 16, C, mode, dst, msg, sizeof msg);
    return 0;
}
