/* import.c: Fashion-MNIST (IDX) and image folders / list files to one-task suites (see import.h).
 * Images are decoded with stb_image (Debian's libstb-dev, header-only use: the implementation is
 * compiled here, with static linkage so that it cannot clash with another copy). */
#define _XOPEN_SOURCE 700
#include "import.h"

#include "build_info.h"
#include "core/common.h"
#include "data/dataset_nc.h"
#include "data/idx.h"
#include "data/image_decoder.h"
#include "data/suite.h"

#include <dirent.h>
#include <setjmp.h>
#include <stddef.h>
#include <limits.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* stb_image's internal checks (STBI_ASSERT) and allocations go through tessera: a check that fails on a
 * malformed file (Debian's copy asserts in stbi__jpeg_huff_decode on some corrupt progressive JPEGs, found
 * by fuzz_image; with NDEBUG the assert is gone and the decoder indexes its tables with the bad symbol)
 * abandons the decode with longjmp instead of aborting or reading on, and every block stb_image allocated
 * in that decode is freed (each carries a header on a per-thread list). The decode becomes a refusal.
 * Blocks are zeroed: stb_image allocates its JPEG decoder state with malloc and a scan that uses a Huffman
 * table the file never defined reads it uninitialised, so what such a file does depended on what the heap
 * held before (the fuzz_image input in tests/fuzz/regressions/image/stb_jpeg_huff_decode_assert.jpg failed
 * stb_image's assert only after other inputs); zeroed, it is the same every time. */
typedef union stb_blk {
    struct {
        union stb_blk *prev, *next;
    } l;
    max_align_t align;
} stb_blk;
static _Thread_local stb_blk *stb_live;  /* blocks stb_image holds on this thread */
static _Thread_local jmp_buf *stb_jump;  /* set while a decode runs on this thread */
static _Thread_local const char *stb_failed_check;

static void stb_link(stb_blk *b) {
    b->l.prev = NULL;
    b->l.next = stb_live;
    if (stb_live) stb_live->l.prev = b;
    stb_live = b;
}
static void stb_unlink(stb_blk *b) {
    if (b->l.prev) b->l.prev->l.next = b->l.next;
    else stb_live = b->l.next;
    if (b->l.next) b->l.next->l.prev = b->l.prev;
}
static void *stb_malloc(size_t n) {
    if (n > SIZE_MAX - sizeof(stb_blk)) return NULL;
    stb_blk *b = calloc(1, sizeof *b + n); /* zeroed: see below */
    if (!b) return NULL;
    stb_link(b);
    return b + 1;
}
static void stb_free(void *p) {
    if (!p) return;
    stb_blk *b = (stb_blk *)p - 1;
    stb_unlink(b);
    free(b);
}
static void *stb_realloc(void *p, size_t n) {
    if (!p) return stb_malloc(n);
    if (n > SIZE_MAX - sizeof(stb_blk)) return NULL;
    stb_blk *b = (stb_blk *)p - 1;
    stb_unlink(b);
    stb_blk *nb = realloc(b, sizeof *nb + n);
    if (!nb) {
        stb_link(b);
        return NULL;
    }
    stb_link(nb);
    return nb + 1;
}
static void stb_free_all(void) {
    while (stb_live) stb_free(stb_live + 1);
}
static void stb_check_failed(const char *what) {
    if (!stb_jump) abort();
    stb_failed_check = what;
    longjmp(*stb_jump, 1);
}
#define STBI_ASSERT(x) ((x) ? (void)0 : stb_check_failed(#x))
#define STBI_MALLOC(n) stb_malloc(n)
#define STBI_REALLOC(p, n) stb_realloc(p, n)
#define STBI_FREE(p) stb_free(p)
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_TGA
#define STBI_ONLY_PNM
#define STBI_NO_HDR
#define STBI_NO_LINEAR
/* This stb_image declares stbi_set_unpremultiply_on_load_thread but defines it as
 * stbi__unpremultiply_on_load_thread; with static linkage the declaration without a definition is
 * a warning, so the definition gets the declared name. */
#define stbi__unpremultiply_on_load_thread stbi_set_unpremultiply_on_load_thread
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include <stb/stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#define MAX_SIZE 8192
/* Decoded images held in memory at once by the folder importer. */
#define DECODE_BLOCK_BYTES ((size_t)256 << 20)
#define MAX_LIST_CLASSES (1 << 20)

/* ------------------------------------------------------------------ provenance helpers */

static char *g_history = NULL;

void tsr_import_set_history(const char *cmdline) {
    free(g_history);
    g_history = NULL;
    if (cmdline) {
        size_t l = strlen(cmdline);
        g_history = tsr_malloc(l + 1);
        memcpy(g_history, cmdline, l + 1);
    }
}

/* The installed version of Debian package `pkg` (a fixed name), or "unknown". */
static void deb_version(const char *pkg, char *buf, size_t n) {
    snprintf(buf, n, "unknown");
    char cmd[256];
    snprintf(cmd, sizeof cmd, "dpkg-query -W -f='${Version}' %s 2>/dev/null", pkg);
    FILE *f = popen(cmd, "r");
    if (!f) return;
    char line[128] = "";
    size_t got = fread(line, 1, sizeof line - 1, f);
    line[got] = 0;
    int st = pclose(f);
    size_t l = strcspn(line, "\r\n");
    line[l] = 0;
    if (st == 0 && l > 0) snprintf(buf, n, "%s", line);
}

static const char *SPLIT_NAMES[3] = {"train", "val", "test"};

static void log_summary(const char *out, const char *task, int64_t n, const int8_t *split, int K,
                        int size, int C) {
    int64_t per[3] = {0, 0, 0};
    for (int64_t i = 0; i < n; i++) per[split[i]]++;
    tsr_info("prepared %s: task '%s', %lld examples (train %lld, val %lld, test %lld), %d classes, "
             "images %d x %d x %d",
             out, task, (long long)n, (long long)per[0], (long long)per[1], (long long)per[2], K,
             size, size, C);
}

/* ------------------------------------------------------------------ Fashion-MNIST */

static const char *const FASHION_CLASSES[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                                "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                                "Bag",         "Ankle boot"};

int tsr_import_fashion_mnist(const char *idx_dir, const char *out_path) {
    if (!idx_dir || !idx_dir[0]) idx_dir = TSR_FASHION_MNIST_DIR;
    if (!out_path || !out_path[0]) return tsr_error("fashion-mnist: no output file given");
    tsr_idx_set tr = {0}, te = {0};
    if (tsr_idx_load(&tr, idx_dir, "train") != 0) return -1;
    if (tsr_idx_load(&te, idx_dir, "t10k") != 0) {
        tsr_idx_free(&tr);
        return -1;
    }
    if (tr.rows != te.rows || tr.cols != te.cols) {
        int rc = tsr_error("%s: train images are %d x %d but t10k images %d x %d", idx_dir, tr.rows,
                           tr.cols, te.rows, te.cols);
        tsr_idx_free(&tr);
        tsr_idx_free(&te);
        return rc;
    }
    const int64_t n = tr.n + te.n;
    const size_t img = (size_t)tr.rows * (size_t)tr.cols;
    uint8_t *px = tsr_malloc((size_t)n * img);
    int *lab = tsr_malloc((size_t)n * sizeof *lab);
    int8_t *split = tsr_malloc((size_t)n);
    memcpy(px, tr.pixels, (size_t)tr.n * img);
    memcpy(px + (size_t)tr.n * img, te.pixels, (size_t)te.n * img);
    for (int64_t i = 0; i < tr.n; i++) {
        lab[i] = tr.labels[i];
        split[i] = TSR_SPLIT_TRAIN;
    }
    for (int64_t i = 0; i < te.n; i++) {
        lab[tr.n + i] = te.labels[i];
        split[tr.n + i] = TSR_SPLIT_TEST;
    }
    const int H = tr.rows, W = tr.cols;
    tsr_idx_free(&tr);
    tsr_idx_free(&te);

    char ver[128], source[1400], hist[2400];
    char real[4096];
    int debian = realpath(idx_dir, real) && strcmp(real, TSR_FASHION_MNIST_DIR) == 0;
    if (debian) {
        deb_version("dataset-fashion-mnist", ver, sizeof ver);
        snprintf(source, sizeof source,
                 "Zalando Research, https://github.com/zalandoresearch/fashion-mnist; IDX files of "
                 "Debian package dataset-fashion-mnist %s (%s)",
                 ver, TSR_FASHION_MNIST_DIR);
    } else {
        snprintf(source, sizeof source,
                 "Zalando Research, https://github.com/zalandoresearch/fashion-mnist; IDX files from "
                 "%.1024s",
                 idx_dir);
    }
    snprintf(hist, sizeof hist, "tessera prepare fashion-mnist --src %.1024s --out %.1024s", idx_dir,
             out_path);
    const char *keys[2] = {"tessera_version", "split_note"};
    const char *vals[2] = {"tessera " TSR_VERSION " (git " TSR_GIT_COMMIT ")",
                           "train = the 60000 training images, test = the 10000 t10k images; no "
                           "val split"};
    tsr_suite_prov prov = {"Fashion-MNIST", source, "MIT", g_history ? g_history : hist, 2, keys,
                           vals};
    tsr_suite_task task = {"fashion-mnist", 10, FASHION_CLASSES, n, px, lab, split};
    int rc = tsr_suite_write(out_path, H, W, 1, 1, &task, &prov);
    if (rc == 0) log_summary(out_path, task.name, n, split, 10, H, 1);
    free(px);
    free(lab);
    free(split);
    return rc;
}

/* ------------------------------------------------------------------ resizing */

/* Contributions of source pixels to one output coordinate. */
typedef struct {
    int first, n;
    float *w;
} contrib_t;

/* Output coordinates [0, size) of an axis of in_len pixels resized to out_len and cropped at
 * offset off: area averaging (box filter over the footprint) when shrinking, bilinear (half-pixel
 * centres, clamped) otherwise. w holds the weights (size * taps floats). */
static void axis_weights(int in_len, int out_len, int off, int size, contrib_t *c, float *w,
                         int taps) {
    const double ratio = (double)in_len / (double)out_len; /* source pixels per output pixel */
    for (int o = 0; o < size; o++) {
        const int u = o + off;
        float *wo = w + (size_t)o * (size_t)taps;
        c[o].w = wo;
        if (ratio > 1.0) {
            double a = u * ratio, b = (u + 1) * ratio;
            int i0 = (int)floor(a), i1 = (int)ceil(b);
            if (i1 > in_len) i1 = in_len;
            if (i0 < 0) i0 = 0;
            int n = 0;
            double sum = 0;
            for (int i = i0; i < i1 && n < taps; i++) {
                double lo = i > a ? i : a, hi = i + 1 < b ? i + 1 : b;
                double v = hi - lo;
                if (v < 0) v = 0;
                wo[n++] = (float)v;
                sum += v;
            }
            for (int k = 0; k < n; k++) wo[k] = (float)(wo[k] / sum);
            c[o].first = i0;
            c[o].n = n;
        } else {
            double sc = (u + 0.5) * ratio - 0.5;
            int i0 = (int)floor(sc);
            double f = sc - i0;
            if (i0 < 0) {
                i0 = 0;
                f = 0;
            }
            if (i0 >= in_len - 1) {
                i0 = in_len - 1;
                f = 0;
            }
            c[o].first = i0;
            if (f > 0) {
                wo[0] = (float)(1.0 - f);
                wo[1] = (float)f;
                c[o].n = 2;
            } else {
                wo[0] = 1.0f;
                c[o].n = 1;
            }
        }
    }
}

/* src (h, w, C) -> dst (size, size, C): short side to size and centre crop (TSR_RESIZE_CROP), or
 * both sides to size (TSR_RESIZE_SQUASH). */
static void resize_crop(const uint8_t *src, int w, int h, int C, int size, int mode, uint8_t *dst) {
    int rw, rh; /* the resized image, before cropping */
    if (mode == TSR_RESIZE_SQUASH) {
        rw = rh = size;
    } else if (w <= h) {
        rw = size;
        rh = (int)lround((double)h * size / w);
        if (rh < size) rh = size;
    } else {
        rh = size;
        rw = (int)lround((double)w * size / h);
        if (rw < size) rw = size;
    }
    const int offx = (rw - size) / 2, offy = (rh - size) / 2;
    const int tx = (int)ceil((double)w / rw) + 2, ty = (int)ceil((double)h / rh) + 2;
    contrib_t *cx = tsr_malloc((size_t)size * sizeof *cx), *cy = tsr_malloc((size_t)size * sizeof *cy);
    float *wx = tsr_malloc((size_t)size * (size_t)tx * sizeof *wx);
    float *wy = tsr_malloc((size_t)size * (size_t)ty * sizeof *wy);
    axis_weights(w, rw, offx, size, cx, wx, tx);
    axis_weights(h, rh, offy, size, cy, wy, ty);
    /* horizontal pass over the source rows that the vertical pass needs */
    int r0 = cy[0].first, r1 = cy[size - 1].first + cy[size - 1].n;
    const size_t row = (size_t)size * (size_t)C;
    float *tmp = tsr_malloc((size_t)(r1 - r0) * row * sizeof *tmp);
    for (int y = r0; y < r1; y++) {
        const uint8_t *s = src + (size_t)y * (size_t)w * (size_t)C;
        float *t = tmp + (size_t)(y - r0) * row;
        for (int o = 0; o < size; o++)
            for (int c = 0; c < C; c++) {
                float acc = 0;
                for (int k = 0; k < cx[o].n; k++)
                    acc += cx[o].w[k] * (float)s[(size_t)(cx[o].first + k) * (size_t)C + (size_t)c];
                t[(size_t)o * (size_t)C + (size_t)c] = acc;
            }
    }
    for (int o = 0; o < size; o++) {
        uint8_t *d = dst + (size_t)o * row;
        for (size_t i = 0; i < row; i++) {
            float acc = 0;
            for (int k = 0; k < cy[o].n; k++)
                acc += cy[o].w[k] * tmp[(size_t)(cy[o].first + k - r0) * row + i];
            if (acc < 0) acc = 0;
            if (acc > 255) acc = 255;
            d[i] = (uint8_t)(acc + 0.5f);
        }
    }
    free(tmp);
    free(cx);
    free(cy);
    free(wx);
    free(wy);
}

/* ------------------------------------------------------------------ file lists */

typedef struct {
    char *path;
    int label;
    int8_t split;
} item_t;

typedef struct {
    item_t *v;
    int64_t n, cap;
} items_t;

typedef struct {
    char **v;
    int n, cap;
} strs_t;

static void strs_push(strs_t *s, const char *x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        s->v = realloc(s->v, (size_t)s->cap * sizeof *s->v);
        if (!s->v) tsr_fatal("out of memory (file names)");
    }
    size_t l = strlen(x);
    s->v[s->n] = tsr_malloc(l + 1);
    memcpy(s->v[s->n++], x, l + 1);
}

static void strs_free(strs_t *s) {
    for (int i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

static int strs_find(const strs_t *s, const char *x) {
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->v[i], x) == 0) return i;
    return -1;
}

static void items_push(items_t *it, char *path, int label, int split) {
    if (it->n == it->cap) {
        it->cap = it->cap ? 2 * it->cap : 256;
        it->v = realloc(it->v, (size_t)it->cap * sizeof *it->v);
        if (!it->v) tsr_fatal("out of memory (file list)");
    }
    it->v[it->n++] = (item_t){path, label, (int8_t)split};
}

static void items_free(items_t *it) {
    for (int64_t i = 0; i < it->n; i++) free(it->v[i].path);
    free(it->v);
    memset(it, 0, sizeof *it);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *p = tsr_malloc(la + lb + 2);
    memcpy(p, a, la);
    size_t o = la;
    if (la > 0 && a[la - 1] != '/') p[o++] = '/';
    memcpy(p + o, b, lb + 1);
    return p;
}

static int is_image_name(const char *name) {
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".bmp", ".gif",
                                      ".tga", ".pnm", ".ppm",  ".pgm"};
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++)
        if (strcasecmp(dot, ext[i]) == 0) return 1;
    return 0;
}

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The entries of dir (hidden ones excluded), sorted bytewise: subdirectories (want_dirs) or image
 * files. Entries of the other kind are counted in *skipped. */
