/* run_setup.c: what the training commands share: "CONFIG [--set key=value ...]" on the command line,
 * then configuration, runtime banner, output directory and the stored resolved configuration. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd/commands.h"
#include "core/common.h"
#include "dist/parallel.h"

int tsr_parse_config_cmdline(const char *cmd, const char *help, int argc, char **argv, const char **cfg_path,
                             int *nset, char ***sets) {
    *cfg_path = NULL;
    *nset = 0;
    *sets = tsr_calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: tessera %s CONFIG [--set key=value ...]\n  %s\n", cmd, help);
            return 1;
        } else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            (*sets)[(*nset)++] = argv[++i];
        } else if (argv[i][0] != '-' && !*cfg_path) {
            *cfg_path = argv[i];
        } else {
            tsr_log(TSR_LOG_ERROR, "%s: unexpected argument '%s' (usage: tessera %s CONFIG [--set key=value ...])", cmd,
                    argv[i], cmd);
            return 2;
        }
    }
    if (!*cfg_path) {
        tsr_log(TSR_LOG_ERROR, "%s: a configuration file is required (usage: tessera %s CONFIG [--set key=value ...])",
                cmd, cmd);
        return 2;
    }
    return 0;
}

/* Every step can fail on one rank only (a file readable here but not there): the ranks agree, so
 * that all of them stop together with the failing rank's message instead of some waiting forever. */
char *tsr_run_setup(tsr_config *cfg, const char *cmd, const char *cfg_path, int nset, char **sets) {
    const tsr_comm *w = tsr_comm_world();
    tsr_logger lg = tsr_logger_default();
    int fail = tsr_config_load(cfg, cfg_path, nset, sets) != 0;
    if (tsr_dist_fail_together(w, fail, &lg)) return NULL;
    fail = tsr_runtime_setup((int)cfg->run.threads) != 0;
    if (tsr_dist_fail_together(w, fail, &lg)) return NULL;
    char *text = tsr_config_dump(cfg);
    tsr_info("resolved configuration:\n%s", text);
    char path[1100];
    snprintf(path, sizeof path, "%s/config.yaml", cfg->run.output_dir);
    fail = tsr_mkdirs(cfg->run.output_dir) != 0 || tsr_write_file_atomic(path, text, strlen(text)) != 0;
    if (fail) tsr_error_context("run.output_dir");
    if (tsr_dist_fail_together(w, fail, &lg)) {
        free(text);
        return NULL;
    }
    return text;
}

/* Slurm's way of continuing a stopped job (as submitit does): requeue it; it resumes from its checkpoint. */
void tsr_requeue_if_slurm(void) {
    const char *job = getenv("SLURM_JOB_ID");
    if (tsr_world.rank != 0 || !job) return;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "scontrol requeue %s", job);
    if (system(cmd) != 0) tsr_warn("could not requeue: '%s' failed", cmd);
}
