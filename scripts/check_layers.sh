#!/usr/bin/env bash
# The layer check: every `#include "..."` under src/ points down the layer table of
# docs/ARCHITECTURE.md, and only src/dist/ names MPI.
#
# usage: scripts/check_layers.sh [ROOT]     ROOT: the tree to check (default: this repository's root)
#
# - Each src/**/*.c and *.h file belongs to the first folder under src/ (src/model/vit.c: model).
# - An include with a folder ("io/config.h") goes to that folder; one without ("common.h") goes to
#   the includer's own folder ("../x.h" is reported as the unknown folder ".."); "build_info.h" (generated at configure time) counts as core.
#   System headers (<...>) are not checked.
# - A folder may include its own folder and the folders listed for it in ALLOWED below; an include
#   of any other folder, of a folder not in the table, or from a file in a folder not in the table
#   is a violation.
# - Outside src/dist/, no file may contain `mpi.h` or `MPI_` (comments included).
#
# Prints every violation as `file:line: what` and exits 1; prints "layers: N files, M includes, ok"
# and exits 0 when there is none; exits 2 on a usage error.
set -euo pipefail

# folder -> the other folders it may include (keep in step with docs/ARCHITECTURE.md)
declare -A ALLOWED=(
  [core]=""
  [io]="core"
  [data]="core"
  [dist]="core"
  [model]="core io"
  [adapters]="core io model"
  [train]="core io data dist model adapters"
  [sweep]="core io data dist model adapters train"
  [analysis]="core io data dist model adapters train"
  [cmd]="core io data dist model adapters train sweep analysis"
)

if [ $# -gt 1 ]; then
  echo "usage: $0 [ROOT]" >&2
  exit 2
fi
ROOT=${1:-"$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"}
if [ ! -d "$ROOT/src" ]; then
  echo "check_layers: no src/ folder under '$ROOT'" >&2
  exit 2
fi
cd "$ROOT"

# The table as "folder:allowed allowed ..." lines for awk.
table=""
for f in "${!ALLOWED[@]}"; do
  table+="$f:${ALLOWED[$f]}"$'\n'
done

mapfile -t files < <(find src -type f \( -name '*.c' -o -name '*.h' \) | LC_ALL=C sort)
if [ ${#files[@]} -eq 0 ]; then
  echo "check_layers: no .c or .h files under $ROOT/src" >&2
  exit 2
fi

# Include violations; the last line of awk's output is "#count N" (includes seen).
include_report=$(awk -v table="$table" '
  BEGIN {
    n = split(table, rows, "\n")
    for (i = 1; i <= n; i++) {
      if (rows[i] == "") continue
      c = index(rows[i], ":")
      f = substr(rows[i], 1, c - 1)
      known[f] = 1
      m = split(substr(rows[i], c + 1), deps, " ")
      for (j = 1; j <= m; j++) ok[f, deps[j]] = 1
      ok[f, f] = 1
    }
    includes = 0
  }
  FNR == 1 {
    # src/<folder>/... ; a file directly in src/ has no folder
    p = FILENAME
    sub(/^src\//, "", p)
    own = (index(p, "/") ? substr(p, 1, index(p, "/") - 1) : "")
    if (!(own in known))
      printf "%s:1: in %s, not a folder of the layer table\n", FILENAME,
             (own == "" ? "src/ itself" : "src/" own "/")
  }
  /^[ \t]*#[ \t]*include[ \t]*"/ {
    line = $0
    sub(/^[ \t]*#[ \t]*include[ \t]*"/, "", line)
    q = index(line, "\"")
    if (q == 0) next
    inc = substr(line, 1, q - 1)
    includes++
    while (inc ~ /^\.\//) sub(/^\.\//, "", inc)
    if (inc == "build_info.h") {
      target = "core"
    } else if (index(inc, "/")) {
      target = substr(inc, 1, index(inc, "/") - 1)
    } else {
      target = own
    }
    if (!(own in known)) next       # already reported once for the file
    if (!(target in known))
      printf "%s:%d: %s -> %s (unknown folder, \"%s\")\n", FILENAME, FNR, own, target, inc
    else if (!((own, target) in ok))
      printf "%s:%d: %s -> %s\n", FILENAME, FNR, own, target
  }
  END { printf "#count %d\n", includes }
' "${files[@]}")

include_count=$(printf '%s\n' "$include_report" | awk '/^#count / { print $2 }')
violations=$(printf '%s\n' "$include_report" | grep -v '^#count ' || true)

# MPI outside src/dist/: every file, not only .c/.h (fixed strings, so "mpi.h" is literal).
mpi_hits=$(grep -rnF -e 'mpi.h' -e 'MPI_' src 2>/dev/null | grep -v '^src/dist/' \
           | awk -F: '{ printf "%s:%s: names MPI outside src/dist/\n", $1, $2 }' \
           | LC_ALL=C sort -t: -k1,1 -k2,2n || true)
if [ -n "$mpi_hits" ]; then
  violations=$(printf '%s\n%s\n' "$violations" "$mpi_hits" | grep -v '^$' || true)
fi

if [ -n "$violations" ]; then
  printf '%s\n' "$violations"
  count=$(printf '%s\n' "$violations" | wc -l)
  echo "layers: ${#files[@]} files, $include_count includes, $count violations" \
       "(table: docs/ARCHITECTURE.md)"
  exit 1
fi
echo "layers: ${#files[@]} files, $include_count includes, ok"
