/* import.h: converters from common image-dataset layouts to tessera suites (suite.h, schema
 * "tessera-dataset-2"), each writing a one-task suite atomically and printing (tsr_info) the number
 * of examples per split, of classes and the image size. 0 / -1 (tsr_error naming the file).
 *
 * Provenance: title, source (with the Debian package names and versions used, read with dpkg-query,
 * "unknown" where it is not available), license, history and date_created, plus tessera_version and
 * the import settings as free attributes. history is the command line given to
 * tsr_import_set_history (the `tessera prepare` dispatcher passes its argv), else a reconstruction
 * "tessera prepare <kind> <arguments>". */
#ifndef TSR_IMPORT_H
#define TSR_IMPORT_H
#include <stddef.h>
#include <stdint.h>

/* Debian's dataset-fashion-mnist installs its IDX files here. */
#define TSR_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

/* The command line recorded in the history attribute of the files written next (copied; NULL
 * resets to the reconstruction). */
void tsr_import_set_history(const char *cmdline);

/* Fashion-MNIST from its IDX files (train-* and t10k-*, .gz or plain; idx_dir NULL =
 * TSR_FASHION_MNIST_DIR): one task "fashion-mnist", 28x28x1, 10 named classes (T-shirt/top, Trouser,
 * Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot); the 60000 training images are
 * split 0 (train) and the 10000 test images split 2 (test); there is no val split (carve one out of
 * train at training time if needed). */
int tsr_import_fashion_mnist(const char *idx_dir, const char *out_path);

/* An image folder or a list file as one task of size x size x channels images.
 *   Folder: src/<class>/<image> (all train), or src/{train,val,test}/<class>/<image> (any of the
 *     three; a class is the union of the class folder names, sorted bytewise; label = its index).
 *     Image files are recognised by extension (.png .jpg .jpeg .bmp .gif .tga .pnm .ppm .pgm, any
 *     case); other files and hidden entries are skipped (and counted in the log).
 *   List file: lines "path label [split]"; path relative to the list file's directory (or absolute,
 *     no whitespace), label a class index (all integers: classes 0..max, named "0", "1", ...) or a
 *     class name (otherwise: classes = sorted distinct names), split train/val/test or 0/1/2
 *     (default train). Blank lines and lines starting with '#' are skipped.
 * Images are decoded with stb_image (PNG, JPEG, BMP, GIF, TGA, PNM), converted to `channels` (1 grey
 * or 3 RGB; alpha dropped), resized so that the short side is `size` (area averaging when
 * shrinking, bilinear when enlarging) and centre-cropped to size x size. An unreadable or
 * undecodable image is refused, naming the file, and nothing is written; images are decoded in separate
 * processes (image_decoder.h), so a file that crashes or hangs stb_image is refused too. task_name NULL or "" = the
 * base name of src without extension. Images are decoded (OpenMP threads) and written in blocks of
 * at most 256 MiB, so memory does not grow with the number of images. */
int tsr_import_folder(const char *src, const char *out_path, int size, int channels,
                      const char *task_name);

/* How tsr_import_folder_resize brings an image to size x size. */
enum {
    TSR_RESIZE_CROP = 0,  /* short side to size, then centre crop (tsr_import_folder) */
    TSR_RESIZE_SQUASH = 1 /* both sides to size, aspect ratio not kept (as torchvision's
                             Resize((size, size)), the usual VTAB-1k preprocessing) */
};
/* tsr_import_folder with a choice of resize mode. */
int tsr_import_folder_resize(const char *src, const char *out_path, int size, int channels,
                             const char *task_name, int resize_mode);

/* One image of `prepare folder`: the file at path decoded (PNG, JPEG, BMP, GIF, TGA, PNM through stb_image)
 * and resized to size x size x C (mode: as the resize option of tsr_import_folder_resize) into dst. 0, or -1
 * with the reason, naming the file, in msg (mn bytes). In this process: stb_image has bugs on malformed files
 * that tessera does not guard, so prepare folder calls this only in a separate process
 * (tsr_image_decoder_decode, image_decoder.h); exposed for that, the tests and the fuzz target. */
/* The largest image decoded, in pixels (default 2^28; larger ones are refused before decoding). The fuzz
 * target lowers it so that its time goes to many inputs rather than a few huge ones. */
void tsr_import_set_max_pixels(size_t n);
int tsr_import_decode_image(const char *path, int size, int C, int mode, uint8_t *dst, char *msg, size_t mn);
#endif
