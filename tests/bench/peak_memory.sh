#!/usr/bin/env bash
# Peak memory of gradient extraction (mlp_lora, rank 4, Fashion-MNIST) as n grows, with the
# store in memory (default budget) and on disk (budget 64 MiB). Samples the process's
# anonymous resident memory (RssAnon: memory that cannot be dropped; file pages of a mapped
# store are excluded since the kernel writes them back and reclaims them) and VmHWM (total peak).
#   bash tests/bench/peak_memory.sh > results/benchmarks/peak_memory.csv
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/build/bin/inflab"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# shellcheck source=memory_sampling.sh
source "$root/tests/bench/memory_sampling.sh"
export SAMPLE_LOG="$work/log"
echo "n_train,budget_mb,store_mb,peak_rss_anon_mb,peak_rss_total_mb,seconds"
for n in 1000 10000 55000; do
  for budget in 4096 64; do
    cache="$work/cache-$n-$budget"
    result=$(sample_peak_memory "$bin" --quiet gradients "$root/experiments/quickstart.toml" --out "$work/g-$n-$budget" \
      --cache "$cache" --set dataset.n_train=$n --set dataset.n_pretrain=5000 --set training.epochs=1 \
      --set evaluation.gradient_memory_mb=$budget)
    store=$(du -sm "$cache/gradients" | cut -f1)
    echo "$n,$budget,$store,$result"
  done
done
