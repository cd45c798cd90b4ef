/* config.c: schema-driven YAML configuration loader and dumper (libyaml document API).
 *
 * Loading walks the YAML node graph, flattening nested mappings to dotted keys, and writes each
 * value into a zeroed scratch copy of the target struct; the fields are copied into the caller's
 * struct only when every source (defaults, file, overrides) was read without error. */
#define _POSIX_C_SOURCE 200809L
#include "io/config.h"

#include "core/common.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define KEY_MAX 512    /* longest dotted key accepted */
#define SHOW_MAX 64    /* longest value quoted back in an error message */

/* ------------------------------------------------------------------------------------------------
 * Loader state */

typedef struct {
    const cfg_field *schema;
    int n;
    unsigned char *scratch; /* values are assembled here */
    int *line;              /* per field: line where the current source set it (0 = not yet) */
    bool *given;            /* per field: set by the defaults or any source */
    const char *src;        /* error prefix: file path, "--set k=v" or "default of 'k'" */
    bool with_line;         /* prefix errors with "src:line:" (files) rather than "src:" */
    yaml_document_t *doc;   /* the document being walked */
} loader;

static int lerr(const loader *L, int line, const char *fmt, ...) TSR_PRINTF(3, 4);
static int lerr(const loader *L, int line, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (L->with_line && line > 0) return tsr_error("%s:%d: %s", L->src, line, msg);
    return tsr_error("%s: %s", L->src, msg);
}

static size_t field_size(cfg_type t) {
    switch (t) {
    case CFG_INT: return sizeof(long);
    case CFG_FLOAT: return sizeof(double);
    case CFG_BOOL: return sizeof(bool);
    case CFG_STRING:
    case CFG_ENUM: return CFG_STR_MAX;
    case CFG_INT_LIST: return sizeof(cfg_int_list);
    case CFG_FLOAT_LIST: return sizeof(cfg_float_list);
    case CFG_STRING_LIST: return sizeof(cfg_string_list);
    }
    return 0;
}

static bool is_list(cfg_type t) {
    return t == CFG_INT_LIST || t == CFG_FLOAT_LIST || t == CFG_STRING_LIST;
}

static bool has_range(const cfg_field *f) { return f->min <= f->max; }

/* ------------------------------------------------------------------------------------------------
 * Messages */

