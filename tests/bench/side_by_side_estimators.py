"""Every estimator side by side on one store, in one run: whole-process `inflab score`, the
in-process `inflab.score`, and our plain PyTorch loop of the paper's algorithm as its code runs it
(per example, per block: a list of per-example gradient dicts), with the largest difference.

    PYTHONPATH=build/python /usr/bin/python3 tests/bench/side_by_side_estimators.py --threads 2

The store is python_side_by_side.py's (13 blocks, 19,200 values; n x q float32). The loops:
Hessian-free, a dot product per example; DataInf, python_side_by_side.reference_datainf; LiSSA,
the code's variant (H = G - lambda I, step 1, 10 full-batch iterations, each a loop over the
examples); Exact, G^T G accumulated from one outer product per example, then a float32
eigendecomposition (eigh here; the code calls eig on the symmetric matrix). inflab runs the same
settings (LiSSA: variant=reference_code, scale=1, iterations=10). Aggregate mode (the mean query).
Prints a Markdown table: seconds, and each time over the in-memory inflab.score.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import inflab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_side_by_side import best_of, cli_runner, reference_datainf, write_store  # noqa: E402


def damping(tr_grad_dict, name, n_train, lambda_const_param=10):
    """The code's lambda: the mean over examples of each example's mean squared gradient, / 10."""
    s = torch.zeros(n_train)
    for i in range(n_train):
        s[i] = torch.mean(tr_grad_dict[i][name] ** 2)
    return torch.mean(s) / lambda_const_param


def scores_from(hvp, tr_grad_dict, n_train):
    out = torch.zeros(n_train)
    for i in range(n_train):
        out[i] = -sum(torch.sum(hvp[name] * tr_grad_dict[i][name]) for name in hvp)
    return out.numpy()


def reference_hessian_free(tr_grad_dict, val_grad_avg, n_train):
    return scores_from(dict(val_grad_avg), tr_grad_dict, n_train)


def reference_lissa(tr_grad_dict, val_grad_avg, n_train, n_iteration=10, alpha=1.0):
    hvp = {}
    for name, v in val_grad_avg.items():
        lam = damping(tr_grad_dict, name, n_train)
        r = v
        for _ in range(n_iteration):
            h = torch.zeros(v.shape)
            for i in range(n_train):
                g = tr_grad_dict[i][name]
                h += (torch.sum(g * r) * g - lam * r) / n_train
            r = v + r - alpha * h
        hvp[name] = r
    return scores_from(hvp, tr_grad_dict, n_train)


def reference_exact(tr_grad_dict, val_grad_avg, n_train):
    hvp = {}
    for name, v in val_grad_avg.items():
        lam = damping(tr_grad_dict, name, n_train)
        gram = torch.zeros(v.numel(), v.numel())
        for i in range(n_train):
            g = tr_grad_dict[i][name].reshape(-1)
            gram += torch.outer(g, g)
        eigenvalues, vectors = torch.linalg.eigh(gram)
        hvp[name] = ((v.reshape(-1) @ vectors) / (lam + eigenvalues / n_train)) @ vectors.T
    return scores_from(hvp, tr_grad_dict, n_train)


RUNS = [  # estimator, inflab options, reference loop
    ("hessian_free", {}, reference_hessian_free),
    ("datainf", {}, reference_datainf),
    ("lissa", {"variant": "reference_code", "scale": 1.0, "iterations": 10}, reference_lissa),
    ("exact", {}, reference_exact),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4500)
    parser.add_argument("--q", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="estimators to run (default: all)")
    parser.add_argument("--cli", default=str(Path(__file__).resolve().parents[2] / "build" / "bin" / "inflab"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inflab.set_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "g"
        names, train, query, size_mb = write_store(store, args.n, args.q)
        out = Path(tmp) / "scores.npy"
        run_cli = cli_runner(args.cli, args.threads)
        t_help, _ = best_of(args.repeats, lambda: run_cli("--help"))
        tr_grad_dict = [{n: torch.from_numpy(train[n][i]) for n in names} for i in range(args.n)]
        val_avg = {n: torch.from_numpy(query[n]).mean(dim=0) for n in names}
        for estimator, options, reference in RUNS:
            if args.only and estimator not in args.only:
                continue
            sets = [a for k, v in options.items() for a in ("--set", f"{k}={v}")]
            t_cli, _ = best_of(args.repeats, lambda: run_cli("score", "--gradients", str(store), "--estimator",
                                                             estimator, "--mode", "aggregate", "--out", str(out), *sets))
            cli_scores = np.load(out)
            t_py, py_scores = best_of(args.repeats, lambda: inflab.score(train, query, estimator, **options))
            t_ref, ref_scores = best_of(1, lambda: reference(tr_grad_dict, val_avg, args.n))
            scale = np.abs(ref_scores).max()
            rows.append((estimator, t_cli, t_py, t_ref, np.abs(cli_scores - py_scores).max() / scale,
                         np.abs(py_scores - ref_scores).max() / scale))
            print(f"{estimator}: done", file=sys.stderr, flush=True)

    print(f"n = {args.n}, q = {args.q} (aggregate: their mean), 13 blocks, 19,200 values, {size_mb:.0f} MB float32; "
          f"threads {args.threads}; PyTorch {torch.__version__}; inflab {inflab.__version__}; "
          f"`inflab --help` (start-up floor) {t_help:.3f} s\n")
    print("| estimator | `inflab score` whole process (s) | beyond start-up (s) | inflab.score in memory (s) "
          "| PyTorch loop as the paper's code (s) | loop / inflab.score | max diff CLI vs Python | max diff vs loop |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for estimator, t_cli, t_py, t_ref, d_cli, d_ref in rows:
        print(f"| {estimator} | {t_cli:.3f} | {t_cli - t_help:.3f} | {t_py:.3f} | {t_ref:.2f} | {t_ref / t_py:.1f} "
              f"| {d_cli:.1e} | {d_ref:.1e} |")


if __name__ == "__main__":
    main()
