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
echo "n_train,budget_mb,store_mb,peak_rss_anon_mb,peak_rss_total_mb,seconds"
for n in 1000 10000 55000; do
  for budget in 4096 64; do
    cache="$work/cache-$n-$budget"
    start=$(date +%s.%N)
    "$bin" --quiet gradients "$root/experiments/quickstart.toml" --out "$work/g-$n-$budget" --cache "$cache" \
      --set dataset.n_train=$n --set dataset.n_pretrain=5000 --set training.epochs=1 \
      --set evaluation.gradient_memory_mb=$budget >/dev/null 2>"$work/log" &
    pid=$!
    peak_anon=0
    peak_total=0
    while kill -0 $pid 2>/dev/null; do
      if [ -r /proc/$pid/status ]; then
        anon=$(awk '/^RssAnon/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
        total=$(awk '/^VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
        [ -n "$anon" ] && [ "$anon" -gt "$peak_anon" ] && peak_anon=$anon
        [ -n "$total" ] && [ "$total" -gt "$peak_total" ] && peak_total=$total
      fi
      sleep 0.05
    done
    wait $pid
    end=$(date +%s.%N)
    store=$(du -sm "$cache/gradients" | cut -f1)
    echo "$n,$budget,$store,$((peak_anon / 1024)),$((peak_total / 1024)),$(echo "$end - $start" | bc)"
  done
done
