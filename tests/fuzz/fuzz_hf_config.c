/* fuzz_hf_config: a Hugging Face config.json (tsr_ckpt_read_hf_config), then the model check of its sizes. */
#include "fuzz_util.h"
#include "model/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_quiet();
    const char *p = fuzz_file("hf", ".json", data, n);
    tsr_vit_config c = {224, 16, 3, 768, 12, 12, 3072, 1000, 1e-12};
    if (tsr_ckpt_read_hf_config(p, &c) == 0) (void)tsr_vit_config_check(&c);
    return 0;
}
