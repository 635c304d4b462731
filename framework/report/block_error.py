#!/usr/bin/env python3
"""DataInf's approximation error against block size d_l (the paper's Theorem 1: at most O(d_l^2)).

    /usr/bin/python3 framework/report/block_error.py OUT_DIR GRADIENT_DIR [GRADIENT_DIR ...]

Each GRADIENT_DIR is what `inflab gradients` writes (blocks.json, train/<block>.npy,
query/<block>.npy). For every block, in float64 NumPy (independent of inflab's C++ code), with
the paper's damping lambda_l = 0.1 x the mean squared gradient entry:
    exact   r = (G + lambda I)^-1 v,   G = (1/n) sum_i g_i g_i^T
    DataInf r = 1/(n lambda) sum_i (v - (g_i . v) / (lambda + |g_i|^2) g_i)
the relative error |r_DataInf - r_exact| / |r_exact| and the angle 1 - cos(r_DataInf, r_exact),
medians over the block's queries (the mean query gradient and up to 50 single queries). Controlled gradients: Gaussian rows with a
power-law spectrum (exponent 1), n = 1000, d from 8 to 2048, the same measurement. Writes
OUT_DIR/block_error.csv and OUT_DIR/figures/fig7_datainf_error_vs_d.{png,pdf}.
"""
import csv
import json
import os
import sys

import numpy as np


def relative_errors(train, queries):
    n, d = train.shape
    lam = 0.1 * np.mean(train ** 2)
    if lam == 0:
        return None
    gram = train.T @ train / n + lam * np.eye(d) if d <= n else None
    norms = np.sum(train ** 2, axis=1)
    errors, angles = [], []
    for v in queries:
        if gram is not None:
            exact = np.linalg.solve(gram, v)
        else:  # Woodbury: (X^T X / n + lam I)^-1 v with X = train, via the n x n system
            inner = train @ train.T / n + lam * np.eye(n)
            exact = (v - train.T @ np.linalg.solve(inner, train @ v) / n) / lam
        datainf = (n * v - train.T @ ((train @ v) / (lam + norms))) / (n * lam)
        errors.append(np.linalg.norm(datainf - exact) / max(np.linalg.norm(exact), 1e-300))
        angles.append(1 - datainf @ exact / max(np.linalg.norm(datainf) * np.linalg.norm(exact), 1e-300))
    return float(np.median(errors)), float(np.median(angles))


def real_blocks(directory, rng):
    blocks = json.load(open(os.path.join(directory, "blocks.json")))
    names = [b["name"] if isinstance(b, dict) else b for b in blocks.get("blocks", blocks)]
    for name in names:
        train = np.load(os.path.join(directory, "train", f"{name}.npy")).astype(np.float64)
        query = np.load(os.path.join(directory, "query", f"{name}.npy")).astype(np.float64)
        picks = rng.choice(len(query), size=min(50, len(query)), replace=False)
        yield name, train, np.vstack([query.mean(axis=0, keepdims=True), query[picks]])


def main(out, directories):
    rng = np.random.default_rng(0)
    rows = []
    for directory in directories:
        for name, train, queries in real_blocks(directory, rng):
            result = relative_errors(train, queries)
            if result:
                rows.append({"source": os.path.basename(os.path.normpath(directory)), "block": name,
                             "n": train.shape[0], "d": train.shape[1], "median_relative_error": result[0],
                             "median_one_minus_cosine": result[1]})
    rng = np.random.default_rng(1)  # the controlled blocks do not depend on the directories given
    for d in (8, 32, 128, 512, 2048):
        scales = np.arange(1, d + 1, dtype=np.float64) ** -0.5  # variance ~ 1/k
        train = rng.standard_normal((1000, d)) * scales
        queries = rng.standard_normal((20, d)) * scales
        error, angle = relative_errors(train, queries)
        rows.append({"source": "controlled", "block": f"gaussian_d{d}", "n": 1000, "d": d,
                     "median_relative_error": error, "median_one_minus_cosine": angle})
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    with open(os.path.join(out, "block_error.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["source", "block", "n", "d", "median_relative_error", "median_one_minus_cosine"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "median_relative_error": f"{r['median_relative_error']:.4g}",
                             "median_one_minus_cosine": f"{r['median_one_minus_cosine']:.4g}"})

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "median_relative_error", "median |r_DataInf - r_exact| / |r_exact|"),
                           (axes[1], "median_one_minus_cosine", "median 1 - cos(r_DataInf, r_exact)")):
        for source in sorted({r["source"] for r in rows}):
            mine = [r for r in rows if r["source"] == source]
            ax.scatter([r["d"] for r in mine], [r[key] for r in mine], label=source, s=18,
                       marker="x" if source == "controlled" else "o")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("block size d_l")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("DataInf's inverse-product error per block against block size (float64 reference)", fontsize=9)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(os.path.join(out, "figures", f"fig7_datainf_error_vs_d.{ext}"), dpi=150, bbox_inches="tight")
    print(f"{len(rows)} blocks; {os.path.join(out, 'block_error.csv')}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
