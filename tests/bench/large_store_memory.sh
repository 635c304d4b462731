#!/usr/bin/env bash
# Issue 18's larger store: n = 20,000 training rows, d = 50,000 values in 25 blocks of 2,000
# (4 GB of float32 on disk) and 100 queries, scored by `inflab score` with each estimator; peak
# anonymous memory (what the process itself allocates; the mapped store's pages are page cache)
# and peak total, sampled (tests/bench/memory_sampling.sh).
#   bash tests/bench/large_store_memory.sh STORE_DIR > results/benchmarks/large_store_memory.csv
# STORE_DIR is written (NumPy's generator, seed 0) when it has no blocks.json; it is kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/build/bin/inflab"
store="${1:?usage: large_store_memory.sh STORE_DIR}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# shellcheck source=memory_sampling.sh
source "$root/tests/bench/memory_sampling.sh"
export SAMPLE_LOG="$work/log"
if [ ! -e "$store/blocks.json" ]; then
  /usr/bin/python3 - "$store" <<'PY'
import json, os, sys
import numpy as np
root, rng = sys.argv[1], np.random.default_rng(0)
blocks, width, n, q = 25, 2000, 20000, 100
for side in ("train", "query"):
    os.makedirs(os.path.join(root, side), exist_ok=True)
for b in range(blocks):
    for side, rows in (("train", n), ("query", q)):
        values = np.lib.format.open_memmap(os.path.join(root, side, f"block{b:02d}.npy"), mode="w+",
                                           dtype=np.float32, shape=(rows, width))
        for start in range(0, rows, 2000):  # in slices: the generator's own memory stays small
            stop = min(rows, start + 2000)
            values[start:stop] = rng.standard_normal((stop - start, width), dtype=np.float32) * 1e-2
        values.flush()
        del values
json.dump({"blocks": [{"name": f"block{b:02d}", "dim": width} for b in range(blocks)]},
          open(os.path.join(root, "blocks.json"), "w"))
PY
fi
store_mb=$(du -smc "$store"/train/*.npy | tail -1 | cut -f1)
echo "estimator,mode,store_mb,peak_rss_anon_mb,peak_rss_total_mb,seconds"
for run in hessian_free:aggregate datainf:aggregate datainf:pairwise lissa:aggregate cg:aggregate exact:aggregate; do
  estimator=${run%%:*} mode=${run##*:}
  echo "$estimator,$mode,$store_mb,$(sample_peak_memory "$bin" --quiet score --gradients "$store" \
    --estimator "$estimator" --mode "$mode" --out "$work/s.npy")"
done
