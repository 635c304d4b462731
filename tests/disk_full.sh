#!/usr/bin/env bash
# A full disk: results and cache on a small tmpfs. The run must stop with an error naming the
# file (exit 2), leave no temporary or half-written file, no cache entry that reads back as
# valid, and no metrics.csv; after space is freed the same command finishes with the scores of
# a run that never saw a full disk. Needs mount (root); skipped (exit 77) where it is not allowed.
set -euo pipefail
build="$1"
source_dir="$2"
work="$(mktemp -d)"
full="$work/full"
mkdir -p "$full"
cleanup() { umount "$full" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
if ! mount -t tmpfs -o size=1m tmpfs "$full" 2>/dev/null; then
  echo "cannot mount a tmpfs here (not root?): skipped"
  exit 77
fi
run=("$build/bin/inflab" --quiet run "$source_dir/experiments/quickstart.toml" --set dataset.n_train=400
  --set dataset.n_pretrain=1000 --set training.epochs=2 --set 'estimator=[{plugin="datainf"}, {plugin="exact"}]')
"${run[@]}" --out "$work/reference" --cache "$work/cache-reference" >/dev/null 2>&1
# In memory, then with the training gradients memory-mapped on the full disk (a sparse file
# there would end in SIGBUS; the space is reserved first).
for budget in 4096 0.001; do
  rm -rf "${full:?}"/*
  status=0
  "${run[@]}" --set evaluation.gradient_memory_mb=$budget --out "$full/results" --cache "$full/cache" \
    >"$work/log" 2>&1 || status=$?
  cat "$work/log"
  [ "$status" -eq 2 ] || { echo "budget $budget: expected exit status 2 on a full disk, found $status"; exit 1; }
  grep -qE "No space left on device|disk full" "$work/log" || { echo "the error does not say the disk is full"; exit 1; }
  if find "$full" -name '*.tmp-*' | grep -q .; then echo "temporary files left:"; find "$full" -name '*.tmp-*'; exit 1; fi
  [ ! -e "$full/results/quickstart/run/metrics.csv" ] || { echo "a run on a full disk was marked finished"; exit 1; }
done
# Free space: the same command resumes and equals the reference.
mount -o remount,size=256m "$full"
"${run[@]}" --out "$full/results" --cache "$full/cache" >"$work/log" 2>&1
cmp "$work/reference/quickstart/run/scores_datainf.npy" "$full/results/quickstart/run/scores_datainf.npy"
cmp "$work/reference/quickstart/run/scores_exact.npy" "$full/results/quickstart/run/scores_exact.npy"
echo "full disk: clear error, nothing half-written; after freeing space the run equals the reference"
