#!/usr/bin/env bash
# Static analysis of our code: cppcheck and clang-tidy (configuration: .clang-tidy,
# tests/cppcheck-suppressions.txt). Prints every finding; exits 1 when there is one.
#   bash tests/lint.sh BUILD_DIR [clang-tidy|cppcheck]
set -uo pipefail
build="$1"
which="${2:-all}"
root="$(cd "$(dirname "$0")/.." && pwd)"
status=0
sources=("$root"/framework/src/*.cpp "$root"/framework/cli/*.cpp "$root"/plugins/*/*/*.cpp)
if [ "$which" = all ] || [ "$which" = cppcheck ]; then
  echo "== cppcheck"
  # --library=std only: LibTorch's headers are not analysed (include paths are not given), so
  # cppcheck sees our code alone.
  cppcheck --quiet --std=c++20 --language=c++ --enable=warning,performance,portability \
    --inline-suppr --suppressions-list="$root/tests/cppcheck-suppressions.txt" \
    -I "$root/framework/include" -I "$root/framework/internal" --error-exitcode=1 "${sources[@]}" || status=1
fi
if [ "$which" = all ] || [ "$which" = clang-tidy ]; then
  echo "== clang-tidy"
  for file in "${sources[@]}"; do
    out="$(clang-tidy-14 -p "$build" --quiet "$file" 2>/dev/null | grep -E 'warning:|error:' -A3)"
    if [ -n "$out" ]; then
      echo "$out"
      status=1
    fi
  done
fi
exit $status