/* A value quoted for an error message: at most SHOW_MAX bytes, control characters as '?'. */
static const char *show(const char *s, size_t len, char *buf, size_t cap) {
    size_t k = 0, lim = len < SHOW_MAX ? len : SHOW_MAX;
    for (size_t i = 0; i < lim && k + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[k++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (len > lim) {
        for (int i = 0; i < 3 && k + 1 < cap; i++) buf[k++] = '.';
    }
    buf[k] = 0;
    return buf;
}

static void fmt_range(const cfg_field *f, bool integer, char *buf, size_t cap) {
    if (!has_range(f)) { buf[0] = 0; return; }
    if (integer) snprintf(buf, cap, " in [%.0f, %.0f]", f->min, f->max);
    else snprintf(buf, cap, " in [%g, %g]", f->min, f->max);
}

static void fmt_choices(const char *choices, char *buf, size_t cap) {
    size_t k = 0;
    for (const char *p = choices; *p && k + 3 < cap; p++) {
        if (*p == '|') { buf[k++] = ','; buf[k++] = ' '; }
        else buf[k++] = *p;
    }
    buf[k] = 0;
}

/* What a value of element type t (the field's type, or for lists the element type) must be. */
static void describe_elem(const cfg_field *f, cfg_type t, char *buf, size_t cap) {
    char r[128], c[512];
    switch (t) {
    case CFG_INT: fmt_range(f, true, r, sizeof r); snprintf(buf, cap, "an integer%s", r); break;
    case CFG_FLOAT: fmt_range(f, false, r, sizeof r); snprintf(buf, cap, "a number%s", r); break;
    case CFG_BOOL: snprintf(buf, cap, "a boolean (true/false, yes/no, on/off)"); break;
    case CFG_STRING: snprintf(buf, cap, "a string of at most %d bytes", CFG_STR_MAX - 1); break;
    case CFG_STRING_LIST: snprintf(buf, cap, "a string of at most %d bytes", CFG_LIST_STR_MAX - 1); break;
    case CFG_ENUM:
        fmt_choices(f->choices, c, sizeof c);
        snprintf(buf, cap, "one of: %s", c);
        break;
    default: snprintf(buf, cap, "a value"); break;
    }
}

static void describe(const cfg_field *f, char *buf, size_t cap) {
    char r[128];
    switch (f->type) {
    case CFG_INT_LIST:
        fmt_range(f, true, r, sizeof r);
        snprintf(buf, cap, "a list of at most %d integers%s", CFG_LIST_MAX, r);
        break;
    case CFG_FLOAT_LIST:
        fmt_range(f, false, r, sizeof r);
        snprintf(buf, cap, "a list of at most %d numbers%s", CFG_LIST_MAX, r);
        break;
    case CFG_STRING_LIST:
        snprintf(buf, cap, "a list of at most %d strings of at most %d bytes", CFG_LIST_MAX,
                 CFG_LIST_STR_MAX - 1);
        break;
    default: describe_elem(f, f->type, buf, cap); break;
    }
}

/* How a value node reads in "got ...": "'abc'", "a quoted string '64'", "a list", "a mapping". */
static const char *node_desc(const yaml_node_t *v, char *buf, size_t cap) {
    char tmp[SHOW_MAX + 8];
    if (!v) { snprintf(buf, cap, "an empty value"); return buf; }
    if (v->type == YAML_SEQUENCE_NODE) { snprintf(buf, cap, "a list"); return buf; }
    if (v->type == YAML_MAPPING_NODE) { snprintf(buf, cap, "a mapping"); return buf; }
    const char *s = (const char *)v->data.scalar.value;
    size_t len = v->data.scalar.length;
    show(s, len, tmp, sizeof tmp);
    if (v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) snprintf(buf, cap, "a quoted string '%s'", tmp);
    else if (len == 0) snprintf(buf, cap, "an empty value");
    else snprintf(buf, cap, "'%s'", tmp);
    return buf;
}

/* ------------------------------------------------------------------------------------------------
 * Keys */

static int find_field(const loader *L, const char *key) {
    for (int i = 0; i < L->n; i++)
        if (strcmp(L->schema[i].key, key) == 0) return i;
    return -1;
}

/* Is prefix a section, i.e. does some key start with "prefix."? */
static bool is_section(const loader *L, const char *prefix) {
    size_t n = strlen(prefix);
    for (int i = 0; i < L->n; i++)
        if (strncmp(L->schema[i].key, prefix, n) == 0 && L->schema[i].key[n] == '.') return true;
    return false;
}

/* Optimal string alignment distance (Levenshtein plus adjacent transpositions). */
static int edit_distance(const char *a, size_t na, const char *b, size_t nb) {
    if (na > KEY_MAX || nb > KEY_MAX) return 1 << 20;
    int *d = tsr_malloc((na + 1) * (nb + 1) * sizeof *d);
#define D(i, j) d[(i) * (nb + 1) + (j)]
    for (size_t i = 0; i <= na; i++) D(i, 0) = (int)i;
    for (size_t j = 0; j <= nb; j++) D(0, j) = (int)j;
    for (size_t i = 1; i <= na; i++) {
        for (size_t j = 1; j <= nb; j++) {
            int cost = a[i - 1] != b[j - 1];
            int v = D(i - 1, j) + 1;
            if (D(i, j - 1) + 1 < v) v = D(i, j - 1) + 1;
            if (D(i - 1, j - 1) + cost < v) v = D(i - 1, j - 1) + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && D(i - 2, j - 2) + 1 < v)
                v = D(i - 2, j - 2) + 1;
            D(i, j) = v;
        }
    }
    int r = D(na, nb);
#undef D
    free(d);
    return r;
}

/* " (did you mean 'x'?)" for the closest key or section within distance 2, else "". */
static const char *suggest(const loader *L, const char *key, char *buf, size_t cap) {
    int best = 3;
    buf[0] = 0;
    size_t nk = strlen(key);
    for (int i = 0; i < L->n; i++) {
        const char *k = L->schema[i].key;
        /* the key itself and each of its sections ("a", "a.b" for "a.b.c") */
        for (const char *e = k;; e++) {
            if (*e == '.' || *e == 0) {
                size_t len = (size_t)(e - k);
                int dist = edit_distance(key, nk, k, len);
                if (dist > 0 && dist < best) {
                    best = dist;
                    snprintf(buf, cap, " (did you mean '%.*s'?)", (int)len, k);
                }
            }
            if (*e == 0) break;
        }
    }
    return buf;
}

/* ------------------------------------------------------------------------------------------------
 * Scalars */

static int parse_long(const char *s, long *out) {
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!isdigit((unsigned char)*p)) return -1;
    if (p[0] == '0' && p[1] != 0) return -1; /* no leading zeros (YAML 1.1 reads them as octal) */
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q)) return -1;
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (errno == ERANGE) return -2;
    if (end == s || *end) return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out) {
    bool digit = false;
    if (!*s) return -1;
    for (const char *q = s; *q; q++) {
        if (isdigit((unsigned char)*q)) digit = true;
        else if (!strchr(".eE+-", *q)) return -1; /* no inf, nan, hex, '_' */
    }
    if (!digit) return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end) return -1;
    if (!isfinite(v) || (errno == ERANGE && fabs(v) > 1.0)) return -2; /* underflow is accepted */
    *out = v;
    return 0;
}