static int list_dir(const char *dir, int want_dirs, strs_t *out, int64_t *skipped) {
    DIR *d = opendir(dir);
    if (!d) return tsr_error("%s: cannot read directory: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char *p = join(dir, e->d_name);
        struct stat sb;
        int ok = stat(p, &sb) == 0;
        free(p);
        if (!ok) {
            (*skipped)++;
            continue;
        }
        if (want_dirs ? S_ISDIR(sb.st_mode) : (S_ISREG(sb.st_mode) && is_image_name(e->d_name)))
            strs_push(out, e->d_name);
        else
            (*skipped)++;
    }
    closedir(d);
    if (out->n > 1) qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_str);
    return 0;
}

static int check_class_name(const char *where, const char *name) {
    if (strlen(name) >= TSR_NAME_MAX)
        return tsr_error("%s: class name '%s' is longer than %d bytes", where, name,
                         TSR_NAME_MAX - 1);
    return 0;
}

/* Folder layouts: src/<class>/... or src/{train,val,test}/<class>/... */
static int scan_folder(const char *src, strs_t *classes, items_t *items, int64_t *skipped) {
    strs_t top = {0};
    if (list_dir(src, 1, &top, skipped) != 0) return -1;
    int has_split = 0;
    for (int i = 0; i < top.n; i++)
        for (int s = 0; s < 3; s++)
            if (strcmp(top.v[i], SPLIT_NAMES[s]) == 0) has_split = 1;
    int rc = -1;
    if (has_split) {
        for (int i = 0; i < top.n; i++) {
            int known = 0;
            for (int s = 0; s < 3; s++) known |= strcmp(top.v[i], SPLIT_NAMES[s]) == 0;
            if (!known) {
                tsr_error("%s: unexpected folder '%s' next to the split folders (a split layout "
                          "holds only train/, val/ and test/, each with one folder per class)",
                          src, top.v[i]);
                goto done;
            }
        }
        for (int s = 0; s < 3; s++) {
            if (strs_find(&top, SPLIT_NAMES[s]) < 0) continue;
            char *sd = join(src, SPLIT_NAMES[s]);
            strs_t cl = {0};
            int r = list_dir(sd, 1, &cl, skipped);
            for (int i = 0; r == 0 && i < cl.n; i++) {
                if (check_class_name(sd, cl.v[i]) != 0) r = -1;
                else if (strs_find(classes, cl.v[i]) < 0) strs_push(classes, cl.v[i]);
            }
            strs_free(&cl);
            free(sd);
            if (r != 0) goto done;
        }
    } else {
        for (int i = 0; i < top.n; i++) {
            if (check_class_name(src, top.v[i]) != 0) goto done;
            strs_push(classes, top.v[i]);
        }
    }
    if (classes->n > 1) qsort(classes->v, (size_t)classes->n, sizeof *classes->v, cmp_str);
    if (classes->n == 0) {
        tsr_error("%s: no class folders (expected %s/<class>/<image files>, or %s/train/<class>/... "
                  "with optional val/ and test/)",
                  src, src, src);
        goto done;
    }
    for (int s = 0; s < 3; s++) {
        if (has_split && strs_find(&top, SPLIT_NAMES[s]) < 0) continue;
        if (!has_split && s > 0) break;
        char *base = has_split ? join(src, SPLIT_NAMES[s]) : join(src, "");
        for (int k = 0; k < classes->n; k++) {
            char *cd = join(base, classes->v[k]);
            if (!is_dir(cd)) {
                free(cd);
                continue;
            }
            strs_t files = {0};
            int r = list_dir(cd, 0, &files, skipped);
            for (int i = 0; r == 0 && i < files.n; i++) items_push(items, join(cd, files.v[i]), k, s);
            strs_free(&files);
            free(cd);
            if (r != 0) {
                free(base);
                goto done;
            }
        }
        free(base);
    }
    rc = 0;
done:
    strs_free(&top);
    return rc;
}

