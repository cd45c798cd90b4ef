/* bench_step.c: images/s of one training step of tessera's ViT on the reference workloads of
 * BENCHMARKS.md, to be read side by side with bench/torch_bench.py (bench/run.sh does both).
 *
 * usage: [TESSERA_PRECISION=fp32|bf16] bench_step WORKLOAD THREADS MODE SECONDS
 *   TESSERA_PRECISION=bf16: the frozen block weights in bf16 (model.precision bf16; not with full);
 *             the output line ends with precision=...
 *   WORKLOAD  vit-s-28 (28x28x1, patch 4, 192 wide, 6 deep, 3 heads, batch 64)
 *             vit-b16  (224x224x3, patch 16, 768 wide, 12 deep, 12 heads, batch 8)
 *   MODE      probe       head only trainable (backward stops at the head)
 *             frozen      frozen backbone, input gradients through every block, head trained
 *             full        every parameter trainable
 *             adapter     bottleneck adapter parallel to the MLP in every block (AdaptFormer: own
 *                         LayerNorm, width 64, s = 0.1, exact GELU, no dropout), no routing
 *             lora        LoRA r = 8, alpha = 16 on q and v of every block, no routing
 *             mhr         MHR: LoRA on q, k, v and proj, S = 8 skills, h = 4 heads, rank 4,
 *                         scale 1/r (alpha = 1), routing over 16 tasks, no routing noise; one random
 *                         task id per example (as torch_reference.py: many short task runs)
 *             mhr-sorted  mhr with the batch ordered by task (what a task-grouping sampler emits)
 *             poly        mhr with h = 1 (Poly)
 *   In the adapter modes the adapters and the head are trained (TSR_VIT_ADAPTERS), with AdamW over
 *   the adapter buffer and the head; the backbone is frozen.
 * A step = [tsr_adapters_begin], zero grads, forward, cross-entropy, backward, AdamW on the trainable
 * parameters. Prints the median step time over the steps that fit in SECONDS (after 2 warm-up steps),
 * and the medians of its phases (begin = adapter combination, fwd, bwd, opt). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "adapters/adapters.h"
#include "cmd/commands.h"
#include "core/common.h"
#include "core/rng.h"
#include "dist/parallel.h"
#include "model/vit.h"
#include "train/optim.h"

#define MAX_STEPS 100000
#define N_TASKS 16

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return v[n / 2];
}

/* The adapter set of a mode; 0 if the mode has none, -1 if the mode is unknown. */
static int adapter_mode(const char *mode, tsr_adapter_config *a, int *routed, int *sorted) {
    memset(a, 0, sizeof *a);
    a->skills = a->heads = 1;
    a->tau = 1;
    a->layer_min = 0;
    a->layer_max = -1;
    *routed = *sorted = 0;
    if (strcmp(mode, "probe") == 0 || strcmp(mode, "frozen") == 0 || strcmp(mode, "full") == 0) return 0;
    if (strcmp(mode, "adapter") == 0) {
        a->bn_sites = 1 << TSR_BN_PARALLEL;
        a->bn_dim = 64;
        a->bn_scale = 0.1;
        a->bn_dropout = 0;
        a->bn_relu = 0;
        return 1;
    }
    if (strcmp(mode, "lora") == 0) {
        a->lora_sites = 1 << TSR_LORA_Q | 1 << TSR_LORA_V;
        a->lora_rank = 8;
        a->lora_alpha = 16;
        return 1;
    }
    int mhr = strcmp(mode, "mhr") == 0, mhr_sorted = strcmp(mode, "mhr-sorted") == 0, poly = strcmp(mode, "poly") == 0;
    if (!mhr && !mhr_sorted && !poly) return -1;
    a->lora_sites = 1 << TSR_LORA_Q | 1 << TSR_LORA_K | 1 << TSR_LORA_V | 1 << TSR_LORA_PROJ;
    a->lora_rank = 4;
    a->lora_alpha = 1; /* scale 1 / r, as torch_reference.py */
    a->skills = 8;
    a->heads = poly ? 1 : 4;
    a->n_tasks = N_TASKS;
    a->noise = 0;
    *routed = 1;
    *sorted = mhr_sorted;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: bench_step {vit-s-28|vit-b16} THREADS "
                        "{probe|frozen|full|adapter|lora|mhr|mhr-sorted|poly} SECONDS\n");
        return 2;
    }
    tsr_dist_init(&argc, &argv);
    tsr_log_level = TSR_LOG_WARN;
    tsr_vit_config c;
    int B;
    if (strcmp(argv[1], "vit-s-28") == 0) {
        c = (tsr_vit_config){28, 4, 1, 192, 6, 3, 768, 10, 1e-6};
        B = 64;
    } else if (strcmp(argv[1], "vit-b16") == 0) {
        c = (tsr_vit_config){224, 16, 3, 768, 12, 12, 3072, 100, 1e-6};
        B = 8;
    } else {
        fprintf(stderr, "unknown workload '%s'\n", argv[1]);
        return 2;
    }
    const char *mode = argv[3];
    tsr_adapter_config ac;
    int routed, sorted;
    int use_ad = adapter_mode(mode, &ac, &routed, &sorted);
    tsr_vit_trainable tr;
    if (use_ad < 0) {
        fprintf(stderr, "unknown mode '%s'\n", mode);
        return 2;
    } else if (use_ad) tr = TSR_VIT_ADAPTERS;
    else if (strcmp(mode, "probe") == 0) tr = (tsr_vit_trainable){0, 0, 0, 1, 0, 0};
    else if (strcmp(mode, "frozen") == 0) tr = TSR_VIT_FROZEN;
    else tr = TSR_VIT_FULL;
    if (tsr_runtime_setup(atoi(argv[2])) != 0) return 1;
    double seconds = atof(argv[4]);
    tsr_vit m;
    if (tsr_vit_create(&m, &c, B) != 0) tsr_fatal("%s", tsr_last_error());
    /* TESSERA_PRECISION=bf16: the frozen block weights in bf16 (model.precision bf16), set before the weights
     * are made (as the trainer does): each block weight is converted and its fp32 copy dropped as it is made */
    const char *prec = getenv("TESSERA_PRECISION");
    if (!prec || !*prec) prec = "fp32";
    if (strcmp(prec, "bf16") == 0) {
        if (tr.blocks) {
            fprintf(stderr, "bench_step: TESSERA_PRECISION=bf16 needs a frozen backbone; mode %s trains it\n", mode);
            return 2;
        }
        if (tsr_vit_set_precision(&m, 1) != 0) tsr_fatal("%s", tsr_last_error());
    } else if (strcmp(prec, "fp32") != 0) {
        fprintf(stderr, "bench_step: TESSERA_PRECISION must be fp32 or bf16 (got '%s')\n", prec);
        return 2;
    }
    tsr_vit_init_random(&m, 0);
    size_t nimg = (size_t)B * c.channels * c.image_size * c.image_size;
    float *x = tsr_malloc(sizeof(float) * nimg);
    int *y = tsr_malloc(sizeof(int) * B), *tasks = tsr_malloc(sizeof(int) * B);
    tsr_rng r;
    tsr_rng_seed(&r, 1);
    for (size_t i = 0; i < nimg; i++) x[i] = (float)tsr_rng_normal(&r);
    for (int i = 0; i < B; i++) y[i] = (int)(tsr_rng_u64(&r) % (uint64_t)c.num_classes);
    for (int i = 0; i < B; i++) tasks[i] = (int)(tsr_rng_u64(&r) % N_TASKS);
    if (sorted) qsort(tasks, (size_t)B, sizeof(int), cmp_int); /* inputs are random: ids alone suffice */

    tsr_adapters ad;
    memset(&ad, 0, sizeof ad);
    tsr_adamw aopt;
    memset(&aopt, 0, sizeof aopt);
    if (use_ad) {
        if (tsr_adapters_create(&ad, &ac, c.depth, c.dim, c.mlp_dim, m.tokens, B) != 0)
            tsr_fatal("%s", tsr_last_error());
        ad.ln_eps = c.ln_eps;
        tsr_adapters_init(&ad, 2);
        tsr_adapters_attach(&ad, &m);
        tsr_adamw_init(&aopt, ad.num_params, 0.9, 0.999, 1e-8);
        tsr_adamw_add_group(&aopt, 0, ad.num_params, 1.0, 0.01);
    }
    tsr_vit_plan_backward(&m, &tr);
    /* TSR_STORE_ATTENTION=1: keep the attention probabilities instead of recomputing them (A/B timing) */
    const char *sa = getenv("TSR_STORE_ATTENTION");
    if (sa && atoi(sa) == 1) tsr_vit_store_attention(&m);
    tsr_adamw opt;
    tsr_adamw_init(&opt, m.num_params, 0.9, 0.999, 1e-8);
    size_t head_off = (size_t)(m.params.headw - m.params_mem);
    if (strcmp(mode, "full") == 0) tsr_adamw_add_group(&opt, 0, m.num_params, 1.0, 0.01);
    else tsr_adamw_add_group(&opt, head_off, m.num_params - head_off, 1.0, 0.01);
    size_t trainable = (strcmp(mode, "full") == 0 ? m.num_params : m.num_params - head_off) + (use_ad ? ad.num_params : 0);

    static double times[MAX_STEPS], t_begin[MAX_STEPS], t_fwd[MAX_STEPS], t_bwd[MAX_STEPS], t_opt[MAX_STEPS];
    int n = 0;
    double loss = 0, start = tsr_time();
    for (int it = 0;; it++) {
        double t0 = tsr_time();
        if (use_ad && tsr_adapters_begin(&ad, routed ? tasks : NULL, B, 1, it, 3, NULL) != 0)
            tsr_fatal("%s", tsr_last_error());
        double t1 = tsr_time();
        tsr_vit_zero_grad_for(&m, &tr);
        if (use_ad) tsr_adapters_zero_grad(&ad);
        loss = tsr_vit_forward(&m, x, y, B);
        double t2 = tsr_time();
        tsr_vit_backward(&m, &tr);
        double t3 = tsr_time();
        tsr_adamw_step(&opt, m.params_mem, m.grads_mem, 1e-3);
        if (use_ad) tsr_adamw_step(&aopt, ad.params, ad.grads, 1e-3);
        double t4 = tsr_time();
        if (it >= 2) {
            times[n] = t4 - t0;
            t_begin[n] = t1 - t0;
            t_fwd[n] = t2 - t1;
            t_bwd[n] = t3 - t2;
            t_opt[n] = t4 - t3;
            n++;
        }
        if (it >= 2 && (tsr_time() - start > seconds || n == MAX_STEPS)) break;
    }
    if (!(loss == loss) || loss > 1e30) {
        fprintf(stderr, "non-finite loss\n");
        return 1;
    }
    /* Model FLOPs per image (docs/ARCHITECTURE.md, "What grows with what"): forward
     * 2 T L (4 D^2 + 2 D M) + 4 L T^2 D (the block GEMMs and attention; the patch embedding, the head,
     * LayerNorm, GELU, softmax and the adapters' own low-rank products are not counted); backward:
     * probe 0 (stops at the head), frozen and the adapter modes 1x forward (input gradients through
     * every block), full 2x forward (input and weight gradients). */
    double T = m.tokens, D = c.dim, L = c.depth, M = c.mlp_dim;
    double fwd_flops = 2 * T * L * (4 * D * D + 2 * D * M) + 4 * L * T * T * D;
    double bwd_factor = strcmp(mode, "probe") == 0 ? 0 : strcmp(mode, "full") == 0 ? 2 : 1;
    double flops_per_image = fwd_flops * (1 + bwd_factor);
    double med = median(times, n);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("tessera workload=%s mode=%s threads=%d step_ms=%.2f img_per_s=%.2f peak_rss_mb=%.1f steps=%d "
           "trainable=%zu segments=%d begin_ms=%.3f fwd_ms=%.2f bwd_ms=%.2f opt_ms=%.3f flops_per_image=%.4g "
           "model_gflops=%.1f precision=%s\n",
           argv[1], mode, tsr_world.threads, med * 1e3, B / med, ru.ru_maxrss / 1024.0, n, trainable,
           use_ad ? ad.nseg : 0, median(t_begin, n) * 1e3, median(t_fwd, n) * 1e3, median(t_bwd, n) * 1e3,
           median(t_opt, n) * 1e3, flops_per_image, flops_per_image * B / med * 1e-9, prec);
    tsr_adamw_free(&opt);
    if (use_ad) {
        tsr_adamw_free(&aopt);
        tsr_adapters_destroy(&ad);
    }
    tsr_vit_destroy(&m);
    free(x);
    free(y);
    free(tasks);
    tsr_dist_finalize(0);
    return 0;
}
