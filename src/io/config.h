/* config.h: a generic, schema-driven YAML configuration loader (libyaml).
 *
 * A schema is an array of cfg_field, one per leaf key, each naming a dotted key ("model.dim"), a
 * type, the offset of the value in the caller's struct, an optional range or list of choices, a
 * default and a one-line help text. cfg_load fills the struct from the defaults, a YAML file and
 * "key=value" overrides; cfg_dump writes the resolved struct back as commented YAML that cfg_load
 * reads back to the identical struct.
 *
 * Storage of each type in the target struct:
 *   CFG_INT          long
 *   CFG_FLOAT        double
 *   CFG_BOOL         bool (<stdbool.h>)
 *   CFG_STRING       char[CFG_STR_MAX]   (NUL-terminated, at most CFG_STR_MAX-1 bytes, rest zeroed)
 *   CFG_ENUM         char[CFG_STR_MAX]   (one of the choices "a|b|c")
 *   CFG_INT_LIST     cfg_int_list
 *   CFG_FLOAT_LIST   cfg_float_list
 *   CFG_STRING_LIST  cfg_string_list     (each element at most 63 bytes)
 * Unused list elements and the bytes after a string's terminator are zeroed, so two structs loaded
 * from equal configurations compare equal with memcmp (when their padding was zeroed).
 *
 * YAML accepted: the top level is a mapping; nested mappings flatten to dotted keys ("model:
 * {dim: 64}" and "model.dim: 64" are the same key); sequences only for list types. Integers are
 * decimal (no leading zeros, no '_'), floats are decimal or exponent notation (no inf/nan/hex),
 * booleans are true/false, yes/no, on/off (any case). Quoted scalars are strings: "64" is not an
 * integer. For CFG_STRING a plain empty or null value (~, null) is the empty string. A section
 * whose keys are all commented out ("model:" with nothing below) is an empty section.
 *
 * Schema keys are dotted names whose parts are [A-Za-z0-9_-]; a key cannot also be a section
 * ("a" and "a.b"). cfg_load checks this and reports a bad schema or default as an error. */
#ifndef TSR_IO_CONFIG_H
#define TSR_IO_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    CFG_INT,
    CFG_FLOAT, /* stored as double */
    CFG_BOOL,
    CFG_STRING, /* char[CFG_STR_MAX] */
    CFG_ENUM,   /* char[CFG_STR_MAX], value must be one of "a|b|c" */
    CFG_INT_LIST,
    CFG_FLOAT_LIST,
    CFG_STRING_LIST
} cfg_type;

#define CFG_STR_MAX 256
#define CFG_LIST_MAX 256
#define CFG_LIST_STR_MAX 64 /* size of one cfg_string_list element, terminator included */

typedef struct { int n; long v[CFG_LIST_MAX]; } cfg_int_list;
typedef struct { int n; double v[CFG_LIST_MAX]; } cfg_float_list;
typedef struct { int n; char v[CFG_LIST_MAX][CFG_LIST_STR_MAX]; } cfg_string_list;

typedef struct {
    const char *key;     /* dotted: "model.dim" */
    cfg_type type;
    size_t offset;       /* offsetof in the target struct */
    double min, max;     /* inclusive range for INT/FLOAT and for list elements; ignored when min > max */
    const char *choices; /* CFG_ENUM: "a|b|c" */
    const char *def;     /* default value in YAML scalar/flow syntax, e.g. "192", "[0.5, 0.5]", "true",
                            "none"; NULL = required key */
    const char *help;    /* one line, printed as a comment by cfg_dump */
} cfg_field;

/* Fill dst with defaults, then the YAML file (may be NULL: defaults only), then the overrides
 * ("key=value", value in YAML syntax, e.g. "model.dim=64" or "data.mean=[0.5,0.5,0.5]"; a later
 * override of the same key wins; a mapping value sets the keys below it: "model={dim: 64}").
 * Returns 0, or -1 with tsr_error naming the file (or "--set"), the key, the offending value and
 * what was expected, e.g.
 *   "configs/x.yaml:12: key 'model.dim': expected an integer in [1, 65536], got 'abc'"
 *   "configs/x.yaml:3: unknown key 'modle.dim' (did you mean 'model.dim'?)"
 *   "--set model.heads=0: key 'model.heads': expected an integer in [1, 1024], got '0'"
 *   "configs/x.yaml: required key 'model.dim' is missing"
 * On error dst is left unchanged (values are assembled in a scratch copy and written on success;
 * only the bytes of the schema's fields are written). */
int cfg_load(void *dst, const cfg_field *schema, int nfields, const char *path, int nset,
             char *const *sets);

/* The same with several YAML files applied in order (a later file's keys win), then the overrides. */
int cfg_load_files(void *dst, const cfg_field *schema, int nfields, const char *const *paths, int npaths, int nset,
                   char *const *sets);
/* The resolved configuration as YAML text (nested mappings in schema order of first appearance,
 * one comment line per key from help; strings double-quoted and escaped; floats in the shortest
 * form that reads back exactly, always with a '.' so that YAML 1.1 readers see a float),
 * malloc'ed (free with free()). Loads back through cfg_load to the identical struct. */
char *cfg_dump(const void *src, const cfg_field *schema, int nfields);

#endif
