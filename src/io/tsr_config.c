/* tsr_config.c: tessera's configuration schema and cross-key checks. Keep configs/default.yaml in
 * step with this table (tests/io/test_config.c checks that it loads to the same defaults). */
#define _POSIX_C_SOURCE 200809L
#include "io/tsr_config.h"

#include "core/common.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* min > max (1, 0): no range */
#define F(k, t, m, lo, hi, ch, d, h) {k, t, offsetof(tsr_config, m), lo, hi, ch, d, h}

const cfg_field tsr_config_schema[] = {
    /* model */
    F("model.name", CFG_STRING, model.name, 1, 0, NULL, "\"vit-s-28\"",
      "model name, recorded in checkpoints and logs"),
    F("model.image_size", CFG_INT, model.image_size, 1, 4096, NULL, "28",
      "input image side in pixels (images are square)"),
    F("model.patch_size", CFG_INT, model.patch_size, 1, 1024, NULL, "4",
      "patch side in pixels; must divide model.image_size"),
    F("model.channels", CFG_INT, model.channels, 1, 16, NULL, "1", "input channels (1 for Fashion-MNIST)"),
    F("model.dim", CFG_INT, model.dim, 1, 65536, NULL, "192",
      "embedding width; must be divisible by model.heads"),
    F("model.depth", CFG_INT, model.depth, 1, 1024, NULL, "6", "number of transformer blocks"),
    F("model.heads", CFG_INT, model.heads, 1, 1024, NULL, "3", "attention heads per block"),
    F("model.mlp_dim", CFG_INT, model.mlp_dim, 1, 1048576, NULL, "768",
      "hidden width of the MLP in each block"),
    F("model.num_classes", CFG_INT, model.num_classes, 1, 1000000, NULL, "10", "number of output classes"),
    F("model.ln_eps", CFG_FLOAT, model.ln_eps, 0, 1, NULL, "1.0e-6", "LayerNorm epsilon"),
    F("model.naming", CFG_ENUM, model.naming, 1, 0, "timm|hf", "\"timm\"",
      "tensor naming used when writing checkpoints: timm | hf"),
    F("model.precision", CFG_ENUM, model.precision, 1, 0, "fp32|bf16|auto", "\"fp32\"",
      "frozen backbone weights (qkv, proj, fc1, fc2 of the blocks) and their matrix products: fp32 | bf16 "
      "(weights stored once in bf16, products with bf16 inputs and fp32 sums; adapters, head, LayerNorm, "
      "softmax and the optimizer stay fp32; needs oneDNN, and avx512_bf16 / amx_bf16 to be fast) | auto (bf16 "
      "when the CPU has native bf16 and a start-up measurement finds it > 10% faster). Full fine-tuning is "
      "always fp32"),
    /* data */
    F("data.dataset", CFG_ENUM, data.dataset, 1, 0, "fashion-mnist|netcdf|suite", "\"fashion-mnist\"",
      "dataset format: fashion-mnist (idx files) | netcdf (one task) | suite (a multi-task netCDF suite: tasks by data.role)"),
    F("data.path", CFG_STRING, data.path, 1, 0, NULL, "\"/usr/share/datasets/fashion-mnist\"",
      "dataset location: the directory of the idx files, or the netCDF file"),
    F("data.mean", CFG_FLOAT_LIST, data.mean, -1e6, 1e6, NULL, "[0.2860]",
      "per-channel normalisation mean (model.channels entries, pixels scaled to [0, 1])"),
    F("data.std", CFG_FLOAT_LIST, data.std, 0, 1e6, NULL, "[0.3530]",
      "per-channel normalisation standard deviation (model.channels entries, each > 0)"),
    F("data.tasks", CFG_INT, data.tasks, 1, 100000, NULL, "1",
      "tessera adapt: tasks made from the dataset by permuting its labels (task 0 = the labels as they are)"),
    F("data.task_offset", CFG_INT, data.task_offset, 0, 1000000, NULL, "0",
      "number of the first task (held-out tasks use numbers that pre-training did not)"),
    F("data.shots", CFG_INT, data.shots, 0, 1000000, NULL, "0",
      "training examples per class and task, drawn with run.seed (0 = all)"),
    F("data.role", CFG_ENUM, data.role, 1, 0, "all|source|train|val|heldout", "\"all\"",
      "suite tasks used: all | source | train | val | heldout (the lists in suite.*)"),
    F("data.augment", CFG_BOOL, data.augment, 1, 0, NULL, "false", "random crop (padding 2) of training images"),
    F("data.flip", CFG_BOOL, data.flip, 1, 0, NULL, "false", "with data.augment: random horizontal flips"),
    F("data.joint_labels", CFG_BOOL, data.joint_labels, 1, 0, NULL, "false",
      "suite tasks share one label space (task t's classes follow those of tasks 0..t-1): backbone pre-training on the source tasks"),
    /* suite roles */
    F("suite.source", CFG_STRING_LIST, suite.source, 1, 0, NULL, "[]", "suite tasks that pre-train the backbone"),
    F("suite.train", CFG_STRING_LIST, suite.train, 1, 0, NULL, "[]", "suite tasks for multi-task adapter training"),
    F("suite.val", CFG_STRING_LIST, suite.val, 1, 0, NULL, "[]",
      "validation few-shot suite tasks (hyper-parameter choice), never test tasks nor seen by pre-training"),
    F("suite.heldout", CFG_STRING_LIST, suite.heldout, 1, 0, NULL, "[]",
      "held-out few-shot suite tasks, never seen by either pre-training stage"),
    /* train */
    F("train.steps", CFG_INT, train.steps, 0, 1e9, NULL, "200", "optimiser steps"),
    F("train.batch_size", CFG_INT, train.batch_size, 1, 1e6, NULL, "64",
      "global batch size (all ranks together)"),
    F("train.lr", CFG_FLOAT, train.lr, 0, 10, NULL, "1.0e-3", "peak learning rate (AdamW)"),
    F("train.weight_decay", CFG_FLOAT, train.weight_decay, 0, 10, NULL, "0.05", "AdamW weight decay"),
    F("train.warmup_steps", CFG_INT, train.warmup_steps, 0, 1e9, NULL, "20",
      "linear learning-rate warmup steps (0 = none)"),
    F("train.grad_clip", CFG_FLOAT, train.grad_clip, 0, 1e6, NULL, "1.0",
      "clip the global gradient norm to this value (0 = off)"),
    F("train.eval_every", CFG_INT, train.eval_every, 1, 1e9, NULL, "100", "evaluate every N steps"),
    F("train.eval_limit", CFG_INT, train.eval_limit, 0, 1e9, NULL, "0",
      "test images in the final evaluation (0 = the whole test set; evaluations during training use 1000)"),
    F("train.sync", CFG_ENUM, train.sync, 1, 0, "sharded|allreduce", "\"sharded\"",
      "multi-rank: sharded (reduce-scatter gradients, each rank updates its slice, all-gather parameters) | allreduce"),
    F("train.log_every", CFG_INT, train.log_every, 1, 1e9, NULL, "10", "log training metrics every N steps"),
    F("train.patience", CFG_INT, train.patience, 0, 1e9, NULL, "0",
      "runs that evaluate a validation split (tessera fewshot entries): stop after this many evaluations without a "
      "better validation accuracy (0 = never stop early)"),
    F("train.test_every_eval", CFG_BOOL, train.test_every_eval, 1, 0, NULL, "true",
      "runs that evaluate a validation split: evaluate the test split at every evaluation (false: only at a new best "
      "validation accuracy and at the end, which is all test_accuracy_at_best_val needs)"),
    /* adapt */
    F("adapt.mode", CFG_ENUM, adapt.mode, 1, 0, "adapters|probe|full", "\"adapters\"",
      "tessera adapt trains: adapters (and the head; backbone frozen) | probe (head only) | full (everything)"),
    /* adapter */
    F("adapter.kind", CFG_ENUM, adapter.kind, 1, 0, "none|lora|bottleneck", "\"lora\"",
      "adapter kind: none | lora | bottleneck"),
    F("adapter.routing", CFG_ENUM, adapter.routing, 1, 0, "none|poly|mhr", "\"none\"",
      "routing over a skill inventory: none (one adapter) | poly | mhr"),
    F("adapter.lora_sites", CFG_STRING_LIST, adapter.lora_sites, 1, 0, NULL, "[q, v]",
      "LoRA sites: any of q, k, v, proj, fc1, fc2"),
    F("adapter.lora_rank", CFG_INT, adapter.lora_rank, 1, 4096, NULL, "4", "LoRA rank r"),
    F("adapter.lora_alpha", CFG_FLOAT, adapter.lora_alpha, 0, 1e6, NULL, "1.0",
      "LoRA scale = alpha / rank (alpha = 1 in the MHR code)"),
    F("adapter.lora_init", CFG_ENUM, adapter.lora_init, 1, 0, "authors|peft", "\"authors\"",
      "LoRA A initialisation: authors (uniform +-1/sqrt(3 d_in), the MHR code) | peft (kaiming-uniform a=sqrt(5) per head block)"),
    F("adapter.placement", CFG_ENUM, adapter.placement, 1, 0, "parallel|houlsby|pfeiffer", "\"parallel\"",
      "bottleneck placement: parallel (AdaptFormer) | houlsby (after attention and MLP) | pfeiffer (after MLP)"),
    F("adapter.bottleneck", CFG_INT, adapter.bottleneck, 1, 65536, NULL, "16", "bottleneck width"),
    F("adapter.scale", CFG_FLOAT, adapter.scale, 0, 1e6, NULL, "0.1", "bottleneck output scale s"),
    F("adapter.dropout", CFG_FLOAT, adapter.dropout, 0, 0.99, NULL, "0.1", "bottleneck dropout p (training)"),
    F("adapter.activation", CFG_ENUM, adapter.activation, 1, 0, "gelu|relu", "\"gelu\"",
      "bottleneck activation: gelu | relu"),
    F("adapter.skills", CFG_INT, adapter.skills, 1, 1024, NULL, "8", "skills S (routing only)"),
    F("adapter.heads", CFG_INT, adapter.heads, 1, 1024, NULL, "4", "routing heads h (mhr only; poly uses 1)"),
    F("adapter.noise", CFG_BOOL, adapter.noise, 1, 0, NULL, "false",
      "relaxed-Bernoulli routing during training (the SuperNI runs) instead of sigmoid (the T0 runs)"),
    F("adapter.tau", CFG_FLOAT, adapter.tau, 1e-6, 1e6, NULL, "1.0", "relaxed-Bernoulli temperature"),
    F("adapter.init", CFG_STRING, adapter.init, 1, 0, NULL, "\"\"",
      "pre-trained adapters (a tessera adapters file); \"\" = fresh"),
    F("adapter.fewshot", CFG_ENUM, adapter.fewshot, 1, 0, "none|finetune|z|mu", "\"none\"",
      "with adapter.init: none (continue) | finetune (fresh routing rows, train all) | z (fresh rows, train only them) | mu (average the skills, train that adapter)"),
    /* mosa */
    F("mosa.modules", CFG_INT, mosa.modules, 0, 256, NULL, "0", "MoSA modules N (0 = off)"),
    F("mosa.split", CFG_ENUM, mosa.split, 1, 0, "up|down|both", "\"up\"",
      "which projection is split: up (the released code's default; down shared) | down | both"),
    F("mosa.consistency", CFG_FLOAT, mosa.consistency, 0, 1e6, NULL, "0.5",
      "weight of the two-view consistency loss (0 = off)"),
    F("mosa.baseline", CFG_BOOL, mosa.baseline, 1, 0, NULL, "false",
      "the fixed-random-mask sparse-adapter baseline (module 0 only) instead of MoSA"),
    F("mosa.bias", CFG_ENUM, mosa.bias, 1, 0, "split|shared", "\"split\"",
      "bias of a split projection: split (one copy per module, the released code) | shared (one bias trained "
      "by every module: MoSA then trains exactly the dense adapter's parameters)"),
    /* optim */
    F("optim.routing_lr", CFG_FLOAT, optim.routing_lr, 0, 100, NULL, "0.1", "learning rate of routing logits"),
    F("optim.routing_wd", CFG_FLOAT, optim.routing_wd, 0, 10, NULL, "0.0", "weight decay of routing logits"),
    F("optim.adapter_lr", CFG_FLOAT, optim.adapter_lr, 0, 100, NULL, "1.0e-3", "learning rate of adapter weights"),
    F("optim.adapter_wd", CFG_FLOAT, optim.adapter_wd, 0, 10, NULL, "0.01", "weight decay of adapter weights"),
    F("optim.head_lr", CFG_FLOAT, optim.head_lr, 0, 100, NULL, "1.0e-3", "learning rate of the head"),
    F("optim.head_wd", CFG_FLOAT, optim.head_wd, 0, 10, NULL, "0.01", "weight decay of the head"),
    F("optim.backbone_lr", CFG_FLOAT, optim.backbone_lr, 0, 100, NULL, "1.0e-4",
      "learning rate of the backbone (adapt.mode full)"),
    F("optim.backbone_wd", CFG_FLOAT, optim.backbone_wd, 0, 10, NULL, "0.05", "weight decay of the backbone"),
    /* run */
    F("run.seed", CFG_INT, run.seed, 0, 2147483647.0, NULL, "1234",
      "random seed (initialisation, shuffling)"),
    F("run.threads", CFG_INT, run.threads, 0, 4096, NULL, "0",
      "threads per rank (0 = cores / local ranks)"),
    F("run.output_dir", CFG_STRING, run.output_dir, 1, 0, NULL, "\"runs/default\"",
      "directory for checkpoints, logs and the resolved configuration"),
    F("run.checkpoint_every", CFG_INT, run.checkpoint_every, 0, 1e9, NULL, "0",
      "tessera adapt / pretrain: steps between checkpoints in run.output_dir/checkpoints (0 = only on a stop signal)"),
    F("run.keep_checkpoints", CFG_INT, run.keep_checkpoints, 1, 1000, NULL, "2", "complete checkpoints kept"),
    F("run.init", CFG_STRING, run.init, 1, 0, NULL, "\"\"",
      "initial weights: \"\" = random initialisation, otherwise a checkpoint path"),
    F("run.reset_head", CFG_BOOL, run.reset_head, 1, 0, NULL, "false",
      "ignore run.init's classifier and start from a new head of model.num_classes outputs (new tasks; run.head_init)"),
    F("run.head_init", CFG_ENUM, run.head_init, 1, 0, "auto|zero|prototype", "\"auto\"",
      "a new head (run.reset_head, or no run.init) starts as: zero | prototype (class means of the training "
      "examples' features: the nearest-class-mean classifier, docs/FEWSHOT.md) | auto (prototype when data.shots "
      "> 0, i.e. few-shot runs and tessera fewshot entries; zero otherwise)"),
    /* fewshot */
    F("fewshot.methods", CFG_STRING_LIST, fewshot.methods, 1, 0, NULL,
      "[lora, shared_lora, poly, mhr, mhr_z, mhr_mu, adapter, mosa, probe, full]",
      "tessera fewshot: methods of the sweep (docs/FEWSHOT.md lists the names)"),
    F("fewshot.tasks", CFG_STRING_LIST, fewshot.tasks, 1, 0, NULL, "[]",
      "tasks of the sweep ([] = suite.heldout)"),
    F("fewshot.shots", CFG_INT_LIST, fewshot.shots, 1, 1e6, NULL, "[1, 5]", "training examples per class"),
    F("fewshot.seeds", CFG_INT_LIST, fewshot.seeds, 0, 2147483647.0, NULL, "[0, 1]", "seeds of the sweep"),
    F("fewshot.pretrained", CFG_STRING, fewshot.pretrained, 1, 0, NULL, "\"runs/glyphs\"",
      "directory of tessera pretrain runs: DIR/<method>/adapters.safetensors"),
    F("fewshot.method_dir", CFG_STRING, fewshot.method_dir, 1, 0, NULL, "\"configs/methods\"",
      "method configurations DIR/<name>.yaml"),
    F("fewshot.results", CFG_STRING, fewshot.results, 1, 0, NULL, "\"\"",
      "results file (\"\" = run.output_dir/results.nc)"),
    F("fewshot.set", CFG_STRING_LIST, fewshot.set, 1, 0, NULL, "[]",
      "per-method overrides \"method:key=value\""),
    F("fewshot.lr_grid", CFG_FLOAT_LIST, fewshot.lr_grid, 1e-6, 1e6, NULL, "[]",
      "learning-rate multipliers tried per method on the validation tasks before the test entries (every optim.*_lr "
      "of the method times each); the best is used for its test entries. [] or one value: no selection (x1, or "
      "that value)"),
    F("fewshot.lr_tasks", CFG_STRING_LIST, fewshot.lr_tasks, 1, 0, NULL, "[]",
      "tasks of the learning-rate selection ([] = suite.val); never tasks of the sweep"),
    F("fewshot.lr_shots", CFG_INT_LIST, fewshot.lr_shots, 1, 1e6, NULL, "[]",
      "shot counts of the learning-rate selection ([] = fewshot.shots)"),
    F("fewshot.lr_seeds", CFG_INT_LIST, fewshot.lr_seeds, 0, 2147483647.0, NULL, "[0]",
      "seeds of the learning-rate selection"),
    F("fewshot.lr_metric", CFG_ENUM, fewshot.lr_metric, 1, 0, "test_at_best_val|best_val", "\"test_at_best_val\"",
      "what the selection maximises, averaged over its entries: test_at_best_val (the validation task's test-split "
      "accuracy at its best validation step: not used to pick that step) | best_val (its best validation-split "
      "accuracy)"),
    /* analyze */
    F("analyze.methods", CFG_STRING_LIST, analyze.methods, 1, 0, NULL, "[lora, poly, mhr]",
      "tessera analyze: pre-trained runs compared (fewshot.pretrained/<method>)"),
    F("analyze.examples", CFG_INT, analyze.examples, 1, 1e9, NULL, "64",
      "training examples per task averaged into its gradient"),
    F("analyze.grid", CFG_INT_LIST, analyze.grid, 0, 65536, NULL, "[0, 0]",
      "BLACS process grid [rows, cols] ([0, 0] = near-square over all ranks)"),
    F("analyze.block", CFG_INT, analyze.block, 1, 65536, NULL, "4", "block-cyclic block size"),
    F("analyze.results", CFG_STRING, analyze.results, 1, 0, NULL, "\"\"",
      "alignment file (\"\" = run.output_dir/alignment.nc)"),
};

