/* cmd_prepare.c: `tessera prepare KIND ...`: build a dataset (a tessera netCDF suite,
 * docs/DATASET_SCHEMA.md) from Debian packages or from image folders.
 *   tessera prepare fashion-mnist [--src DIR] [--out FILE]
 *   tessera prepare glyphs [--out FILE] [--roles CONFIG] [--counts ROLE=TRAIN,VAL,TEST ...] [--fonts DIRS]
 *                          [--size N] [--classes N] [--min-classes N] [--examples N] [--val N] [--test N]
 *                          [--seed N] [--no-jitter] [--no-elastic] [--plain-test] [--scripts a,b,...]
 *   tessera prepare folder SRC OUT --size N [--channels 1|3] [--resize crop|squash] --task NAME
 * Each prints sizes, task and class counts; the file is written atomically. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "core/common.h"
#include "data/glyphs.h"
#include "data/import.h"
#include "data/suite.h"
#include "dist/parallel.h"
#include "io/tsr_config.h"

static void prepare_usage(FILE *f) {
    fprintf(f, "usage:\n"
               "  tessera prepare fashion-mnist [--src DIR] [--out FILE]   (default: Debian's dataset-fashion-mnist -> data/fashion-mnist.nc)\n"
               "  tessera prepare glyphs [--out FILE] [--roles CONFIG] [--counts ROLE=TRAIN,VAL,TEST ...] [--fonts DIRS]\n"
               "                         [--size N] [--classes N] [--min-classes N] [--examples N] [--val N] [--test N]\n"
               "                         [--seed N] [--no-jitter] [--no-elastic] [--plain-test] [--scripts a,b,...]\n"
               "                         (default: data/glyphs.nc, one task per writing system, docs/GLYPHS.md; the suite v2\n"
               "                         of the study: --roles configs/glyphs.yaml, renderings per class by role:\n"
               "                         source 100,10,10  train 40,5,5  val 20,5,10  heldout 20,5,10 (every split augmented;\n"
               "                         --plain-test: clean val and heldout test renderings, fonts in turn);\n"
               "                         scripts in no role, or all without --roles: --examples 20 --val 3 --test 5)\n"
               "  tessera prepare folder SRC OUT --size N [--channels 1|3] [--resize crop|squash] --task NAME\n"
               "                         (SRC: a folder of class folders of PNG/JPEG files, or a list file; docs/VTAB.md)\n");
}

static int int_arg(const char *opt, const char *v, int lo, int hi, int *out) {
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < lo || x > hi) {
        tsr_log(TSR_LOG_ERROR, "prepare: %s expects an integer in [%d, %d], got '%s'", opt, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* --counts ROLE=TRAIN,VAL,TEST: the renderings per class of one role */
static int counts_arg(const char *v, tsr_glyph_opts *o) {
    const char *eq = strchr(v, '=');
    int role = -1;
    for (int r = 1; eq && r < TSR_GLYPH_NROLES; r++) {
        const char *name = tsr_glyph_role_name(r);
        if (strlen(name) == (size_t)(eq - v) && strncmp(v, name, (size_t)(eq - v)) == 0) role = r;
    }
    int tr = 0, va = 0, te = 0, end = 0;
    if (role < 0 || sscanf(eq + 1, "%d,%d,%d%n", &tr, &va, &te, &end) != 3 || eq[1 + end] != 0 || tr < 1 ||
        va < 0 || te < 0 || (long)tr + va + te > 100000) {
        tsr_log(TSR_LOG_ERROR, "prepare glyphs: --counts expects ROLE=TRAIN,VAL,TEST with ROLE source, train, val "
                "or heldout and renderings per class TRAIN >= 1, VAL >= 0, TEST >= 0 (at most 100000 in all), "
                "e.g. source=100,10,10; got '%s'", v);
        return -1;
    }
    o->counts[role].train = tr;
    o->counts[role].val = va;
    o->counts[role].test = te;
    return 0;
}

/* --roles CONFIG: the suite.source / train / val / heldout lists of a tessera configuration, loaded
 * with the configuration loader. The names stay in *cfg (heap: the struct is large). */
