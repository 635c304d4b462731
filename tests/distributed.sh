#!/usr/bin/env bash
# Distributed runs on 127.0.0.1 (inflab launch, c10d Gloo): for every estimator (and normalised
# scores), scores of 2 and 3 ranks equal a single process's (n = 301 training examples: neither
# world size divides it), and a rank that dies makes the others stop with an error naming it,
# within the timeout.
set -euo pipefail
build="$1"
source_dir="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
trap 'echo "distributed: failed at line $LINENO: $BASH_COMMAND"; tail -30 "$work/log" 2>/dev/null' ERR
cat > "$work/exp.toml" <<'TOML'
[experiment]
name = "dist"
seed = 0

[dataset]
plugin = "fashion_mnist"
n_train = 301
n_validation = 60
n_pretrain = 1500
label_noise = 0.2

[model]
plugin = "mlp_lora"
hidden = [32]

[model.lora]
rank = 2

[training]
epochs = 3
pretrain_epochs = 2

[[estimator]]
plugin = "datainf"

[[estimator]]
plugin = "hessian_free"

[[estimator]]
plugin = "exact"

[[estimator]]
plugin = "exact"
name = "exact_woodbury"
method = "woodbury"

[[estimator]]
plugin = "kfac"

[[estimator]]
plugin = "ekfac"

[[estimator]]
plugin = "cg"

[[estimator]]
plugin = "lissa"
iterations = 50

# Normalised scores: relatif's self-influence makes every rank call inverse_product in step
# (collective for datainf and cg), with shards of unequal length.
[[estimator]]
plugin = "datainf"
name = "datainf_relatif"
normalise = "relatif"

[[estimator]]
plugin = "cg"
name = "cg_relatif"
normalise = "relatif"

[[estimator]]
plugin = "exact"
name = "exact_relatif"
normalise = "relatif"

[[estimator]]
plugin = "hessian_free"
name = "hessian_free_unit"
normalise = "unit"
TOML
bin="$build/bin/inflab"
cache="$work/cache"
# The reference: one process with one thread (each rank also runs one thread, so fine-tuning is
# bit-identical and the scores differ only by the order of the sums over examples).
"$bin" --quiet --threads 1 run "$work/exp.toml" --out "$work/single" --cache "$cache" >"$work/log" 2>&1
for ranks in 2 3; do
  "$bin" --threads 1 launch -n "$ranks" --timeout 60 "$work/exp.toml" --out "$work/ranks$ranks" \
    --cache "$cache" >"$work/log" 2>&1
  /usr/bin/python3 - "$work/single/dist/run" "$work/ranks$ranks/dist/run" "$ranks" <<'PY'
import sys, glob, os, json
import numpy as np
single, dist, ranks = sys.argv[1], sys.argv[2], sys.argv[3]
files = sorted(glob.glob(os.path.join(single, "scores_*.npy")))
assert len(files) == 12, files
for f in files:
    a, b = np.load(f), np.load(os.path.join(dist, os.path.basename(f)))
    assert a.shape == b.shape == (301,), (f, a.shape, b.shape)
    err = np.abs(a - b).max() / np.abs(a).max()
    print(f"{ranks} ranks {os.path.basename(f)}: max relative difference {err:.2e}")
    assert err < 1e-4, f"{f}: distributed scores differ from one process ({err:.2e})"
manifest = json.load(open(os.path.join(dist, "manifest.json")))
assert manifest["world_size"] == int(ranks), manifest["world_size"]
for name in ("scores.csv",):
    assert open(os.path.join(single, name)).readline() == open(os.path.join(dist, name)).readline()
PY
done
# The torchrun-style environment by hand, over TCP (rank 0 serves the TCPStore): same scores.
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for rank in 0 1; do
  RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port INFLAB_DISTRIBUTED_TIMEOUT=60 \
    "$bin" --quiet --threads 1 run "$work/exp.toml" --out "$work/tcp" --cache "$cache" >"$work/log-tcp$rank" 2>&1 &
  pids[$rank]=$!
done
wait "${pids[0]}" && wait "${pids[1]}" || { cat "$work"/log-tcp*; exit 1; }
for f in "$work"/single/dist/run/scores_*.npy; do
  /usr/bin/python3 -c 'import sys, numpy as np; a, b = np.load(sys.argv[1]), np.load(sys.argv[2]); e = np.abs(a - b).max() / np.abs(a).max(); print(sys.argv[1].split("/")[-1], "over TCP:", e); assert e < 1e-4' \
    "$f" "$work/tcp/dist/run/$(basename "$f")"
done

# A rank that dies before its 5th collective: the other must stop with an error naming it.
start=$(date +%s)
# tests/plugins/fault_injection.cpp, preloaded: the registry loads only the plugins a run names.
faults=(env LD_PRELOAD="$build/test_plugins/faults/fault_injection.so")
if "${faults[@]}" INFLAB_FAULT=die@1:5 "$bin" --threads 1 launch -n 2 --timeout 15 "$work/exp.toml" --out "$work/dead" \
  --cache "$work/cache" --no-resume >"$work/log" 2>&1; then
  echo "a run with a dead rank succeeded"; exit 1
fi
elapsed=$(($(date +%s) - start))
grep -q "rank 1 failed first" "$work/log" || { echo "launch did not name rank 1"; tail "$work/log"; exit 1; }
grep -q "not reached by rank 1" "$work/log" || grep -q "rank 1" "$work/log"
grep -E "distributed .* failed on rank 0" "$work/log" | head -1
[ "$elapsed" -lt 120 ] || { echo "the surviving rank took $elapsed s to stop"; exit 1; }
echo "killed rank 1: the run stopped in $elapsed s with an error naming it"
# A rank that hangs (alive, never answering): the other fails when the collective times out.
start=$(date +%s)
if "${faults[@]}" INFLAB_FAULT=hang@1:5 "$bin" --threads 1 launch -n 2 --timeout 5 "$work/exp.toml" --out "$work/hung" \
  --cache "$work/cache" --no-resume >"$work/log" 2>&1; then
  echo "a run with a hung rank succeeded"; exit 1
fi
elapsed=$(($(date +%s) - start))
grep -E "distributed .* failed on rank 0" "$work/log" | head -1
grep -q "not reached by rank 1" "$work/log" || { echo "the error does not name the hung rank"; tail "$work/log"; exit 1; }
[ "$elapsed" -lt 120 ] || { echo "the run with a hung rank took $elapsed s to stop"; exit 1; }
echo "hung rank 1: the run stopped in $elapsed s (timeout 5 s) with an error naming it"

