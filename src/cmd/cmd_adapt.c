/* cmd_adapt.c: `tessera adapt CONFIG` and `tessera pretrain CONFIG` (the same command: parameter-efficient
 * or multi-task training on one or many ranks, src/train/trainer.h) and `tessera train CONFIG` (full
 * training of a backbone, the same loop with one learning rate). --resume continues from the newest
 * complete checkpoint in run.output_dir/checkpoints. A run stopped by SIGUSR2/SIGTERM writes a
 * checkpoint, asks Slurm to requeue the job (when under Slurm) and exits with TSR_EXIT_REQUEUE. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "core/common.h"
#include "dist/parallel.h"
#include "train/trainer.h"

static int run(const char *cmd, const char *help, int backbone, int argc, char **argv) {
    int resume = 0, na = 0;
    char **args = tsr_calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 0; i < argc; i++) {
        if (i > 0 && strcmp(argv[i], "--resume") == 0) resume = 1;
        else args[na++] = argv[i];
    }
    const char *cfg_path;
    int nset;
    char **sets;
    int rc = tsr_parse_config_cmdline(cmd, help, na, args, &cfg_path, &nset, &sets);
    if (rc != 0) {
        free(sets);
        free(args);
        return rc == 1 ? 0 : 2;
    }
    tsr_config *cfg = tsr_malloc(sizeof *cfg);
    char *cfg_text = tsr_run_setup(cfg, cmd, cfg_path, nset, sets);
    rc = 1;
    if (cfg_text) {
        const char *fault = getenv("TESSERA_FAULT_NAN_STEP"); /* tests: a NaN loss on the last rank */
        tsr_train_opts o = {.resume = resume, .backbone = backbone, .fault_nan_step = fault ? atol(fault) : -1};
        tsr_ctx ctx = tsr_ctx_world();
        rc = tsr_train_run(&ctx, cfg, cfg_text, &o, NULL);
        if (rc == TSR_EXIT_REQUEUE) tsr_requeue_if_slurm();
    }
    free(cfg_text);
    free(cfg);
    free(sets);
    free(args);
    return rc;
}

int tsr_cmd_adapt(int argc, char **argv) {
    return run(argv[0], "parameter-efficient training on label-permutation tasks or suite tasks; see configs/methods/ "
               "and docs/ADAPTERS.md; --resume continues from the newest checkpoint", 0, argc, argv);
}

int tsr_cmd_train(int argc, char **argv) {
    return run("train", "full training of a ViT backbone; see configs/default.yaml for every key; --resume "
               "continues from the newest checkpoint", 1, argc, argv);
}
