/* fuzz_image: image decoding of `tessera prepare folder`, at a small output size in both resize modes and 1 and 3
 * channels.
 *
 * prepare folder decodes in a separate process (tsr_image_decoder_decode, image_decoder.h): Debian's stb_image
 * has bugs on malformed files that tessera does not guard, and they must stay in that process. This target
 * checks that promise: each input goes through the decoding process first, as prepare folder does; an input on
 * which that process dies or hangs is a refusal (that is the protection working; the process is restarted), and
 * is not decoded here. Every other input is then also decoded in this process (tsr_import_decode_image), which
 * gives the fuzzer coverage of stb_image and of tessera's guards and resize, and the two results must be the
 * same: status, message and pixels. */
#include "fuzz_util.h"
#include "data/image_decoder.h"
#include "data/import.h"

static tsr_image_decoder *dec;

/* at most 2^20 pixels (1024 x 1024): the same decoding paths, without minutes spent on a few huge images */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    tsr_import_set_max_pixels((size_t)1 << 20);
    tsr_image_decoder_set_seconds(5);
    if (!getenv("TSR_FUZZ_IMAGE_VERBOSE")) tsr_image_decoder_set_quiet(1);
    dec = tsr_image_decoder_new();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_quiet();
    const char *p = fuzz_file("img", ".img", data, n);
    uint8_t a[16 * 16 * 3], b[16 * 16 * 3];
    char ma[512], mb[512];
    int mode = n ? data[n - 1] & 1 : 0, C = n > 1 && (data[n - 2] & 1) ? 3 : 1;
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    ma[0] = mb[0] = 0;
    int ra = tsr_image_decoder_decode(dec, p, 16, C, mode, a, ma, sizeof ma);
    if (tsr_image_decoder_last_died(dec)) {
        if (ra != -1 || !strstr(ma, p)) abort(); /* a refusal naming the file */
        return 0;
    }
    int rb = tsr_import_decode_image(p, 16, C, mode, b, mb, sizeof mb);
    if (ra != rb || strcmp(ma, mb) != 0 || (ra == 0 && memcmp(a, b, (size_t)16 * 16 * C) != 0)) {
        fprintf(stderr, "fuzz_image: the decoding process and this process differ: %d '%s' / %d '%s'\n", ra, ma,
                rb, mb);
        abort();
    }
    return 0;
}
