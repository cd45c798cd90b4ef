/* fuzz_journal: one few-shot journal entry (tsr_sweep_journal_read), the file a resumed sweep trusts. The seeds
 * carry the fingerprint below, so that inputs reach the checks past it. */
#include "fuzz_util.h"
#include "sweep/sweep.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_quiet();
    const char *p = fuzz_file("journal", ".st", data, n);
    tsr_train_result r;
    int rank;
    if (tsr_sweep_journal_read(p, 0x0123456789abcdefull, &r, &rank, 64) == 1) tsr_train_result_free(&r);
    return 0;
}
