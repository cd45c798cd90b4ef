/* commands.h: the subcommands of the tessera binary (git style: tessera <command> [options]). */
#ifndef TSR_COMMANDS_H
#define TSR_COMMANDS_H
int tsr_cmd_version(int argc, char **argv);
int tsr_cmd_predict(int argc, char **argv);
int tsr_cmd_train(int argc, char **argv);
int tsr_cmd_adapt(int argc, char **argv); /* also `tessera pretrain` (the same trainer) */
int tsr_cmd_prepare(int argc, char **argv);
int tsr_cmd_fewshot(int argc, char **argv); /* few-shot sweeps (cmd_fewshot.c) */
int tsr_cmd_analyze(int argc, char **argv); /* task gradient alignment (cmd_analyze.c) */
int tsr_cmd_export_peft(int argc, char **argv); /* adapters -> a Hugging Face peft directory (cmd_export.c) */
/* Print the start-up banner (rank 0): version, BLAS and kernel, MPI, ranks x threads, the BLAS kernel
 * decision, the fp32 FMA peak per core (measured, 20 ms, and nominal); warn when the BLAS runs a kernel
 * set without AVX-512 on AVX-512 hardware (the user's choice, or a failed self-check). Calls tsr_blas_init and tsr_dist_set_threads. 0 / -1. */
int tsr_runtime_setup(int threads);
void tsr_version_string(char *buf, int len);

#include "io/tsr_config.h"
#include "train/trainer.h"
/* Parse "CONFIG [--set key=value ...]" (argv[0] is the command). 0 ok, 1 help printed, 2 usage error
 * (logged). *sets is malloc'ed in every case. */
int tsr_parse_config_cmdline(const char *cmd, const char *help, int argc, char **argv, const char **cfg_path,
                             int *nset, char ***sets);
/* Load and check the configuration, start-up banner, one-rank check, run.output_dir with config.yaml.
 * Returns the resolved configuration text (malloc'ed) or NULL after logging the error. */
char *tsr_run_setup(tsr_config *cfg, const char *cmd, const char *cfg_path, int nset, char **sets);
/* Under Slurm (SLURM_JOB_ID set), rank 0 asks Slurm to requeue the job after a stop signal. */
void tsr_requeue_if_slurm(void);
#endif
