/* tasks.c: the tasks a run trains on (tasks.h). */
#define _POSIX_C_SOURCE 200809L
#include "train/tasks.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/rng.h"

/* label permutation of task number n over K classes (n = 0: identity) */
static void task_perm(int *perm, int K, long n, uint64_t seed) {
    for (int k = 0; k < K; k++) perm[k] = k;
    if (n == 0) return;
    tsr_rng r;
    tsr_rng_seed(&r, seed * 0x9E3779B97F4A7C15ull + (uint64_t)n * 0xBF58476D1CE4E5B9ull + 17);
    for (int i = K - 1; i > 0; i--) {
        int j = (int)(tsr_rng_u64(&r) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* Task t's training examples: the image set shuffled from (seed, task number), then with data.shots
 * the first `shots` of each class in that order. */
static void perm_task_examples(tsr_tasks *ts, int t, long num, const tsr_config *cfg) {
    const tsr_imageset *train = &ts->train;
    int64_t *all = ts->idx[t] = tsr_malloc(sizeof(int64_t) * (size_t)train->n);
    tsr_rng r;
    tsr_rng_seed(&r, (uint64_t)cfg->run.seed ^ (0xF5u + (uint64_t)num * 1000003u));
    for (int64_t i = 0; i < train->n; i++) all[i] = i;
    for (int64_t i = train->n - 1; i > 0; i--) {
        int64_t j = (int64_t)(tsr_rng_u64(&r) % (uint64_t)(i + 1)), tmp = all[i];
        all[i] = all[j];
        all[j] = tmp;
    }
    ts->nidx[t] = train->n;
    if (cfg->data.shots <= 0) return;
    int64_t *cnt = tsr_calloc((size_t)ts->K, sizeof(int64_t)), n = 0;
    for (int64_t i = 0; i < train->n; i++) {
        int y = train->y[all[i]];
        if (y >= 0 && y < ts->K && cnt[y] < cfg->data.shots) {
            cnt[y]++;
            all[n++] = all[i];
        }
    }
    ts->nidx[t] = n;
    free(cnt);
}

static int select_permuted(tsr_tasks *ts, const tsr_config *cfg, int ntasks) {
    if (tsr_imageset_load(cfg, &ts->train, &ts->test) != 0) return -1;
    ts->ntasks = ntasks;
    ts->perm = tsr_malloc(sizeof(int) * (size_t)ntasks * ts->K);
    ts->idx = tsr_calloc((size_t)ntasks, sizeof(int64_t *));
    ts->nidx = tsr_calloc((size_t)ntasks, sizeof(int64_t));
    ts->weight = tsr_calloc((size_t)ntasks, sizeof(int64_t));
    ts->label_off = tsr_calloc((size_t)ntasks, sizeof(int));
    for (int t = 0; t < ntasks; t++) {
        long num = cfg->data.task_offset + t;
        task_perm(ts->perm + (size_t)t * ts->K, ts->K, num, (uint64_t)cfg->run.seed);
        perm_task_examples(ts, t, num, cfg);
        ts->weight[t] = ts->nidx[t];
    }
    return 0;
}

/* Suite tasks: the role's task names (or every task), checked against the file and the model. */
static int select_suite(tsr_tasks *ts, const tsr_config *cfg) {
    tsr_suite s;
    if (tsr_suite_open(&s, cfg->data.path) != 0) return -1;
    const char *rn = cfg->data.role;
    const cfg_string_list *role = strcmp(rn, "source") == 0    ? &cfg->suite.source
                                  : strcmp(rn, "train") == 0   ? &cfg->suite.train
                                  : strcmp(rn, "val") == 0     ? &cfg->suite.val
                                  : strcmp(rn, "heldout") == 0 ? &cfg->suite.heldout
                                                               : NULL;
    int rc = -1, K = ts->K;
    if (role && role->n == 0) {
        tsr_error("data.role %s: the list suite.%s is empty", rn, rn);
        goto out;
    }
    ts->ntasks = role ? role->n : s.ntasks;
    ts->suite_idx = tsr_malloc(sizeof(int) * (size_t)ts->ntasks);
    ts->weight = tsr_malloc(sizeof(int64_t) * (size_t)ts->ntasks);
    ts->local = tsr_malloc(sizeof(int) * (size_t)ts->ntasks);
    ts->label_off = tsr_calloc((size_t)ts->ntasks, sizeof(int));
    for (int t = 0; t < ts->ntasks; t++) {
        int i = ts->suite_idx[t] = role ? tsr_suite_find_task(&s, role->v[t]) : t;
        ts->local[t] = -1;
        if (i < 0) {
            tsr_error("suite.%s: task '%s' is not in %s", rn, role->v[t], cfg->data.path);
            goto out;
        }
        ts->weight[t] = s.count[i];
        if (cfg->data.joint_labels && t + 1 < ts->ntasks) ts->label_off[t + 1] = ts->label_off[t] + s.num_classes[i];
        if (cfg->data.joint_labels && ts->label_off[t] + s.num_classes[i] > K) {
            tsr_error("data.joint_labels: the %d tasks have %d classes together, model.num_classes is %d", ts->ntasks,
                      ts->label_off[t] + s.num_classes[i], K);
            goto out;
        }
        if (s.num_classes[i] > K) {
            tsr_error("%s: task '%s' has %d classes but model.num_classes is %d", cfg->data.path, s.task_names[i],
                      s.num_classes[i], K);
            goto out;
        }
    }
    if (s.C != cfg->model.channels) {
        tsr_error("%s: images have %d channels, model.channels is %ld", cfg->data.path, s.C, cfg->model.channels);
        goto out;
    }
    rc = 0;
out:
    tsr_suite_close(&s);
    return rc;
}

int tsr_tasks_select(tsr_tasks *ts, const tsr_config *cfg, int K, int ntasks_override) {
    memset(ts, 0, sizeof *ts);
    ts->K = K;
    ts->suite = strcmp(cfg->data.dataset, "suite") == 0;
    if (ts->suite) return select_suite(ts, cfg);
    return select_permuted(ts, cfg, ntasks_override > 0 ? ntasks_override : (int)cfg->data.tasks);
}

int tsr_tasks_load(tsr_tasks *ts, const tsr_config *cfg, const int *mine, int want_val) {
    if (!ts->suite) return 0; /* label-permutation tasks: the image set is in memory already */
    tsr_suite s;
    if (tsr_suite_open(&s, cfg->data.path) != 0) return -1;
    int *sel = tsr_malloc(sizeof(int) * (size_t)ts->ntasks), n = 0, rc = -1;
    for (int t = 0; t < ts->ntasks; t++) {
        ts->local[t] = mine[t] ? n : -1;
        if (mine[t]) sel[n++] = ts->suite_idx[t];
    }
    float mean[16], sd[16];
    for (int c = 0; c < s.C && c < 16; c++) {
        mean[c] = (float)cfg->data.mean.v[c];
        sd[c] = (float)cfg->data.std.v[c];
    }
    tsr_loader_opts o = {.shots = (int)cfg->data.shots,
                         .seed = (uint64_t)cfg->run.seed,
                         .split = TSR_SPLIT_TRAIN,
                         .out_size = (int)cfg->model.image_size,
                         .mean = mean,
                         .std = sd};
    if (n > 0) {
        if (tsr_loader_open(&ts->ld[TSR_SPLIT_TRAIN], &s, sel, n, &o) != 0) goto out;
        o.shots = 0;
        o.split = TSR_SPLIT_TEST;
        if (tsr_loader_open(&ts->ld[TSR_SPLIT_TEST], &s, sel, n, &o) != 0) goto out;
        o.split = TSR_SPLIT_VAL;
        if (want_val && tsr_loader_open(&ts->ld[TSR_SPLIT_VAL], &s, sel, n, &o) != 0) goto out;
    }
    rc = 0;
out:
    free(sel);
    tsr_suite_close(&s);
    return rc;
}

int64_t tsr_tasks_count(const tsr_tasks *ts, int split, int t) {
    if (!ts->suite) return split == TSR_SPLIT_TRAIN ? ts->nidx[t] : split == TSR_SPLIT_TEST ? ts->test.n : 0;
    if (ts->local[t] < 0 || !ts->ld[split].t) return 0;
    return tsr_loader_count(&ts->ld[split], ts->local[t]);
}

int tsr_tasks_get(const tsr_tasks *ts, int split, int t, int64_t i, float *x, int *y) {
    if (ts->suite) {
        if (tsr_loader_get(&ts->ld[split], ts->local[t], i, x, y) != 0) return -1;
        *y += ts->label_off[t];
        return 0;
    }
    const tsr_imageset *d = split == TSR_SPLIT_TRAIN ? &ts->train : &ts->test;
    int64_t e = split == TSR_SPLIT_TRAIN ? ts->idx[t][i] : i;
    size_t per = (size_t)d->C * d->S * d->S;
    memcpy(x, d->x + (size_t)e * per, sizeof(float) * per);
    *y = ts->perm[(size_t)t * ts->K + d->y[e]];
    return 0;
}

void tsr_tasks_free(tsr_tasks *ts) {
    for (int s = 0; s < 3; s++)
        if (ts->ld[s].t) tsr_loader_close(&ts->ld[s]);
    if (ts->idx)
        for (int t = 0; t < ts->ntasks; t++) free(ts->idx[t]);
    free(ts->idx);
    free(ts->nidx);
    free(ts->perm);
    free(ts->weight);
    free(ts->label_off);
    free(ts->suite_idx);
    free(ts->local);
    tsr_imageset_free(&ts->train);
    tsr_imageset_free(&ts->test);
    memset(ts, 0, sizeof *ts);
}
