/* cmd_fewshot.c: `tessera fewshot CONFIG [--set ...] [--shard I/N | --collect]`: a few-shot adaptation
 * sweep over ranks into one netCDF file (src/sweep/sweep.h, docs/FEWSHOT.md). Rerunning resumes from
 * the journal; --shard I/N runs only the entries with index % N == I and writes no results file (Slurm
 * job arrays); --collect runs nothing and assembles the results file from the journal. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "core/common.h"
#include "dist/parallel.h"
#include "sweep/sweep.h"

int tsr_cmd_fewshot(int argc, char **argv) {
    tsr_sweep_opts o = {.shard_i = -1};
    int na = 0;
    char **args = tsr_calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 0; i < argc; i++) {
        if (i > 0 && strcmp(argv[i], "--collect") == 0) o.collect = 1;
        else if (i > 0 && strcmp(argv[i], "--shard") == 0 && i + 1 < argc) {
            if (sscanf(argv[++i], "%d/%d", &o.shard_i, &o.shard_n) != 2 || o.shard_n < 1 || o.shard_i < 0 ||
                o.shard_i >= o.shard_n) {
                tsr_log(TSR_LOG_ERROR, "fewshot: --shard expects I/N with 0 <= I < N (got '%s')", argv[i]);
                free(args);
                return 2;
            }
        } else args[na++] = argv[i];
    }
    int rc = tsr_parse_config_cmdline("fewshot", "few-shot sweep over methods x tasks x shots x seeds into one netCDF "
                                      "file; rerun to resume; --shard I/N (job arrays: journal only), --collect "
                                      "(assemble the file); see docs/FEWSHOT.md", na, args, &o.cfg_path, &o.nset, &o.sets);
    if (rc != 0) {
        free(o.sets);
        free(args);
        return rc == 1 ? 0 : 2;
    }
    tsr_config *cfg = tsr_malloc(sizeof *cfg);
    char *cfg_text = tsr_run_setup(cfg, "fewshot", o.cfg_path, o.nset, o.sets);
    rc = 1;
    if (cfg_text) {
        tsr_ctx ctx = tsr_ctx_world();
        rc = tsr_sweep_run(&ctx, cfg, cfg_text, &o);
        if (rc == TSR_EXIT_REQUEUE) tsr_requeue_if_slurm();
    }
    free(cfg_text);
    free(cfg);
    free(o.sets);
    free(args);
    return rc;
}
