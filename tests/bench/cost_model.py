#!/usr/bin/env python3
"""Cost model of distributed influence (docs/scaling.md), per rank.

  python3 tests/bench/cost_model.py check results/benchmarks/distributed_scaling.csv
      predicted bytes communicated per estimator vs the measured ones (mlp_lora, quickstart)
  python3 tests/bench/cost_model.py project
      time, memory and communication per rank for n = 10^6, a 7B model, rank-8 LoRA on q and v

Notation: R ranks, n training examples (n_r = ceil(n / R) on the largest rank), Q queries,
blocks b of dimension d_b (D = sum d_b), T iterations of an iterative solver.
Bytes are what one rank passes into all_reduce / all_gather, exactly as inflab counts them.
"""
import csv
import math
import sys

# quickstart.toml: mlp_lora, hidden 128, rank 4, Fashion-MNIST 784 -> 128 -> 10.
QUICKSTART_BLOCKS = [4 * 784, 128 * 4, 4 * 128, 10 * 4]


def bytes_per_estimator(estimator, n, q, ranks, dims, lissa_iterations=100, power_iterations=30):
    """Bytes rank 0 sends for one estimator (fit + scores), as implemented."""
    n_r = math.ceil(n / ranks)
    common = 8 + ranks * 8 + n_r * q * 4  # fit-cache agreement, row counts, padded score rows
    damping = 16  # per block: sum of squared norms and row count
    if estimator == "hessian_free":
        return common
    if estimator == "datainf":
        return common + sum(damping + 8 + q * d * 4 for d in dims)
    if estimator == "exact":  # Cholesky path (d <= n): G^T G in float64
        return common + sum(8 + damping + d * d * 8 for d in dims)
    if estimator == "kfac":  # factors are combined before the estimators run
        return common + sum(damping for d in dims)
    if estimator == "ekfac":
        return common + sum(damping + d * 8 + 8 for d in dims)
    if estimator in ("lissa", "lissa_reference_code"):
        iterations, power = (lissa_iterations, power_iterations) if estimator == "lissa" else (10, 0)
        # power iteration (automatic scale, one row), T products, one residual product
        return common + sum(damping + power * (d * 4 + 8) + (iterations + 1) * (q * d * 4 + 8) for d in dims)
    return None  # cg: iterations depend on convergence: k_b products of Q x d_b


def check(path):
    rows = [r for r in csv.DictReader(open(path)) if r["ranks"] != "1" and r["what"] != "gradients"]
    print("| n | Q | ranks | estimator | predicted bytes | measured bytes |")
    print("| ---: | ---: | ---: | --- | ---: | ---: |")
    bad = 0
    for r in rows:
        n, q, ranks = int(r["n_train"]), int(r["queries"]), int(r["ranks"])
        predicted = bytes_per_estimator(r["what"], n, q, ranks, QUICKSTART_BLOCKS)
        measured = int(r["bytes_rank0"])
        shown = "-" if predicted is None else f"{predicted:,}"
        print(f"| {n} | {q} | {ranks} | {r['what']} | {shown} | {measured:,} |")
        bad += predicted is not None and predicted != measured
    return bad


def project():
    # LLaMA-2-7B-like: 32 layers, hidden 4096, 6.7e9 parameters; LoRA rank 8 on q and v.
    layers, hidden, rank, params = 32, 4096, 8, 6.7e9
    dims = [rank * hidden] * (layers * 2 * 2)  # per layer: q and v, each lora_A and lora_B
    D = sum(dims)
    n, q, tokens = 10**6, 1, 256
    flops_rank = 100e12  # assumed sustained FLOP/s of one rank's accelerator for extraction
    disk = 2e9  # assumed NVMe read bandwidth per rank (bytes/s): the store lives on disk
    net = 10e9  # assumed network bandwidth per rank (bytes/s), ring all-reduce
    cpu = 100e9  # dense float64/float32 linear algebra per rank (bytes/s or FLOP/s, one CPU socket)
    print(f"blocks: {len(dims)} of d = {dims[0]}, D = {D:,} LoRA parameters; n = {n:,}, Q = {q}, "
          f"{tokens} tokens per example")
    print()
    print("| ranks | stage / estimator | compute per rank | store bytes per rank | memory per rank | "
          "bytes communicated per rank | time per rank |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for ranks in (8, 64):
        n_r = math.ceil(n / ranks)
        store = n_r * D * 2  # float16 on disk
        ring = lambda b: 2 * (ranks - 1) / ranks * b / net  # noqa: E731
        fb = 4 * params * tokens  # forward + input-gradient backward through frozen weights
        per_example = 2 * 2 * tokens * rank * hidden * len(dims) // 2  # einsums of A and B gradients
        kfac_stats = 2 * tokens * hidden * hidden * (len(dims) // 2)  # a a^T and delta delta^T per module
        t_extract = n_r * (fb + per_example + kfac_stats) / flops_rank + store / disk
        weights = params * 2 + tokens * hidden * layers * 16 * 2  # bf16 weights + one example's activations
        rows = [("extraction (+ K-FAC statistics), store written", n_r * (fb + kfac_stats), store, weights, 0,
                 t_extract)]
        # DataInf: norms pass + two passes for Q queries (G v, then C G); one Q x D all-reduce.
        b = q * D * 4 + len(dims) * 24
        rows.append(("DataInf", 4 * q * n_r * D + 2 * n_r * D, 2 * store, 3 * q * D * 4, b,
                     3 * store / disk + ring(b)))
        # Exact (Cholesky, d <= n): G^T G (2 n_r d^2), Cholesky d^3/3 replicated, d^2 float64 all-reduce.
        gram = sum(2 * n_r * d * d for d in dims)
        chol = sum(d**3 / 3 for d in dims)
        b = sum(d * d * 8 for d in dims)
        rows.append(("Exact", gram + chol, store, sum(2 * d * d * 8 for d in dims), b,
                     store / disk + (gram + chol) / cpu + ring(b)))
        # K-FAC: factors in x in and out x out per block (the 4096-side is the large one), eigh replicated.
        factor = hidden * hidden
        eig = len(dims) * 9 * hidden**3
        b = len(dims) * (factor + rank * rank) * 8  # combining each block's A and S in float64, once
        rows.append(("K-FAC", eig, 0, len(dims) * 3 * factor * 4, b, eig / cpu + ring(b)))
        # EK-FAC: + one pass projecting every example gradient into the eigenbasis.
        project_flops = n_r * len(dims) * 2 * (rank * rank * hidden + rank * hidden * hidden)
        b2 = b + D * 8
        rows.append(("EK-FAC", eig + project_flops, store, len(dims) * 3 * factor * 4, b2,
                     eig / cpu + project_flops / cpu + store / disk + ring(b2)))
        # LiSSA: T products, each two passes over the store and one Q x D all-reduce.
        T = 100
        b = (T + 31) * q * D * 4
        rows.append((f"LiSSA (T = {T})", T * 4 * q * n_r * D, T * 2 * store, 3 * q * D * 4, b,
                     T * 2 * store / disk + ring(b)))
        for name, flops, read, memory, comm, seconds in rows:
            print(f"| {ranks} | {name} | {flops:.2e} FLOP | {read / 1e9:,.0f} GB | {memory / 1e9:,.1f} GB | "
                  f"{comm / 1e6:,.1f} MB | {seconds / 3600:,.2f} h |")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "check":
        sys.exit(1 if check(sys.argv[2]) else 0)
    elif len(sys.argv) == 2 and sys.argv[1] == "project":
        project()
    else:
        sys.exit(__doc__)
