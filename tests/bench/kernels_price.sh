#!/usr/bin/env bash
# The price of pinned kernels (docs/performance.md, "Pinned kernels"): the same benchmarks and the
# quickstart, pinned and native, interleaved in one run (pinned, native, pinned, native, ...) so
# that the machine's load falls on both alike; medians per mode and their ratio.
#   tests/bench/kernels_price.sh BUILD_DIR [REPEATS] [OUT_DIR]
# Writes OUT_DIR/kernels_price.json (every sample) and OUT_DIR/kernels_price.md (the table).
set -euo pipefail
build="${1:?usage: kernels_price.sh BUILD_DIR [REPEATS] [OUT_DIR]}"
repeats="${2:-3}"
out="${3:-results/benchmarks}"
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
pinned=(env OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2
  INFLAB_KERNELS=pinned)
native=(env -u OPENBLAS_CORETYPE -u ATEN_CPU_CAPABILITY -u ONEDNN_MAX_CPU_ISA -u DNNL_MAX_CPU_ISA
  INFLAB_KERNELS=native)
score_filter='^(limit/matmul_float32|phase/fit/(datainf|lissa|exact)|phase/score/(datainf|lissa|exact)|process/)'
gradients_filter='^(bench::matmul_peak|engine/mlp_lora/8|engine/cnn_lora/8|minilm/gradients/64|smollm2/gradients|ddpm/gradients/16)'
export INFLAB_THREADS="${INFLAB_THREADS:-2}"
for ((r = 1; r <= repeats; r++)); do
  for mode in pinned native; do
    if [ "$mode" = pinned ]; then prefix=("${pinned[@]}"); else prefix=("${native[@]}"); fi
    echo "[kernels_price] repeat $r/$repeats, $mode" >&2
    "${prefix[@]}" "$build/bin/inflab_bench_score" --benchmark_filter="$score_filter" --benchmark_format=json \
      >"$work/score_${mode}_$r.json" 2>"$work/score.err"
    "${prefix[@]}" "$build/bin/inflab_bench_gradients" --benchmark_filter="$gradients_filter" \
      --benchmark_format=json >"$work/gradients_${mode}_$r.json" 2>"$work/gradients.err"
    start=$(date +%s.%N)
    "${prefix[@]}" "$build/bin/inflab" --quiet run "$src/experiments/quickstart.toml" --out "$work/qs_$mode$r" \
      --cache "$work/qs_cache_$mode$r" >"$work/quickstart_${mode}_$r.txt" 2>&1
    end=$(date +%s.%N)
    echo "{\"name\": \"quickstart (whole process, empty cache)\", \"real_time\": $(echo "($end - $start) * 1000" | bc), \"time_unit\": \"ms\"}" \
      >"$work/quickstart_${mode}_$r.json"
    grep -q "run  datainf" "$work/quickstart_${mode}_$r.txt" || { cat "$work/quickstart_${mode}_$r.txt"; exit 1; }
  done
done
/usr/bin/python3 - "$work" "$repeats" "$out/kernels_price.json" <<'PY' | tee "$out/kernels_price.md"
import glob, json, os, statistics, sys
work, repeats, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
unit_ms = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
samples = {}  # name -> mode -> [ms]
order = []
for mode in ("pinned", "native"):
    for path in sorted(glob.glob(os.path.join(work, f"*_{mode}_*.json"))):
        data = json.load(open(path))
        rows = data["benchmarks"] if "benchmarks" in data else [data]
        for row in rows:
            if row.get("run_type") == "aggregate":
                continue
            name = row["name"]
            if name not in order:
                order.append(name)
            samples.setdefault(name, {}).setdefault(mode, []).append(row["real_time"] * unit_ms[row["time_unit"]])
json.dump({"repeats": repeats, "threads": int(os.environ.get("INFLAB_THREADS", "2")), "samples_ms": samples},
          open(target, "w"), indent=1)
print("| benchmark | pinned (ms) | native (ms) | pinned / native |")
print("| --- | ---: | ---: | ---: |")
for name in order:
    p, n = statistics.median(samples[name]["pinned"]), statistics.median(samples[name]["native"])
    print(f"| {name.replace('/real_time', '')} | {p:,.1f} | {n:,.1f} | {p / n:.2f} |")
PY