static bool ascii_ieq(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return false;
    return *a == *b;
}

static int parse_bool(const char *s, bool *out) {
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
        if (ascii_ieq(s, yes[i])) { *out = true; return 0; }
        if (ascii_ieq(s, no[i])) { *out = false; return 0; }
    }
    return -1;
}

/* A plain scalar that YAML reads as null. */
static bool is_null_plain(const char *s) {
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* Is s (len bytes) one of the choices "a|b|c"? */
static bool choice_match(const char *choices, const char *s, size_t len) {
    const char *p = choices;
    for (;;) {
        const char *e = strchr(p, '|');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == len && memcmp(p, s, len) == 0) return true;
        if (!e) return false;
        p = e + 1;
    }
}

/* Parse the scalar node v (NULL: an empty plain value) as a value of element type t of field f
 * (for lists: CFG_INT, CFG_FLOAT, or CFG_STRING_LIST for one string element) into out. name is
 * the key used in messages ("data.mean[1]" for list elements). */
static int parse_elem(const loader *L, const cfg_field *f, cfg_type t, const char *name,
                      const yaml_node_t *v, int line, void *out) {
    char want[640], got[SHOW_MAX + 64], tmp[SHOW_MAX + 8];
    const char *s = "";
    size_t len = 0;
    bool plain = true;
    if (v) {
        if (v->type != YAML_SCALAR_NODE) goto bad;
        s = (const char *)v->data.scalar.value;
        len = v->data.scalar.length;
        plain = v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (strlen(s) != len) return lerr(L, line, "key '%s': the value contains a NUL character", name);
    }
    switch (t) {
    case CFG_INT: {
        long x = 0;
        if (!plain) goto bad;
        int rc = parse_long(s, &x);
        if (rc == -2) {
            describe_elem(f, t, want, sizeof want);
            return lerr(L, line, "key '%s': expected %s, got '%s' (overflow)", name, want,
                        show(s, len, tmp, sizeof tmp));
        }
        if (rc || (has_range(f) && ((double)x < f->min || (double)x > f->max))) goto bad;
        memcpy(out, &x, sizeof x);
        return 0;
    }
    case CFG_FLOAT: {
        double x = 0;
        if (!plain) goto bad;
        int rc = parse_double(s, &x);
        if (rc == -2) {
            describe_elem(f, t, want, sizeof want);
            return lerr(L, line, "key '%s': expected %s, got '%s' (overflow)", name, want,
                        show(s, len, tmp, sizeof tmp));
        }
        if (rc || (has_range(f) && (x < f->min || x > f->max))) goto bad;
        memcpy(out, &x, sizeof x);
        return 0;
    }
    case CFG_BOOL: {
        bool x = false;
        if (!plain || parse_bool(s, &x)) goto bad;
        memcpy(out, &x, sizeof x);
        return 0;
    }
    case CFG_STRING:
    case CFG_STRING_LIST: {
        size_t cap = t == CFG_STRING ? CFG_STR_MAX : CFG_LIST_STR_MAX;
        if (plain && is_null_plain(s)) { s = ""; len = 0; }
        if (len >= cap) {
            describe_elem(f, t, want, sizeof want);
            return lerr(L, line, "key '%s': expected %s, got a string of %zu bytes ('%s')", name, want,
                        len, show(s, len, tmp, sizeof tmp));
        }
        memset(out, 0, cap);
        memcpy(out, s, len);
        return 0;
    }
    case CFG_ENUM:
        if (!choice_match(f->choices, s, len)) goto bad;
        memset(out, 0, CFG_STR_MAX);
        memcpy(out, s, len);
        return 0;
    default: break;
    }
bad:
    describe_elem(f, t, want, sizeof want);
    return lerr(L, line, "key '%s': expected %s, got %s", name, want, node_desc(v, got, sizeof got));
}

/* ------------------------------------------------------------------------------------------------
 * Walking the document */

static yaml_node_t *node_at(const loader *L, int id) { return yaml_document_get_node(L->doc, id); }

