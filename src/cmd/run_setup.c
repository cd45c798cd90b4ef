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

int tsr_mkdirs(const char *path) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return tsr_error("%s: cannot create (%s)", tmp, strerror(errno));
            *p = '/';
        }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return tsr_error("%s: cannot create (%s)", tmp, strerror(errno));
    return 0;
}

int tsr_mkdirs_for(const char *file) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", file);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = 0;
    return tsr_mkdirs(dir);
}

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

char *tsr_run_setup(tsr_config *cfg, const char *cmd, const char *cfg_path, int nset, char **sets) {
    if (tsr_config_load(cfg, cfg_path, nset, sets) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        return NULL;
    }
    if (tsr_world.size > 1 && strcmp(cmd, "train") == 0) {
        tsr_log(TSR_LOG_ERROR, "%s: runs on one rank (got %d); multi-rank training is `tessera pretrain`", cmd,
                tsr_world.size);
        return NULL;
    }
    if (tsr_runtime_setup((int)cfg->run.threads) != 0) return NULL;
    char *text = tsr_config_dump(cfg);
    tsr_info("resolved configuration:\n%s", text);
    char path[1100];
    snprintf(path, sizeof path, "%s/config.yaml", cfg->run.output_dir);
    if (tsr_mkdirs(cfg->run.output_dir) != 0 || tsr_write_file_atomic(path, text, strlen(text)) != 0) {
        tsr_log(TSR_LOG_ERROR, "run.output_dir: %s", tsr_last_error());
        free(text);
        return NULL;
    }
    return text;
}
