/* predict.h: `tessera predict`: logits of a ViT checkpoint (timm or Hugging Face naming) on a batch of
 * images from a safetensors file (`input`, (B, C, H, W) float32, already normalised) or a netCDF dataset
 * (ubyte images, normalised with data.mean / data.std), written to safetensors or netCDF. With an
 * adapter file (written by tsr_adapters_save), the adapters it describes are attached in evaluation mode
 * (routing z = sigmoid(Z[task]), no noise, no dropout) with every image given one task. */
#ifndef TSR_TRAIN_PREDICT_H
#define TSR_TRAIN_PREDICT_H

typedef struct {
    const char *checkpoint, *input, *output;
    const char *config;    /* YAML configuration, or NULL (built-in defaults) */
    const char *hf_config; /* config.json, or NULL (the one beside the checkpoint, if any) */
    const char *adapters;  /* or NULL */
    int batch, task;
    int nset;
    char **sets;           /* --set overrides */
    int (*runtime_setup)(int threads); /* the command's start-up (banner, threads), or NULL */
} tsr_predict_opts;

/* 0, or 1 after logging the error. */
int tsr_predict_run(const tsr_predict_opts *o);
#endif
