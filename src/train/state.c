/* state.c: training-state checkpoints (state.h). */
#define _POSIX_C_SOURCE 200809L
#include "train/state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/atomic.h"
#include "core/common.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

/* Remove a checkpoint directory and every file in it: state.safetensors, DONE, and whatever a write that
 * failed or was killed left there (their path.tmp.<pid> temporaries). Checkpoint directories hold only
 * files. */
static int rm_ckpt(const char *dir) {
    char p[1400];
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
                snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    return rmdir(dir);
}

/* The newest complete checkpoint below step `below` (0: none). */
static long latest(const char *root, long below) {
    DIR *d = opendir(root);
    if (!d) return 0;
    long best = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long n;
        char tail[8];
        if (sscanf(e->d_name, "step-%ld%7s", &n, tail) != 1) continue;
        char done[1400];
        snprintf(done, sizeof done, "%s/%s/DONE", root, e->d_name);
        if (access(done, F_OK) == 0 && n > best && n < below) best = n;
    }
    closedir(d);
    return best;
}

/* The model's parameters through a tsr_param_reader (model.precision bf16: the block weights are not in memory). */
static int fill_model(void *ctx, void *dst, uint64_t offset, size_t n) {
    return tsr_param_reader_get(ctx, (size_t)(offset / sizeof(float)), n / sizeof(float), dst);
}

static int write_state(const tsr_train_state *s, const char *path, long step, double first_loss, const char *cfg_text) {
    tsr_st_writer *w = tsr_st_writer_new();
    int64_t sh[1];
#define ADD(name, ptr, n) do { sh[0] = (int64_t)(n); tsr_st_writer_add(w, name, TSR_DT_F32, 1, sh, ptr); } while (0)
    /* the frozen block weights of a model in bf16 are read again from where the model got them */
    tsr_param_reader *r = tsr_vit_released(s->m, 0, s->m->num_params) >= 0 ? tsr_param_reader_new(s->m) : NULL;
    sh[0] = (int64_t)s->m->num_params;
    if (r) tsr_st_writer_add_fill(w, "model", TSR_DT_F32, 1, sh, fill_model, r);
    else ADD("model", s->m->params_mem, s->m->num_params);
    ADD("opt.model.m", s->om->m, s->om->n);
    ADD("opt.model.v", s->om->v, s->om->n);
    if (s->ad) {
        ADD("adapters", s->ad->params, s->ad->num_params);
        ADD("opt.adapters.m", s->oa->m, s->oa->n);
        ADD("opt.adapters.v", s->oa->v, s->oa->n);
    }
    if (s->mo && s->ob) {
        ADD("mosa.bias", s->mo->bias_params, s->mo->nbias);
        ADD("opt.mosa.m", s->ob->m, s->ob->n);
        ADD("opt.mosa.v", s->ob->v, s->ob->n);
    }
#undef ADD
    char v[5][40];
    snprintf(v[0], 40, "%ld", step);
    snprintf(v[1], 40, "%ld", s->om->t);
    snprintf(v[2], 40, "%ld", s->oa ? s->oa->t : 0L);
    snprintf(v[3], 40, "%ld", s->ob ? s->ob->t : 0L);
    snprintf(v[4], 40, "%.17g", first_loss);
    const char *keys[5] = {"step", "opt.model.t", "opt.adapters.t", "opt.mosa.t", "first_loss"};
    for (int i = 0; i < 5; i++) tsr_st_writer_meta(w, keys[i], v[i]);
    tsr_st_writer_meta(w, "config", cfg_text);
    int rc = tsr_st_writer_write(w, path);
    tsr_st_writer_free(w);
    tsr_param_reader_free(r);
    return rc;
}