static int node_line(const yaml_node_t *v, int fallback) {
    return v ? (int)v->start_mark.line + 1 : fallback;
}

/* Store value node v (NULL: empty) into field fi of the scratch struct. */
static int assign_node(const loader *L, int fi, const yaml_node_t *v, int keyline) {
    const cfg_field *f = &L->schema[fi];
    unsigned char *dst = L->scratch + f->offset;
    int line = node_line(v, keyline);
    char want[640], got[SHOW_MAX + 64];
    if (!is_list(f->type)) return parse_elem(L, f, f->type, f->key, v, line, dst);

    if (!v || v->type != YAML_SEQUENCE_NODE) {
        describe(f, want, sizeof want);
        return lerr(L, line, "key '%s': expected %s, got %s", f->key, want, node_desc(v, got, sizeof got));
    }
    const yaml_node_item_t *items = v->data.sequence.items.start;
    long count = (long)(v->data.sequence.items.top - items);
    if (count > CFG_LIST_MAX) {
        describe(f, want, sizeof want);
        return lerr(L, line, "key '%s': expected %s, got %ld elements", f->key, want, count);
    }
    union {
        cfg_int_list i;
        cfg_float_list d;
        cfg_string_list s;
    } *tmp = tsr_calloc(1, sizeof *tmp);
    for (int k = 0; k < (int)count; k++) {
        const yaml_node_t *e = node_at(L, items[k]);
        char name[KEY_MAX + 16];
        snprintf(name, sizeof name, "%s[%d]", f->key, k);
        int rc;
        int eline = node_line(e, line);
        if (f->type == CFG_INT_LIST) rc = parse_elem(L, f, CFG_INT, name, e, eline, &tmp->i.v[k]);
        else if (f->type == CFG_FLOAT_LIST) rc = parse_elem(L, f, CFG_FLOAT, name, e, eline, &tmp->d.v[k]);
        else rc = parse_elem(L, f, CFG_STRING_LIST, name, e, eline, tmp->s.v[k]);
        if (rc) {
            free(tmp);
            return -1;
        }
    }
    if (f->type == CFG_INT_LIST) tmp->i.n = (int)count;
    else if (f->type == CFG_FLOAT_LIST) tmp->d.n = (int)count;
    else tmp->s.n = (int)count;
    memcpy(dst, tmp, field_size(f->type));
    free(tmp);
    return 0;
}

static int walk_mapping(loader *L, const yaml_node_t *m, const char *prefix);

/* The value v of the dotted key `key` (given at line kline). */
static int walk_value(loader *L, const char *key, int kline, const yaml_node_t *v) {
    char buf[KEY_MAX + 64], got[SHOW_MAX + 64];
    int fi = find_field(L, key);
    if (fi < 0) {
        if (v && v->type == YAML_MAPPING_NODE) {
            bool empty = v->data.mapping.pairs.start == v->data.mapping.pairs.top;
            bool section = is_section(L, key);
            if (empty && !section) return lerr(L, kline, "unknown key '%s'%s", key, suggest(L, key, buf, sizeof buf));
            if (empty) return 0;
            /* an unknown section is reported at its first leaf ("modle.dim"), with a suggestion */
            return walk_mapping(L, v, key);
        }
        if (is_section(L, key)) {
            /* "model:" with every key below commented out is an empty section */
            if (!v || (v->type == YAML_SCALAR_NODE && v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                       is_null_plain((const char *)v->data.scalar.value)))
                return 0;
            return lerr(L, kline, "key '%s' is a section: expected a mapping, got %s", key,
                        node_desc(v, got, sizeof got));
        }
        return lerr(L, kline, "unknown key '%s'%s", key, suggest(L, key, buf, sizeof buf));
    }
    if (L->line[fi]) {
        if (L->with_line) return lerr(L, kline, "duplicate key '%s' (first given at line %d)", key, L->line[fi]);
        return lerr(L, kline, "duplicate key '%s'", key);
    }
    if (assign_node(L, fi, v, kline)) return -1;
    L->line[fi] = kline;
    L->given[fi] = true;
    return 0;
}

