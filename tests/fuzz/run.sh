#!/usr/bin/env bash
# Runs one fuzz target over its committed seed corpus, then fuzzes:
#   run.sh BINARY runs=N       N executions (what ctest does)
#   run.sh BINARY seconds=S    S seconds (longer runs on demand)
# New interesting inputs go to a scratch corpus; a crash leaves crash-* in the current directory:
# add it to tests/fuzz/corpus/<target>/ as a regression input once fixed.
set -euo pipefail
binary="$(realpath "$1")"
limit="$2"
here="$(cd "$(dirname "$0")" && pwd)"
target="$(basename "$binary")"
target="${target#fuzz_}"
seeds="$here/corpus/$target"
scratch="$(mktemp -d)"
artifacts="${FUZZ_ARTIFACTS:-$PWD}"  # crash-*/timeout-*/oom-* inputs land here
trap 'rm -rf "$scratch"' EXIT
case "$limit" in
  runs=*) bound=(-runs="${limit#runs=}") ;;
  seconds=*) bound=(-max_total_time="${limit#seconds=}") ;;
  *) echo "run.sh: expected runs=N or seconds=S, found '$limit'" >&2; exit 2 ;;
esac
# LeakSanitizer is on: libFuzzer reports an input that leaks as a bug.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
cd "$scratch"
"$binary" "${bound[@]}" -artifact_prefix="$artifacts/$target-" -max_len=4096 -timeout=20 -rss_limit_mb=4096 -seed=1 -print_final_stats=1 \
  "$scratch" "$seeds" 2>&1 | tail -25