static int parse_split(const char *t) {
    for (int s = 0; s < 3; s++)
        if (strcmp(t, SPLIT_NAMES[s]) == 0) return s;
    if (t[0] >= '0' && t[0] <= '2' && t[1] == 0) return t[0] - '0';
    return -1;
}

/* A list file: "path label [split]" per line. */
static int scan_list(const char *list, strs_t *classes, items_t *items) {
    char *text = NULL;
    size_t len = 0;
    if (tsr_read_file(list, &text, &len) != 0) return -1;
    char *dir = tsr_malloc(strlen(list) + 2);
    strcpy(dir, list);
    char *slash = strrchr(dir, '/');
    if (slash) slash[1] = 0;
    else strcpy(dir, "./");
    strs_t labels = {0}; /* the label token of each item, resolved below */
    int rc = -1, numeric = 1;
    long max_label = -1;
    int lineno = 0;
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = 0;
        lineno++;
        char *tok[4];
        int nt = 0;
        char *save = NULL;
        for (char *p = strtok_r(line, " \t\r", &save); p && nt < 4; p = strtok_r(NULL, " \t\r", &save))
            tok[nt++] = p;
        line = next;
        if (nt == 0 || tok[0][0] == '#') continue;
        if (nt < 2 || nt > 3) {
            tsr_error("%s:%d: expected 'path label [split]' (paths without whitespace), got %d "
                      "fields",
                      list, lineno, nt);
            goto done;
        }
        int split = 0;
        if (nt == 3 && (split = parse_split(tok[2])) < 0) {
            tsr_error("%s:%d: split '%s' is not train, val, test, 0, 1 or 2", list, lineno, tok[2]);
            goto done;
        }
        char *end;
        errno = 0;
        long v = strtol(tok[1], &end, 10);
        if (*end || errno || v < 0 || v >= MAX_LIST_CLASSES) numeric = 0;
        else if (v > max_label) max_label = v;
        if (check_class_name(list, tok[1]) != 0) goto done;
        strs_push(&labels, tok[1]);
        items_push(items, tok[0][0] == '/' ? join("/", tok[0] + 1) : join(dir, tok[0]), 0, split);
    }
    if (items->n == 0) {
        tsr_error("%s: the list names no images", list);
        goto done;
    }
    if (numeric) {
        for (long k = 0; k <= max_label; k++) {
            char d[24];
            snprintf(d, sizeof d, "%ld", k);
            strs_push(classes, d);
        }
        for (int64_t i = 0; i < items->n; i++) items->v[i].label = (int)strtol(labels.v[i], NULL, 10);
    } else {
        for (int i = 0; i < labels.n; i++)
            if (strs_find(classes, labels.v[i]) < 0) strs_push(classes, labels.v[i]);
        qsort(classes->v, (size_t)classes->n, sizeof *classes->v, cmp_str);
        for (int64_t i = 0; i < items->n; i++) {
            /* binary search in the sorted names */
            int lo = 0, hi = classes->n - 1;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (strcmp(classes->v[mid], labels.v[i]) < 0) lo = mid + 1;
                else hi = mid;
            }
            items->v[i].label = lo;
        }
    }
    rc = 0;
