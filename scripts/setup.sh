#!/usr/bin/env bash
# Installs every system dependency of tessera from Debian 12 packages. Idempotent: packages already
# present are left alone. Run as root (or with sudo). Usage: scripts/setup.sh
set -euo pipefail
PKGS=(
  # toolchain and build; clang-14 with its runtime (libFuzzer, sanitizers) builds the fuzz targets (scripts/fuzz.sh)
  build-essential cmake pkg-config git clang-14 libclang-rt-14-dev
  # MPI, distributed linear algebra, parallel netCDF
  libopenmpi-dev openmpi-bin libscalapack-openmpi-dev libnetcdf-mpi-dev netcdf-bin
  # BLAS: BLIS (default, detects AVX-512 correctly) and OpenBLAS (alternative)
  libblis-dev libopenblas-dev
  # bf16 matrix products (model.precision bf16 / auto): oneDNN's matmul
  libdnnl-dev
  # checkpoints (safetensors JSON header), configuration, tests
  libjansson-dev libyaml-dev libcmocka-dev
  # data: fonts (fonts-noto-extra: the extra weights and widths of the glyph suite, 72 MB download, 330 MB installed), images, Fashion-MNIST
  libfreetype-dev fontconfig fonts-noto-core fonts-noto-extra libpng-dev libjpeg-dev libstb-dev dataset-fashion-mnist zlib1g-dev
  # PyTorch parity oracle and analysis (Debian's python3, not pip)
  python3 python3-torch python3-numpy python3-scipy python3-netcdf4 python3-xarray python3-matplotlib python3-yaml
  # a real single-node Slurm for the end-to-end test
  slurmctld slurmd slurm-client munge
)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PKGS[@]} packages already installed"
  exit 0
fi
echo "setup: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: done"
