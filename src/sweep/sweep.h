/* sweep.h: few-shot adaptation sweeps fanned out over ranks (`tessera fewshot`, docs/FEWSHOT.md).
 *
 * The sweep is the product methods x tasks x shots x seeds (fewshot.*); every combination is an entry:
 * an independent run of the trainer on one rank (its own run context: this process alone), on one
 * held-out task, from the pre-trained checkpoint its method needs, evaluated on the validation split at
 * every evaluation point and on the test split. Ranks draw entries from a shared counter (MPI one-sided
 * fetch-and-add), costliest first, so that entries 100x apart in cost balance.
 *
 * Learning rates (fewshot.lr_grid with two or more multipliers): first a selection phase, the same loop over
 * methods x multipliers x selection tasks (fewshot.lr_tasks or suite.val, never test tasks) x shots x seeds;
 * per method the multiplier with the best mean fewshot.lr_metric, recorded in the results file, scales the
 * learning rates of its test entries (docs/FEWSHOT.md).
 *
 * Durability: each finished entry is written atomically to RESULTS.entries/<method>__<task>__k<K>__s<S>.st
 * (a safetensors file: curves as tensors, scalars and the entry's configuration fingerprint as metadata).
 * The netCDF results file is written by every rank in parallel under RESULTS.tmp and renamed over RESULTS
 * when every rank has closed it; a killed job leaves RESULTS as it was. Running the sweep again reads the
 * journal, skips the entries whose fingerprint matches, and runs the rest (resume). */
#ifndef TSR_SWEEP_SWEEP_H
#define TSR_SWEEP_SWEEP_H
#include "dist/parallel.h"
#include "io/tsr_config.h"
#include "train/trainer.h"

typedef struct {
    const char *cfg_path; /* the sweep file, and the command line's --set overrides */
    int nset;
    char **sets;
    int collect;          /* run nothing; assemble the results file from the journal */
    int shard_i, shard_n; /* shard_n > 0: only entries with index % shard_n == shard_i, journal only */
} tsr_sweep_opts;

/* Collective over ctx->comm (every rank). cfg: the sweep file's resolved configuration, cfg_text its
 * text. Returns 0 (every entry finished), 1 (errors, or entries failed: each named in the log) or
 * TSR_EXIT_REQUEUE (stopped by a signal; the file is written as partial). */
int tsr_sweep_run(const tsr_ctx *ctx, const tsr_config *cfg, const char *cfg_text, const tsr_sweep_opts *o);

/* The configuration of one test entry (method, task, shots, seed) of the sweep file sweep_path with the
 * command line's overrides, resolved as tsr_sweep_run resolves it: the sweep file, the method's file
 * (fewshot.method_dir), the overrides, the method's fewshot.set lines, then the entry's own keys
 * (adapter.init / adapter.fewshot for methods that start from pre-trained adapters, which must be
 * readable), at the configured learning rates (x1). 0 / -1 (tsr_error). */
int tsr_sweep_entry_config(const char *sweep_path, int nset, char **sets, const char *method, const char *task,
                           long shots, long seed, tsr_config *out);
/* One journal entry (a safetensors file): 1 = valid and made with fingerprint fp (*r filled: free it with
 * tsr_train_result_free, *rank the rank that ran it), 0 = absent or stale (another configuration), -1 = damaged;
 * E = the most evaluations an entry may hold. Exposed for the fuzz target (tests/fuzz). */
int tsr_sweep_journal_read(const char *path, uint64_t fp, tsr_train_result *r, int *rank, int E);
#endif
