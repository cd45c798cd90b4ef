#!/usr/bin/env bash
# scripts/check_layers.sh on small fake trees: a good tree passes; a backward include, an include of an
# unknown folder, a file in an unknown folder and MPI outside src/dist/ fail, naming file and line.
#
# usage: tests/scripts/test_check_layers.sh [CHECK_SCRIPT]   (default: scripts/check_layers.sh here)
set -uo pipefail

CHECK=${1:-"$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/check_layers.sh"}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/test_check_layers.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0

check() {  # check DESCRIPTION CONDITION...
  local what=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $what"
    echo "--- output:"
    cat "$TMP/out"
    echo "---"
  fi
}

# put TREE PATH LINE...: writes src/PATH in TREE, one argument a line
put() {
  local tree=$1 path=$2
  shift 2
  mkdir -p "$(dirname "$tree/src/$path")"
  printf '%s\n' "$@" > "$tree/src/$path"
}

# A tree that follows the table: every folder includes only what it may.
good_tree() {
  local t=$1
  put "$t" core/common.h '#pragma once' '#include <stddef.h>' '/* errors and allocation */'
  put "$t" core/common.c '#include "common.h"' '#include "build_info.h"' 'int tsr_x(void) { return 0; }'
  put "$t" io/config.h '#pragma once' '#include "core/common.h"'
  put "$t" io/config.c '#include "config.h"' '#include "core/common.h"'
  put "$t" data/suite.c '#include "core/common.h"' '#include "suite.h"'
  put "$t" data/suite.h '#pragma once'
  put "$t" dist/parallel.c '#include <mpi.h>' '#include "core/common.h"' 'void f(void) { MPI_Barrier(MPI_COMM_WORLD); }'
  put "$t" model/vit.c '#include "vit.h"' '#include "io/config.h"' '#include "core/common.h"'
  put "$t" model/vit.h '#pragma once'
  put "$t" adapters/lora.c '#include "model/vit.h"' '#include "io/config.h"' '#include "lora.h"'
  put "$t" adapters/lora.h '#pragma once'
  put "$t" train/train.c '#include "adapters/lora.h"' '#include "data/suite.h"' '#include "dist/parallel.h"' \
      '#include "model/vit.h"' '#include "io/config.h"' '#include "core/common.h"'
  put "$t" sweep/sweep.c '#include "train/train.h"' '#include "adapters/lora.h"'
  put "$t" analysis/align.c '#include "train/train.h"' '#include "data/suite.h"'
  put "$t" cmd/main.c '#include "sweep/sweep.h"' '#include "analysis/align.h"' '#include "core/common.h"' \
      '#include <stdio.h>' 'int main(void) { return 0; }'
}

# run NAME [ARGS]: runs the check on tree NAME (a fresh good tree the caller has changed), output in out
run_check() {
  bash "$CHECK" "$TMP/$1" > "$TMP/out" 2>&1
  echo $? > "$TMP/rc"
}
rc() { [ "$(cat "$TMP/rc")" = "$1" ]; }
says() { grep -qF -- "$1" "$TMP/out"; }
not_says() { ! grep -qF -- "$1" "$TMP/out"; }

# 1. The good tree passes and counts its files and quoted includes (15 files, 27 includes).
good_tree "$TMP/good"
run_check good
check "good tree: exit 0" rc 0
check "good tree: summary" says "layers: 15 files, 27 includes, ok"

# 2. Backward include: core -> model, at line 3 of src/core/common.c.
good_tree "$TMP/back"
put "$TMP/back" core/common.c '#include "common.h"' '#include "build_info.h"' '#include "model/vit.h"'
run_check back
check "backward include: exit 1" rc 1
check "backward include: file, line, arrow" says "src/core/common.c:3: core -> model"
check "backward include: only that one" not_says "src/core/common.c:1:"
# sideways: data may not include dist; model may not include adapters (no folder: own folder is fine)
put "$TMP/back" data/suite.c '#include "core/common.h"' '#include "dist/parallel.h"'
put "$TMP/back" model/vit.c '#include "vit.h"' '#include "adapters/lora.h"'
run_check back
check "sideways include data -> dist" says "src/data/suite.c:2: data -> dist"
check "model -> adapters" says "src/model/vit.c:2: model -> adapters"
check "three violations counted" says "15 files, 27 includes, 3 violations"

# 3. Unknown folder: an include of src/plugins/, and a file that lives in an unknown folder.
good_tree "$TMP/unknown"
put "$TMP/unknown" model/vit.c '#include "vit.h"' '#include "plugins/extra.h"'
run_check unknown
check "unknown included folder: exit 1" rc 1
check "unknown included folder: named" says "src/model/vit.c:2: model -> plugins (unknown folder"
good_tree "$TMP/stray"
put "$TMP/stray" util/misc.c '#include "core/common.h"'
put "$TMP/stray" loose.c '#include "core/common.h"'
run_check stray
check "file in an unknown folder: exit 1" rc 1
check "file in an unknown folder: named" says "src/util/misc.c:1: in src/util/, not a folder of the layer table"
check "file directly in src/: named" says "src/loose.c:1: in src/ itself, not a folder of the layer table"

# 4. MPI outside src/dist/: a header include and a call, each named by file and line.
good_tree "$TMP/mpi"
put "$TMP/mpi" sweep/sweep.c '#include "train/train.h"' '#include <mpi.h>'
put "$TMP/mpi" analysis/align.c '#include "train/train.h"' 'void g(void) {' '  MPI_Barrier(MPI_COMM_WORLD);' '}'
run_check mpi
check "MPI outside dist: exit 1" rc 1
check "MPI outside dist: mpi.h named" says "src/sweep/sweep.c:2: names MPI outside src/dist/"
check "MPI outside dist: MPI_ named" says "src/analysis/align.c:3: names MPI outside src/dist/"
check "MPI inside dist is fine" not_says "src/dist/parallel.c"

# 5. Default root: the script's own repository (a copy of the script in a fake tree checks that tree).
good_tree "$TMP/self"
mkdir -p "$TMP/self/scripts"
cp "$CHECK" "$TMP/self/scripts/check_layers.sh"
put "$TMP/self" io/config.c '#include "model/vit.h"'
(cd / && bash "$TMP/self/scripts/check_layers.sh") > "$TMP/out" 2>&1
echo $? > "$TMP/rc"
check "default root: exit 1 on its own tree" rc 1
check "default root: checks its own tree" says "src/io/config.c:1: io -> model"

# 6. Usage errors: no src/ folder, too many arguments.
mkdir -p "$TMP/empty"
run_check empty
check "no src/: exit 2" rc 2
bash "$CHECK" a b > "$TMP/out" 2>&1
echo $? > "$TMP/rc"
check "two arguments: exit 2" rc 2

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
