/* glyphs.c: the glyph suite generator (see glyphs.h and docs/GLYPHS.md).
 *
 * Rendering: each glyph is loaded unscaled (FT_LOAD_NO_SCALE: the outline in font units, no hinting),
 * optionally emboldened or thinned, centred on its exact bounding box, scaled so that its larger side
 * fills FILL_PERMILLE of the image (glyphs smaller than half an em are scaled as if they were half an
 * em, so that small letters stay small), jittered by a 2x2 fixed-point matrix (rotation, scale,
 * aspect, shear) and a translation, then rasterised anti-aliased by FreeType's smooth rasteriser
 * straight into the image. Blur and noise are integer too. No floating point is used anywhere, so
 * the pixels do not depend on the compiler, its flags or the C library. */
#define _POSIX_C_SOURCE 200809L
#include "glyphs.h"

#include "core/common.h"
#include "core/hash.h"
#include "core/rng.h"
#include "data/suite.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <ft2build.h>
#include FT_FREETYPE_H
#include FT_BBOX_H
#include FT_OUTLINE_H
#include FT_TRIGONOMETRY_H

/* Larger side of a glyph, in thousandths of the image side, before jitter. Rotation by 10 degrees
 * and scale 1.1 bring it to about 0.87 of the side, so that translation rarely clips. */
#define FILL_PERMILLE 680
/* Two characters whose clean renderings (first font) differ by at most this mean absolute
 * difference per pixel (in 1/256 grey levels) are the same shape: the later one is skipped. */
#define DUP_MEAN_Q8 128
/* A rendering is empty unless at least this many pixels reach 128. */
#define MIN_INK_PIXELS 3

/* ------------------------------------------------------------------------------------------------
 * The script table. Ranges list the letters in class order (independent vowels and consonants for
 * the Brahmic scripts, capitals for the bicameral ones); combining marks that fall inside a range
 * have no advance width and are skipped, as are code points the fonts lack. */

#define NS(x) "NotoSans" x "-*.ttf"
#define NSS(x) "NotoSans" x "-*.ttf NotoSerif" x "-*.ttf"
#define R1(a, b) {{(a), (b), 1}}
#define LGC_FONTS "NotoSans-*.ttf NotoSerif-*.ttf NotoSansDisplay-*.ttf NotoSerifDisplay-*.ttf " \
                  "DejaVuSans.ttf DejaVuSans-*.ttf DejaVuSerif.ttf DejaVuSerif-*.ttf "             \
                  "DejaVuSansCondensed*.ttf DejaVuSerifCondensed*.ttf"
#define CJK_FONTS "NotoSansCJK*.tt? NotoSerifCJK*.tt? "