done:
    strs_free(&labels);
    free(dir);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------ decoding */

/* Debian's stb_image (git 2022-09-08) does not bound the number of codes in a JPEG Huffman table: a DHT
 * segment whose 16 code-length counts sum to more than 256 makes stbi__build_huffman write past its
 * size[257] table and the DHT reader past values[256] (found by fuzz_image; upstream added the check
 * later). jpeg_huffman_check walks the markers the way stb_image's reader does up to the first scan (SOI,
 * then segments, with the bytes stb skips between them) and checks every DHT table; after the first scan,
 * where how far stb's entropy decoder reads depends on the data, every FF C4 in the rest of the file is
 * checked as a DHT (in valid entropy-coded data an FF is always followed by 00 or a marker, so this refuses
 * no valid file). Returns 0 when the file is safe to hand to stb_image (or not a JPEG), -1 with why set. */
static uint32_t jpeg_get8(const uint8_t *b, size_t n, size_t p) { return p < n ? b[p] : 0; }

static int jpeg_dht_check(const uint8_t *b, size_t n, size_t at, char *why, size_t wn) {
    /* at: the offset of the FF C4 marker */
    long L = (long)((jpeg_get8(b, n, at + 2) << 8) | jpeg_get8(b, n, at + 3)) - 2;
    size_t p = at + 4;
    while (L > 0 && p < n) {
        uint32_t q = jpeg_get8(b, n, p);
        if ((q >> 4) > 1 || (q & 15) > 3) return 0; /* stb_image refuses this header itself */
        uint32_t codes = 0;
        for (int i = 0; i < 16; i++) codes += jpeg_get8(b, n, p + 1 + (size_t)i);
        if (codes > 256) {
            snprintf(why, wn, "corrupt JPEG: the Huffman table at byte %zu has %u codes (at most 256)", at,
                     codes);
            return -1;
        }
        p += 17 + codes;
        L -= 17 + (long)codes;
    }
    return 0;
}

