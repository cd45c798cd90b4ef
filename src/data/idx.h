/* idx.h: reader for the IDX files of MNIST / Fashion-MNIST (as installed by Debian's
 * dataset-fashion-mnist under /usr/share/datasets/fashion-mnist).
 *
 * IDX format (all integers big-endian u32):
 *   magic 0x00000803  n rows cols  then n*rows*cols unsigned bytes   (images, 3-D)
 *   magic 0x00000801  n            then n unsigned bytes             (labels, 1-D)
 * Files may be gzip-compressed (read with zlib) or plain; a plain file is read as is.
 *
 * Functions that can fail return 0 on success and -1 on error, with the message (naming the file
 * and what was expected) in tsr_last_error(). */
#ifndef TSR_IDX_H
#define TSR_IDX_H

#include <stdint.h>

#define TSR_IDX_MAGIC_IMAGES 0x00000803u /* unsigned byte, 3 dimensions */
#define TSR_IDX_MAGIC_LABELS 0x00000801u /* unsigned byte, 1 dimension */
#define TSR_IDX_NUM_CLASSES 10           /* labels must be < this */

typedef struct {
    int64_t n;          /* number of examples */
    int rows, cols;     /* image height and width */
    uint8_t *pixels;    /* n*rows*cols, example-major, row-major within an image */
    uint8_t *labels;    /* n, each < TSR_IDX_NUM_CLASSES */
} tsr_idx_set;

/* Load <dir>/<prefix>-images-idx3-ubyte.gz and <dir>/<prefix>-labels-idx1-ubyte.gz (prefix "train"
 * or "t10k" for the Fashion-MNIST files; any non-empty prefix is accepted). For each file the .gz
 * name is tried first, then the same name without .gz (uncompressed). Checks: both files exist;
 * the magic numbers; dimensions non-zero; equal image and label counts; the data neither truncated
 * nor followed by extra bytes; every label < 10. On error *s is left empty (NULL buffers, n = 0),
 * so tsr_idx_free(s) is always safe. 0 / -1. */
int tsr_idx_load(tsr_idx_set *s, const char *dir, const char *prefix);
/* Free the buffers and zero *s. Safe on a zeroed or already freed set. */
void tsr_idx_free(tsr_idx_set *s);

#endif
