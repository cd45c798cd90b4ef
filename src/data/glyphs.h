/* glyphs.h: the glyph suite, an Omniglot-like multi-task data set rendered with FreeType.
 *
 * One task per writing system (script). A built-in table names each script's letters (Unicode
 * code point ranges, in class order) and the font files that cover it (fnmatch patterns over the
 * file names in the font directories: Debian's fonts-noto-core and fonts-noto-extra by default). A
 * task's classes are the first max_classes distinct characters of its ranges that every one of its
 * fonts has a non-empty, spacing glyph for; a class's examples are renderings of the character
 * across those fonts (Sans / Serif / Mono / Looped ..., Thin ... Black, ExtraCondensed ... normal
 * width, upright / italic) under seeded augmentation (affine jitter: rotation, scale, aspect, shear,
 * translation; stroke weight by FreeType emboldening; elastic distortion; mild blur and noise): white
 * anti-aliased glyph on black, grey (1 channel). Scripts whose fonts are missing or that reach fewer
 * than min_classes classes are dropped (and reported).
 *
 * Suite v2: each script may have a role (the suite.source / train / val / heldout lists of
 * configs/glyphs.yaml), and each role its own number of renderings per class and split; the test
 * renderings of the val and heldout roles are plain (clean, centred, cycling over the fonts) and do
 * not depend on the seed. Scripts without a role use examples / n_val / n_test. See docs/GLYPHS.md.
 *
 * Determinism: everything after the font files is integer arithmetic (FreeType's fixed point, the
 * xoshiro stream of core/rng.h, the integer elastic field), so the same seed, options and font files
 * give the same pixels on every machine and compiler; each example has its own random stream derived
 * from (seed, task name, class, example), so a task's images do not depend on which other scripts are
 * present or on the number of threads. */
#ifndef TSR_GLYPHS_H
#define TSR_GLYPHS_H
#include <stdint.h>

#define TSR_GLYPHS_DEFAULT_FONT_DIR "/usr/share/fonts/truetype/noto"

/* Roles of a task in the suite (configs/glyphs.yaml's suite.* lists). */
enum {
    TSR_GLYPH_NO_ROLE = 0, /* in no list: examples / n_val / n_test, augmented */
    TSR_GLYPH_SOURCE,      /* suite.source: backbone pre-training */
    TSR_GLYPH_TRAIN,       /* suite.train: multi-task adapter training */
    TSR_GLYPH_VAL,         /* suite.val: few-shot validation (hyper-parameter choice) */
    TSR_GLYPH_HELDOUT,     /* suite.heldout: few-shot test */
    TSR_GLYPH_NROLES
};
/* "none", "source", "train", "val", "heldout" (NULL out of range). */
const char *tsr_glyph_role_name(int role);

/* Renderings per class of one role, by split. */
typedef struct {
    int train, val, test; /* split 0, 1, 2; train >= 1 */
    int plain_test;       /* 1: the test renderings are clean (no augmentation), centred, going round
                             the task's fonts from the first, whatever the seed */
} tsr_glyph_counts;

typedef struct {
    const char *font_dir;   /* font directories, ':'-separated, not searched recursively
                               (NULL: TSR_GLYPHS_DEFAULT_FONT_DIR) */
    int image_size;         /* image side in pixels, 8..1024 (28) */
    int max_classes;        /* classes per task, at most (20) */
    int min_classes;        /* scripts with fewer usable characters are dropped (10); 2..max_classes */
    int examples;           /* renderings per class (20) */
    int n_val;              /* per class, examples in split 1 (val) (3) */
    int n_test;             /* per class, examples in split 2 (test) (5); n_val + n_test < examples */
    uint64_t seed;          /* (0) */
    int jitter;             /* 1: augmented renderings: affine jitter, stroke weight, elastic distortion (if
                               elastic), blur and noise (1); 0: clean renderings everywhere */
    int elastic;            /* 1: elastic distortion in augmented renderings (1) */
    /* Roles (optional). role_n[r] task names in role_scripts[r] for r = TSR_GLYPH_SOURCE ..
     * TSR_GLYPH_HELDOUT (index 0 unused); every name must be in the script table and in one list
     * only, and a listed script that cannot be built is an error. counts[r]: the renderings of that
     * role's scripts (defaults: source 100/10/10, train 40/5/5, val and heldout 20/5/10 with plain
     * test renderings); scripts in no list use examples / n_val / n_test. */
    const char *roles_file; /* where the lists come from, for messages and provenance (NULL: "roles") */
    int role_n[TSR_GLYPH_NROLES];
    const char *const *role_scripts[TSR_GLYPH_NROLES];
    tsr_glyph_counts counts[TSR_GLYPH_NROLES];
    int nscripts;           /* > 0: build only these task names, in this order; a dropped one is an error */
    const char *const *scripts;
    const char *command;    /* the command line, recorded in the file's history (NULL: "tsr_glyphs_build") */
} tsr_glyph_opts;

/* The defaults above (no roles). */
void tsr_glyph_opts_init(tsr_glyph_opts *o);
/* The role of a script under o (TSR_GLYPH_NO_ROLE when it is in no list). */
int tsr_glyph_role_of(const tsr_glyph_opts *o, const char *script);

/* One code point range: lo, lo + step, ..., <= hi (step 0 means 1). */
typedef struct {
    uint32_t lo, hi, step;
} tsr_glyph_range;

