#!/usr/bin/env bash
# Peak memory of scoring a memory-mapped gradient store, per estimator: does an estimator read
# the store in passes (anonymous memory far below the store's size) or copy it whole?
# Store: quickstart.toml (mlp_lora, rank 4) at n_train = 55000 written to disk, then
# `inflab score --gradients DIR --estimator E` for each estimator. RssAnon is memory the kernel
# cannot drop; pages of the mapped store are file pages and are not counted in it.
#   bash tests/bench/peak_memory_scoring.sh > results/benchmarks/peak_memory_scoring.csv
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/build/bin/inflab"
n="${1:-55000}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# shellcheck source=memory_sampling.sh
source "$root/tests/bench/memory_sampling.sh"
export SAMPLE_LOG="$work/log"

"$bin" --quiet gradients "$root/experiments/quickstart.toml" --out "$work/g" --cache "$work/cache" \
  --set dataset.n_train="$n" --set dataset.n_pretrain=5000 --set training.epochs=1 \
  --set evaluation.gradient_memory_mb=64 >/dev/null 2>"$work/log"
store=$(du -smc "$work"/g/train/*.npy | tail -1 | cut -f1)
echo "estimator,n_train,store_mb,peak_rss_anon_mb,peak_rss_total_mb,seconds"
for estimator in hessian_free datainf exact kfac ekfac lissa cg; do
  echo "$estimator,$n,$store,$(sample_peak_memory "$bin" --quiet score --gradients "$work/g" --estimator "$estimator" \
    --out "$work/s.npy")"
done
