/* commands.h: the subcommands of the tessera binary (git style: tessera <command> [options]). */
#ifndef TSR_COMMANDS_H
#define TSR_COMMANDS_H
int tsr_cmd_version(int argc, char **argv);
int tsr_cmd_predict(int argc, char **argv);
int tsr_cmd_train(int argc, char **argv);
int tsr_cmd_adapt(int argc, char **argv);
/* Print the start-up banner (rank 0): version, BLAS and kernel, MPI, ranks x threads; warn when the BLAS
 * runs a generic kernel on AVX-512 hardware. Calls tsr_blas_init and tsr_dist_set_threads. 0 / -1. */
int tsr_runtime_setup(int threads);
void tsr_version_string(char *buf, int len);
#endif
