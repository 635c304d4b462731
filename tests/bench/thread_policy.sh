#!/usr/bin/env bash
# Thread settings of `inflab score` on a quiet machine and beside one busy process (`yes`), whole
# process, median of REPEATS runs each: 1 thread; 2 threads with LibTorch's default OpenMP wait
# policy; 2 threads with OMP_WAIT_POLICY=passive. Prints a Markdown table of seconds.
#   tests/bench/thread_policy.sh BUILD_DIR STORE_DIR [REPEATS]
# STORE_DIR: a gradient directory; when it does not exist, the 13-block store of
# docs/performance.md (n = 4500, q = 500, 384 MB, NumPy's generator, seed 0) is written there.
set -euo pipefail
build="${1:?usage: thread_policy.sh BUILD_DIR STORE_DIR [REPEATS]}"
store="${2:?}"
repeats="${3:-5}"
out="$(mktemp -d)"
trap 'rm -rf "$out"; [ -n "${busy:-}" ] && kill "$busy" 2>/dev/null || true' EXIT
if [ ! -e "$store/blocks.json" ]; then
  /usr/bin/python3 - "$store" <<'PY'
import json, os, sys
import numpy as np
root, rng = sys.argv[1], np.random.default_rng(0)
layout = [2048] * 6 + [1280] * 3 + [768] * 4
for side in ("train", "query"):
    os.makedirs(os.path.join(root, side), exist_ok=True)
for i, d in enumerate(layout):
    np.save(os.path.join(root, "train", f"block{i:02d}.npy"), rng.standard_normal((4500, d), dtype=np.float32) * 1e-2)
    np.save(os.path.join(root, "query", f"block{i:02d}.npy"), rng.standard_normal((500, d), dtype=np.float32) * 1e-2)
json.dump({"blocks": [{"name": f"block{i:02d}", "dim": d} for i, d in enumerate(layout)]},
          open(os.path.join(root, "blocks.json"), "w"))
PY
fi
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() {  # run THREADS POLICY ESTIMATOR MODE EXTRA...
  local threads=$1 policy=$2 estimator=$3 mode=$4
  shift 4
  for _ in $(seq "$repeats"); do
    local start end
    start=$(date +%s.%N)
    env ${policy:+OMP_WAIT_POLICY=$policy} "$build/bin/inflab" --quiet --threads "$threads" score --gradients "$store" \
      --estimator "$estimator" --mode "$mode" --out "$out/s.npy" "$@"
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }'
  done | median
}
echo "| load | estimator | 1 thread | 2 threads (default wait) | 2 threads (passive wait) |"
echo "| --- | --- | ---: | ---: | ---: |"
for load in quiet busy; do
  if [ "$load" = busy ]; then yes > /dev/null & busy=$!; fi
  for case in "datainf pairwise" "lissa aggregate --set iterations=10" "exact aggregate"; do
    set -- $case
    echo "| $load | $1 $2 | $(run 1 "" "$@") | $(run 2 "" "$@") | $(run 2 passive "$@") |"
  done
done