static int roles_arg(const char *path, tsr_config **cfg, const char **names[TSR_GLYPH_NROLES], tsr_glyph_opts *o) {
    *cfg = tsr_malloc(sizeof **cfg);
    if (tsr_config_load(*cfg, path, 0, NULL) != 0) {
        tsr_log(TSR_LOG_ERROR, "prepare glyphs: --roles %s: %s", path, tsr_last_error());
        return -1;
    }
    const cfg_string_list *lists[TSR_GLYPH_NROLES] = {NULL, &(*cfg)->suite.source, &(*cfg)->suite.train,
                                                      &(*cfg)->suite.val, &(*cfg)->suite.heldout};
    int total = 0;
    for (int r = 1; r < TSR_GLYPH_NROLES; r++) {
        names[r] = tsr_malloc((size_t)(lists[r]->n + 1) * sizeof *names[r]);
        for (int i = 0; i < lists[r]->n; i++) names[r][i] = lists[r]->v[i];
        o->role_n[r] = lists[r]->n;
        o->role_scripts[r] = names[r];
        total += lists[r]->n;
    }
    if (total == 0) {
        tsr_log(TSR_LOG_ERROR, "prepare glyphs: --roles %s: suite.source, suite.train, suite.val and suite.heldout "
                "are all empty: expected the roles of the glyph suite's tasks, as in configs/glyphs.yaml", path);
        return -1;
    }
    o->roles_file = path;
    return 0;
}

/* print what a written suite holds */
static void summary(const char *path) {
    tsr_suite s;
    if (tsr_suite_open(&s, path) != 0) {
        tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
        return;
    }
    int64_t classes = 0;
    for (int t = 0; t < s.ntasks; t++) classes += s.num_classes[t];
    FILE *f = fopen(path, "rb");
    long size = 0;
    if (f) {
        fseek(f, 0, SEEK_END);
        size = ftell(f);
        fclose(f);
    }
    tsr_info("prepare: %s: %d tasks, %lld classes, %lld examples of %dx%dx%d, %.1f MB", path, s.ntasks,
             (long long)classes, (long long)s.n_examples, s.H, s.W, s.C, size / 1e6);
    tsr_suite_close(&s);
}

