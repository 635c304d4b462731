"""Python's `inflab.score` beside the CLI and beside the paper's algorithm as its code runs it, on
the same arrays, in one run (ratios, not absolute times: the machine is shared).

    PYTHONPATH=build/python /usr/bin/python3 tests/bench/python_side_by_side.py --threads 2

Store: n training and q query rows of float32 gradients in 13 blocks (6 of 2048 values, 3 of 1280,
4 of 768: 19,200 in all, the layout of issue 18), written as a gradient directory. Timed, best of
--repeats: `inflab --help` (the CLI's start-up floor) and `inflab score` (whole process); in this
process, inflab.score on memory-mapped files (reading included, page cache warm) and on arrays in
memory; and the reference: DataInf written as the paper's code runs it (per-example gradient
dicts, a loop over training examples per block, PyTorch), compute only. Prints a Markdown table
and the largest difference between the scores.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import inflab

LAYOUT = [2048] * 6 + [1280] * 3 + [768] * 4


def cli_runner(cli, threads):
    """run_cli(*args): `cli --quiet args...` at `threads` threads, output captured, failure raised."""
    env = dict(os.environ, INFLAB_THREADS=str(threads))

    def run_cli(*extra):
        subprocess.run([cli, "--quiet", *extra], check=True, env=env, capture_output=True)

    return run_cli


def write_store(store, n, q):
    """The 13-block store (NumPy's generator, seed 0) as a gradient directory at `store`; returns
    the block names, the train and query arrays by name, and the size in MB."""
    rng = np.random.default_rng(0)
    names = [f"block{b:02d}" for b in range(len(LAYOUT))]
    (store / "train").mkdir(parents=True)
    (store / "query").mkdir()
    train, query = {}, {}
    for name, d in zip(names, LAYOUT):
        train[name] = rng.standard_normal((n, d), dtype=np.float32) * 1e-2
        query[name] = rng.standard_normal((q, d), dtype=np.float32) * 1e-2
        np.save(store / "train" / f"{name}.npy", train[name])
        np.save(store / "query" / f"{name}.npy", query[name])
    (store / "blocks.json").write_text(json.dumps({"blocks": [{"name": b, "dim": d} for b, d in zip(names, LAYOUT)]}))
    size_mb = sum(a.nbytes for a in train.values()) / 1e6 + sum(a.nbytes for a in query.values()) / 1e6
    return names, train, query, size_mb


def best_of(repeats, call):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), result


def reference_datainf(tr_grad_dict, val_grad_avg, n_train, lambda_const_param=10):
    """DataInf as the paper's code runs it: per block, lambda from the examples' mean squared
    gradients, then one pass over the training examples accumulating the inverse-HVP of the mean
    validation gradient, then the scores example by example."""
    hvp = {}
    for name, v in val_grad_avg.items():
        s = torch.zeros(n_train)
        for i in range(n_train):
            s[i] = torch.mean(tr_grad_dict[i][name] ** 2)
        lam = torch.mean(s) / lambda_const_param
        acc = torch.zeros(v.shape)
        for i in range(n_train):
            g = tr_grad_dict[i][name]
            c = torch.sum(v * g) / (lam + torch.sum(g**2))
            acc += (v - c * g) / (n_train * lam)
        hvp[name] = acc
    scores = torch.zeros(n_train)
    for i in range(n_train):
        total = 0.0
        for name in val_grad_avg:
            total += torch.sum(hvp[name] * tr_grad_dict[i][name])
        scores[i] = -total
    return scores.numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4500)
    parser.add_argument("--q", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli", default=str(Path(__file__).resolve().parents[2] / "build" / "bin" / "inflab"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inflab.set_threads(args.threads)  # one LibTorch in this process: this also sets torch's
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "g"
        names, train, query, size_mb = write_store(store, args.n, args.q)
        env = dict(os.environ, INFLAB_THREADS=str(args.threads))
        out = Path(tmp) / "scores.npy"
        run_cli = cli_runner(args.cli, args.threads)
        rows = []
        t_help, _ = best_of(args.repeats, lambda: run_cli("--help"))
        rows.append(("CLI start-up alone (`inflab --help`)", t_help))
        t_cli, _ = best_of(args.repeats, lambda: run_cli("score", "--gradients", str(store), "--estimator", "datainf",
                                                         "--mode", "aggregate", "--out", str(out)))
        rows.append(("CLI `inflab score`, whole process", t_cli))
        cli_scores = np.load(out)
        t_import = float(subprocess.run(
            [sys.executable, "-c", "import time; t = time.perf_counter(); import inflab; "
             "print(time.perf_counter() - t)"], check=True, env=env, capture_output=True, text=True).stdout)
        rows.append(("`import inflab` (once per process)", t_import))

        def mapped():
            tr = {n: np.load(store / "train" / f"{n}.npy", mmap_mode="r") for n in names}
            qu = {n: np.load(store / "query" / f"{n}.npy", mmap_mode="r") for n in names}
            return inflab.score(tr, qu, "datainf")

        t_mapped, py_mapped = best_of(args.repeats, mapped)
        rows.append(("inflab.score, memory-mapped files", t_mapped))
        t_memory, py_memory = best_of(args.repeats, lambda: inflab.score(train, query, "datainf"))
        rows.append(("inflab.score, arrays in memory", t_memory))

        tr_grad_dict = [{n: torch.from_numpy(train[n][i]) for n in names} for i in range(args.n)]
        val_avg = {n: torch.from_numpy(query[n]).mean(dim=0) for n in names}
        t_ref, ref_scores = best_of(1, lambda: reference_datainf(tr_grad_dict, val_avg, args.n))
        rows.append(("the paper's algorithm as its code runs it (PyTorch loop, compute only)", t_ref))

    scale = np.abs(ref_scores).max()
    print(f"n = {args.n}, q = {args.q}, 13 blocks, 19,200 values, {size_mb:.0f} MB float32; "
          f"threads {args.threads}; PyTorch {torch.__version__}; inflab {inflab.__version__}\n")
    print("| DataInf, aggregate | seconds | / inflab.score in memory |")
    print("| --- | ---: | ---: |")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.3f} | {seconds / t_memory:.2f} |")
    print(f"\nPython call overhead beyond the CLI's whole process: inflab.score (mapped) - (`inflab score` - "
          f"`inflab --help`) = {t_mapped - (t_cli - t_help):+.3f} s")
    print(f"max |difference| / max |score|: Python vs CLI {np.abs(py_mapped - cli_scores).max() / scale:.1e} "
          f"(mapped) {np.abs(py_memory - cli_scores).max() / scale:.1e} (memory); "
          f"Python vs reference {np.abs(py_memory - ref_scores).max() / scale:.1e}")


if __name__ == "__main__":
    main()