static int walk_mapping(loader *L, const yaml_node_t *m, const char *prefix) {
    const yaml_node_pair_t *p0 = m->data.mapping.pairs.start, *pe = m->data.mapping.pairs.top;
    for (const yaml_node_pair_t *p = p0; p < pe; p++) {
        const yaml_node_t *k = node_at(L, p->key), *v = node_at(L, p->value);
        int kline = node_line(k, 0);
        if (!k || k->type != YAML_SCALAR_NODE) {
            if (prefix) return lerr(L, kline, "keys must be scalars (under '%s')", prefix);
            return lerr(L, kline, "keys must be scalars");
        }
        const char *ks = (const char *)k->data.scalar.value;
        size_t kn = k->data.scalar.length;
        if (strlen(ks) != kn) return lerr(L, kline, "a key contains a NUL character");
        size_t plen = prefix ? strlen(prefix) + 1 : 0;
        if (plen + kn > KEY_MAX)
            return lerr(L, kline, "key '%.64s...' is longer than %d bytes (nested too deeply, or an alias loop)",
                        prefix ? prefix : ks, KEY_MAX);
        char full[KEY_MAX + 2];
        if (prefix) snprintf(full, sizeof full, "%s.%s", prefix, ks);
        else snprintf(full, sizeof full, "%s", ks);
        for (const yaml_node_pair_t *q = p0; q < p; q++) {
            const yaml_node_t *kq = node_at(L, q->key);
            if (kq && kq->type == YAML_SCALAR_NODE && kq->data.scalar.length == kn &&
                memcmp(kq->data.scalar.value, ks, kn) == 0) {
                if (L->with_line)
                    return lerr(L, kline, "duplicate key '%s' (first given at line %d)", full, node_line(kq, 0));
                return lerr(L, kline, "duplicate key '%s'", full);
            }
        }
        if (walk_value(L, full, kline, v)) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Parsing text */

static int syntax_error(const loader *L, const yaml_parser_t *p) {
    if (p->error == YAML_MEMORY_ERROR) tsr_fatal("out of memory parsing YAML (%s)", L->src);
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_READER_ERROR) {
        if (p->problem_value != -1)
            return tsr_error("%s: invalid input at byte %zu: %s (#%X)", L->src, p->problem_offset, problem,
                             (unsigned)p->problem_value);
        return tsr_error("%s: invalid input at byte %zu: %s", L->src, p->problem_offset, problem);
    }
    char ctx[256] = "";
    if (L->with_line) {
        if (p->context)
            snprintf(ctx, sizeof ctx, " (%s at line %zu, column %zu)", p->context, p->context_mark.line + 1,
                     p->context_mark.column + 1);
        return tsr_error("%s:%zu:%zu: YAML syntax error: %s%s", L->src, p->problem_mark.line + 1,
                         p->problem_mark.column + 1, problem, ctx);
    }
    /* a one-line value (--set, a schema default): columns only, and only on its first line */
    if (p->context && p->context_mark.line == 0)
        snprintf(ctx, sizeof ctx, " (%s at column %zu)", p->context, p->context_mark.column + 1);
    else if (p->context)
        snprintf(ctx, sizeof ctx, " (%s)", p->context);
    if (p->problem_mark.line == 0)
        return tsr_error("%s: YAML syntax error in the value at column %zu: %s%s", L->src,
                         p->problem_mark.column + 1, problem, ctx);
    return tsr_error("%s: YAML syntax error in the value: %s%s", L->src, problem, ctx);
}

/* Parse text as exactly one YAML document into doc (which the caller deletes on success). */
static int load_yaml(const loader *L, const char *text, size_t len, yaml_document_t *doc) {
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) tsr_fatal("out of memory initialising the YAML parser");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, doc)) {
        int r = syntax_error(L, &p);
        yaml_parser_delete(&p);
        return r;
    }
    yaml_document_t extra;
    if (!yaml_parser_load(&p, &extra)) {
        int r = syntax_error(L, &p);
        yaml_document_delete(doc);
        yaml_parser_delete(&p);
        return r;
    }
    yaml_node_t *r2 = yaml_document_get_root_node(&extra);
    int line = r2 ? node_line(r2, 0) : 0;
    yaml_document_delete(&extra);
    yaml_parser_delete(&p);
    if (r2) {
        yaml_document_delete(doc);
        return lerr(L, line, "only one YAML document is allowed");
    }
    return 0;
}