static const tsr_glyph_script SCRIPTS[] = {
    /* Europe and the Caucasus */
    {"latin", "Latin", LGC_FONTS, R1(0x0041, 0x005A)},
    {"greek", "Greek", LGC_FONTS, R1(0x0391, 0x03A9)},
    {"cyrillic", "Cyrillic", LGC_FONTS, R1(0x0410, 0x042F)},
    {"armenian", "Armenian", NSS("Armenian"), R1(0x0531, 0x0556)},
    {"georgian", "Georgian (Mkhedruli)", NSS("Georgian"), R1(0x10D0, 0x10FA)},
    {"glagolitic", "Glagolitic", NS("Glagolitic"), R1(0x2C00, 0x2C2E)},
    {"coptic", "Coptic", NS("Coptic"), {{0x2C80, 0x2CE3, 2}}},
    {"gothic", "Gothic", NS("Gothic"), R1(0x10330, 0x1034A)},
    {"runic", "Runic", NS("Runic"), R1(0x16A0, 0x16EA)},
    {"ogham", "Ogham", NS("Ogham"), R1(0x1681, 0x169A)},
    {"old-italic", "Old Italic", NS("OldItalic"), R1(0x10300, 0x1031F)},
    {"old-permic", "Old Permic", NS("OldPermic"), R1(0x10350, 0x10375)},
    {"old-hungarian", "Old Hungarian", NS("OldHungarian"), R1(0x10C80, 0x10CB2)},
    {"elbasan", "Elbasan", NS("Elbasan"), R1(0x10500, 0x10527)},
    {"caucasian-albanian", "Caucasian Albanian", NS("CaucasianAlbanian"), R1(0x10530, 0x10563)},
    {"linear-a", "Linear A", NS("LinearA"), R1(0x10600, 0x10736)},
    {"linear-b", "Linear B", NS("LinearB"), R1(0x10000, 0x1005D)},
    {"cypriot", "Cypriot syllabary", NS("Cypriot"), R1(0x10800, 0x1083F)},
    {"lycian", "Lycian", NS("Lycian"), R1(0x10280, 0x1029C)},
    {"lydian", "Lydian", NS("Lydian"), R1(0x10920, 0x10939)},
    {"carian", "Carian", NS("Carian"), R1(0x102A0, 0x102D0)},
    /* the Middle East */
    {"hebrew", "Hebrew", NSS("Hebrew") " NotoRashiHebrew-*.ttf", R1(0x05D0, 0x05EA)},
    {"arabic", "Arabic (isolated letters)", NS("Arabic") " NotoNaskhArabic-*.ttf NotoKufiArabic-*.ttf",
     {{0x0621, 0x063A, 1}, {0x0641, 0x064A, 1}}},
    {"syriac", "Syriac", NS("Syriac"), R1(0x0710, 0x072C)},
    {"samaritan", "Samaritan", NS("Samaritan"), R1(0x0800, 0x0815)},
    {"mandaic", "Mandaic", NS("Mandaic"), R1(0x0840, 0x0858)},
    {"phoenician", "Phoenician", NS("Phoenician"), R1(0x10900, 0x10915)},
    {"imperial-aramaic", "Imperial Aramaic", NS("ImperialAramaic"), R1(0x10840, 0x10855)},
    {"palmyrene", "Palmyrene", NS("Palmyrene"), R1(0x10860, 0x10876)},
    {"nabataean", "Nabataean", NS("Nabataean"), R1(0x10880, 0x1089E)},
    {"hatran", "Hatran", NS("Hatran"), R1(0x108E0, 0x108F5)},
    {"old-south-arabian", "Old South Arabian", NS("OldSouthArabian"), R1(0x10A60, 0x10A7C)},
    {"old-north-arabian", "Old North Arabian", NS("OldNorthArabian"), R1(0x10A80, 0x10A9C)},
    {"ugaritic", "Ugaritic", NS("Ugaritic"), R1(0x10380, 0x1039D)},
    {"old-persian", "Old Persian", NS("OldPersian"), R1(0x103A0, 0x103C3)},
    {"avestan", "Avestan", NS("Avestan"), R1(0x10B00, 0x10B35)},
    {"inscriptional-parthian", "Inscriptional Parthian", NS("InscriptionalParthian"), R1(0x10B40, 0x10B55)},
    {"inscriptional-pahlavi", "Inscriptional Pahlavi", NS("InscriptionalPahlavi"), R1(0x10B60, 0x10B72)},
    {"psalter-pahlavi", "Psalter Pahlavi", NS("PsalterPahlavi"), R1(0x10B80, 0x10B91)},
    {"manichaean", "Manichaean", NS("Manichaean"), R1(0x10AC0, 0x10AE4)},
    {"elymaic", "Elymaic", NS("Elymaic"), R1(0x10FE0, 0x10FF6)},
    {"yezidi", "Yezidi", "NotoSerifYezidi-*.ttf", R1(0x10E80, 0x10EA9)},
    /* Central Asia */
    {"old-turkic", "Old Turkic", NS("OldTurkic"), R1(0x10C00, 0x10C48)},
    {"old-sogdian", "Old Sogdian", NS("OldSogdian"), R1(0x10F00, 0x10F1C)},
    {"sogdian", "Sogdian", NS("Sogdian"), R1(0x10F30, 0x10F45)},
    {"mongolian", "Mongolian", NS("Mongolian"), R1(0x1820, 0x1878)},
    {"phags-pa", "Phags-pa", NS("PhagsPa"), R1(0xA840, 0xA873)},
    {"soyombo", "Soyombo", NS("Soyombo"), R1(0x11A50, 0x11A89)},
    {"zanabazar-square", "Zanabazar Square", NS("ZanabazarSquare"), R1(0x11A00, 0x11A32)},
    {"tibetan", "Tibetan", "NotoSerifTibetan-*.ttf", R1(0x0F40, 0x0F6C)},
    {"marchen", "Marchen", NS("Marchen"), R1(0x11C72, 0x11C8F)},
    /* South Asia */
    {"devanagari", "Devanagari", NSS("Devanagari"), R1(0x0904, 0x0939)},
    {"bengali", "Bengali", NSS("Bengali"), R1(0x0985, 0x09B9)},
    {"gurmukhi", "Gurmukhi", NSS("Gurmukhi"), R1(0x0A05, 0x0A39)},
    {"gujarati", "Gujarati", NSS("Gujarati"), R1(0x0A85, 0x0AB9)},
    {"oriya", "Oriya (Odia)", NSS("Oriya"), R1(0x0B05, 0x0B39)},
    {"tamil", "Tamil", NSS("Tamil") " NotoSerifTamilSlanted-*.ttf", R1(0x0B85, 0x0BB9)},
    {"telugu", "Telugu", NSS("Telugu"), R1(0x0C05, 0x0C39)},
    {"kannada", "Kannada", NSS("Kannada"), R1(0x0C85, 0x0CB9)},
    {"malayalam", "Malayalam", NSS("Malayalam"), R1(0x0D05, 0x0D3A)},
    {"sinhala", "Sinhala", NSS("Sinhala"), R1(0x0D85, 0x0DC6)},
    {"thaana", "Thaana", NS("Thaana"), R1(0x0780, 0x07A5)},
    {"ol-chiki", "Ol Chiki", NS("OlChiki"), R1(0x1C5A, 0x1C77)},
    {"lepcha", "Lepcha", NS("Lepcha"), R1(0x1C00, 0x1C23)},
    {"limbu", "Limbu", NS("Limbu"), R1(0x1900, 0x191E)},
    {"meetei-mayek", "Meetei Mayek", NS("MeeteiMayek"), R1(0xABC0, 0xABE2)},
    {"syloti-nagri", "Syloti Nagri", NS("SylotiNagri"), R1(0xA800, 0xA822)},
    {"saurashtra", "Saurashtra", NS("Saurashtra"), R1(0xA882, 0xA8B3)},
    {"brahmi", "Brahmi", NS("Brahmi"), R1(0x11003, 0x11037)},
    {"kharoshthi", "Kharoshthi", NS("Kharoshthi"), R1(0x10A10, 0x10A33)},
    {"kaithi", "Kaithi", NS("Kaithi"), R1(0x11083, 0x110AF)},
    {"sora-sompeng", "Sora Sompeng", NS("SoraSompeng"), R1(0x110D0, 0x110E8)},
    {"chakma", "Chakma", NS("Chakma"), R1(0x11103, 0x11126)},
    {"mahajani", "Mahajani", NS("Mahajani"), R1(0x11150, 0x11172)},
    {"sharada", "Sharada", NS("Sharada"), R1(0x11183, 0x111B2)},
    {"khojki", "Khojki", NSS("Khojki"), R1(0x11200, 0x1122B)},
    {"multani", "Multani", NS("Multani"), R1(0x11280, 0x112A8)},
    {"khudawadi", "Khudawadi", NS("Khudawadi"), R1(0x112B0, 0x112DE)},
    {"grantha", "Grantha", NSS("Grantha"), R1(0x11305, 0x11339)},
    {"newa", "Newa", NS("Newa"), R1(0x11400, 0x11434)},
    {"tirhuta", "Tirhuta", NS("Tirhuta"), R1(0x11480, 0x114AF)},
    {"siddham", "Siddham", NS("Siddham"), R1(0x11580, 0x115AE)},
    {"modi", "Modi", NS("Modi"), R1(0x11600, 0x1162F)},
    {"takri", "Takri", NS("Takri"), R1(0x11680, 0x116AA)},
    {"dogra", "Dogra", "NotoSerifDogra-*.ttf", R1(0x11800, 0x1182B)},
    {"bhaiksuki", "Bhaiksuki", NS("Bhaiksuki"), R1(0x11C00, 0x11C2E)},
    {"masaram-gondi", "Masaram Gondi", NS("MasaramGondi"), R1(0x11D00, 0x11D30)},
    {"gunjala-gondi", "Gunjala Gondi", NS("GunjalaGondi"), R1(0x11D60, 0x11D89)},
    {"warang-citi", "Warang Citi", NS("WarangCiti"), R1(0x118A0, 0x118BF)},
    {"wancho", "Wancho", NS("Wancho"), R1(0x1E2C0, 0x1E2EB)},
    {"hanifi-rohingya", "Hanifi Rohingya", NS("HanifiRohingya"), R1(0x10D00, 0x10D23)},
    {"ahom", "Ahom", "NotoSerifAhom-*.ttf", R1(0x11700, 0x1171A)},
    /* Mainland South-East Asia */
    {"thai", "Thai", NSS("Thai") " NotoLoopedThai-*.ttf", R1(0x0E01, 0x0E2E)},
    {"lao", "Lao", NSS("Lao") " NotoLoopedLao-*.ttf", R1(0x0E81, 0x0EAE)},
    {"khmer", "Khmer", NSS("Khmer"), R1(0x1780, 0x17A2)},
    {"myanmar", "Myanmar", NSS("Myanmar"), R1(0x1000, 0x102A)},
    {"tai-le", "Tai Le", NS("TaiLe"), R1(0x1950, 0x196D)},
    {"new-tai-lue", "New Tai Lue", NS("NewTaiLue"), R1(0x1980, 0x19AB)},
    {"tai-tham", "Tai Tham", NS("TaiTham"), R1(0x1A20, 0x1A54)},
    {"tai-viet", "Tai Viet", NS("TaiViet"), R1(0xAA80, 0xAAAF)},
    {"kayah-li", "Kayah Li", NS("KayahLi"), R1(0xA90A, 0xA925)},
    {"cham", "Cham", NS("Cham"), R1(0xAA00, 0xAA28)},
    {"pau-cin-hau", "Pau Cin Hau", NS("PauCinHau"), R1(0x11AC0, 0x11AF8)},
    {"lisu", "Lisu (Fraser)", NS("Lisu"), R1(0xA4D0, 0xA4F7)},
    {"miao", "Miao (Pollard)", NS("Miao"), R1(0x16F00, 0x16F4A)},
    {"mro", "Mro", NS("Mro"), R1(0x16A40, 0x16A5E)},
    {"pahawh-hmong", "Pahawh Hmong", NS("PahawhHmong"), R1(0x16B00, 0x16B2F)},
    {"nyiakeng-puachue-hmong", "Nyiakeng Puachue Hmong", "NotoSerifNyiakengPuachueHmong-*.ttf",
     R1(0x1E100, 0x1E12C)},
    /* Insular South-East Asia */
    {"javanese", "Javanese", NS("Javanese"), R1(0xA984, 0xA9B2)},
    {"balinese", "Balinese", NSS("Balinese"), R1(0x1B05, 0x1B33)},
    {"sundanese", "Sundanese", NS("Sundanese"), R1(0x1B83, 0x1BA0)},
    {"buginese", "Buginese (Lontara)", NS("Buginese"), R1(0x1A00, 0x1A16)},
    {"batak", "Batak", NS("Batak"), R1(0x1BC0, 0x1BE5)},
    {"rejang", "Rejang", NS("Rejang"), R1(0xA930, 0xA946)},
    {"tagalog", "Tagalog (Baybayin)", NS("Tagalog"), R1(0x1700, 0x1711)},
    {"hanunoo", "Hanunoo", NS("Hanunoo"), R1(0x1720, 0x1731)},
    {"buhid", "Buhid", NS("Buhid"), R1(0x1740, 0x1751)},
    {"tagbanwa", "Tagbanwa", NS("Tagbanwa"), R1(0x1760, 0x1770)},
    /* Africa */
    {"ethiopic", "Ethiopic (Ge'ez, first orders)", NSS("Ethiopic"), {{0x1200, 0x1357, 8}}},
    {"tifinagh", "Tifinagh", NS("Tifinagh"), R1(0x2D30, 0x2D67)},
    {"nko", "N'Ko", NS("NKo"), R1(0x07CA, 0x07EA)},
    {"vai", "Vai", NS("Vai"), R1(0xA500, 0xA60B)},
    {"bamum", "Bamum", NS("Bamum"), R1(0xA6A0, 0xA6E5)},
    {"osmanya", "Osmanya", NS("Osmanya"), R1(0x10480, 0x1049D)},
    {"adlam", "Adlam", NS("Adlam") " " NS("AdlamUnjoined"), R1(0x1E900, 0x1E921)},
    {"bassa-vah", "Bassa Vah", NS("BassaVah"), R1(0x16AD0, 0x16AED)},
    {"mende-kikakui", "Mende Kikakui", NS("MendeKikakui"), R1(0x1E800, 0x1E8C4)},
    {"medefaidrin", "Medefaidrin", NS("Medefaidrin"), R1(0x16E40, 0x16E5F)},
    {"meroitic-cursive", "Meroitic Cursive", NS("Meroitic"), R1(0x109A0, 0x109B7)},
    /* the Americas */
    {"cherokee", "Cherokee", NS("Cherokee"), R1(0x13A0, 0x13F4)},
    {"canadian-aboriginal", "Unified Canadian Aboriginal Syllabics", NS("CanadianAboriginal"),
     R1(0x1401, 0x166C)},
    {"osage", "Osage", NS("Osage"), R1(0x104B0, 0x104D3)},
    {"deseret", "Deseret", NS("Deseret"), R1(0x10400, 0x10427)},
    {"shavian", "Shavian", NS("Shavian"), R1(0x10450, 0x1047F)},
    {"duployan", "Duployan shorthand", NS("Duployan"), R1(0x1BC00, 0x1BC6A)},
    /* East Asia */
    {"yi", "Yi syllables", NS("Yi"), R1(0xA000, 0xA48C)},
    {"nushu", "Nushu", NS("Nushu") " NotoTraditionalNushu-*.ttf", R1(0x1B170, 0x1B2FB)},
    /* the 14 basic consonants, then the vowels (Hangul compatibility jamo) */
    {"hangul", "Hangul jamo", CJK_FONTS "Nanum*.ttf UnBatang.ttf UnDotum.ttf",
     {{0x3131, 0x3131, 1}, {0x3134, 0x3134, 1}, {0x3137, 0x3139, 2}, {0x3141, 0x3142, 1}, {0x3145, 0x3145, 1},
      {0x3147, 0x3148, 1}, {0x314A, 0x3163, 1}}},
    /* the gojuon, without small and voiced kana: a i u e o, ka ... so, ta chi, tsu te to, na ..., ha ... */
    {"hiragana", "Hiragana", CJK_FONTS "ipag.ttf ipam.ttf ipagp.ttf ipamp.ttf",
     {{0x3042, 0x304A, 2}, {0x304B, 0x3062, 2}, {0x3064, 0x3068, 2}, {0x306A, 0x306E, 1}, {0x306F, 0x307D, 3},
      {0x307E, 0x3082, 1}, {0x3084, 0x3088, 2}, {0x3089, 0x308D, 1}, {0x308F, 0x308F, 1}, {0x3092, 0x3093, 1}}},
    {"katakana", "Katakana", CJK_FONTS "ipag.ttf ipam.ttf ipagp.ttf ipamp.ttf",
     {{0x30A2, 0x30AA, 2}, {0x30AB, 0x30C2, 2}, {0x30C4, 0x30C8, 2}, {0x30CA, 0x30CE, 1}, {0x30CF, 0x30DD, 3},
      {0x30DE, 0x30E2, 1}, {0x30E4, 0x30E8, 2}, {0x30E9, 0x30ED, 1}, {0x30EF, 0x30EF, 1}, {0x30F2, 0x30F3, 1}}},
    {"bopomofo", "Bopomofo (Zhuyin)", CJK_FONTS "ukai.ttc uming.ttc", R1(0x3105, 0x3129)},
};

