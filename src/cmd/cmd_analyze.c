/* cmd_analyze.c: `tessera analyze CONFIG [--set ...]`: task gradient alignment of pre-trained adapters
 * (src/analysis/analyze.h, docs/ANALYSIS.md). */
#include <stdlib.h>

#include "analysis/analyze.h"
#include "cmd/commands.h"
#include "core/common.h"
#include "dist/parallel.h"

int tsr_cmd_analyze(int argc, char **argv) {
    const char *cfg_path;
    int nset;
    char **sets;
    int rc = tsr_parse_config_cmdline("analyze", "task gradient alignment of pre-trained adapters (ScaLAPACK); "
                                      "writes analyze.results; see docs/ANALYSIS.md", argc, argv, &cfg_path, &nset, &sets);
    if (rc != 0) {
        free(sets);
        return rc == 1 ? 0 : 2;
    }
    tsr_config *cfg = tsr_malloc(sizeof *cfg);
    char *cfg_text = tsr_run_setup(cfg, "analyze", cfg_path, nset, sets);
    rc = 1;
    if (cfg_text) {
        tsr_ctx ctx = tsr_ctx_world();
        rc = tsr_analyze_run(&ctx, cfg, cfg_text, cfg_path, nset, sets);
    }
    free(cfg_text);
    free(cfg);
    free(sets);
    return rc;
}