static int check_schema(const cfg_field *s, int n) {
    for (int i = 0; i < n; i++) {
        const char *k = s[i].key;
        if (!k || !*k || strlen(k) > KEY_MAX) return tsr_error("config schema: field %d has no valid key", i);
        /* dotted names of [A-Za-z0-9_-], so that cfg_dump can write them as plain YAML keys */
        for (const char *c = k; *c; c++) {
            bool ok = isalnum((unsigned char)*c) || *c == '_' || *c == '-' ||
                      (*c == '.' && c != k && c[-1] != '.' && c[1] != 0);
            if (!ok) return tsr_error("config schema: key '%s' is not a dotted name of [A-Za-z0-9_-]", k);
        }
        if ((int)s[i].type < CFG_INT || (int)s[i].type > CFG_STRING_LIST)
            return tsr_error("config schema: key '%s' has an invalid type", k);
        if (s[i].type == CFG_ENUM && (!s[i].choices || !*s[i].choices))
            return tsr_error("config schema: enum key '%s' has no choices", k);
        for (int j = 0; j < i; j++) {
            const char *o = s[j].key;
            size_t no = strlen(o), nk = strlen(k);
            if (!strcmp(o, k)) return tsr_error("config schema: key '%s' appears twice", k);
            if ((nk > no && !strncmp(k, o, no) && k[no] == '.') || (no > nk && !strncmp(o, k, nk) && o[nk] == '.'))
                return tsr_error("config schema: '%s' and '%s': a key cannot also be a section", o, k);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * cfg_load */

static int load_defaults(loader *L) {
    char src[KEY_MAX + 32];
    L->with_line = false;
    L->src = src;
    for (int fi = 0; fi < L->n; fi++) {
        const cfg_field *f = &L->schema[fi];
        if (!f->def) continue;
        snprintf(src, sizeof src, "default of '%s'", f->key);
        yaml_document_t doc;
        if (load_yaml(L, f->def, strlen(f->def), &doc)) return -1;
        L->doc = &doc;
        int rc = assign_node(L, fi, yaml_document_get_root_node(&doc), 1);
        yaml_document_delete(&doc);
        L->doc = NULL;
        if (rc) return -1;
        L->given[fi] = true;
    }
    return 0;
}

static int load_file(loader *L, const char *path) {
    char *text = NULL;
    size_t len = 0;
    if (tsr_read_file(path, &text, &len)) return -1;
    L->src = path;
    L->with_line = true;
    memset(L->line, 0, (size_t)L->n * sizeof *L->line);
    yaml_document_t doc;
    if (load_yaml(L, text, len, &doc)) {
        free(text);
        return -1;
    }
    free(text);
    L->doc = &doc;
    int rc = 0;
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    bool empty = !root || (root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0 &&
                           root->data.scalar.style == YAML_PLAIN_SCALAR_STYLE);
    if (!empty) {
        if (root->type != YAML_MAPPING_NODE) {
            char got[SHOW_MAX + 64];
            rc = lerr(L, node_line(root, 1), "the top level must be a mapping of keys, got %s",
                      node_desc(root, got, sizeof got));
        } else {
            rc = walk_mapping(L, root, NULL);
        }
    }
    yaml_document_delete(&doc);
    L->doc = NULL;
    return rc;
}

static int load_set(loader *L, const char *arg) {
    char src[KEY_MAX + 512], key[KEY_MAX + 2];
    snprintf(src, sizeof src, "--set %s", arg);
    L->src = src;
    L->with_line = false;
    memset(L->line, 0, (size_t)L->n * sizeof *L->line);
    const char *eq = strchr(arg, '=');
    if (!eq) return tsr_error("%s: expected key=value", src);
    const char *kb = arg, *ke = eq;
    while (kb < ke && isspace((unsigned char)*kb)) kb++;
    while (ke > kb && isspace((unsigned char)ke[-1])) ke--;
    if (ke == kb) return tsr_error("%s: expected key=value, the key is empty", src);
    if ((size_t)(ke - kb) > KEY_MAX) return tsr_error("%s: the key is too long", src);
    memcpy(key, kb, (size_t)(ke - kb));
    key[ke - kb] = 0;
    yaml_document_t doc;
    if (load_yaml(L, eq + 1, strlen(eq + 1), &doc)) return -1;
    L->doc = &doc;
    int rc = walk_value(L, key, 1, yaml_document_get_root_node(&doc));
    yaml_document_delete(&doc);
    L->doc = NULL;
    return rc;
}

int cfg_load(void *dst, const cfg_field *schema, int nfields, const char *path, int nset,
             char *const *sets) {
    return cfg_load_files(dst, schema, nfields, path ? &path : NULL, path ? 1 : 0, nset, sets);
}

int cfg_load_files(void *dst, const cfg_field *schema, int nfields, const char *const *paths, int npaths, int nset,
                   char *const *sets) {
    const char *path = npaths > 0 ? paths[npaths - 1] : NULL;
    if (npaths < 0 || (npaths > 0 && !paths)) return tsr_error("cfg_load: invalid arguments");
    if (!dst || nfields < 0 || (nfields > 0 && !schema) || nset < 0 || (nset > 0 && !sets))
        return tsr_error("cfg_load: invalid arguments");
    if (check_schema(schema, nfields)) return -1;
    size_t size = 1;
    for (int i = 0; i < nfields; i++) {
        size_t end = schema[i].offset + field_size(schema[i].type);
        if (end > size) size = end;
    }
    loader L = {.schema = schema, .n = nfields};
    L.scratch = tsr_calloc(1, size);
    L.line = tsr_calloc((size_t)(nfields > 0 ? nfields : 1), sizeof *L.line);
    L.given = tsr_calloc((size_t)(nfields > 0 ? nfields : 1), sizeof *L.given);
    int rc = -1;
    if (load_defaults(&L)) goto out;
    for (int i = 0; i < npaths; i++)
        if (paths[i] && load_file(&L, paths[i])) goto out;
    for (int i = 0; i < nset; i++) {
        if (!sets[i]) { tsr_error("--set: missing argument"); goto out; }
        if (load_set(&L, sets[i])) goto out;
    }
    for (int i = 0; i < nfields; i++) {
        if (!L.given[i]) {
            tsr_error("%s: required key '%s' is missing", path ? path : "(no configuration file)", schema[i].key);
            goto out;
        }
    }
    for (int i = 0; i < nfields; i++)
        memcpy((unsigned char *)dst + schema[i].offset, L.scratch + schema[i].offset, field_size(schema[i].type));
    rc = 0;
out:
    free(L.scratch);
    free(L.line);
    free(L.given);
    return rc;
}

/* ------------------------------------------------------------------------------------------------
 * cfg_dump */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) tsr_fatal("out of memory writing the configuration");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

static void sb_printf(sbuf *b, const char *fmt, ...) TSR_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) { sb_putn(b, tmp, (size_t)n); return; }
    char *big = tsr_malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_putn(b, big, (size_t)n);
    free(big);
}

