#!/usr/bin/env python3
"""Turns Google Benchmark JSON from inflab_bench into the Markdown tables of docs/performance.md.

    ./inflab bench --benchmark_out=results/benchmarks/estimators.json --benchmark_out_format=json
    python3 tests/bench/report.py results/benchmarks/estimators.json [more.json ...]
Several files are merged (the machine peaks are taken from the first that has them).
"""
import json
import sys


def main(paths):
    files = [json.load(open(p)) for p in paths]
    data = files[0]
    runs = [b for f in files for b in f["benchmarks"] if b.get("run_type", "iteration") == "iteration"]
    by_name = {}
    for b in runs:
        # "bench::matmul_peak": a run from before the case was named explicitly
        by_name.setdefault(b["name"].removeprefix("bench::").split("/min_time")[0].split("/real_time")[0], b)
    peak = by_name["matmul_peak"]["GFLOP/s"] / 1e0
    bandwidth = by_name["memory_bandwidth"]["GB/s"]
    context = data["context"]
    print(f"Machine: {context.get('num_cpus')} CPUs at {context.get('mhz_per_cpu')} MHz, "
          f"LibTorch threads {context.get('libtorch_threads')}, run {context.get('date')}.")
    print(f"Measured in the same run: float32 matmul peak **{peak:.0f} GFLOP/s**, "
          f"read bandwidth **{bandwidth:.1f} GB/s**.\n")

    print("### Estimators on one block (fit + scoring of Q queries)\n")
    print("| estimator | n | d | Q | time (ms) | GFLOP/s | % of matmul peak | GB/s | % of bandwidth |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, b in by_name.items():
        parts = name.split("/")
        if len(parts) != 4 or parts[0] in ("fit", "query"):
            continue
        method, n, d, q = parts
        flops = b.get("GFLOP/s")
        gbs = b.get("GB/s")
        row = [method, n, d, q, f"{b['real_time']:.1f}"]
        row += [f"{flops:.1f}", f"{100 * flops / peak:.0f}%"] if flops else ["-", "-"]
        row += [f"{gbs:.1f}", f"{100 * gbs / bandwidth:.0f}%"] if gbs else ["-", "-"]
        print("| " + " | ".join(row) + " |")

    print("\n### LoRA block shapes, n = 4096: fit time and per-query time (ms)\n")
    methods = ["datainf", "exact", "kfac", "ekfac", "cg"]
    shapes = []
    for name in by_name:
        parts = name.split("/")
        if parts[0] == "fit" and parts[2] not in shapes:
            shapes.append(parts[2])
    print("| block | d | " + " | ".join(f"{m} fit | {m} query" for m in methods) + " | K-FAC factors (KiB) |")
    print("| --- | ---: | " + " | ".join("---: | ---:" for _ in methods) + " | ---: |")
    for shape in shapes:
        cells, d, factors = [], "", ""
        for m in methods:
            fit = by_name.get(f"fit/{m}/{shape}")
            query = by_name.get(f"query/{m}/{shape}")
            cells += [f"{fit['real_time']:.2f}" if fit else "-", f"{query['real_time']:.3f}" if query else "-"]
            if fit and "d" in fit:
                d = f"{fit['d']:.0f}"
            if fit and "factor_bytes" in fit:
                factors = f"{fit['factor_bytes'] / 1024:.0f}"
        print(f"| {shape} | {d} | " + " | ".join(cells) + f" | {factors} |")


if __name__ == "__main__":
    main(sys.argv[1:])