#define NSCRIPTS ((int)(sizeof SCRIPTS / sizeof SCRIPTS[0]))

int tsr_glyph_script_count(void) { return NSCRIPTS; }

const tsr_glyph_script *tsr_glyph_script_at(int i) { return i >= 0 && i < NSCRIPTS ? &SCRIPTS[i] : NULL; }

const tsr_glyph_script *tsr_glyph_script_find(const char *name) {
    for (int i = 0; name && i < NSCRIPTS; i++)
        if (strcmp(SCRIPTS[i].name, name) == 0) return &SCRIPTS[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------------
 * Options */

void tsr_glyph_opts_init(tsr_glyph_opts *o) {
    memset(o, 0, sizeof *o);
    o->font_dir = TSR_GLYPHS_DEFAULT_FONT_DIR;
    o->image_size = 28;
    o->max_classes = 20;
    o->min_classes = 10;
    o->examples = 20;
    o->n_val = 3;
    o->n_test = 5;
    o->seed = 0;
    o->jitter = 1;
}

static int check_opts(const tsr_glyph_opts *o) {
    if (o->image_size < 8 || o->image_size > 1024)
        return tsr_error("glyph suite: image_size %d out of range (8..1024)", o->image_size);
    if (o->min_classes < 2 || o->max_classes < o->min_classes)
        return tsr_error("glyph suite: need 2 <= min_classes <= max_classes (got min_classes %d, "
                         "max_classes %d)", o->min_classes, o->max_classes);
    if (o->max_classes > 100000) return tsr_error("glyph suite: max_classes %d too large", o->max_classes);
    if (o->examples < 1 || o->examples > 100000)
        return tsr_error("glyph suite: examples per class %d out of range (1..100000)", o->examples);
    if (o->n_val < 0 || o->n_test < 0 || o->n_val + o->n_test >= o->examples)
        return tsr_error("glyph suite: n_val %d + n_test %d must leave at least one training example of "
                         "the %d per class", o->n_val, o->n_test, o->examples);
    if (o->nscripts < 0 || (o->nscripts > 0 && !o->scripts))
        return tsr_error("glyph suite: nscripts %d without a list of scripts", o->nscripts);
    return 0;
}

static const char *font_dirs(const tsr_glyph_opts *o) {
    return o->font_dir && o->font_dir[0] ? o->font_dir : TSR_GLYPHS_DEFAULT_FONT_DIR;
}

/* ------------------------------------------------------------------------------------------------
 * Small helpers */

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = tsr_malloc(n);
    memcpy(d, s, n);
    return d;
}

/* A growing string. */
typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) TSR_PRINTF(2, 3);
static void sb_add(sbuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        size_t room = b->cap - b->n;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? room : 0, fmt, ap);
        va_end(ap);
        TSR_CHECK(k >= 0, "glyph suite: formatting failed");
        if (b->s && (size_t)k < room) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + (size_t)k + 1) cap *= 2;
        char *s = tsr_malloc(cap);
        if (b->s) memcpy(s, b->s, b->n + 1);
        else s[0] = 0;
        free(b->s);
        b->s = s;
        b->cap = cap;
    }
}