static void sb_indent(sbuf *b, int depth) {
    for (int i = 0; i < depth; i++) sb_puts(b, "  ");
}

/* The shortest %g form that reads back to exactly v, with a '.' so YAML 1.1 sees a float. */
static void put_double(sbuf *b, double v) {
    char s[48];
    for (int p = 1; p <= 17; p++) {
        snprintf(s, sizeof s, "%.*g", p, v);
        if (strtod(s, NULL) == v) break;
    }
    if (!strchr(s, '.') && isfinite(v)) {
        char *e = strchr(s, 'e');
        char out[56];
        if (e) snprintf(out, sizeof out, "%.*s.0%s", (int)(e - s), s, e);
        else snprintf(out, sizeof out, "%s.0", s);
        sb_puts(b, out);
        return;
    }
    sb_puts(b, s);
}

/* A double-quoted YAML scalar. Characters YAML does not allow raw (control characters, C1
 * controls, U+2028/U+2029, U+FFFE/U+FFFF) are escaped. */
static void put_quoted(sbuf *b, const char *str) {
    const unsigned char *u = (const unsigned char *)str;
    sb_puts(b, "\"");
    while (*u) {
        unsigned c = *u;
        if (c == '"') { sb_puts(b, "\\\""); u++; continue; }
        if (c == '\\') { sb_puts(b, "\\\\"); u++; continue; }
        if (c == '\n') { sb_puts(b, "\\n"); u++; continue; }
        if (c == '\t') { sb_puts(b, "\\t"); u++; continue; }
        if (c == '\r') { sb_puts(b, "\\r"); u++; continue; }
        if (c < 0x20 || c == 0x7f) { sb_printf(b, "\\x%02X", c); u++; continue; }
        if (c < 0x80) { sb_putn(b, (const char *)u, 1); u++; continue; }
        int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
        uint32_t cp = len == 4 ? (c & 0x07) : len == 3 ? (c & 0x0F) : (c & 0x1F);
        for (int i = 1; i < len; i++) {
            if ((u[i] & 0xC0) != 0x80) { len = 0; break; }
            cp = (cp << 6) | (u[i] & 0x3F);
        }
        if (len == 0) { sb_printf(b, "\\x%02X", c); u++; continue; } /* not UTF-8: best effort */
        if (cp == 0x85) sb_puts(b, "\\N");
        else if (cp >= 0x80 && cp <= 0x9F) sb_printf(b, "\\x%02X", (unsigned)cp);
        else if (cp == 0x2028) sb_puts(b, "\\L");
        else if (cp == 0x2029) sb_puts(b, "\\P");
        else if (cp == 0xFFFE || cp == 0xFFFF) sb_printf(b, "\\u%04X", (unsigned)cp);
        else sb_putn(b, (const char *)u, (size_t)len);
        u += len;
    }
    sb_puts(b, "\"");
}