static int jpeg_huffman_check(const uint8_t *b, size_t n, char *why, size_t wn) {
    if (n < 2 || b[0] != 0xFF) return 0; /* stb_image's JPEG reader wants SOI first */
    size_t p = 0;
    int seen_soi = 0;
    while (p < n) {
        /* stbi__get_marker: a byte that is not FF is skipped; FF FF ... FF m gives marker m */
        if (b[p] != 0xFF) {
            p++;
            continue;
        }
        while (p < n && b[p] == 0xFF) p++;
        if (p >= n) return 0;
        uint32_t m = b[p++];
        if (!seen_soi) {
            if (m != 0xD8) return 0; /* not a JPEG to stb_image */
            seen_soi = 1;
            continue;
        }
        if (m == 0xD9) return 0;                              /* EOI */
        if (m == 0xDA) break;                                 /* SOS: the first scan */
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) continue; /* no length */
        if (m == 0xC4 && jpeg_dht_check(b, n, p - 2, why, wn)) return -1;
        size_t L = (size_t)((jpeg_get8(b, n, p) << 8) | jpeg_get8(b, n, p + 1));
        p += L;
    }
    for (size_t i = p > 2 ? p - 2 : 0; i + 1 < n; i++)
        if (b[i] == 0xFF && b[i + 1] == 0xC4 && jpeg_dht_check(b, n, i, why, wn)) return -1;
    return 0;
}