const int tsr_config_nfields = (int)(sizeof tsr_config_schema / sizeof tsr_config_schema[0]);

static int cross_checks(const tsr_config *c, const char *src) {
    if (c->model.dim % c->model.heads != 0)
        return tsr_error("%s: model.dim (%ld) must be divisible by model.heads (%ld)", src, c->model.dim,
                         c->model.heads);
    if (c->model.image_size % c->model.patch_size != 0)
        return tsr_error("%s: model.image_size (%ld) must be divisible by model.patch_size (%ld)", src,
                         c->model.image_size, c->model.patch_size);
    if (c->data.mean.n != c->model.channels)
        return tsr_error("%s: data.mean has %d entries but model.channels is %ld", src, c->data.mean.n,
                         c->model.channels);
    if (c->data.std.n != c->model.channels)
        return tsr_error("%s: data.std has %d entries but model.channels is %ld", src, c->data.std.n,
                         c->model.channels);
    for (int i = 0; i < c->data.std.n; i++)
        if (!(c->data.std.v[i] > 0))
            return tsr_error("%s: data.std[%d] must be > 0, got %g", src, i, c->data.std.v[i]);
    if (!c->data.path[0]) return tsr_error("%s: data.path must not be empty", src);
    if (!c->run.output_dir[0]) return tsr_error("%s: run.output_dir must not be empty", src);
    if (strcmp(c->run.head_init, "prototype") == 0 && c->run.init[0] && !c->run.reset_head)
        return tsr_error("%s: run.head_init prototype makes a new head, but run.reset_head is false (run.init's "
                         "classifier is kept): set run.reset_head: true, or run.head_init: auto", src);
    return 0;
}

