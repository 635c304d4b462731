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

# Runs "$@" and prints "peak_anon_mb,peak_total_mb,seconds".
sample() {
  local start end pid peak_anon=0 peak_total=0 anon total
  start=$(date +%s.%N)
  "$@" >/dev/null 2>"$work/log" &
  pid=$!
  while kill -0 $pid 2>/dev/null; do
    if [ -r /proc/$pid/status ]; then
      anon=$(awk '/^RssAnon/ {print $2}' /proc/$pid/status 2>/dev/null || true)
      total=$(awk '/^VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null || true)
      if [ -n "$anon" ] && [ "$anon" -gt "$peak_anon" ]; then peak_anon=$anon; fi
      if [ -n "$total" ] && [ "$total" -gt "$peak_total" ]; then peak_total=$total; fi
    fi
    sleep 0.05
  done
  if ! wait $pid; then
    cat "$work/log" >&2
    exit 1
  fi
  end=$(date +%s.%N)
  echo "$((peak_anon / 1024)),$((peak_total / 1024)),$(echo "$end - $start" | bc)"
}

"$bin" --quiet gradients "$root/experiments/quickstart.toml" --out "$work/g" --cache "$work/cache" \
  --set dataset.n_train="$n" --set dataset.n_pretrain=5000 --set training.epochs=1 \
  --set evaluation.gradient_memory_mb=64 >/dev/null 2>"$work/log"
store=$(du -smc "$work"/g/train/*.npy | tail -1 | cut -f1)
echo "estimator,n_train,store_mb,peak_rss_anon_mb,peak_rss_total_mb,seconds"
for estimator in hessian_free datainf exact kfac ekfac lissa cg; do
  echo "$estimator,$n,$store,$(sample "$bin" --quiet score --gradients "$work/g" --estimator "$estimator" \
    --out "$work/s.npy")"
done