/* Debian's stb_image reads a binary PNM header's numbers (width, height, maximum value) into an int without
 * an overflow check (stbi__pnm_getinteger: signed overflow, undefined behaviour; found by fuzz_image).
 * pnm_header_check walks the header as stb_image does (whitespace and # comments between the numbers) and
 * refuses a number over INT_MAX, and a 16-bit PNM (maximum value over 255), whose channel conversion in this
 * stb_image overruns its buffer. Returns 0 when the file is safe to hand to stb_image (or not a PNM). */
static int pnm_space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

static int pnm_header_check(const uint8_t *b, size_t n, char *why, size_t wn) {
    if (n < 2 || b[0] != 'P' || (b[1] != '5' && b[1] != '6')) return 0;
    size_t p = 2;
    for (int k = 0; k < 3; k++) {
        for (;;) { /* whitespace, then a comment to the end of its line, again */
            while (p < n && pnm_space(b[p])) p++;
            if (p >= n || b[p] != '#') break;
            while (p < n && b[p] != '\n' && b[p] != '\r') p++;
        }
        long long v = 0;
        while (p < n && b[p] >= '0' && b[p] <= '9') {
            v = v * 10 + (b[p++] - '0');
            if (v > INT_MAX) {
                snprintf(why, wn, "corrupt PNM: header number %d (%s) larger than %d", k + 1,
                         k == 0 ? "width" : k == 1 ? "height" : "maximum value", INT_MAX);
                return -1;
            }
        }
        if (k == 2 && v > 255) {
            /* a 16-bit PNM: this stb_image converts its channels with the 8-bit routine, then reads the
             * result as 16-bit samples, past the end of its buffer (heap overflow; found by fuzz_image) */
            snprintf(why, wn, "16-bit PNM (maximum value %lld) is not supported: convert it to 8 bits", v);
            return -1;
        }
    }
    return 0;
}

/* stb_image's own limit is 2^24 per side; an image of more than this many pixels is refused before it is
 * decoded (a 4096 x 4096 photo is 2^24; prepare folder makes thumbnails of at most a few hundred pixels) */
#define TSR_IMAGE_MAX_PIXELS ((size_t)1 << 28)
static size_t image_max_pixels = TSR_IMAGE_MAX_PIXELS;
void tsr_import_set_max_pixels(size_t n) { image_max_pixels = n ? n : TSR_IMAGE_MAX_PIXELS; }

/* Debian's stb_image reads palette entries a file never defined from uninitialised stack: stbi__bmp_load's
 * pal[256][4] for pixel indices past the palette the file gives (and likewise the PNG reader's palette[1024]).
 * Such a file decoded to whatever the stack held, different from one decode to the next and possibly bytes of
 * tessera's own (found by fuzz_image, which decodes each input twice and compares). The stack below the decoder's
 * caller is zeroed before each decode (stb_image's deepest frame, the GIF reader's, is 35 KB in a Release build):
 * those entries then read as 0, the same every time. */
#define STACK_SCRUB_BYTES (128 * 1024)
__attribute__((noinline)) static void scrub_stack(void) {
    unsigned char buf[STACK_SCRUB_BYTES];
    memset(buf, 0, sizeof buf);
    __asm__ volatile("" : : "r"(buf) : "memory"); /* the stores are not removed */
}

