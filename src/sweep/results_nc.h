/* results_nc.h: the few-shot sweep's results file (docs/RESULTS_SCHEMA.md), one netCDF-4 file written
 * by every rank of the world in parallel (netCDF-4 parallel I/O, src/dist/ncpar.h). */
#ifndef TSR_IO_RESULTS_NC_H
#define TSR_IO_RESULTS_NC_H
#include <stdint.h>

/* The learning rates of each method (fewshot.lr_grid): the multipliers tried, the mean selection metric of
 * each (method, multiplier) and the number of entries averaged (0 without a selection), the chosen
 * multiplier and the resulting learning rates of the test entries. */
typedef struct {
    int G;                    /* multipliers tried (0: none; the file's lr_multiplier axis then holds 1) */
    const double *grid;       /* (G) */
    const double *accuracy;   /* (M, G) */
    const int *entries;       /* (M, G) */
    const double *chosen;     /* (M) */
    const double *lr[4];      /* (M) each: adapter_lr, head_lr, routing_lr, backbone_lr of the test entries */
} tsr_results_lr;

typedef struct {
    int M, T, K, S, E;        /* methods, tasks, shot counts, seeds, evaluation points */
    const char *const *methods, *const *tasks;
    const long *shots, *seeds, *eval_steps;
    int nattr;                /* global text attributes (provenance) */
    const char *const *attr_keys, *const *attr_vals;
    tsr_results_lr lr;
} tsr_results_layout;

typedef struct {
    int ncid, M, T, K, S, E;
    int v_status, v_test, v_bestval, v_bestval_step, v_test_at_best, v_loss, v_params, v_wall, v_rank, v_steps_run;
    int v_curve_loss, v_curve_val, v_curve_test;
} tsr_results_file;

typedef struct {
    double test_accuracy, best_val_accuracy, test_at_best_val, final_train_loss, wall_time;
    long best_val_step, steps_run;
    int64_t trainable;
    int rank;
    int n_eval;                /* curve points (<= E; the rest keep fill values) */
    const double *curve_loss, *curve_val, *curve_test;
} tsr_results_entry;

/* Collective: create (clobber) path with every dimension, coordinate, variable (fill values) and
 * attribute, sweep_status "partial". 0 / -1 (tsr_error naming the file). */
int tsr_results_create(tsr_results_file *f, const char *path, const tsr_results_layout *L);
/* Independent (any rank, any time between create and close): one entry's values. */
int tsr_results_put(tsr_results_file *f, int m, int t, int k, int s, const tsr_results_entry *e);
/* Collective: entries_done / entries_total and sweep_status ("complete" only when done == total),
 * then close. */
int tsr_results_close(tsr_results_file *f, long done, long total);
#endif
