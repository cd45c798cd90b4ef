/* fuzz_safetensors: the safetensors header, tensor table and checksums (tsr_st_open), and every typed read of
 * whatever it accepts. */
#include "fuzz_util.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_quiet();
    const char *p = fuzz_file("st", ".safetensors", data, n);
    tsr_st_file f;
    if (tsr_st_open(&f, p) != 0) return 0;
    for (int i = 0; i < f.n; i++) {
        const tsr_st_tensor *t = &f.t[i];
        if (t->numel > (1 << 20)) continue;
        size_t k = (size_t)(t->numel ? t->numel : 1);
        float *x = malloc(k * sizeof *x);
        double *y = malloc(k * sizeof *y);
        int64_t *z = malloc(k * sizeof *z);
        (void)tsr_st_read_f32(&f, t, x, t->numel);
        (void)tsr_st_read_f64(&f, t, y, t->numel);
        (void)tsr_st_read_i64(&f, t, z, t->numel);
        if (t->numel > 1) (void)tsr_st_read_f32_at(&f, t, 1, x, t->numel - 1);
        (void)tsr_st_expect(&f, t->name, t->ndim, t->shape);
        tsr_st_drop(&f, t);
        free(x);
        free(y);
        free(z);
    }
    (void)tsr_st_meta(&f, "config");
    tsr_st_close(&f);
    return 0;
}