/* Decode item path to size x size x C into dst. msg gets the error (naming the file). */
int tsr_import_decode_image(const char *path, int size, int C, int mode, uint8_t *dst, char *msg, size_t mn) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, mn, "%s: cannot open image: %s", path, strerror(errno));
        return -1;
    }
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    int rerr = 0;
    for (;;) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 65536;
            if (nc > (size_t)INT_MAX) {
                rerr = EFBIG;
                break;
            }
            uint8_t *nb = realloc(buf, nc);
            if (!nb) {
                rerr = ENOMEM;
                break;
            }
            buf = nb;
            cap = nc;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) rerr = errno ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (rerr) {
        free(buf);
        snprintf(msg, mn, "%s: cannot read image: %s", path,
                 rerr == EFBIG ? "larger than 2 GiB" : strerror(rerr));
        return -1;
    }
    char why[160];
    if (jpeg_huffman_check(buf, n, why, sizeof why) || pnm_header_check(buf, n, why, sizeof why)) {
        free(buf);
        snprintf(msg, mn, "%s: cannot decode image (%s)", path, why);
        return -1;
    }
    int w = 0, h = 0, nch = 0;
    jmp_buf jb;
    stb_jump = &jb;
    if (setjmp(jb)) { /* a check inside stb_image failed: everything it allocated is freed */
        stb_jump = NULL;
        stb_free_all();
        free(buf);
        snprintf(msg, mn, "%s: cannot decode image (corrupt: stb_image's check '%.200s' failed)", path,
                 stb_failed_check);
        return -1;
    }
    if (stbi_info_from_memory(buf, (int)n, &w, &h, &nch) && w > 0 && h > 0 &&
        (size_t)w * (size_t)h > image_max_pixels) {
        stb_jump = NULL;
        free(buf);
        snprintf(msg, mn, "%s: image of %d x %d pixels is larger than tessera decodes (at most %zu pixels)",
                 path, w, h, image_max_pixels);
        return -1;
    }
    scrub_stack();
    uint8_t *px = stbi_load_from_memory(buf, (int)n, &w, &h, &nch, C);
    stb_jump = NULL;
    free(buf);
    if (!px) {
        snprintf(msg, mn, "%s: cannot decode image (%s); expected a PNG, JPEG, BMP, GIF, TGA or "
                 "PNM file",
                 path, stbi_failure_reason());
        return -1;
    }
    if (w < 1 || h < 1) {
        stbi_image_free(px);
        snprintf(msg, mn, "%s: image has size %d x %d", path, w, h);
        return -1;
    }
    resize_crop(px, w, h, C, size, mode, dst);
    stbi_image_free(px);
    return 0;
}

static const char *base_name(const char *src, char *buf, size_t n) {
    snprintf(buf, n, "%s", src);
    size_t l = strlen(buf);
    while (l > 1 && buf[l - 1] == '/') buf[--l] = 0;
    char *b = strrchr(buf, '/');
    b = b ? b + 1 : buf;
    char *dot = strrchr(b, '.');
    if (dot && dot != b) *dot = 0;
    return b;
}

int tsr_import_folder(const char *src, const char *out_path, int size, int channels,
                      const char *task_name) {
    return tsr_import_folder_resize(src, out_path, size, channels, task_name, TSR_RESIZE_CROP);
}

