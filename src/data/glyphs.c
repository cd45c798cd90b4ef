/* glyphs.c: the glyph suite generator (see glyphs.h and docs/GLYPHS.md).
 *
 * Rendering: each glyph is loaded unscaled (FT_LOAD_NO_SCALE: the outline in font units, no hinting),
 * optionally emboldened or thinned, centred on its exact bounding box, scaled so that its larger side
 * fills FILL_PERMILLE of the image (glyphs smaller than half an em are scaled as if they were half an
 * em, so that small letters stay small), jittered by a 2x2 fixed-point matrix (rotation, scale,
 * aspect, shear) and a translation, then rasterised anti-aliased by FreeType's smooth rasteriser
 * straight into the image. Elastic distortion, blur and noise are integer too. No floating point is
 * used anywhere, so the pixels do not depend on the compiler, its flags or the C library. */
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
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <ft2build.h>
#include FT_FREETYPE_H
#include FT_BBOX_H
#include FT_OUTLINE_H
#include FT_TRIGONOMETRY_H
#include FT_TRUETYPE_TABLES_H

/* Larger side of a glyph, in thousandths of the image side, before jitter. Rotation by 10 degrees
 * and scale 1.1 bring it to about 0.87 of the side, so that translation rarely clips. */
#define FILL_PERMILLE 680
/* Two characters whose clean renderings (first font) differ by at most this mean absolute
 * difference per pixel (in 1/256 grey levels) are the same shape: the later one is skipped. */
#define DUP_MEAN_Q8 128
/* A rendering is empty unless its grey levels add up to at least this many white pixels (a sum, not a
 * count of bright pixels: the Thin and ExtraLight faces of fonts-noto-extra draw strokes of half a
 * pixel at 28 px, which never reach full white but are plainly visible). */
#define MIN_INK_PIXELS 3

/* The augmentation of the jittered renderings (draw_aug): uniform ranges, in the units of
 * tsr_glyph_aug. Rotation in degrees, the 16.16 factors as 1/65536. */
#define AUG_ROT_DEG 12                /* -12 .. +12 degrees */
#define AUG_SCALE_LO 52429            /* 0.80 */
#define AUG_SCALE_HI 72090            /* 1.10 */
#define AUG_ASPECT 3932               /* +-0.06 */
#define AUG_SHEAR 13107               /* +-0.20 */
#define AUG_SHIFT_DIV 14              /* translation up to 1/14 of the side: +-2 px at 28 */
#define AUG_BOLD_LO (-15)             /* stroke change, thousandths of the glyph's larger side */
#define AUG_BOLD_HI 40
/* elastic alpha at 28 px, pixels in 8.8 (scaled by size / 28 and by the box width / 7 elsewhere) */
#define AUG_ELASTIC_LO (6 * 256)
#define AUG_ELASTIC_HI (24 * 256)

/* ------------------------------------------------------------------------------------------------
 * The script table. Ranges list the letters in class order (independent vowels and consonants for
 * the Brahmic scripts, capitals for the bicameral ones); combining marks that fall inside a range
 * have no advance width and are skipped, as are code points the fonts lack. */

#define NS(x) "NotoSans" x "-*.ttf"
#define NSS(x) "NotoSans" x "-*.ttf NotoSerif" x "-*.ttf"
#define R1(a, b) {{(a), (b), 1}}
#define LGC_FONTS "NotoSans-*.ttf NotoSerif-*.ttf NotoSansDisplay-*.ttf NotoSerifDisplay-*.ttf NotoSansMono-*.ttf " \
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
    o->elastic = 1;
    o->counts[TSR_GLYPH_SOURCE] = (tsr_glyph_counts){100, 10, 10, 0};
    o->counts[TSR_GLYPH_TRAIN] = (tsr_glyph_counts){40, 5, 5, 0};
    /* test renderings augmented like the others (fixed by the suite's seed, the same for every few-shot
     * seed): plain ones would be one image per class and font, 20 distinct images for a one-font task */
    o->counts[TSR_GLYPH_VAL] = (tsr_glyph_counts){20, 5, 10, 0};
    o->counts[TSR_GLYPH_HELDOUT] = (tsr_glyph_counts){20, 5, 10, 0};
}

