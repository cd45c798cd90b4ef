/* test_predict_sizes.c: sizes computed from what a file says are checked before anything is allocated.
 *
 * The known bug (issue 15, part A): a netCDF dataset whose 'example' dimension has 2^52 + 1 entries of
 * 32x32x1 images made `tessera predict --input` allocate sizeof(float) * n * C * S * S bytes, a product that
 * wraps to 4096 in size_t, and then write 64 MiB of pixels into it. The file is tiny: HDF5 allocates no
 * chunk of a variable that was never written. Now the product is checked and the file refused, naming it,
 * the dimension and the count. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <netcdf.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/test_util.h"
#include "core/common.h"
#include "data/dataset_nc.h"
#include "model/checkpoint.h"
#include "train/predict.h"

#define HUGE_N (((size_t)1 << 52) + 1)

static void nc_ok(int st) {
    if (st != NC_NOERR) fail_msg("netCDF: %s", nc_strerror(st));
}

/* A tessera-dataset-1 file with n examples of s x s x 1 and no data written (nothing allocated). */
static void make_huge_dataset(const char *path, size_t n, size_t s) {
    int ncid, dims[4], vid;
    nc_ok(nc_create(path, NC_NETCDF4 | NC_CLOBBER, &ncid));
    nc_ok(nc_def_dim(ncid, "example", n, &dims[0]));
    nc_ok(nc_def_dim(ncid, "y", s, &dims[1]));
    nc_ok(nc_def_dim(ncid, "x", s, &dims[2]));
    nc_ok(nc_def_dim(ncid, "channel", 1, &dims[3]));
    nc_ok(nc_def_var(ncid, "images", NC_UBYTE, 4, dims, &vid));
    size_t chunk[4] = {1, s, s, 1};
    nc_ok(nc_def_var_chunking(ncid, vid, NC_CHUNKED, chunk));
    nc_ok(nc_put_att_text(ncid, NC_GLOBAL, "tessera_schema", strlen(TSR_NC_DATASET_SCHEMA), TSR_NC_DATASET_SCHEMA));
    nc_ok(nc_put_att_text(ncid, NC_GLOBAL, "task_name", 4, "huge"));
    nc_ok(nc_close(ncid));
}

/* A small random ViT for 32x32x1 images, timm naming. */
static void make_checkpoint(const char *path) {
    tsr_vit_config c = {32, 8, 1, 16, 1, 2, 32, 3, 1e-6};
    tsr_vit m;
    assert_int_equal(tsr_vit_create(&m, &c, 2), 0);
    tsr_vit_init_random(&m, 7);
    assert_int_equal(tsr_ckpt_save_vit(&m, path, TSR_NAMING_TIMM, 0, NULL, NULL), 0);
    tsr_vit_destroy(&m);
}

static void test_size_helpers(void **state) {
    (void)state;
    size_t out;
    assert_int_equal(tsr_size_mul(3, 5, &out), 0);
    assert_int_equal(out, 15);
    assert_int_equal(tsr_size_mul(SIZE_MAX / 2 + 1, 2, &out), -1);
    assert_int_equal(tsr_size_bytes(4, (int64_t)HUGE_N, 1024, &out), -1); /* wraps to 4096 unchecked */
    assert_int_equal(tsr_size_bytes(4, -1, 1, &out), -1);
    assert_int_equal(tsr_size_bytes(4, 10, 1024, &out), 0);
    assert_int_equal(out, 40960);
}

static void test_predict_refuses_huge_example_dimension(void **state) {
    (void)state;
    const char *ckpt = tpath("model.safetensors"), *nc = tpath("huge.nc"), *out = tpath("logits.nc");
    make_checkpoint(ckpt);
    make_huge_dataset(nc, HUGE_N, 32);
    char *sets[] = {"model.heads=2", "model.ln_eps=1e-6"};
    tsr_predict_opts o = {.checkpoint = ckpt, .input = nc, .output = out, .batch = 4, .nset = 2, .sets = sets};
    assert_int_equal(tsr_predict_run(&o), 1);
    expect_error(nc, "'example'", "4503599627370497", "refusing", NULL);
    assert_int_equal(access(out, F_OK), -1);
    assert_no_temp_files();
}

/* Opening a dataset whose image bytes cannot be addressed at all is refused by the dataset layer. */
static void test_open_refuses_unaddressable(void **state) {
    (void)state;
    const char *nc = tpath("unaddressable.nc");
    make_huge_dataset(nc, (size_t)1 << 50, 1024); /* 2^70 bytes */
    tsr_nc_dataset d;
    assert_int_equal(tsr_nc_dataset_open(&d, nc), -1);
    expect_error(nc, "'example'", "refusing", NULL);
}

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/tsr_test_predict_sizes.XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    const char *names[] = {"model.safetensors", "huge.nc", "unaddressable.nc", "logits.nc"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) unlink(tpath(names[i]));
    return rmdir(g_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_helpers),
        cmocka_unit_test(test_predict_refuses_huge_example_dimension),
        cmocka_unit_test(test_open_refuses_unaddressable),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
