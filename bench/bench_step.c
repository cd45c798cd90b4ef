/* bench_step.c: images/s of one training step of tessera's ViT on the reference workloads of
 * BENCHMARKS.md, to be read side by side with bench/torch_bench.py (bench/run.sh does both).
 *
 * usage: bench_step WORKLOAD THREADS MODE SECONDS
 *   WORKLOAD  vit-s-28 (28x28x1, patch 4, 192 wide, 6 deep, 3 heads, batch 64)
 *             vit-b16  (224x224x3, patch 16, 768 wide, 12 deep, 12 heads, batch 8)
 *   MODE      probe   head only trainable (backward stops at the head)
 *             frozen  frozen backbone, input gradients through every block, head trained
 *             full    every parameter trainable
 * A step = zero grads, forward, cross-entropy, backward, AdamW on the trainable parameters.
 * Prints the median step time over the steps that fit in SECONDS (after 2 warm-up steps). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cmd/commands.h"
#include "core/common.h"
#include "core/rng.h"
#include "dist/parallel.h"
#include "model/vit.h"
#include "train/optim.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: bench_step {vit-s-28|vit-b16} THREADS {probe|frozen|full} SECONDS\n");
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
    tsr_vit_trainable tr;
    if (strcmp(mode, "probe") == 0) tr = (tsr_vit_trainable){0, 0, 0, 1, 0, 0};
    else if (strcmp(mode, "frozen") == 0) tr = TSR_VIT_FROZEN;
    else if (strcmp(mode, "full") == 0) tr = TSR_VIT_FULL;
    else {
        fprintf(stderr, "unknown mode '%s'\n", mode);
        return 2;
    }
    if (tsr_runtime_setup(atoi(argv[2])) != 0) return 1;
    double seconds = atof(argv[4]);
    tsr_vit m;
    if (tsr_vit_create(&m, &c, B) != 0) tsr_fatal("%s", tsr_last_error());
    tsr_vit_init_random(&m, 0);
    size_t nimg = (size_t)B * c.channels * c.image_size * c.image_size;
    float *x = tsr_malloc(sizeof(float) * nimg);
    int *y = tsr_malloc(sizeof(int) * B);
    tsr_rng r;
    tsr_rng_seed(&r, 1);
    for (size_t i = 0; i < nimg; i++) x[i] = (float)tsr_rng_normal(&r);
    for (int i = 0; i < B; i++) y[i] = (int)(tsr_rng_u64(&r) % (uint64_t)c.num_classes);
    tsr_adamw opt;
    tsr_adamw_init(&opt, m.num_params, 0.9, 0.999, 1e-8);
    size_t head_off = (size_t)(m.params.headw - m.params_mem);
    if (strcmp(mode, "full") == 0) tsr_adamw_add_group(&opt, 0, m.num_params, 1.0, 0.01);
    else tsr_adamw_add_group(&opt, head_off, m.num_params - head_off, 1.0, 0.01);
    double times[100000];
    int n = 0;
    double start = tsr_time();
    for (int it = 0;; it++) {
        double t0 = tsr_time();
        tsr_vit_zero_grad(&m);
        tsr_vit_forward(&m, x, y, B);
        tsr_vit_backward(&m, &tr);
        tsr_adamw_step(&opt, m.params_mem, m.grads_mem, 1e-3);
        double dt = tsr_time() - t0;
        if (it >= 2) times[n++] = dt;
        if (it >= 2 && (tsr_time() - start > seconds || n == 100000)) break;
    }
    qsort(times, (size_t)n, sizeof(double), cmp_double);
    double med = times[n / 2];
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    /* model FLOPs per image: 2 * MACs of the forward matmuls (+ attention), as usual */
    printf("tessera workload=%s mode=%s threads=%d step_ms=%.2f img_per_s=%.2f peak_rss_mb=%.1f steps=%d\n",
           argv[1], mode, tsr_world.threads, med * 1e3, B / med, ru.ru_maxrss / 1024.0, n);
    tsr_adamw_free(&opt);
    tsr_vit_destroy(&m);
    free(x);
    free(y);
    tsr_dist_finalize();
    return 0;
}
