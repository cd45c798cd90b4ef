/* state.h: training-state checkpoints.
 *
 * OUTPUT/checkpoints/step-NNNNNNNN/{state.safetensors, DONE}: parameters (model, adapters, MoSA bias
 * copies), AdamW moments and step counts, the step, the first loss. Everything else a step needs is a
 * pure function of (seed, step) (the sampler, augmentation, routing noise, dropout, MoSA draws), so a
 * resumed run continues bit for bit. Written into step-N.tmp, fsynced, DONE added, then renamed;
 * --resume takes the newest directory that has DONE.
 * model.precision bf16: the frozen block weights are written all the same (read again from run.init or
 * made again from run.seed, through a tsr_param_reader, a piece at a time, never all in memory); loading
 * checks them against the model's instead of reading them (a checkpoint of another backbone is refused). */
#ifndef TSR_TRAIN_STATE_H
#define TSR_TRAIN_STATE_H
#include "adapters/adapters.h"
#include "adapters/adapt_step.h"
#include "model/vit.h"
#include "train/optim.h"

typedef struct {
    tsr_vit *m;
    tsr_adapters *ad; /* NULL: none (and oa NULL) */
    tsr_mosa *mo;     /* NULL: none (and ob NULL) */
    tsr_adamw *om, *oa, *ob;
} tsr_train_state;

/* Write the checkpoint of `step` under out/checkpoints, keeping the newest `keep`. One writer. 0 / -1. */
int tsr_state_save(const tsr_train_state *s, const char *out, long step, int keep, double first_loss,
                   const char *cfg_text);
/* Load the newest complete checkpoint that verifies (its checksums match, every value is finite): its step
 * (0: none), or -1 (tsr_error; also when there are complete checkpoints and none verifies). A newer one that
 * fails verification is skipped with a warning naming it. A checkpoint written before checksums existed is
 * read with a warning (values still checked finite). */
long tsr_state_load_latest(tsr_train_state *s, const char *out, double *first_loss);
/* The newest complete checkpoint under out/checkpoints that verifies: its step, its directory into dir (n
 * bytes; may be NULL), or 0 when none does. */
long tsr_state_last_good(const char *out, char *dir, size_t n);
/* Keep a CSV curve's header and its rows up to `step` (a resumed run rewrites what follows). */
void tsr_curve_keep_until(const char *path, long step);
#endif
