#!/usr/bin/env bash
# The plugin ABI number cannot drift silently: cmake/plugin-abi.txt records the number and a hash
# of the plugin-facing headers (cmake/plugin-headers.txt) with comments and whitespace removed.
# Fails when the headers changed while kAbiVersion did not, or when the record is stale.
#   tests/abi_headers.sh SOURCE_DIR            check (the ctest abi_headers)
#   tests/abi_headers.sh SOURCE_DIR --update   record the current number and hash (after a bump)
set -euo pipefail
src="${1:?usage: abi_headers.sh SOURCE_DIR [--update]}"
record="$src/cmake/plugin-abi.txt"
number=$(sed -n 's/^#define INFLAB_ABI_VERSION \([0-9][0-9]*\)$/\1/p' "$src/framework/include/inflab/plugin.hpp")
[ -n "$number" ] || { echo "abi_headers: no '#define INFLAB_ABI_VERSION N' in plugin.hpp" >&2; exit 1; }
# framework/include/inflab holds the plugin-facing headers and nothing else (the framework's own are
# in framework/internal/inflab): a header there that is not listed would be installed unhashed.
for file in "$src"/framework/include/inflab/*.hpp; do
  if ! grep -qx "$(basename "$file")" "$src/cmake/plugin-headers.txt"; then
    echo "abi_headers: framework/include/inflab/$(basename "$file") is not in cmake/plugin-headers.txt:" >&2
    echo "  list it (a plugin includes it) or move it to framework/internal/inflab (the framework's own)" >&2
    exit 1
  fi
done
hash=$(grep -E '^[a-z_]+\.hpp$' "$src/cmake/plugin-headers.txt" | while read -r header; do
  echo "== $header"
  # Comments and layout are not the interface: strip them (the preprocessor keeps directives).
  g++ -fpreprocessed -dD -E -P "$src/framework/include/inflab/$header" 2>/dev/null | tr -d ' \t\n'
  echo
done | sha256sum | cut -d' ' -f1)
if [ "${2:-}" = --update ]; then
  printf '%s %s\n' "$number" "$hash" >"$record"
  echo "abi_headers: recorded ABI $number, headers $hash in $record"
  exit 0
fi
read -r recorded_number recorded_hash <"$record"
if [ "$hash" != "$recorded_hash" ] && [ "$number" = "$recorded_number" ]; then
  echo "abi_headers: the plugin-facing headers changed but the plugin ABI is still $number." >&2
  echo "  Bump INFLAB_ABI_VERSION in framework/include/inflab/plugin.hpp (old plugins would load and" >&2
  echo "  misread the new layout), then run: tests/abi_headers.sh . --update" >&2
  exit 1
fi
if [ "$hash" != "$recorded_hash" ] || [ "$number" != "$recorded_number" ]; then
  echo "abi_headers: plugin ABI $number, but $record records $recorded_number for other headers;" >&2
  echo "  run: tests/abi_headers.sh . --update (and commit the record)" >&2
  exit 1
fi
echo "abi_headers: ABI $number matches the recorded headers"