int tsr_config_load(tsr_config *c, const char *path, int nset, char *const *sets) {
    return tsr_config_load_files(c, path ? &path : NULL, path ? 1 : 0, nset, sets);
}

int tsr_config_load_files(tsr_config *c, const char *const *paths, int npaths, int nset, char *const *sets) {
    const char *path = npaths > 0 ? paths[npaths - 1] : NULL;
    tsr_config *tmp = tsr_calloc(1, sizeof *tmp);
    int rc = cfg_load_files(tmp, tsr_config_schema, tsr_config_nfields, paths, npaths, nset, sets);
    if (rc == 0) {
        char src[1100];
        snprintf(src, sizeof src, "%s%s", path ? path : "configuration",
                 nset > 0 ? " (with --set overrides)" : "");
        rc = cross_checks(tmp, src);
    }
    if (rc == 0) memcpy(c, tmp, sizeof *c);
    free(tmp);
    return rc;
}

char *tsr_config_dump(const tsr_config *c) {
    static const char header[] = "# tessera configuration, resolved (defaults, file, then --set overrides)\n\n";
    char *body = cfg_dump(c, tsr_config_schema, tsr_config_nfields);
    size_t nb = strlen(body);
    char *out = tsr_malloc(sizeof header + nb);
    memcpy(out, header, sizeof header - 1);
    memcpy(out + sizeof header - 1, body, nb + 1);
    free(body);
    return out;
}