int tsr_cmd_prepare(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        prepare_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    /* the command line, recorded in the file's history */
    char cmdline[4096] = "tessera";
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(cmdline);
        snprintf(cmdline + n, sizeof cmdline - n, " %s", argv[i]);
    }
    tsr_import_set_history(cmdline);
    const char *kind = argv[1];
    int rc = 1;
    if (tsr_world.rank != 0) return 0; /* one writer */
    if (strcmp(kind, "fashion-mnist") == 0) {
        const char *src = NULL, *out = "data/fashion-mnist.nc";
        for (int i = 2; i < argc; i++) {
            if (strcmp(argv[i], "--src") == 0 && i + 1 < argc) src = argv[++i];
            else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out = argv[++i];
            else {
                tsr_log(TSR_LOG_ERROR, "prepare fashion-mnist: unexpected argument '%s'", argv[i]);
                return 2;
            }
        }
        if (tsr_mkdirs_for(out) != 0 || tsr_import_fashion_mnist(src, out) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            return 1;
        }
        summary(out);
        return 0;
    }
    if (strcmp(kind, "glyphs") == 0) {
        tsr_glyph_opts o;
        tsr_glyph_opts_init(&o);
        const char *out = "data/glyphs.nc";
        char *scripts_buf = NULL;
        const char *names[1024];
        const char *roles = NULL;
        int seed = (int)o.seed, ncounts = 0;
        tsr_config *cfg = NULL;
        const char **role_names[TSR_GLYPH_NROLES] = {NULL};
        for (int i = 2; i < argc; i++) {
            const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
            int bad = 0;
            if (strcmp(a, "--out") == 0 && v) out = argv[++i];
            else if (strcmp(a, "--roles") == 0 && v) roles = argv[++i];
            else if (strcmp(a, "--counts") == 0 && v) {
                bad = counts_arg(argv[++i], &o);
                ncounts++;
            } else if (strcmp(a, "--fonts") == 0 && v) o.font_dir = argv[++i];
            else if (strcmp(a, "--size") == 0 && v) bad = int_arg(a, argv[++i], 8, 1024, &o.image_size);
            else if (strcmp(a, "--classes") == 0 && v) bad = int_arg(a, argv[++i], 2, 100000, &o.max_classes);
            else if (strcmp(a, "--min-classes") == 0 && v) bad = int_arg(a, argv[++i], 2, 100000, &o.min_classes);
            else if (strcmp(a, "--examples") == 0 && v) bad = int_arg(a, argv[++i], 2, 100000, &o.examples);
            else if (strcmp(a, "--val") == 0 && v) bad = int_arg(a, argv[++i], 0, 100000, &o.n_val);
            else if (strcmp(a, "--test") == 0 && v) bad = int_arg(a, argv[++i], 0, 100000, &o.n_test);
            else if (strcmp(a, "--seed") == 0 && v) bad = int_arg(a, argv[++i], 0, 2147483647, &seed);
            else if (strcmp(a, "--no-jitter") == 0) o.jitter = 0;
            else if (strcmp(a, "--no-elastic") == 0) o.elastic = 0;
            else if (strcmp(a, "--plain-test") == 0) o.counts[TSR_GLYPH_VAL].plain_test = o.counts[TSR_GLYPH_HELDOUT].plain_test = 1;
            else if (strcmp(a, "--scripts") == 0 && v) {
                free(scripts_buf);
                scripts_buf = strdup(argv[++i]);
                o.nscripts = 0;
                for (char *t = strtok(scripts_buf, ","); t && o.nscripts < 1024; t = strtok(NULL, ",")) names[o.nscripts++] = t;
                o.scripts = names;
            } else {
                tsr_log(TSR_LOG_ERROR, "prepare glyphs: unexpected or incomplete argument '%s'", a);
                bad = -1;
            }
            if (bad) {
                free(scripts_buf);
                return 2;
            }
        }
        int usage = 0;
        if (ncounts > 0 && !roles) {
            tsr_log(TSR_LOG_ERROR, "prepare glyphs: --counts sets the renderings of a role: it needs --roles CONFIG "
                    "(e.g. --roles configs/glyphs.yaml)");
            usage = 1;
        } else if (roles && roles_arg(roles, &cfg, role_names, &o) != 0) {
            usage = 1;
        }
        o.seed = (uint64_t)seed;
        o.command = cmdline;
        double t0 = tsr_time();
        rc = usage || tsr_mkdirs_for(out) != 0 || tsr_glyphs_build(&o, out) != 0;
        free(scripts_buf);
        free(cfg);
        for (int r = 0; r < TSR_GLYPH_NROLES; r++) free(role_names[r]);
        if (usage) return 2;
        if (rc) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            return 1;
        }
        summary(out);
        tsr_info("prepare glyphs: %.1f s", tsr_time() - t0);
        return 0;
    }
    if (strcmp(kind, "folder") == 0) {
        const char *src = NULL, *out = NULL, *task = NULL;
        int size = 0, channels = 3, resize = TSR_RESIZE_CROP;
        for (int i = 2; i < argc; i++) {
            const char *a = argv[i];
            int bad = 0;
            if (strcmp(a, "--size") == 0 && i + 1 < argc) bad = int_arg(a, argv[++i], 1, 8192, &size);
            else if (strcmp(a, "--channels") == 0 && i + 1 < argc) bad = int_arg(a, argv[++i], 1, 3, &channels);
            else if (strcmp(a, "--task") == 0 && i + 1 < argc) task = argv[++i];
            else if (strcmp(a, "--resize") == 0 && i + 1 < argc) {
                const char *mo = argv[++i];
                if (strcmp(mo, "crop") == 0) resize = TSR_RESIZE_CROP;
                else if (strcmp(mo, "squash") == 0) resize = TSR_RESIZE_SQUASH;
                else {
                    tsr_log(TSR_LOG_ERROR, "prepare folder: --resize expects crop or squash, got '%s'", mo);
                    bad = -1;
                }
            }
            else if (a[0] != '-' && !src) src = a;
            else if (a[0] != '-' && !out) out = a;
            else {
                tsr_log(TSR_LOG_ERROR, "prepare folder: unexpected or incomplete argument '%s'", a);
                bad = -1;
            }
            if (bad) return 2;
        }
        if (!src || !out || !size || !task || channels == 2) {
            tsr_log(TSR_LOG_ERROR, "prepare folder: SRC, OUT, --size and --task are required; --channels is 1 or 3");
            prepare_usage(stderr);
            return 2;
        }
        if (tsr_mkdirs_for(out) != 0 || tsr_import_folder_resize(src, out, size, channels, task, resize) != 0) {
            tsr_log(TSR_LOG_ERROR, "%s", tsr_last_error());
            return 1;
        }
        summary(out);
        return 0;
    }
    tsr_log(TSR_LOG_ERROR, "prepare: unknown kind '%s' (fashion-mnist, glyphs, folder)", kind);
    prepare_usage(stderr);
    return 2;
}
