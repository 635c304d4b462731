#!/usr/bin/env bash
# Distributed scaling on this machine: gradient extraction and each estimator's fit + scoring at
# 1 and 2 ranks (inflab launch, 1 LibTorch thread per rank: the 2 ranks share the 2 cores), and
# the bytes each estimator all-reduces/all-gathers on rank 0, for several n and query counts.
#   bash tests/bench/distributed_scaling.sh > results/benchmarks/distributed_scaling.csv
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/build/bin/inflab"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "n_train,queries,ranks,what,seconds,bytes_rank0"
run() {  # n, mode, ranks
  local n="$1" mode="$2" ranks="$3" out="$work/out-$1-$2-$3"
  rm -rf "$work/cache/gradients" "$work/cache/fits"  # measure extraction and fits, not the caches
  local sets=(--set dataset.n_train="$n" --set dataset.n_pretrain=5000 --set dataset.n_validation=100
    --set evaluation.mode="$mode")
  if [ "$ranks" -eq 1 ]; then
    "$bin" --quiet --threads 1 run "$root/experiments/quickstart.toml" "${sets[@]}" --out "$out" \
      --cache "$work/cache" >/dev/null 2>"$work/log"
  else
    "$bin" --quiet --threads 1 launch -n "$ranks" "$root/experiments/quickstart.toml" "${sets[@]}" --out "$out" \
      --cache "$work/cache" >/dev/null 2>"$work/log"
  fi
  /usr/bin/python3 - "$out/quickstart/run/manifest.json" "$n" "$mode" "$ranks" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
n, mode, ranks = sys.argv[2:5]
q = 1 if mode == "aggregate" else 100
print(f"{n},{q},{ranks},gradients,{m['stage_seconds']['gradients']:.3f},0")
for label, seconds in m["estimator_seconds"].items():
    b = m.get("diagnostics", {}).get(label, {}).get("bytes_communicated", 0)
    print(f"{n},{q},{ranks},{label},{seconds:.3f},{int(b)}")
PY
}
# Warm the pretrain and fine-tune caches once (identical for every measurement of the same n).
for n in 4000 8000; do
  for mode in aggregate pairwise; do
    [ "$n" = 8000 ] && [ "$mode" = pairwise ] && continue
    for ranks in 1 2; do run "$n" "$mode" "$ranks"; done
  done
done