int tsr_import_folder_resize(const char *src, const char *out_path, int size, int channels,
                             const char *task_name, int resize_mode) {
    if (!src || !src[0]) return tsr_error("prepare folder: no source given");
    if (!out_path || !out_path[0]) return tsr_error("%s: prepare folder: no output file given", src);
    if (size < 1 || size > MAX_SIZE)
        return tsr_error("%s: prepare folder: size %d, expected 1 to %d", src, size, MAX_SIZE);
    if (channels != 1 && channels != 3)
        return tsr_error("%s: prepare folder: channels %d, expected 1 (grey) or 3 (RGB)", src,
                         channels);
    if (resize_mode != TSR_RESIZE_CROP && resize_mode != TSR_RESIZE_SQUASH)
        return tsr_error("%s: prepare folder: resize mode %d, expected crop (%d) or squash (%d)",
                         src, resize_mode, TSR_RESIZE_CROP, TSR_RESIZE_SQUASH);
    char tbuf[1024];
    const char *task = task_name && task_name[0] ? task_name : base_name(src, tbuf, sizeof tbuf);
    if (!task[0] || strlen(task) >= TSR_NAME_MAX)
        return tsr_error("%s: prepare folder: task name '%s' must have 1 to %d bytes", src, task,
                         TSR_NAME_MAX - 1);
    struct stat sb;
    if (stat(src, &sb) != 0) return tsr_error("%s: %s", src, strerror(errno));
    strs_t classes = {0};
    items_t items = {0};
    int64_t skipped = 0;
    int rc = S_ISDIR(sb.st_mode) ? scan_folder(src, &classes, &items, &skipped)
                                 : scan_list(src, &classes, &items);
    if (rc != 0) goto done;
    rc = -1;
    if (items.n == 0) {
        tsr_error("%s: no image files found (recognised by extension: .png .jpg .jpeg .bmp .gif "
                  ".tga .pnm .ppm .pgm)",
                  src);
        goto done;
    }
    if (skipped > 0)
        tsr_info("%s: skipped %lld entries that are not class folders or image files", src,
                 (long long)skipped);
    tsr_info("%s: decoding %lld images of %d classes to %d x %d x %d", src, (long long)items.n,
             classes.n, size, size, channels);

    const int64_t n = items.n;
    const size_t img = (size_t)size * (size_t)size * (size_t)channels;
    int *lab = tsr_malloc((size_t)n * sizeof *lab);
    int8_t *split = tsr_malloc((size_t)n);
    for (int64_t i = 0; i < n; i++) {
        lab[i] = items.v[i].label;
        split[i] = items.v[i].split;
    }
    char ver[128], source[2048], hist[3000], sz[32], ch[8];
    deb_version("libstb-dev", ver, sizeof ver);
    snprintf(source, sizeof source,
             "images from %.1024s, decoded with stb_image (Debian package libstb-dev %s)", src, ver);
    snprintf(hist, sizeof hist,
             "tessera prepare folder %.1024s %.1024s --size %d --channels %d --task %s%s", src,
             out_path, size, channels, task,
             resize_mode == TSR_RESIZE_SQUASH ? " --resize squash" : "");
    snprintf(sz, sizeof sz, "%d", size);
    snprintf(ch, sizeof ch, "%d", channels);
    const char *keys[4] = {"tessera_version", "import_size", "import_channels", "import_resize"};
    const char *vals[4] = {
        "tessera " TSR_VERSION " (git " TSR_GIT_COMMIT ")", sz, ch,
        resize_mode == TSR_RESIZE_SQUASH
            ? "both sides resized to import_size, aspect ratio not kept (area average when "
              "shrinking, bilinear when enlarging)"
            : "short side resized to import_size (area average when shrinking, bilinear when "
              "enlarging), then centre crop"};
    tsr_suite_prov prov = {task, source, "unknown: see the licence of the source images",
                           g_history ? g_history : hist, 4, keys, vals};
    tsr_suite_task t = {task, classes.n, (const char *const *)classes.v, n, NULL, NULL, NULL};
    tsr_suite_writer *w = NULL;
    if (tsr_suite_writer_open(&w, out_path, size, size, channels, 1, &t, &prov) != 0) {
        free(lab);
        free(split);
        goto done;
    }
    /* decode and write in blocks of at most DECODE_BLOCK_BYTES, so that memory does not grow
     * with the number of images */
    int64_t block = (int64_t)(DECODE_BLOCK_BYTES / img);
    if (block < 1) block = 1;
    if (block > n) block = n;
    uint8_t *px = tsr_malloc((size_t)block * img);
    int failed = 0;
    /* one decoding process per thread (image_decoder.h): stb_image never runs in this process */
#ifdef _OPENMP
    const int nthreads = omp_get_max_threads();
#else
    const int nthreads = 1;
#endif
    tsr_image_decoder **decs = tsr_malloc((size_t)nthreads * sizeof *decs);
    for (int t = 0; t < nthreads; t++) {
        decs[t] = tsr_image_decoder_new();
        tsr_image_decoder_start(decs[t]);
    }
    for (int64_t b0 = 0; b0 < n && !failed; b0 += block) {
        const int64_t k = n - b0 < block ? n - b0 : block;
        int64_t bad = -1;
        char bad_msg[2048] = "";
#pragma omp parallel for schedule(dynamic, 4)
        for (int64_t i = 0; i < k; i++) {
            char msg[2048];
#ifdef _OPENMP
            tsr_image_decoder *dec = decs[omp_get_thread_num()];
#else
            tsr_image_decoder *dec = decs[0];
#endif
            if (tsr_image_decoder_decode(dec, items.v[b0 + i].path, size, channels, resize_mode,
                                         px + (size_t)i * img, msg, sizeof msg) != 0) {
#pragma omp critical(tsr_import_error)
                {
                    if (bad < 0 || i < bad) {
                        bad = i;
                        snprintf(bad_msg, sizeof bad_msg, "%s", msg);
                    }
                }
            }
        }
        if (bad >= 0) {
            tsr_error("%s", bad_msg);
            failed = 1;
        } else if (tsr_suite_writer_append(w, k, px, lab + b0, split + b0) != 0) {
            failed = 1;
        }
    }
    for (int t = 0; t < nthreads; t++) tsr_image_decoder_free(decs[t]);
    free(decs);
    free(px);
    if (failed) {
        tsr_suite_writer_abort(w);
    } else {
        rc = tsr_suite_writer_close(w);
        if (rc == 0) log_summary(out_path, task, n, split, classes.n, size, channels);
    }
    free(lab);
    free(split);
done:
    strs_free(&classes);
    items_free(&items);
    return rc;
}
