/* analyze.h: task gradient alignment of multi-task pre-trained adapters (`tessera analyze`,
 * docs/ANALYSIS.md).
 *
 * For every method of analyze.methods (a `tessera pretrain` run in fewshot.pretrained/<method>: its
 * model.safetensors with the trained head, its adapters.safetensors): the mean loss gradient g_t of the
 * adapter (skill) parameters over the first analyze.examples training examples of each task t of the run
 * (the trainer's gradient pass; tasks dealt to ranks t % ranks), then the task x task cosine matrix with
 * PBLAS on a 2-D block-cyclic process grid (analyze.grid, analyze.block), its eigen-decomposition
 * (ScaLAPACK pdsyevd), the mean off-diagonal alignment, and the effective rank of the learned routing
 * matrices. Written by rank 0 to analyze.results (docs/RESULTS_SCHEMA.md, alignment.nc), under a
 * temporary name, then renamed. The MHR paper's explanation of routing: it helps multi-task optimisation
 * by making task gradients of the shared parameters more aligned; this measures exactly that. */
#ifndef TSR_ANALYSIS_ANALYZE_H
#define TSR_ANALYSIS_ANALYZE_H
#include "dist/parallel.h"
#include "io/tsr_config.h"

/* Collective over ctx->comm (the world: ScaLAPACK's grid spans it). cfg / cfg_text: the resolved
 * configuration; cfg_path, nset, sets: the file and overrides, to load each method's run. 0 / 1. */
int tsr_analyze_run(const tsr_ctx *ctx, const tsr_config *cfg, const char *cfg_text, const char *cfg_path, int nset,
                    char **sets);
#endif