int tsr_state_save(const tsr_train_state *s, const char *out, long step, int keep, double first_loss,
                   const char *cfg_text) {
    char root[1100], dir[1300], tmpd[1320], p[1400], sv[32];
    snprintf(root, sizeof root, "%s/checkpoints", out);
    snprintf(dir, sizeof dir, "%s/step-%08ld", root, step);
    snprintf(tmpd, sizeof tmpd, "%s.tmp", dir);
    if (tsr_mkdirs(root) != 0) return tsr_error_context("checkpoint of step %ld", step);
    rm_ckpt(tmpd); /* one left by a run that was killed while writing it */
    if (tsr_mkdirs(tmpd) != 0) {
        rm_ckpt(tmpd);
        return tsr_error_context("checkpoint of step %ld", step);
    }
    snprintf(p, sizeof p, "%s/state.safetensors", tmpd);
    int rc = write_state(s, p, step, first_loss, cfg_text);
    snprintf(sv, sizeof sv, "%ld", step);
    snprintf(p, sizeof p, "%s/DONE", tmpd);
    if (rc == 0) rc = tsr_write_file_atomic(p, sv, strlen(sv));
    if (rc != 0) {
        rm_ckpt(tmpd); /* nothing half-written stays behind */
        return tsr_error_context("checkpoint of step %ld (nothing kept of it)", step);
    }
    rm_ckpt(dir);
    if (tsr_atomic_rename(tmpd, dir) != 0) {
        rm_ckpt(tmpd);
        return tsr_error_context("checkpoint of step %ld (nothing kept of it)", step);
    }
    /* keep the newest `keep` complete checkpoints */
    for (long below = step + 1, kept = 0;;) {
        long n = latest(root, below);
        if (n <= 0) break;
        if (++kept > keep) {
            snprintf(dir, sizeof dir, "%s/step-%08ld", root, n);
            rm_ckpt(dir);
        }
        below = n;
    }
    return 0;
}

static const tsr_st_tensor *find_vec(const tsr_st_file *f, const char *name, size_t n) {
    const tsr_st_tensor *t = tsr_st_find(f, name);
    if (!t) tsr_error("%s: tensor '%s' missing", f->path, name);
    else if (t->numel != (int64_t)n)
        tsr_error("%s: tensor '%s' has %lld values, this run has %zu (a checkpoint of another configuration?)",
                  f->path, name, (long long)t->numel, n);
    return t && t->numel == (int64_t)n ? t : NULL;
}

static int read_vec(const tsr_st_file *f, const char *name, float *dst, size_t n) {
    const tsr_st_tensor *t = find_vec(f, name, n);
    int rc = t ? tsr_st_read_f32(f, t, dst, (int64_t)n) : -1;
    if (t) tsr_st_drop(f, t);
    return rc;
}

/* The model's parameters. With the block weights in bf16 only (model.precision bf16) the checkpoint's are
 * not read into the model: each is checked against the bytes the model's bf16 copy was made from (a
 * checkpoint of another backbone is refused), the rest is read as usual. */
static int read_model(const tsr_st_file *f, tsr_vit *m) {
    if (tsr_vit_released(m, 0, m->num_params) < 0) return read_vec(f, "model", m->params_mem, m->num_params);
    const tsr_st_tensor *t = find_vec(f, "model", m->num_params);
    if (!t) return -1;
    size_t off = 0, most = 0;
    for (int k = 0; k < 4; k++) {
        size_t so, sn;
        tsr_vit_slice(m, k * m->cfg.depth, &so, &sn);
        if (sn > most) most = sn;
    }
    float *buf = tsr_malloc(sizeof(float) * most);
    int rc = 0;
    for (int s = 0; s < 4 * m->cfg.depth && rc == 0; s++) {
        size_t so, sn;
        tsr_vit_slice(m, s, &so, &sn);
        if (so > off) rc = tsr_st_read_f32_at(f, t, (int64_t)off, m->params_mem + off, (int64_t)(so - off));
        if (rc == 0) rc = tsr_st_read_f32_at(f, t, (int64_t)so, buf, (int64_t)sn);
        if (rc == 0 && tsr_vit_slice_check(m, s, buf, f->path) != 0) {
            char nm[64];
            tsr_vit_slice_name(m, s, nm, sizeof nm);
            rc = tsr_error("%s: tensor 'model': its %s differs from the frozen backbone this run holds in bf16 "
                           "(model.precision bf16; loaded from run.init or made from run.seed): a checkpoint of "
                           "another backbone", f->path, nm);
        }
        off = so + sn;
    }
    if (rc == 0 && off < m->num_params)
        rc = tsr_st_read_f32_at(f, t, (int64_t)off, m->params_mem + off, (int64_t)(m->num_params - off));
    free(buf);
    tsr_st_drop(f, t);
    return rc;
}

/* Open a checkpoint's state file and verify it: the checksums of its header and of every tensor
 * (tsr_st_open), and every float value finite (a checkpoint holding a NaN cannot be a good one). A file
 * from before checksums is accepted with a warning. 0 (f open) / -1 (tsr_error naming the file and the
 * tensor; f closed). */
