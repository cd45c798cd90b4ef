/* glyphs.h: the glyph suite, an Omniglot-like multi-task data set rendered with FreeType.
 *
 * One task per writing system (script). A built-in table names each script's letters (Unicode
 * code point ranges, in class order) and the font files that cover it (fnmatch patterns over the
 * file names in the font directories, Debian's fonts-noto-core by default). A task's classes are the
 * first max_classes distinct characters of its ranges that every one of its fonts has a non-empty,
 * spacing glyph for; a class's examples are renderings of the character across those fonts
 * (Sans / Serif / Looped ..., Regular / Bold / Italic ...) under seeded affine jitter (rotation,
 * scale, aspect, shear, translation, stroke weight), mild blur and noise: white anti-aliased glyph
 * on black, centred, grey (1 channel). Scripts whose fonts are missing or that reach fewer than
 * min_classes classes are dropped (and reported). See docs/GLYPHS.md.
 *
 * Determinism: everything after the font files is integer arithmetic (FreeType's fixed point, the
 * xoshiro stream of core/rng.h), so the same seed, options and font files give the same pixels on
 * every machine and compiler; each example has its own random stream derived from (seed, task name,
 * class, example), so a task's images do not depend on which other scripts are present. */
#ifndef TSR_GLYPHS_H
#define TSR_GLYPHS_H
#include <stdint.h>

#define TSR_GLYPHS_DEFAULT_FONT_DIR "/usr/share/fonts/truetype/noto"

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
    int jitter;             /* 1: affine jitter, stroke weight, blur and noise (1); 0: clean renderings */
    int nscripts;           /* > 0: build only these task names, in this order; a dropped one is an error */
    const char *const *scripts;
    const char *command;    /* the command line, recorded in the file's history (NULL: "tsr_glyphs_build") */
} tsr_glyph_opts;

/* The defaults above. */
void tsr_glyph_opts_init(tsr_glyph_opts *o);

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
 * k % examples. */
typedef struct {
    const tsr_glyph_script *script;
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

/* One clean rendering (no jitter or noise) of code point cp from a font file, scaled to fit and
 * centred in a size x size image (img, size*size bytes). 0 / -1 (tsr_error: the font cannot be
 * opened, has no glyph for cp, or the glyph is empty). */
int tsr_glyphs_render_char(const char *font_path, uint32_t cp, int size, uint8_t *img);

/* Build the whole suite and write it with tsr_suite_write (data/suite.h): one task per usable script
 * (o->scripts, or the whole table), channels 1. Logs the tasks, classes, examples and the dropped
 * scripts. Provenance attributes record the seed, options, font files (size and CRC-32), the Debian
 * packages that own the font directories, and FreeType's version. 0 / -1 (tsr_error). */
int tsr_glyphs_build(const tsr_glyph_opts *o, const char *out_path);

#endif
