/* fuzz_config: the YAML configuration and its --set overrides (tsr_config_load), and the dump of what it
 * accepts loading back to the same struct. Input: the YAML file, then optionally a line "%%set" followed by one
 * override per line (at most 16). */
#include "fuzz_util.h"
#include "io/tsr_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_quiet();
    char *text = malloc(n + 1);
    memcpy(text, data, n);
    text[n] = 0;
    char *sets[16];
    int nset = 0;
    char *sep = strstr(text, "\n%%set\n");
    size_t ylen = n;
    if (sep) {
        ylen = (size_t)(sep - text);
        for (char *line = strtok(sep + 7, "\n"); line && nset < 16; line = strtok(NULL, "\n")) sets[nset++] = line;
    }
    const char *p = fuzz_file("cfg", ".yaml", data, ylen);
    tsr_config *c = malloc(sizeof *c), *d = malloc(sizeof *d);
    if (tsr_config_load(c, p, nset, sets) == 0) {
        char *dump = tsr_config_dump(c);
        const char *q = fuzz_file("cfg2", ".yaml", (const uint8_t *)dump, strlen(dump));
        /* what was accepted is dumped as YAML that loads back to the identical struct */
        if (tsr_config_load(d, q, 0, NULL) != 0 || memcmp(c, d, sizeof *c) != 0) abort();
        free(dump);
    }
    free(c);
    free(d);
    free(text);
    return 0;
}
