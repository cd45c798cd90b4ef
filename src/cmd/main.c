/* main.c: tessera's entry point: dispatches to subcommands. */
#include <stdio.h>
#include <string.h>

#include "cmd/commands.h"
#include "core/common.h"
#include "dist/parallel.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tessera <command> [options]\n"
            "\n"
            "commands:\n"
            "  train CONFIG [--set key=value ...]   train a ViT backbone (full training) on the configured data\n"
            "  adapt CONFIG [--set key=value ...] [--resume]\n"
            "                                       parameter-efficient training (LoRA, adapters, Poly, MHR, MoSA, ...)\n"
            "  pretrain CONFIG [--set ...] [--resume]\n"
            "                                       the same under mpirun: tasks spread over ranks, gradients all-reduced,\n"
            "                                       checkpoints, stop on SIGUSR2/SIGTERM for requeue\n"
            "  fewshot CONFIG [--set ...] [--shard I/N | --collect]\n"
            "                                       few-shot sweep (methods x tasks x shots x seeds) over the ranks into one\n"
            "                                       netCDF results file; rerun to resume\n"
            "  analyze CONFIG [--set ...]           task gradient alignment of pre-trained adapters (ScaLAPACK) into a\n"
            "                                       netCDF file\n"
            "  predict --checkpoint FILE --input FILE --output FILE [options]\n"
            "                                       logits of a backbone checkpoint (timm or Hugging Face naming)\n"
            "  export-peft --adapters FILE --checkpoint FILE --out DIR\n"
            "                                       adapters as a Hugging Face peft directory (LoRA -> LORA, Poly/MHR -> POLY)\n"
            "  prepare fashion-mnist|glyphs|folder  build a dataset (netCDF suite) from Debian packages or image folders\n"
            "  version                              git commit, compiler, BLAS and MPI library\n"
            "\n"
            "Run 'tessera <command> --help' for a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    int (*fn)(int, char **) = NULL;
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) fn = tsr_cmd_version;
    else if (strcmp(cmd, "predict") == 0) fn = tsr_cmd_predict;
    else if (strcmp(cmd, "train") == 0) fn = tsr_cmd_train;
    else if (strcmp(cmd, "adapt") == 0 || strcmp(cmd, "pretrain") == 0) fn = tsr_cmd_adapt;
    else if (strcmp(cmd, "prepare") == 0) fn = tsr_cmd_prepare;
    else if (strcmp(cmd, "fewshot") == 0) fn = tsr_cmd_fewshot;
    else if (strcmp(cmd, "analyze") == 0) fn = tsr_cmd_analyze;
    else if (strcmp(cmd, "export-peft") == 0) fn = tsr_cmd_export_peft;
    if (!fn) {
        fprintf(stderr, "tessera: unknown command '%s'\n\n", cmd);
        usage(stderr);
        return 2;
    }
    tsr_dist_init(&argc, &argv);
    int rc = fn(argc - 1, argv + 1);
    tsr_dist_finalize(rc);
    return rc;
}
