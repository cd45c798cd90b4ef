/* fuzz_adapter_desc: the JSON description of an adapter file (metadata 'tessera_adapters'), through the real
 * loader: the bytes (up to the first NUL) become that metadata value of a safetensors file written by tessera's
 * own writer, then tsr_adapters_load_config reads it. */
#include "fuzz_util.h"
#include "adapters/adapter_io.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_quiet();
    char *text = malloc(n + 1);
    memcpy(text, data, n);
    text[n] = 0;
    static char path[256];
    snprintf(path, sizeof path, "/tmp/tsr_fuzz.%ld.adapters.safetensors", (long)getpid());
    tsr_st_writer *w = tsr_st_writer_new();
    float v[4] = {0};
    tsr_st_writer_add(w, "blocks.0.lora.A", TSR_DT_F32, 1, (const int64_t[]){4}, v);
    tsr_st_writer_meta(w, TSR_ADAPTERS_META_KEY, text);
    int ok = tsr_st_writer_write(w, path) == 0; /* refused: not valid UTF-8 */
    tsr_st_writer_free(w);
    if (ok) {
        tsr_adapter_config ac;
        int depth, dim, mlp;
        (void)tsr_adapters_load_config(path, &ac, &depth, &dim, &mlp);
    }
    free(text);
    return 0;
}