static const char *sb_str(const sbuf *b) { return b->s ? b->s : ""; }

/* Mix values into a 64-bit stream seed (splitmix64 finaliser per value). */
static uint64_t mix(uint64_t h, uint64_t v) {
    uint64_t x = h ^ (v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2));
    return tsr_splitmix64(&x);
}

/* Uniform integer in [lo, hi]. */
static long rand_int(tsr_rng *r, long lo, long hi) {
    return lo + (long)(tsr_rng_u64(r) % (uint64_t)(hi - lo + 1));
}

static int utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ------------------------------------------------------------------------------------------------
 * Fonts */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int match_any(const char *patterns, const char *name) {
    char pat[256];
    const char *p = patterns;
    while (*p) {
        while (*p == ' ') p++;
        size_t k = strcspn(p, " ");
        if (k == 0) break;
        if (k < sizeof pat) {
            memcpy(pat, p, k);
            pat[k] = 0;
            if (fnmatch(pat, name, 0) == 0) return 1;
        }
        p += k;
    }
    return 0;
}

/* Check that every directory of the ':'-separated list can be read. */
static int check_dirs(const char *dirs) {
    const char *p = dirs;
    char dir[4096];
    for (;;) {
        size_t k = strcspn(p, ":");
        if (k == 0 || k >= sizeof dir)
            return tsr_error("font directory list '%s': %s", dirs,
                             k ? "a directory name is too long" : "an empty directory name");
        memcpy(dir, p, k);
        dir[k] = 0;
        DIR *d = opendir(dir);
        if (!d)
            return tsr_error("font directory '%s': %s (install fonts-noto-core, or set the font "
                             "directory)", dir, strerror(errno));
        closedir(d);
        if (!p[k]) return 0;
        p += k + 1;
    }
}

/* The font files that match a script's patterns: each directory in turn, file names sorted. */
static int find_fonts(const char *dirs, const char *patterns, char ***out, int *nout) {
    *out = NULL;
    *nout = 0;
    if (check_dirs(dirs) != 0) return -1;
    int n = 0, cap = 0;
    char **paths = NULL;
    const char *p = dirs;
    char dir[4096];
    for (;;) {
        size_t k = strcspn(p, ":");
        memcpy(dir, p, k);
        dir[k] = 0;
        DIR *d = opendir(dir);
        if (!d) {
            for (int i = 0; i < n; i++) free(paths[i]);
            free(paths);
            return tsr_error("font directory '%s': %s", dir, strerror(errno));
        }
        int first = n;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.' || !match_any(patterns, e->d_name)) continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                char **np = tsr_malloc((size_t)cap * sizeof *np);
                if (paths) memcpy(np, paths, (size_t)n * sizeof *np);
                free(paths);
                paths = np;
            }
            size_t len = strlen(dir) + strlen(e->d_name) + 2;
            paths[n] = tsr_malloc(len);
            snprintf(paths[n], len, "%s/%s", dir, e->d_name);
            n++;
        }
        closedir(d);
        if (n > first) qsort(paths + first, (size_t)(n - first), sizeof *paths, cmp_str);
        if (!p[k]) break;
        p += k + 1;
    }
    *out = paths;
    *nout = n;
    return 0;
}

static const char *ft_errstr(FT_Error e) {
    const char *s = FT_Error_String(e); /* NULL unless FreeType was built with error strings */
    return s ? s : "FreeType error";
}