static int open_verified(tsr_st_file *f, const char *p) {
    if (tsr_st_open(f, p) != 0) return -1;
    if (!f->checksummed)
        tsr_warn("%s: written before checkpoints carried checksums (metadata '%s'): read without verifying", p,
                 TSR_ST_CRC_KEY);
    enum { CHUNK = 1 << 16 };
    float *buf = tsr_malloc(sizeof(float) * CHUNK);
    int rc = 0;
    for (int i = 0; i < f->n && rc == 0; i++) {
        const tsr_st_tensor *t = &f->t[i];
        if (t->dtype != TSR_DT_F32) continue;
        for (int64_t o = 0; o < t->numel && rc == 0; o += CHUNK) {
            int64_t k = t->numel - o < CHUNK ? t->numel - o : CHUNK;
            if ((rc = tsr_st_read_f32_at(f, t, o, buf, k)) != 0) break;
            for (int64_t j = 0; j < k; j++)
                if (!isfinite(buf[j])) {
                    rc = tsr_error("%s: tensor '%s': value %lld is %g: not a checkpoint to continue from", p,
                                   t->name, (long long)(o + j), (double)buf[j]);
                    break;
                }
        }
        tsr_st_drop(f, t);
    }
    free(buf);
    if (rc != 0) tsr_st_close(f);
    return rc;
}

long tsr_state_last_good(const char *out, char *dir, size_t n) {
    char root[1100], p[1400];
    snprintf(root, sizeof root, "%s/checkpoints", out);
    for (long below = 1L << 62;;) {
        long step = latest(root, below);
        if (step == 0) return 0;
        snprintf(p, sizeof p, "%s/step-%08ld/state.safetensors", root, step);
        tsr_st_file f;
        if (open_verified(&f, p) == 0) {
            tsr_st_close(&f);
            if (dir) snprintf(dir, n, "%s/step-%08ld", root, step);
            return step;
        }
        below = step;
    }
}

long tsr_state_load_latest(tsr_train_state *s, const char *out, double *first_loss) {
    char root[1100], p[1400];
    snprintf(root, sizeof root, "%s/checkpoints", out);
    tsr_st_file f;
    long step, below = 1L << 62;
    int skipped = 0;
    /* the newest complete checkpoint that verifies; newer ones that do not are skipped, each with a warning */
    for (;;) {
        step = latest(root, below);
        if (step == 0) {
            if (skipped)
                return tsr_error("resume: none of the %d complete checkpoint(s) in %s verifies (warnings above); "
                                 "remove them to start afresh", skipped, root);
            return 0;
        }
        snprintf(p, sizeof p, "%s/step-%08ld/state.safetensors", root, step);
        if (open_verified(&f, p) == 0) break;
        tsr_warn("resume: skipping the checkpoint %s/step-%08ld, which fails verification: %s", root, step,
                 tsr_last_error());
        skipped++;
        below = step;
    }
    int bad = read_model(&f, s->m) || read_vec(&f, "opt.model.m", s->om->m, s->om->n) ||
              read_vec(&f, "opt.model.v", s->om->v, s->om->n);
    if (!bad && s->ad)
        bad = read_vec(&f, "adapters", s->ad->params, s->ad->num_params) ||
              read_vec(&f, "opt.adapters.m", s->oa->m, s->oa->n) || read_vec(&f, "opt.adapters.v", s->oa->v, s->oa->n);
    if (!bad && s->mo && s->ob)
        bad = read_vec(&f, "mosa.bias", s->mo->bias_params, s->mo->nbias) ||
              read_vec(&f, "opt.mosa.m", s->ob->m, s->ob->n) || read_vec(&f, "opt.mosa.v", s->ob->v, s->ob->n);
    if (!bad) {
        const char *t1 = tsr_st_meta(&f, "opt.model.t"), *t2 = tsr_st_meta(&f, "opt.adapters.t"),
                   *t3 = tsr_st_meta(&f, "opt.mosa.t"), *fl = tsr_st_meta(&f, "first_loss");
        if (!t1 || !t2 || !t3 || !fl) bad = tsr_error("%s: metadata (opt.*.t, first_loss) missing", p) != 0;
        else {
            s->om->t = atol(t1);
            if (s->oa) s->oa->t = atol(t2);
            if (s->ob) s->ob->t = atol(t3);
            *first_loss = atof(fl);
        }
    }
    tsr_st_close(&f);
    return bad ? -1 : step;
}

void tsr_curve_keep_until(const char *path, long step) {
    char *text;
    size_t n;
    if (tsr_read_file(path, &text, &n) != 0) return;
    size_t keep = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && text[j] != '\n') j++;
        long s = atol(text + i);
        if (i > 0 && s > step) break;
        i = j + 1;
        keep = i < n ? i : n;
    }
    tsr_write_file_atomic(path, text, keep);
    free(text);
}