#define TSR_GLYPH_MAX_RANGES 12

typedef struct {
    const char *name;   /* task name, e.g. "armenian", "canadian-aboriginal" */
    const char *title;  /* e.g. "Armenian", "Unified Canadian Aboriginal Syllabics" */
    const char *fonts;  /* space-separated fnmatch(3) patterns over font file names */
    tsr_glyph_range ranges[TSR_GLYPH_MAX_RANGES]; /* in class order; unused entries are zero */
} tsr_glyph_script;

/* The built-in script table (in task order). */
int tsr_glyph_script_count(void);
const tsr_glyph_script *tsr_glyph_script_at(int i);
const tsr_glyph_script *tsr_glyph_script_find(const char *name); /* NULL if not in the table */

/* One task in memory. Examples are class-major: example k is class k / examples, rendering
 * k % examples. With plain test renderings, renderings 0 .. n_test-1 of each class are the test ones. */
typedef struct {
    const tsr_glyph_script *script;
    int role;            /* TSR_GLYPH_NO_ROLE .. TSR_GLYPH_HELDOUT */
    int examples, n_val, n_test, plain_test; /* per class, as used */
    int nfonts;
    char **fonts;        /* full paths, in use order (directory order, then file name) */
    int num_classes;
    uint32_t *codepoints;
    char **class_names;  /* "U+0531 Ա" (code point, then the character in UTF-8) */
    int64_t n;           /* num_classes * examples (0 after a scan) */
    int size;            /* image side */
    uint8_t *images;     /* (n, size, size), 0 black .. 255 white */
    int *labels;         /* (n) */
    int8_t *split;       /* (n): 0 train, 1 val, 2 test */
    char reason[256];    /* why the script was dropped (status 1) */
} tsr_glyph_task;

/* Find a script's fonts and classes without rendering the examples. Returns 0 if usable, 1 if
 * dropped (no font file matches, or fewer than min_classes characters; t->reason says which), -1 on
 * error (an unreadable font directory or font file; tsr_error). t is filled in all cases and must be
 * freed with tsr_glyph_task_free. */
int tsr_glyphs_scan(const tsr_glyph_opts *o, const tsr_glyph_script *s, tsr_glyph_task *t);
/* Scan and render the examples (images, labels, split). Same return values. */
int tsr_glyphs_render_task(const tsr_glyph_opts *o, const tsr_glyph_script *s, tsr_glyph_task *t);
void tsr_glyph_task_free(tsr_glyph_task *t);

/* The augmentation of one rendering, all fixed point. tsr_glyph_aug_clean gives the identity. */
typedef struct {
    int32_t angle;       /* rotation, degrees, 16.16 */
    int32_t scale;       /* overall size factor, 16.16 (65536: none) */
    int32_t aspect;      /* x scale 1 + aspect, y scale 1 - aspect, 16.16 */
    int32_t shear;       /* x += shear * y, 16.16 */
    int32_t dx, dy;      /* translation, 26.6 pixels */
    int embolden_pm;     /* stroke change (FT_Outline_EmboldenXY), thousandths of the glyph's larger side */
    int elastic_alpha;   /* elastic strength alpha, pixels in 8.8 fixed point (0: none); see tsr_glyphs_elastic */
    int blur_w;          /* 0: none; else the side weights of the [w, 256-2w, w] / 256 kernel */
    int noise_amp;       /* noise standard deviation, grey levels */
    uint64_t seed;       /* the stream of the elastic field and the noise */
} tsr_glyph_aug;

void tsr_glyph_aug_clean(tsr_glyph_aug *a);

/* One clean rendering (no jitter or noise) of code point cp from a font file, scaled to fit and
 * centred in a size x size image (img, size*size bytes). 0 / -1 (tsr_error: the font cannot be
 * opened, has no glyph for cp, or the glyph is empty). */
int tsr_glyphs_render_char(const char *font_path, uint32_t cp, int size, uint8_t *img);
/* The same under an augmentation (NULL: clean). An augmentation that leaves the image empty is an
 * error too. */
int tsr_glyphs_render_char_aug(const char *font_path, uint32_t cp, int size, const tsr_glyph_aug *aug,
                               uint8_t *img);

/* Elastic distortion of a size x size grey image in place (Simard, Steinkraus and Platt 2003): two
 * fields of uniform integer noise in [-1, 1) are smoothed by three passes of a box filter of odd width
 * w = 2 * floor(size / 8) + 1 in x and in y (an integer approximation of a Gaussian of sigma
 * sqrt((w^2 - 1) / 4): 3.46 px at size 28), scaled by alpha (pixels, 8.8 fixed point) into a
 * displacement field (1/256 pixel), and the image is resampled bilinearly at the displaced positions
 * (black outside). Integer only; the noise comes from seed. alpha <= 0 leaves the image unchanged. */
void tsr_glyphs_elastic(uint8_t *img, int size, int alpha, uint64_t seed);

/* Build the whole suite and write it with tsr_suite_write (data/suite.h): one task per usable script
 * (o->scripts, or the whole table), channels 1. Logs the tasks, classes, examples and the dropped
 * scripts. Provenance attributes record the seed, options, roles and counts per role, augmentation
 * parameters, font files (size and CRC-32), the Debian packages that own the font directories, and
 * FreeType's version. 0 / -1 (tsr_error). */
int tsr_glyphs_build(const tsr_glyph_opts *o, const char *out_path);

#endif
