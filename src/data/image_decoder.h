/* image_decoder.h: images from outside are decoded in a separate process.
 *
 * stb_image (Debian's libstb-dev) is the decoder of `prepare folder`. Fuzzing found six bugs in it on malformed
 * files (heap overflows, an assert, undefined behaviour); tessera guards the ones it knows
 * (tsr_import_decode_image), but guarding them one at a time does not end. So the decoding runs in a helper
 * process forked from tessera: a path goes in over a socket, the resized pixels (or the reason for refusing) come
 * back. Whatever stb_image does to its own memory stays in the helper; a helper that dies (a signal, a
 * sanitizer's report) or is still decoding after the time limit is ended and the file refused by name; the next
 * file gets a fresh helper. A helper serves one thread (prepare folder keeps one per OpenMP thread), lives until
 * tsr_image_decoder_free, and ends by itself if tessera ends.
 *
 * If a helper cannot be started (fork fails), images are decoded in this process, with a warning. */
#ifndef TSR_IMAGE_DECODER_H
#define TSR_IMAGE_DECODER_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct tsr_image_decoder tsr_image_decoder;

/* A decoder; its helper process is started at the first image. */
tsr_image_decoder *tsr_image_decoder_new(void);
/* Starts the helper now (it is otherwise started at the first image): prepare folder starts one per thread
 * before its threads decode, so that no fork happens while other threads run. 0, or -1 if it could not be
 * started (images are then decoded in this process, with a warning). */
int tsr_image_decoder_start(tsr_image_decoder *d);
/* As tsr_import_decode_image (import.h), in the helper: path decoded and resized to size x size x C (mode:
 * TSR_RESIZE_*) into dst; 0, or -1 with the reason, naming the file, in msg. */
int tsr_image_decoder_decode(tsr_image_decoder *d, const char *path, int size, int C, int mode, uint8_t *dst,
                             char *msg, size_t mn);
/* 1 if the last decode was refused because the helper died or ran past the time limit (0 for a refusal the
 * decoder gave itself, or a success). */
int tsr_image_decoder_last_died(const tsr_image_decoder *d);
/* The helper's process id (0: none running). For tests. */
pid_t tsr_image_decoder_pid(const tsr_image_decoder *d);
/* Ends the helper (and waits for it); NULL is fine. */
void tsr_image_decoder_free(tsr_image_decoder *d);

/* Seconds one image may take in the helper before it is ended and the file refused (default 60, the
 * environment variable TESSERA_IMAGE_DECODE_SECONDS overrides it; n <= 0 restores that). Read when a decode
 * starts. */
void tsr_image_decoder_set_seconds(int n);
/* Helpers started from now on send their standard error to /dev/null (the fuzz target: a sanitizer's report of
 * a helper that dies on a file is expected there). */
void tsr_image_decoder_set_quiet(int quiet);

/* Fault injection (tests; the helper reads them when it decodes a file whose path contains the text):
 *   TESSERA_FAULT_DECODE_SIGNAL=N:TEXT  the helper raises signal N;
 *   TESSERA_FAULT_DECODE_HANG=TEXT      the helper sleeps instead of decoding. */
#endif
