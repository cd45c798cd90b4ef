/* tsr_config.h: tessera's configuration (model, data, training, run) and its schema.
 *
 * Every key, its type, range and default is listed in tsr_config_schema (tsr_config.c) and in
 * configs/default.yaml. Integers are long, floats double, strings and enums NUL-terminated
 * char[CFG_STR_MAX] (compare enums with strcmp: model.naming is "timm" or "hf", data.dataset is
 * "fashion-mnist" or "netcdf"). */
#ifndef TSR_IO_TSR_CONFIG_H
#define TSR_IO_TSR_CONFIG_H

#include <stdbool.h>

#include "io/config.h"

typedef struct {
    struct {
        char name[CFG_STR_MAX]; /* free-form model name, recorded in checkpoints and logs */
        long image_size;        /* input images are image_size x image_size */
        long patch_size;        /* square patches; image_size % patch_size == 0 */
        long channels;          /* input channels (1 for Fashion-MNIST) */
        long dim;               /* embedding width; dim % heads == 0 */
        long depth;             /* transformer blocks */
        long heads;             /* attention heads per block */
        long mlp_dim;           /* hidden width of the MLP in each block */
        long num_classes;       /* classifier outputs */
        double ln_eps;          /* LayerNorm epsilon */
        char naming[CFG_STR_MAX]; /* "timm" | "hf": tensor names written to checkpoints */
        char precision[CFG_STR_MAX]; /* "fp32" | "bf16" | "auto": frozen block weights and their products */
    } model;
    struct {
        char dataset[CFG_STR_MAX]; /* "fashion-mnist" | "netcdf" */
        char path[CFG_STR_MAX];    /* dataset directory or file */
        cfg_float_list mean;       /* per-channel normalisation mean, model.channels entries */
        cfg_float_list std;        /* per-channel normalisation std (> 0), model.channels entries */
        long tasks;                /* label-permutation tasks over the dataset (tessera adapt) */
        long task_offset;          /* number of the first task (held-out tasks use other numbers) */
        long shots;                /* training examples per class and task (0 = all) */
        char role[CFG_STR_MAX];    /* suite tasks used: "all" | "source" | "train" | "val" | "heldout" */
        bool augment;              /* random crop (pad 2) during training */
        bool flip;                 /* with augment: random horizontal flip */
        bool joint_labels;         /* suite tasks share one label space (task offsets): backbone pre-training */
    } data;
    struct {
        cfg_string_list source;    /* task names that pre-train the backbone */
        cfg_string_list train;     /* multi-task adapter training tasks */
        cfg_string_list val;       /* few-shot validation tasks (hyper-parameter choice), never test tasks */
        cfg_string_list heldout;   /* few-shot tasks, never seen by either pre-training stage */
    } suite;
    struct {
        long steps;          /* optimiser steps */
        long batch_size;     /* global batch size (all ranks together) */
        double lr;           /* peak learning rate (AdamW) */
        double weight_decay; /* AdamW decoupled weight decay */
        long warmup_steps;   /* linear warmup steps (0 = none) */
        double grad_clip;    /* global gradient-norm clip (0 = off) */
        long eval_every;     /* evaluate every N steps */
        long log_every;      /* log every N steps */
        long eval_limit;     /* test images per evaluation at the end (0 = all; 1000 during training) */
        char sync[CFG_STR_MAX]; /* "sharded" | "allreduce": how ranks synchronise the optimizer */
        long patience;       /* with a validation split: stop after this many evaluations without a better
                                validation accuracy (0 = off) */
        int test_every_eval; /* with a validation split: the test split at every evaluation (else only at a
                                new best validation accuracy and at the end) */
    } train;
    struct {
        char mode[CFG_STR_MAX];      /* "adapters" | "probe" | "full": what `tessera adapt` trains */
    } adapt;
    struct {
        char kind[CFG_STR_MAX];      /* "none" | "lora" | "bottleneck" */
        char routing[CFG_STR_MAX];   /* "none" | "poly" | "mhr" */
        cfg_string_list lora_sites;  /* q, k, v, proj, fc1, fc2 */
        long lora_rank;
        double lora_alpha;           /* scale = alpha / rank */
        char lora_init[CFG_STR_MAX]; /* "authors" | "peft" */
        char placement[CFG_STR_MAX]; /* "parallel" | "houlsby" | "pfeiffer" */
        long bottleneck;             /* bottleneck width */
        double scale;                /* bottleneck output scale s */
        double dropout;              /* bottleneck dropout p */
        char activation[CFG_STR_MAX];/* "gelu" | "relu" */
        long skills;                 /* S, routing only */
        long heads;                  /* h, mhr only */
        bool noise;                  /* relaxed Bernoulli routing during training */
        double tau;
        char init[CFG_STR_MAX];      /* pre-trained adapters ("" = fresh) */
        char fewshot[CFG_STR_MAX];   /* "none" | "finetune" | "z" | "mu": how adapter.init is used */
    } adapter;
    struct {
        long modules;                /* N (0 = MoSA off) */
        char split[CFG_STR_MAX];     /* "up" | "down" | "both" */
        double consistency;          /* weight of the two-view consistency loss (0 = off) */
        bool baseline;               /* fixed sparse mask, module 0 only */
        char bias[CFG_STR_MAX];      /* "split" (a bias copy per module) | "shared" (one bias for all modules) */
    } mosa;
    struct {
        double routing_lr, routing_wd, adapter_lr, adapter_wd, head_lr, head_wd, backbone_lr, backbone_wd;
    } optim;
    struct {
        long seed;                    /* random seed (initialisation, shuffling, augmentation) */
        long threads;                 /* threads per rank (0 = cores / local ranks) */
        char output_dir[CFG_STR_MAX]; /* checkpoints, logs and the resolved configuration */
        char init[CFG_STR_MAX];       /* "" = random initialisation, otherwise a checkpoint path */
        long checkpoint_every;        /* steps between checkpoints (0 = only on a stop signal) */
        long keep_checkpoints;        /* complete checkpoints kept */
        bool reset_head;              /* ignore run.init's classifier: a new head for new tasks */
        char head_init[CFG_STR_MAX];  /* a new head: "auto" | "zero" | "prototype" (class-mean features) */
    } run;
    struct {
        cfg_string_list methods;      /* few-shot methods (docs/FEWSHOT.md) */
        cfg_string_list tasks;        /* tasks of the sweep (empty = suite.heldout) */
        cfg_int_list shots;           /* training examples per class */
        cfg_int_list seeds;
        char pretrained[CFG_STR_MAX]; /* directory of `tessera pretrain` runs: DIR/<method>/adapters.safetensors */
        char method_dir[CFG_STR_MAX]; /* method configurations: DIR/<name>.yaml */
        char results[CFG_STR_MAX];    /* results file ("" = run.output_dir/results.nc) */
        cfg_string_list set;          /* per-method overrides "method:key=value" */
        cfg_float_list lr_grid;       /* learning-rate multipliers tried per method ([] / one: no selection) */
        cfg_string_list lr_tasks;     /* tasks of the selection ([] = suite.val) */
        cfg_int_list lr_shots;        /* its shot counts ([] = fewshot.shots) */
        cfg_int_list lr_seeds;        /* its seeds */
        char lr_metric[CFG_STR_MAX];  /* "test_at_best_val" | "best_val" */
    } fewshot;
    struct {
        cfg_string_list methods;      /* pre-trained runs analysed: fewshot.pretrained/<method> */
        long examples;                /* training examples per task in each task's average gradient */
        cfg_int_list grid;            /* BLACS process grid [rows, cols] ([0, 0] = near-square) */
        long block;                   /* block-cyclic block size */
        char results[CFG_STR_MAX];    /* alignment file ("" = run.output_dir/alignment.nc) */
    } analyze;
} tsr_config;

extern const cfg_field tsr_config_schema[];
extern const int tsr_config_nfields;

/* Load defaults, then the YAML file at path (NULL: defaults only), then the "key=value"
 * overrides (see cfg_load), then check the relations between keys: model.dim divisible by
 * model.heads, model.image_size divisible by model.patch_size, data.mean and data.std with
 * model.channels entries each, data.std entries > 0, data.path and run.output_dir not empty.
 * Returns 0, or -1 with tsr_error naming the source and the keys. On error *c is unchanged; on
 * success the whole struct (padding included) is rewritten, so loaded configs compare with memcmp. */
int tsr_config_load(tsr_config *c, const char *path, int nset, char *const *sets);

/* The same with several files applied in order (a sweep's configuration, then a method's). */
int tsr_config_load_files(tsr_config *c, const char *const *paths, int npaths, int nset, char *const *sets);

/* The resolved configuration as commented YAML (malloc'ed; free with free()). Loads back through
 * tsr_config_load to the identical struct. */
char *tsr_config_dump(const tsr_config *c);

#endif