static int open_face(FT_Library lib, const char *path, FT_Face *face) {
    FT_Error e = FT_New_Face(lib, path, 0, face);
    if (e) {
        *face = NULL;
        return tsr_error("%s: FreeType cannot open this font (%s, code %d)", path, ft_errstr(e), e);
    }
    if (!(*face)->charmap || (*face)->charmap->encoding != FT_ENCODING_UNICODE) {
        if (FT_Select_Charmap(*face, FT_ENCODING_UNICODE) != 0) {
            FT_Done_Face(*face);
            *face = NULL;
            return tsr_error("%s: the font has no Unicode character map", path);
        }
    }
    if (!FT_IS_SCALABLE(*face) || (*face)->units_per_EM == 0) {
        FT_Done_Face(*face);
        *face = NULL;
        return tsr_error("%s: not a scalable (outline) font", path);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Rendering */

/* Jitter parameters, all fixed point: 16.16 unless said otherwise. */
typedef struct {
    FT_Angle angle;      /* degrees, 16.16 */
    FT_Fixed scale;      /* overall size factor */
    FT_Fixed aspect;     /* x scale 1 + aspect, y scale 1 - aspect */
    FT_Fixed shear;      /* x += shear * y */
    FT_Pos dx, dy;       /* translation, 26.6 pixels */
    int embolden_pm;     /* stroke change, thousandths of the glyph's larger side */
    int blur_w;          /* 0: none; else the side weights of the [w, 256-2w, w] / 256 kernel */
    int noise_amp;       /* noise standard deviation, grey levels */
} jitter_t;

static const jitter_t NO_JITTER = {0, 0x10000, 0, 0, 0, 0, 0, 0, 0};

static void draw_jitter(tsr_rng *r, int size, jitter_t *j) {
    long t = (long)size * 64 / 14; /* +-2 pixels at 28 */
    j->angle = (FT_Angle)rand_int(r, -10L * 65536, 10L * 65536);
    j->scale = (FT_Fixed)rand_int(r, 52429, 72090); /* 0.8 .. 1.1 */
    j->aspect = (FT_Fixed)rand_int(r, -3932, 3932); /* +-0.06 */
    j->shear = (FT_Fixed)rand_int(r, -9830, 9830);  /* +-0.15 */
    j->dx = (FT_Pos)rand_int(r, -t, t);
    j->dy = (FT_Pos)rand_int(r, -t, t);
    j->embolden_pm = (int)rand_int(r, -4, 32);
    j->blur_w = rand_int(r, 0, 1) ? (int)rand_int(r, 16, 48) : 0;
    j->noise_amp = (int)rand_int(r, 0, 8);
}

/* Render glyph gi of face into img (size*size, zeroed here). Returns 0, 1 if the glyph has no outline
 * or is empty after rendering, -1 on a FreeType error (tsr_error). */
static int render_glyph(FT_Library lib, FT_Face face, FT_UInt gi, int size, const jitter_t *j, uint8_t *img) {
    memset(img, 0, (size_t)size * (size_t)size);
    FT_Error e = FT_Load_Glyph(face, gi, FT_LOAD_NO_SCALE);
    if (e) return tsr_error("glyph %u: FT_Load_Glyph failed (%s, code %d)", gi, ft_errstr(e), e);
    FT_GlyphSlot g = face->glyph;
    if (g->format != FT_GLYPH_FORMAT_OUTLINE || g->outline.n_points == 0 || g->outline.n_contours == 0)
        return 1;
    FT_Outline *ol = &g->outline;
    FT_BBox bb;
    FT_Outline_Get_BBox(ol, &bb);
    FT_Pos w = bb.xMax - bb.xMin, h = bb.yMax - bb.yMin, big = w > h ? w : h;
    if (big <= 0) return 1;
    if (j->embolden_pm != 0) {
        FT_Pos st = big * j->embolden_pm / 1000;
        if (st != 0) {
            FT_Outline_EmboldenXY(ol, st, st);
            FT_Outline_Get_BBox(ol, &bb);
            w = bb.xMax - bb.xMin;
            h = bb.yMax - bb.yMin;
            big = w > h ? w : h;
            if (big <= 0) return 1;
        }
    }
    FT_Pos ref = big > face->units_per_EM / 2 ? big : face->units_per_EM / 2;
    FT_Fixed base = FT_DivFix((FT_Pos)size * 64 * FILL_PERMILLE / 1000, ref); /* 26.6 px per font unit */
    FT_Fixed sx = FT_MulFix(base, FT_MulFix(j->scale, 0x10000 + j->aspect));
    FT_Fixed sy = FT_MulFix(base, FT_MulFix(j->scale, 0x10000 - j->aspect));
    FT_Fixed c = FT_Cos(j->angle), s = FT_Sin(j->angle), k = j->shear;
    FT_Matrix m;
    m.xx = FT_MulFix(c, sx);
    m.xy = FT_MulFix(FT_MulFix(c, k) - s, sy);
    m.yx = FT_MulFix(s, sx);
    m.yy = FT_MulFix(FT_MulFix(s, k) + c, sy);
    FT_Outline_Translate(ol, -(bb.xMin + bb.xMax) / 2, -(bb.yMin + bb.yMax) / 2);
    FT_Outline_Transform(ol, &m);
    FT_Outline_Translate(ol, (FT_Pos)size * 32 + j->dx, (FT_Pos)size * 32 + j->dy);
    FT_Bitmap bm;
    memset(&bm, 0, sizeof bm);
    bm.rows = (unsigned)size;
    bm.width = (unsigned)size;
    bm.pitch = size; /* positive: the first row is the top one */
    bm.buffer = img;
    bm.num_grays = 256;
    bm.pixel_mode = FT_PIXEL_MODE_GRAY;
    e = FT_Outline_Get_Bitmap(lib, ol, &bm);
    if (e) return tsr_error("glyph %u: FT_Outline_Get_Bitmap failed (%s, code %d)", gi, ft_errstr(e), e);
    int ink = 0;
    for (int i = 0; i < size * size; i++) ink += img[i] >= 128;
    return ink >= MIN_INK_PIXELS ? 0 : 1;
}

/* Separable [w, 256-2w, w] / 256 blur with black outside, then clipped noise: the sum of four random
 * bytes (standard deviation 147.8) scaled to j->noise_amp grey levels. Integer only. */
static void degrade(uint8_t *img, int size, const jitter_t *j, tsr_rng *r, int *tmp) {
    if (j->blur_w > 0) {
        int w = j->blur_w, c = 256 - 2 * w;
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++) {
                const uint8_t *row = img + (size_t)y * size;
                int l = x > 0 ? row[x - 1] : 0, rr = x + 1 < size ? row[x + 1] : 0;
                tmp[y * size + x] = w * l + c * row[x] + w * rr; /* scaled by 256 */
            }
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++) {
                int u = y > 0 ? tmp[(y - 1) * size + x] : 0, d = y + 1 < size ? tmp[(y + 1) * size + x] : 0;
                int v = (w * u + c * tmp[y * size + x] + w * d + 32768) >> 16;
                img[(size_t)y * size + x] = (uint8_t)(v > 255 ? 255 : v);
            }
    }
    if (j->noise_amp > 0) {
        for (int i = 0; i < size * size; i++) {
            uint64_t b = tsr_rng_u64(r);
            int sum = (int)(b & 0xFF) + (int)((b >> 8) & 0xFF) + (int)((b >> 16) & 0xFF) + (int)((b >> 24) & 0xFF);
            int v = img[i] + (sum - 510) * j->noise_amp / 148;
            img[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

int tsr_glyphs_render_char(const char *font_path, uint32_t cp, int size, uint8_t *img) {
    if (!font_path || !img || size < 1 || size > 1024)
        return tsr_error("glyph rendering: bad arguments (font %s, size %d)", font_path ? font_path : "NULL", size);
    FT_Library lib;
    if (FT_Init_FreeType(&lib)) return tsr_error("glyph rendering: FreeType initialisation failed");
    FT_Face face;
    int rc = open_face(lib, font_path, &face);
    if (rc == 0) {
        FT_UInt gi = FT_Get_Char_Index(face, cp);
        if (gi == 0) rc = tsr_error("%s: no glyph for U+%04" PRIX32, font_path, cp);
        else {
            rc = render_glyph(lib, face, gi, size, &NO_JITTER, img);
            if (rc == 1) rc = tsr_error("%s: the glyph of U+%04" PRIX32 " is empty", font_path, cp);
            else if (rc < 0) tsr_error_context("%s, U+%04" PRIX32, font_path, cp);
        }
        FT_Done_Face(face);
    }
    FT_Done_FreeType(lib);
    return rc;
}

/* ------------------------------------------------------------------------------------------------
 * Tasks */

void tsr_glyph_task_free(tsr_glyph_task *t) {
    if (!t) return;
    for (int i = 0; i < t->nfonts; i++) free(t->fonts[i]);
    free(t->fonts);
    for (int i = 0; i < t->num_classes; i++) free(t->class_names[i]);
    free(t->class_names);
    free(t->codepoints);
    free(t->images);
    free(t->labels);
    free(t->split);
    memset(t, 0, sizeof *t);
}

static void close_faces(FT_Face *faces, int n) {
    for (int i = 0; i < n; i++)
        if (faces[i]) FT_Done_Face(faces[i]);
    free(faces);
}

/* The scan proper, with the library and the faces left open for rendering (*faces_out). */
static int scan(const tsr_glyph_opts *o, const tsr_glyph_script *s, tsr_glyph_task *t, FT_Library lib,
                FT_Face **faces_out) {
    *faces_out = NULL;
    memset(t, 0, sizeof *t);
    t->script = s;
    t->size = o->image_size;
    if (find_fonts(font_dirs(o), s->fonts, &t->fonts, &t->nfonts) != 0) return -1;
    if (t->nfonts == 0) {
        snprintf(t->reason, sizeof t->reason, "no font file matches '%s' in %s", s->fonts, font_dirs(o));
        return 1;
    }
    FT_Face *faces = tsr_calloc((size_t)t->nfonts, sizeof *faces);
    for (int f = 0; f < t->nfonts; f++)
        if (open_face(lib, t->fonts[f], &faces[f]) != 0) {
            close_faces(faces, t->nfonts);
            return -1;
        }
    int size = o->image_size, npx = size * size, cap = o->max_classes;
    t->codepoints = tsr_malloc((size_t)cap * sizeof *t->codepoints);
    t->class_names = tsr_calloc((size_t)cap, sizeof *t->class_names);
    uint8_t *ref = tsr_malloc((size_t)cap * (size_t)npx); /* clean first-font renderings */
    uint8_t *img = tsr_malloc((size_t)npx);
    int rc = 0, missing = 0, empty = 0, dups = 0;
    for (int ri = 0; ri < TSR_GLYPH_MAX_RANGES && t->num_classes < cap; ri++) {
        const tsr_glyph_range *rg = &s->ranges[ri];
        if (rg->lo == 0 && rg->hi == 0) break;
        uint32_t step = rg->step ? rg->step : 1;
        for (uint32_t cp = rg->lo; cp <= rg->hi && t->num_classes < cap; cp += step) {
            int ok = 1;
            for (int f = 0; f < t->nfonts && ok; f++) {
                FT_UInt gi = FT_Get_Char_Index(faces[f], cp);
                if (gi == 0) {
                    missing++;
                    ok = 0;
                    break;
                }
                uint8_t *dst = f == 0 ? ref + (size_t)t->num_classes * npx : img;
                int r = render_glyph(lib, faces[f], gi, size, &NO_JITTER, dst);
                if (r < 0) {
                    tsr_error_context("%s, U+%04" PRIX32, t->fonts[f], cp);
                    rc = -1;
                    goto done;
                }
                /* a combining mark (no advance) or an empty glyph is not a letter */
                if (r == 1 || (f == 0 && faces[0]->glyph->metrics.horiAdvance <= 0)) {
                    empty++;
                    ok = 0;
                }
            }
            if (!ok) continue;
            const uint8_t *mine = ref + (size_t)t->num_classes * npx;
            for (int c = 0; c < t->num_classes && ok; c++) {
                const uint8_t *other = ref + (size_t)c * npx;
                long sad = 0;
                for (int i = 0; i < npx; i++) sad += abs((int)mine[i] - (int)other[i]);
                if (sad * 256 <= (long)DUP_MEAN_Q8 * npx) ok = 0;
            }
            if (!ok) {
                dups++;
                continue;
            }
            char name[32], u8[5];
            int k = utf8_encode(cp, u8);
            u8[k] = 0;
            snprintf(name, sizeof name, "U+%04" PRIX32 " %s", cp, u8);
            t->codepoints[t->num_classes] = cp;
            t->class_names[t->num_classes] = xstrdup(name);
            t->num_classes++;
        }
    }
    if (t->num_classes < o->min_classes) {
        snprintf(t->reason, sizeof t->reason,
                 "only %d usable characters (%d missing from a font, %d empty or combining, %d duplicate "
                 "shapes), fewer than min_classes %d", t->num_classes, missing, empty, dups, o->min_classes);
        rc = 1;
    }
done:
    free(ref);
    free(img);
    if (rc == 0) *faces_out = faces;
    else close_faces(faces, t->nfonts);
    return rc;
}

/* What scan and render share: options (defaults when NULL), FreeType, the task's fonts and classes.
 * On 0 the library and the faces stay open for the caller; otherwise everything is closed again. */
static int open_task(const tsr_glyph_opts **o, tsr_glyph_opts *def, const tsr_glyph_script *s, tsr_glyph_task *t,
                     FT_Library *lib, FT_Face **faces) {
    memset(t, 0, sizeof *t);
    if (!*o) {
        tsr_glyph_opts_init(def);
        *o = def;
    }
    if (!s) return tsr_error("glyph suite: no script given");
    if (check_opts(*o) != 0) return -1;
    if (FT_Init_FreeType(lib)) return tsr_error("glyph suite: FreeType initialisation failed");
    int rc = scan(*o, s, t, *lib, faces);
    if (rc != 0) {
        FT_Done_FreeType(*lib);
        if (rc < 0) tsr_error_context("glyph suite, script '%s'", s->name);
    }
    return rc;
}

int tsr_glyphs_scan(const tsr_glyph_opts *o, const tsr_glyph_script *s, tsr_glyph_task *t) {
    tsr_glyph_opts def;
    FT_Library lib;
    FT_Face *faces;
    int rc = open_task(&o, &def, s, t, &lib, &faces);
    if (rc == 0) {
        close_faces(faces, t->nfonts);
        FT_Done_FreeType(lib);
    }
    return rc;
}

int tsr_glyphs_render_task(const tsr_glyph_opts *o, const tsr_glyph_script *s, tsr_glyph_task *t) {
    tsr_glyph_opts def;
    FT_Library lib;
    FT_Face *faces;
    int rc = open_task(&o, &def, s, t, &lib, &faces);
    if (rc != 0) return rc;
    int size = o->image_size, E = o->examples;
    size_t npx = (size_t)size * (size_t)size;
    t->n = (int64_t)t->num_classes * E;
    t->images = tsr_malloc((size_t)t->n * npx);
    t->labels = tsr_malloc((size_t)t->n * sizeof *t->labels);
    t->split = tsr_malloc((size_t)t->n * sizeof *t->split);
    int *tmp = tsr_malloc(npx * sizeof *tmp);
    int *perm = tsr_malloc((size_t)E * sizeof *perm);
    uint64_t task_key = mix(o->seed, tsr_hash_str(s->name));
    for (int c = 0; c < t->num_classes && rc == 0; c++) {
        uint64_t class_key = mix(task_key, (uint64_t)c);
        tsr_rng cr;
        tsr_rng_seed(&cr, class_key);
        /* fonts: round robin from a random first one; split: a random permutation of the examples */
        int f0 = (int)rand_int(&cr, 0, t->nfonts - 1);
        for (int e = 0; e < E; e++) perm[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int k = (int)rand_int(&cr, 0, e), x = perm[e];
            perm[e] = perm[k];
            perm[k] = x;
        }
        for (int q = 0; q < E; q++) {
            int e = perm[q];
            int64_t idx = (int64_t)c * E + e;
            t->labels[idx] = c;
            t->split[idx] = (int8_t)(q < o->n_test ? 2 : q < o->n_test + o->n_val ? 1 : 0);
        }
        for (int e = 0; e < E; e++) {
            int64_t idx = (int64_t)c * E + e;
            uint8_t *img = t->images + (size_t)idx * npx;
            int f = (f0 + e) % t->nfonts;
            tsr_rng r;
            tsr_rng_seed(&r, mix(class_key, 0x100000000ull + (uint64_t)e));
            jitter_t j = NO_JITTER;
            if (o->jitter) draw_jitter(&r, size, &j);
            FT_UInt gi = FT_Get_Char_Index(faces[f], t->codepoints[c]);
            int rr = render_glyph(lib, faces[f], gi, size, &j, img);
            if (rr == 1) { /* thinned or pushed out of the picture: fall back to the clean stroke */
                jitter_t j2 = j;
                j2.embolden_pm = 0;
                j2.dx = j2.dy = 0;
                rr = render_glyph(lib, faces[f], gi, size, &j2, img);
            }
            if (rr < 0) {
                tsr_error_context("%s, U+%04" PRIX32, t->fonts[f], t->codepoints[c]);
                rc = -1;
                break;
            }
            degrade(img, size, &j, &r, tmp);
        }
    }
    free(tmp);
    free(perm);
    close_faces(faces, t->nfonts);
    FT_Done_FreeType(lib);
    if (rc < 0) {
        tsr_error_context("glyph suite, script '%s'", s->name);
        tsr_glyph_task_free(t);
        t->script = s;
    }
    return rc;
}

/* ------------------------------------------------------------------------------------------------
 * Provenance */

/* Run a command and append its standard output (the first 8 KiB) to b; 0 if it ran and exited 0. */
static int run_capture(const char *cmd, sbuf *b) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[512];
    size_t total = 0;
    while (fgets(line, sizeof line, p)) {
        total += strlen(line);
        if (total < 8192) sb_add(b, "%s", line);
    }
    int st = pclose(p);
    return st == 0 ? 0 : -1;
}

/* Debian packages that own the font directories, with libfreetype6, as "package version" lines. */
static void debian_packages(const char *dirs, sbuf *out) {
    sbuf owners = {0}, cmd = {0};
    const char *p = dirs;
    for (;;) {
        size_t k = strcspn(p, ":");
        if (memchr(p, '\'', k) == NULL) {
            sbuf one = {0};
            size_t len = k + 64;
            char *c = tsr_malloc(len);
            snprintf(c, len, "dpkg-query -S '%.*s' 2>/dev/null", (int)k, p);
            if (run_capture(c, &one) == 0) {
                /* "pkg1, pkg2: /dir" */
                const char *s = sb_str(&one), *colon = strstr(s, ": ");
                if (colon) sb_add(&owners, " %.*s", (int)(colon - s), s);
            }
            free(c);
            free(one.s);
        }
        if (!p[k]) break;
        p += k + 1;
    }
    for (char *q = owners.s; q && *q; q++)
        if (*q == ',') *q = ' ';
    sb_add(&cmd, "dpkg-query -W -f '${Package} ${Version}\\n'%s libfreetype6 2>/dev/null", sb_str(&owners));
    sbuf res = {0};
    (void)run_capture(sb_str(&cmd), &res); /* exits 1 if one package is unknown: keep the others */
    if (res.n > 0) {
        if (res.s[res.n - 1] == '\n') res.s[--res.n] = 0;
        sb_add(out, "%s", res.s);
    } else {
        sb_add(out, "unknown (dpkg-query is not available or does not know the font directories)");
    }
    free(res.s);
    free(cmd.s);
    free(owners.s);
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ------------------------------------------------------------------------------------------------
 * The suite */

int tsr_glyphs_build(const tsr_glyph_opts *o, const char *out_path) {
    tsr_glyph_opts def;
    if (!o) {
        tsr_glyph_opts_init(&def);
        o = &def;
    }
    if (!out_path || !out_path[0]) return tsr_error("glyph suite: no output path");
    if (check_opts(o) != 0) return -1;
    const char *dirs = font_dirs(o);
    if (check_dirs(dirs) != 0) return tsr_error_context("glyph suite");

    int nsel = o->nscripts > 0 ? o->nscripts : NSCRIPTS;
    const tsr_glyph_script **sel = tsr_malloc((size_t)nsel * sizeof *sel);
    for (int i = 0; i < nsel; i++) {
        if (o->nscripts > 0) {
            sel[i] = tsr_glyph_script_find(o->scripts[i]);
            if (!sel[i]) {
                free(sel);
                return tsr_error("glyph suite: unknown script '%s' (the script table is listed in "
                                 "docs/GLYPHS.md)", o->scripts[i] ? o->scripts[i] : "NULL");
            }
        } else {
            sel[i] = &SCRIPTS[i];
        }
    }

    double t0 = tsr_time();
    tsr_glyph_task *tasks = tsr_calloc((size_t)nsel, sizeof *tasks);
    int *status = tsr_calloc((size_t)nsel, sizeof *status);
    char (*errs)[512] = tsr_calloc((size_t)nsel, sizeof *errs);
    /* Each task has its own FreeType library and random streams: the order of work does not matter. */
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < nsel; i++) {
        status[i] = tsr_glyphs_render_task(o, sel[i], &tasks[i]);
        if (status[i] < 0) snprintf(errs[i], sizeof errs[i], "%s", tsr_last_error());
    }
    double t_render = tsr_time() - t0;

    int rc = 0, ntasks = 0, nclasses = 0;
    int64_t nex = 0;
    sbuf dropped = {0}, task_fonts = {0}, fonts = {0}, pkgs = {0}, opts_s = {0}, seed_s = {0}, ft_s = {0},
         title = {0}, source = {0}, split_s = {0};
    for (int i = 0; i < nsel && rc == 0; i++) {
        if (status[i] < 0) {
            rc = tsr_error("%s", errs[i]);
        } else if (status[i] == 1) {
            if (o->nscripts > 0)
                rc = tsr_error("glyph suite: script '%s' was asked for but cannot be built: %s", sel[i]->name,
                               tasks[i].reason);
            sb_add(&dropped, "%s%s: %s", dropped.n ? "\n" : "", sel[i]->name, tasks[i].reason);
        } else {
            ntasks++;
            nclasses += tasks[i].num_classes;
            nex += tasks[i].n;
        }
    }
    if (rc == 0 && ntasks == 0)
        rc = tsr_error("glyph suite: no script could be built from the fonts in %s (install fonts-noto-core)",
                       dirs);

    tsr_suite_task *st = NULL;
    char **all = NULL;
    if (rc == 0) {
        st = tsr_calloc((size_t)ntasks, sizeof *st);
        int nall = 0, k = 0;
        for (int i = 0; i < nsel; i++) {
            if (status[i] != 0) continue;
            tsr_glyph_task *t = &tasks[i];
            st[k].name = t->script->name;
            st[k].num_classes = t->num_classes;
            st[k].class_names = (const char *const *)t->class_names;
            st[k].n = t->n;
            st[k].images = t->images;
            st[k].labels = t->labels;
            st[k].split = t->split;
            k++;
            nall += t->nfonts;
            sb_add(&task_fonts, "%s%s:", task_fonts.n ? "\n" : "", t->script->name);
            for (int f = 0; f < t->nfonts; f++) sb_add(&task_fonts, " %s", base_name(t->fonts[f]));
        }
        /* every font file used, once, with its size and CRC-32 */
        all = tsr_malloc((size_t)nall * sizeof *all);
        int m = 0;
        for (int i = 0; i < nsel; i++)
            for (int f = 0; status[i] == 0 && f < tasks[i].nfonts; f++) all[m++] = tasks[i].fonts[f];
        qsort(all, (size_t)m, sizeof *all, cmp_str);
        for (int i = 0; i < m && rc == 0; i++) {
            if (i > 0 && strcmp(all[i], all[i - 1]) == 0) continue;
            char *data = NULL;
            size_t n = 0;
            if (tsr_read_file(all[i], &data, &n) != 0) {
                rc = tsr_error_context("glyph suite: checksumming the font files");
                break;
            }
            uLong crc = crc32(0L, Z_NULL, 0);
            for (size_t off = 0; off < n;) {
                uInt chunk = n - off > (1u << 30) ? (1u << 30) : (uInt)(n - off);
                crc = crc32(crc, (const Bytef *)data + off, chunk);
                off += chunk;
            }
            free(data);
            sb_add(&fonts, "%s%s %zu bytes crc32 %08lx", fonts.n ? "\n" : "", all[i], n, (unsigned long)crc);
        }
    }
    if (rc == 0) {
        FT_Library lib;
        FT_Int ma = 0, mi = 0, pa = 0;
        if (FT_Init_FreeType(&lib) == 0) {
            FT_Library_Version(lib, &ma, &mi, &pa);
            FT_Done_FreeType(lib);
        }
        sb_add(&ft_s, "%d.%d.%d", ma, mi, pa);
        debian_packages(dirs, &pkgs);
        sb_add(&seed_s, "%" PRIu64, o->seed);
        sb_add(&opts_s, "image_size=%d channels=1 max_classes=%d min_classes=%d examples=%d n_val=%d n_test=%d "
               "jitter=%d", o->image_size, o->max_classes, o->min_classes, o->examples, o->n_val, o->n_test,
               o->jitter);
        sb_add(&split_s, "per class, chosen at random: %d train (split 0), %d val (split 1), %d test (split 2)",
               o->examples - o->n_val - o->n_test, o->n_val, o->n_test);
        sb_add(&title, "tessera glyph suite: %d writing systems, %d characters", ntasks, nclasses);
        sb_add(&source, "Characters of %d writing systems rendered with FreeType %s (src/data/glyphs.c) from "
               "the font files in glyph_fonts; Debian packages: ", ntasks, sb_str(&ft_s));
        for (const char *q = sb_str(&pkgs); *q; q++) {
            if (*q == '\n') sb_add(&source, ", ");
            else sb_add(&source, "%c", *q);
        }
        if (!dropped.n) sb_add(&dropped, "none");
        const char *keys[] = {"glyph_seed", "glyph_options", "glyph_split", "glyph_font_dir", "glyph_fonts",
                              "glyph_task_fonts", "glyph_dropped", "glyph_packages", "freetype_version"};
        const char *vals[] = {sb_str(&seed_s), sb_str(&opts_s), sb_str(&split_s), dirs, sb_str(&fonts),
                              sb_str(&task_fonts), sb_str(&dropped), sb_str(&pkgs), sb_str(&ft_s)};
        tsr_suite_prov prov = {
            .title = sb_str(&title),
            .source = sb_str(&source),
            .license = "Images rendered from the fonts listed in glyph_fonts: the Noto fonts are under the "
                       "SIL Open Font License 1.1, DejaVu under the Bitstream Vera licence (see "
                       "/usr/share/doc/<package>/copyright)",
            .history = o->command && o->command[0] ? o->command : "tsr_glyphs_build",
            .nattr = (int)(sizeof keys / sizeof keys[0]),
            .attr_keys = keys,
            .attr_vals = vals,
        };
        double t1 = tsr_time();
        if (tsr_suite_write(out_path, o->image_size, o->image_size, 1, ntasks, st, &prov) != 0) rc = -1;
        double t_write = tsr_time() - t1;
        if (rc == 0) {
            tsr_info("glyph suite: %s: %d tasks, %d classes, %" PRId64 " examples of %dx%d grey (render %.1f s, "
                     "write %.1f s)", out_path, ntasks, nclasses, nex, o->image_size, o->image_size, t_render,
                     t_write);
            for (int i = 0; i < nsel; i++)
                if (status[i] == 1) tsr_info("glyph suite: dropped %s: %s", sel[i]->name, tasks[i].reason);
        }
    }
    free(st);
    free(all);
    for (int i = 0; i < nsel; i++) tsr_glyph_task_free(&tasks[i]);
    free(tasks);
    free(status);
    free(errs);
    free(sel);
    sbuf *bufs[] = {&dropped, &task_fonts, &fonts, &pkgs, &opts_s, &seed_s, &ft_s, &title, &source, &split_s};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]->s);
    return rc;
}