static void put_value(sbuf *b, const cfg_field *f, const unsigned char *p) {
    switch (f->type) {
    case CFG_INT: { long v; memcpy(&v, p, sizeof v); sb_printf(b, "%ld", v); break; }
    case CFG_FLOAT: { double v; memcpy(&v, p, sizeof v); put_double(b, v); break; }
    case CFG_BOOL: { bool v; memcpy(&v, p, sizeof v); sb_puts(b, v ? "true" : "false"); break; }
    case CFG_STRING:
    case CFG_ENUM: {
        char s[CFG_STR_MAX];
        memcpy(s, p, CFG_STR_MAX);
        s[CFG_STR_MAX - 1] = 0;
        put_quoted(b, s);
        break;
    }
    case CFG_INT_LIST: {
        const cfg_int_list *l = (const cfg_int_list *)p;
        int n = l->n < 0 ? 0 : l->n > CFG_LIST_MAX ? CFG_LIST_MAX : l->n;
        sb_puts(b, "[");
        for (int i = 0; i < n; i++) sb_printf(b, "%s%ld", i ? ", " : "", l->v[i]);
        sb_puts(b, "]");
        break;
    }
    case CFG_FLOAT_LIST: {
        const cfg_float_list *l = (const cfg_float_list *)p;
        int n = l->n < 0 ? 0 : l->n > CFG_LIST_MAX ? CFG_LIST_MAX : l->n;
        sb_puts(b, "[");
        for (int i = 0; i < n; i++) {
            if (i) sb_puts(b, ", ");
            put_double(b, l->v[i]);
        }
        sb_puts(b, "]");
        break;
    }
    case CFG_STRING_LIST: {
        const cfg_string_list *l = (const cfg_string_list *)p;
        int n = l->n < 0 ? 0 : l->n > CFG_LIST_MAX ? CFG_LIST_MAX : l->n;
        sb_puts(b, "[");
        for (int i = 0; i < n; i++) {
            char s[CFG_LIST_STR_MAX];
            memcpy(s, l->v[i], CFG_LIST_STR_MAX);
            s[CFG_LIST_STR_MAX - 1] = 0;
            if (i) sb_puts(b, ", ");
            put_quoted(b, s);
        }
        sb_puts(b, "]");
        break;
    }
    }
}

/* Does key lie under prefix (plen bytes, no trailing dot; plen 0 = the top level)? */
static bool under(const char *key, const char *prefix, size_t plen) {
    return plen == 0 || (strncmp(key, prefix, plen) == 0 && key[plen] == '.');
}

/* Emit the keys under prefix: leaves and sections in the order of their first appearance. */
static void dump_group(sbuf *b, const unsigned char *src, const cfg_field *s, int n, const char *prefix,
                       size_t plen, int depth) {
    bool first = true;
    for (int i = 0; i < n; i++) {
        const char *key = s[i].key;
        if (!under(key, prefix, plen)) continue;
        const char *rest = key + (plen ? plen + 1 : 0);
        const char *dot = strchr(rest, '.');
        if (!dot) {
            if (s[i].help) {
                sb_indent(b, depth);
                sb_puts(b, "# ");
                for (const char *h = s[i].help; *h; h++) sb_putn(b, (*h == '\n' || *h == '\r') ? " " : h, 1);
                sb_puts(b, "\n");
            }
            sb_indent(b, depth);
            sb_printf(b, "%s: ", rest);
            put_value(b, &s[i], src + s[i].offset);
            sb_puts(b, "\n");
            first = false;
            continue;
        }
        size_t slen = (size_t)(dot - rest);
        bool seen = false; /* section already emitted for an earlier key? */
        for (int j = 0; j < i && !seen; j++) {
            const char *kj = s[j].key;
            if (!under(kj, prefix, plen)) continue;
            const char *rj = kj + (plen ? plen + 1 : 0);
            seen = strncmp(rj, rest, slen) == 0 && rj[slen] == '.';
        }
        if (seen) continue;
        if (depth == 0 && !first) sb_puts(b, "\n");
        sb_indent(b, depth);
        sb_printf(b, "%.*s:\n", (int)slen, rest);
        dump_group(b, src, s, n, key, (size_t)(dot - key), depth + 1);
        first = false;
    }
}

char *cfg_dump(const void *src, const cfg_field *schema, int nfields) {
    sbuf b = {0};
    sb_puts(&b, "");
    dump_group(&b, src, schema, nfields, "", 0, 0);
    return b.p;
}