static const char *const ROLE_NAMES[TSR_GLYPH_NROLES] = {"none", "source", "train", "val", "heldout"};

const char *tsr_glyph_role_name(int role) {
    return role >= 0 && role < TSR_GLYPH_NROLES ? ROLE_NAMES[role] : NULL;
}

int tsr_glyph_role_of(const tsr_glyph_opts *o, const char *script) {
    for (int r = 1; o && script && r < TSR_GLYPH_NROLES; r++)
        for (int i = 0; i < o->role_n[r]; i++)
            if (o->role_scripts[r] && o->role_scripts[r][i] && strcmp(o->role_scripts[r][i], script) == 0)
                return r;
    return TSR_GLYPH_NO_ROLE;
}

static const char *roles_file(const tsr_glyph_opts *o) {
    return o->roles_file && o->roles_file[0] ? o->roles_file : "roles";
}

/* The role lists: known scripts, each in one list at most; the counts of each role. */
static int check_roles(const tsr_glyph_opts *o) {
    for (int r = 1; r < TSR_GLYPH_NROLES; r++) {
        const tsr_glyph_counts *c = &o->counts[r];
        if (c->train < 1 || c->val < 0 || c->test < 0 || (long)c->train + c->val + c->test > 100000)
            return tsr_error("glyph suite: renderings per class of role %s: %d train, %d val, %d test: need at "
                             "least 1 train, val and test >= 0, at most 100000 in all", ROLE_NAMES[r], c->train,
                             c->val, c->test);
        if (o->role_n[r] < 0 || (o->role_n[r] > 0 && !o->role_scripts[r]))
            return tsr_error("glyph suite: %s: suite.%s has %d names but no list", roles_file(o), ROLE_NAMES[r],
                             o->role_n[r]);
        for (int i = 0; i < o->role_n[r]; i++) {
            const char *name = o->role_scripts[r][i];
            if (!name || !tsr_glyph_script_find(name))
                return tsr_error("glyph suite: %s: suite.%s lists '%s', which is not a script of the table "
                                 "(docs/GLYPHS.md lists them)", roles_file(o), ROLE_NAMES[r], name ? name : "NULL");
            for (int r2 = 1; r2 <= r; r2++)
                for (int j = 0; j < (r2 == r ? i : o->role_n[r2]); j++)
                    if (strcmp(o->role_scripts[r2][j], name) == 0)
                        return tsr_error("glyph suite: %s: '%s' is listed in suite.%s%s%s (a script has one "
                                         "role)", roles_file(o), name, ROLE_NAMES[r2],
                                         r2 == r ? " twice" : " and in suite.", r2 == r ? "" : ROLE_NAMES[r]);
        }
    }
    return 0;
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
    return check_roles(o);
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

void tsr_glyph_aug_clean(tsr_glyph_aug *a) {
    memset(a, 0, sizeof *a);
    a->scale = 0x10000;
}

static const tsr_glyph_aug NO_AUG = {0, 0x10000, 0, 0, 0, 0, 0, 0, 0, 0, 0};

/* The elastic alpha (8.8 pixels) of a 28-pixel alpha a28 at another size: the displacement's spread
 * is about alpha / sigma, so alpha grows with the side and with the box width to keep the distortion
 * the same fraction of the image. */
static int elastic_alpha_at(int a28, int size) {
    int w = 2 * (size / 8) + 1;
    return (int)((int64_t)a28 * size * w / (28 * 7));
}

static void draw_aug(tsr_rng *r, int size, int elastic, tsr_glyph_aug *a) {
    long t = (long)size * 64 / AUG_SHIFT_DIV;
    tsr_glyph_aug_clean(a);
    a->angle = (int32_t)rand_int(r, -AUG_ROT_DEG * 65536L, AUG_ROT_DEG * 65536L);
    a->scale = (int32_t)rand_int(r, AUG_SCALE_LO, AUG_SCALE_HI);
    a->aspect = (int32_t)rand_int(r, -AUG_ASPECT, AUG_ASPECT);
    a->shear = (int32_t)rand_int(r, -AUG_SHEAR, AUG_SHEAR);
    a->dx = (int32_t)rand_int(r, -t, t);
    a->dy = (int32_t)rand_int(r, -t, t);
    a->embolden_pm = (int)rand_int(r, AUG_BOLD_LO, AUG_BOLD_HI);
    a->blur_w = rand_int(r, 0, 1) ? (int)rand_int(r, 16, 48) : 0;
    a->noise_amp = (int)rand_int(r, 0, 8);
    int a28 = (int)rand_int(r, AUG_ELASTIC_LO, AUG_ELASTIC_HI);
    a->elastic_alpha = elastic ? elastic_alpha_at(a28, size) : 0;
    a->seed = tsr_rng_u64(r);
}

/* Render glyph gi of face into img (size*size, zeroed here) under the geometric part of a (affine,
 * stroke). Returns 0, 1 if the glyph has no outline or is empty after rendering, -1 on a FreeType
 * error (tsr_error). */
static int render_glyph(FT_Library lib, FT_Face face, FT_UInt gi, int size, const tsr_glyph_aug *a, uint8_t *img) {
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
    /* no thinning of the light faces (OS/2 weight class below 350: Thin, ExtraLight, Light), whose strokes
     * are a fraction of a pixel already */
    const TT_OS2 *os2 = a->embolden_pm < 0 ? FT_Get_Sfnt_Table(face, FT_SFNT_OS2) : NULL;
    int thin_face = os2 && os2->version != 0xFFFFu && os2->usWeightClass < 350;
    if (a->embolden_pm != 0 && !(a->embolden_pm < 0 && thin_face)) {
        FT_Pos st = big * a->embolden_pm / 1000;
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
    FT_Fixed sx = FT_MulFix(base, FT_MulFix(a->scale, 0x10000 + a->aspect));
    FT_Fixed sy = FT_MulFix(base, FT_MulFix(a->scale, 0x10000 - a->aspect));
    FT_Fixed c = FT_Cos(a->angle), s = FT_Sin(a->angle), k = a->shear;
    FT_Matrix m;
    m.xx = FT_MulFix(c, sx);
    m.xy = FT_MulFix(FT_MulFix(c, k) - s, sy);
    m.yx = FT_MulFix(s, sx);
    m.yy = FT_MulFix(FT_MulFix(s, k) + c, sy);
    FT_Outline_Translate(ol, -(bb.xMin + bb.xMax) / 2, -(bb.yMin + bb.yMax) / 2);
    FT_Outline_Transform(ol, &m);
    FT_Outline_Translate(ol, (FT_Pos)size * 32 + a->dx, (FT_Pos)size * 32 + a->dy);
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
    long ink = 0;
    for (int i = 0; i < size * size; i++) ink += img[i];
    return ink >= MIN_INK_PIXELS * 255L ? 0 : 1;
}

/* One pass of the box filter of width 2h + 1 along a line of a (element i at a[i * stride]): the
 * values on [lo, hi) in, the window sums on [lo + h, hi - h) out (not divided: the caller divides
 * once after three passes). */
static void box_pass(int64_t *a, size_t stride, int lo, int hi, int h, int64_t *line) {
    for (int i = lo; i < hi; i++) line[i] = a[(size_t)i * stride];
    int64_t sum = 0;
    for (int i = lo; i < lo + 2 * h && i < hi; i++) sum += line[i];
    for (int c = lo + h; c < hi - h; c++) {
        sum += line[c + h];
        a[(size_t)c * stride] = sum;
        sum -= line[c - h];
    }
}

/* v * R / 2^36 rounded to the nearest, halves away from zero, for |v| * R < 2^64 (a division by a
 * constant as a multiplication: R = 2^36 / d). */
static int64_t mul_q36(int64_t v, uint64_t R) {
    uint64_t m = ((v >= 0 ? (uint64_t)v : (uint64_t)0 - (uint64_t)v) * R + (1ull << 35)) >> 36;
    return v >= 0 ? (int64_t)m : -(int64_t)m;
}

/* floor(v / 256) for any sign (C's division truncates, and >> of a negative value is
 * implementation-defined). */
static int floor256(int v) { return v >= 0 ? v / 256 : -((-v + 255) / 256); }

void tsr_glyphs_elastic(uint8_t *img, int size, int alpha, uint64_t seed) {
    if (!img || size < 1 || alpha <= 0) return;
    if (alpha >= (1 << 26)) alpha = (1 << 26) - 1; /* 2^18 pixels: far beyond any image */
    /* each field on a (size + 6h)^2 grid, so that the three passes in each direction leave exactly
     * the size x size middle with full support: no edge effects */
    int h = size / 8, G = size + 6 * h;
    int64_t w3 = (int64_t)(2 * h + 1) * (2 * h + 1) * (2 * h + 1);
    size_t gn = (size_t)G * (size_t)G;
    int64_t *f = tsr_malloc(2 * gn * sizeof *f);
    int64_t *line = tsr_malloc((size_t)G * sizeof *line);
    uint8_t *src = tsr_malloc((size_t)size * (size_t)size);
    tsr_rng r;
    tsr_rng_seed(&r, seed);
    for (size_t i = 0; i < 2 * gn; i += 4) {
        uint64_t b = tsr_rng_u64(&r);
        for (size_t k = 0; k < 4 && i + k < 2 * gn; k++) f[i + k] = (int64_t)((b >> (16 * k)) & 0xFFFF) - 32768;
    }
    int m0 = 3 * h, m1 = G - 3 * h; /* the middle: [m0, m1) = size */
    /* the means after the three x passes: sums / w^3; |sum| <= 2^15 w^3, so |sum| * R1 <= 2^51 */
    uint64_t R1 = (1ull << 36) / (uint64_t)w3;
    /* the displacement in 1/256 pixel after the y passes: alpha (8.8 px) times the smoothed noise in
     * [-1, 1): sum * alpha / (2^15 w^3); |sum| * R2 <= alpha * 2^36 < 2^63 for any alpha < 2^27 */
    uint64_t R2 = ((uint64_t)alpha << 21) / (uint64_t)w3;
    for (int fi = 0; fi < 2; fi++) {
        int64_t *a = f + (size_t)fi * gn;
        for (int p = 0; p < 3; p++)
            for (int y = 0; y < G; y++) box_pass(a + (size_t)y * G, 1, p * h, G - p * h, h, line);
        for (int y = 0; y < G; y++)
            for (int x = m0; x < m1; x++) a[(size_t)y * G + x] = mul_q36(a[(size_t)y * G + x], R1);
        for (int p = 0; p < 3; p++)
            for (int x = m0; x < m1; x++) box_pass(a + x, (size_t)G, p * h, G - p * h, h, line);
        for (int y = m0; y < m1; y++)
            for (int x = m0; x < m1; x++) a[(size_t)y * G + x] = mul_q36(a[(size_t)y * G + x], R2);
    }
    memcpy(src, img, (size_t)size * (size_t)size);
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            size_t gi = (size_t)(y + m0) * G + (size_t)(x + m0);
            int px = x * 256 + (int)f[gi], py = y * 256 + (int)f[gn + gi];
            int ix = floor256(px), iy = floor256(py);
            uint32_t fx = (uint32_t)(px - ix * 256), fy = (uint32_t)(py - iy * 256);
            uint32_t v[4] = {0, 0, 0, 0};
            for (int q = 0; q < 4; q++) {
                int xx = ix + (q & 1), yy = iy + (q >> 1);
                if (xx >= 0 && xx < size && yy >= 0 && yy < size) v[q] = src[(size_t)yy * size + xx];
            }
            uint32_t acc = (256 - fx) * (256 - fy) * v[0] + fx * (256 - fy) * v[1] + (256 - fx) * fy * v[2] +
                           fx * fy * v[3];
            img[(size_t)y * size + x] = (uint8_t)((acc + 32768) >> 16);
        }
    free(f);
    free(line);
    free(src);
}

/* The pixel part of a: elastic distortion, then a separable [w, 256-2w, w] / 256 blur with black
 * outside, then clipped noise: the sum of four random bytes (standard deviation 147.8) scaled to
 * a->noise_amp grey levels. Integer only. */
static void degrade(uint8_t *img, int size, const tsr_glyph_aug *a, int *tmp) {
    if (a->elastic_alpha > 0) tsr_glyphs_elastic(img, size, a->elastic_alpha, a->seed);
    if (a->blur_w > 0) {
        int w = a->blur_w, c = 256 - 2 * w;
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
    if (a->noise_amp > 0) {
        tsr_rng r;
        tsr_rng_seed(&r, mix(a->seed, 1));
        for (int i = 0; i < size * size; i++) {
            uint64_t b = tsr_rng_u64(&r);
            int sum = (int)(b & 0xFF) + (int)((b >> 8) & 0xFF) + (int)((b >> 16) & 0xFF) + (int)((b >> 24) & 0xFF);
            int v = img[i] + (sum - 510) * a->noise_amp / 148;
            img[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

/* A whole rendering: geometry, then pixels. When the geometry leaves nothing (a thinned stroke, a
 * glyph pushed out of the picture), the stroke change and the translation are dropped. Returns as
 * render_glyph. */
static int render_aug(FT_Library lib, FT_Face face, FT_UInt gi, int size, const tsr_glyph_aug *a, uint8_t *img,
                      int *tmp) {
    int rr = render_glyph(lib, face, gi, size, a, img);
    if (rr == 1) {
        tsr_glyph_aug a2 = *a;
        a2.embolden_pm = 0;
        a2.dx = a2.dy = 0;
        rr = render_glyph(lib, face, gi, size, &a2, img);
    }
    if (rr >= 0) degrade(img, size, a, tmp);
    return rr;
}

int tsr_glyphs_render_char_aug(const char *font_path, uint32_t cp, int size, const tsr_glyph_aug *aug,
                               uint8_t *img) {
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
            int *tmp = tsr_malloc((size_t)size * (size_t)size * sizeof *tmp);
            rc = aug ? render_aug(lib, face, gi, size, aug, img, tmp) : render_glyph(lib, face, gi, size, &NO_AUG, img);
            free(tmp);
            if (rc == 1) rc = tsr_error("%s: the glyph of U+%04" PRIX32 " is empty", font_path, cp);
            else if (rc < 0) tsr_error_context("%s, U+%04" PRIX32, font_path, cp);
        }
        FT_Done_Face(face);
    }
    FT_Done_FreeType(lib);
    return rc;
}

int tsr_glyphs_render_char(const char *font_path, uint32_t cp, int size, uint8_t *img) {
    return tsr_glyphs_render_char_aug(font_path, cp, size, NULL, img);
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
                int r = render_glyph(lib, faces[f], gi, size, &NO_AUG, dst);
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
    /* the renderings per class of the script's role */
    t->role = tsr_glyph_role_of(*o, s->name);
    if (t->role == TSR_GLYPH_NO_ROLE) {
        t->examples = (*o)->examples;
        t->n_val = (*o)->n_val;
        t->n_test = (*o)->n_test;
        t->plain_test = 0;
    } else {
        const tsr_glyph_counts *c = &(*o)->counts[t->role];
        t->examples = c->train + c->val + c->test;
        t->n_val = c->val;
        t->n_test = c->test;
        t->plain_test = c->plain_test && c->test > 0;
    }
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
    int size = o->image_size, E = t->examples, NV = t->n_val, NT = t->n_test;
    /* plain test renderings: renderings 0 .. NT-1 of each class, clean, fonts 0, 1, ... in turn; the
     * others (NA of them) are augmented */
    int plain = t->plain_test, NA = plain ? E - NT : E;
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
        /* fonts: round robin from a random first one; split: a random permutation of the augmented
         * renderings (the first NT are test unless they are plain, the next NV val, the rest train) */
        int f0 = (int)rand_int(&cr, 0, t->nfonts - 1), e0 = E - NA;
        for (int q = 0; q < NA; q++) perm[q] = e0 + q;
        for (int q = NA - 1; q > 0; q--) {
            int k = (int)rand_int(&cr, 0, q), x = perm[q];
            perm[q] = perm[k];
            perm[k] = x;
        }
        for (int e = 0; e < e0; e++) {
            t->labels[(int64_t)c * E + e] = c;
            t->split[(int64_t)c * E + e] = 2;
        }
        for (int q = 0; q < NA; q++) {
            int64_t idx = (int64_t)c * E + perm[q];
            int qq = plain ? q + NT : q;
            t->labels[idx] = c;
            t->split[idx] = (int8_t)(qq < NT ? 2 : qq < NT + NV ? 1 : 0);
        }
        for (int e = 0; e < E; e++) {
            int64_t idx = (int64_t)c * E + e;
            uint8_t *img = t->images + (size_t)idx * npx;
            int f = e < e0 ? e % t->nfonts : (f0 + e - e0) % t->nfonts;
            tsr_glyph_aug a = NO_AUG;
            if (o->jitter && e >= e0) {
                tsr_rng r;
                tsr_rng_seed(&r, mix(class_key, 0x100000000ull + (uint64_t)e));
                draw_aug(&r, size, o->elastic, &a);
            }
            FT_UInt gi = FT_Get_Char_Index(faces[f], t->codepoints[c]);
            if (render_aug(lib, faces[f], gi, size, &a, img, tmp) < 0) {
                tsr_error_context("%s, U+%04" PRIX32, t->fonts[f], t->codepoints[c]);
                rc = -1;
                break;
            }
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
         title = {0}, source = {0}, split_s = {0}, roles_s = {0}, counts_s = {0}, aug_s = {0};
    for (int i = 0; i < nsel && rc == 0; i++) {
        if (status[i] < 0) {
            rc = tsr_error("%s", errs[i]);
        } else if (status[i] == 1) {
            int role = tsr_glyph_role_of(o, sel[i]->name);
            if (o->nscripts > 0)
                rc = tsr_error("glyph suite: script '%s' was asked for but cannot be built: %s", sel[i]->name,
                               tasks[i].reason);
            else if (role != TSR_GLYPH_NO_ROLE)
                rc = tsr_error("glyph suite: script '%s' (suite.%s in %s) cannot be built: %s", sel[i]->name,
                               ROLE_NAMES[role], roles_file(o), tasks[i].reason);
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
        int have_roles = 0;
        for (int r = 1; r < TSR_GLYPH_NROLES; r++) have_roles |= o->role_n[r] > 0;
        sb_add(&opts_s, "image_size=%d channels=1 max_classes=%d min_classes=%d examples=%d n_val=%d n_test=%d "
               "jitter=%d elastic=%d roles=%s", o->image_size, o->max_classes, o->min_classes, o->examples,
               o->n_val, o->n_test, o->jitter, o->elastic, have_roles ? roles_file(o) : "none");
        /* per role: its tasks in the file, and the renderings per class */
        for (int r = have_roles ? 1 : 0; r < TSR_GLYPH_NROLES; r++) {
            int nt = 0;
            for (int i = 0; i < nsel; i++)
                if (status[i] == 0 && tasks[i].role == r) nt++;
            if (r == TSR_GLYPH_NO_ROLE && nt == 0) continue;
            sb_add(&roles_s, "%s%s:", roles_s.n ? "\n" : "", ROLE_NAMES[r]);
            for (int i = 0; i < nsel; i++)
                if (status[i] == 0 && tasks[i].role == r) sb_add(&roles_s, " %s", sel[i]->name);
            int tr = r ? o->counts[r].train : o->examples - o->n_val - o->n_test;
            int va = r ? o->counts[r].val : o->n_val, te = r ? o->counts[r].test : o->n_test;
            int plain = r && o->counts[r].plain_test && te > 0;
            sb_add(&counts_s, "%s%s (%d tasks): %d train, %d val, %d test renderings per class; %s", counts_s.n ? "\n" : "",
                   ROLE_NAMES[r], nt, tr, va, te,
                   !o->jitter ? "every rendering clean (jitter=0)"
                   : plain   ? "test renderings plain (clean, centred, fonts in turn, the same for every seed), "
                               "train and val augmented"
                             : "every split augmented");
        }
        sb_add(&split_s, "per class: the test renderings are the first ones when plain, else drawn at random; "
               "of the augmented renderings, a random permutation picks the test, then val, then train ones "
               "(counts per role in glyph_counts)");
        {
            int w = 2 * (o->image_size / 8) + 1;
            sb_add(&aug_s, "fonts: round robin over the task's fonts from a random first one; rotation +-%d deg; "
                   "scale %.2f..%.2f; aspect +-%.2f; shear +-%.2f; translation +-%.2f px (1/%d of the side); "
                   "stroke %+d..%+d per mille of the glyph's larger side (FT_Outline_EmboldenXY; no thinning of faces "
                   "of weight class below 350); elastic "
                   "distortion %s: uniform noise smoothed by 3 box passes of width %d (sigma %.2f px), alpha "
                   "%.1f..%.1f px, bilinear resampling; blur [w,1-2w,w] with w 1/16..3/16 half of the time; "
                   "noise sd 0..8 grey levels",
                   AUG_ROT_DEG, AUG_SCALE_LO / 65536.0, AUG_SCALE_HI / 65536.0, AUG_ASPECT / 65536.0,
                   AUG_SHEAR / 65536.0, (double)(o->image_size * 64 / AUG_SHIFT_DIV) / 64.0, AUG_SHIFT_DIV, AUG_BOLD_LO,
                   AUG_BOLD_HI, o->elastic ? "on" : "off", w, sqrt((w * w - 1) / 4.0),
                   elastic_alpha_at(AUG_ELASTIC_LO, o->image_size) / 256.0,
                   elastic_alpha_at(AUG_ELASTIC_HI, o->image_size) / 256.0);
        }
        sb_add(&title, "tessera glyph suite: %d writing systems, %d characters", ntasks, nclasses);
        sb_add(&source, "Characters of %d writing systems rendered with FreeType %s (src/data/glyphs.c) from "
               "the font files in glyph_fonts; Debian packages: ", ntasks, sb_str(&ft_s));
        for (const char *q = sb_str(&pkgs); *q; q++) {
            if (*q == '\n') sb_add(&source, ", ");
            else sb_add(&source, "%c", *q);
        }
        if (!dropped.n) sb_add(&dropped, "none");
        const char *keys[] = {"glyph_suite_version", "glyph_seed", "glyph_options", "glyph_roles", "glyph_counts",
                              "glyph_split", "glyph_augmentation", "glyph_font_dir", "glyph_fonts",
                              "glyph_task_fonts", "glyph_dropped", "glyph_packages", "freetype_version"};
        const char *vals[] = {"2.1", sb_str(&seed_s), sb_str(&opts_s), sb_str(&roles_s), sb_str(&counts_s),
                              sb_str(&split_s), sb_str(&aug_s), dirs, sb_str(&fonts), sb_str(&task_fonts),
                              sb_str(&dropped), sb_str(&pkgs), sb_str(&ft_s)};
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
    sbuf *bufs[] = {&dropped, &task_fonts, &fonts, &pkgs, &opts_s, &seed_s, &ft_s, &title, &source, &split_s,
                    &roles_s, &counts_s, &aug_s};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]->s);
    return rc;
}
