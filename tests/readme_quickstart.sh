#!/usr/bin/env bash
# The quickstart table in README.md is what `./inflab run experiments/quickstart.toml` prints: runs
# it on a fresh cache and compares the estimator and AUC columns row by row (seconds vary).
set -euo pipefail
build="${1:?usage: readme_quickstart.sh BUILD_DIR SOURCE_DIR}"
src="${2:?}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$build/bin/inflab" --quiet run "$src/experiments/quickstart.toml" --out "$work/results" --cache "$work/cache" \
  >"$work/out.txt"
# Rows of the table: "run  <estimator>  <AUC>  <seconds>  ...".
rows() { awk '$1 == "run" && $3 ~ /^[0-9]\.[0-9]+$/ { print $2, $3 }' "$1"; }
rows "$work/out.txt" >"$work/measured"
sed -n '/^run  estimator/,/^```/p' "$src/README.md" >"$work/readme_table"
rows "$work/readme_table" >"$work/readme"
[ -s "$work/readme" ] || { echo "readme_quickstart: no quickstart table found in README.md" >&2; exit 1; }
if ! diff "$work/readme" "$work/measured"; then
  echo "readme_quickstart: README.md's quickstart AUCs (<) differ from a fresh run (>); rerun the" >&2
  echo "  quickstart on a clean cache and update the table and results/reference/quickstart" >&2
  exit 1
fi
echo "readme_quickstart: $(wc -l <"$work/measured") estimators, AUCs as in README.md"
