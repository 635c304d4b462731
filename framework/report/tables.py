#!/usr/bin/env python3
"""Markdown tables for docs/results.md from a report's summary.csv.

    python3 framework/report/tables.py results/paper/summary.csv
"""
import csv
import sys
from collections import defaultdict

ORDER = ["exact", "cg", "datainf", "ekfac", "kfac", "lissa", "lissa_reference_code", "hessian_free"]
NAMES = {"exact": "Exact", "cg": "CG", "datainf": "DataInf", "ekfac": "EK-FAC", "kfac": "K-FAC",
         "lissa": "LiSSA (eq.)", "lissa_reference_code": "LiSSA (code)", "hessian_free": "Hessian-free"}


def cell(row):
    if not row:
        return "-"
    mean, ci = float(row["mean"]), row["ci95"]
    return f"{mean:.3f} ± {float(ci):.3f}" if ci else f"{mean:.3f}"


def main(path):
    rows = list(csv.DictReader(open(path)))
    index = {(r["experiment"], int(r["rank"]), int(r["n_train"]), r["estimator"], r["metric"]): r for r in rows}
    experiments = sorted({r["experiment"] for r in rows if r["metric"] == "pearson"} -
                         {r["experiment"] for r in rows if r["metric"] == "lds"})  # those get their own table
    for metric, title in (("pearson", "Pearson correlation with Exact"), ("spearman", "Spearman correlation with Exact"),
                          ("auc", "Mislabel-detection ROC AUC")):
        print(f"\n#### {title} (mean ± 95% CI over seeds)\n")
        for experiment in experiments:
            keys = sorted({(k[1], k[2]) for k in index if k[0] == experiment})
            runs = {k[1]: index[(experiment, k[0], k[1], "datainf", metric)]["runs"] for k in keys if (experiment, k[0], k[1], "datainf", metric) in index}
            print(f"{experiment} (n = {keys[0][1]}, {next(iter(runs.values()), '?')} seeds per rank)\n")
            estimators = [e for e in ORDER if e not in (("exact", "cg") if metric != "auc" else ())]
            print("| rank | " + " | ".join(NAMES[e] for e in estimators) + " |")
            print("| ---: | " + " | ".join("---:" for _ in estimators) + " |")
            for rank, n in keys:
                print(f"| {rank} | " + " | ".join(cell(index.get((experiment, rank, n, e, metric))) for e in estimators) + " |")
            print()
    lds_settings = sorted({r["experiment"] for r in rows if r["metric"] == "lds"})
    for experiment in lds_settings:
        labels = sorted({r["estimator"] for r in rows if r["experiment"] == experiment and r["metric"] == "lds"},
                        key=lambda e: (ORDER.index(e) if e in ORDER else len(ORDER), e))
        seeds = max(int(r["runs"]) for r in rows if r["experiment"] == experiment and r["metric"] == "lds")
        print(f"\n#### Ground truth: {experiment} ({seeds} seeds; mean ± 95% CI over seeds)\n")
        print("| estimator | LDS | leave-one-out (Pearson) | leave-one-out sign | Pearson with Exact | mislabel AUC | seconds |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for e in labels:
            get = lambda m: next((r for r in rows if r["experiment"] == experiment and r["estimator"] == e  # noqa: E731
                                  and r["metric"] == m), None)
            seconds = get("seconds")
            print(f"| {NAMES.get(e, e)} | {cell(get('lds'))} | {cell(get('loo'))} | {cell(get('loo_sign'))} | "
                  f"{cell(get('pearson'))} | {cell(get('auc'))} | "
                  f"{float(seconds['mean']):.2f} |" if seconds else " - |")
    # Runtime studies: experiments that vary n (the others' seconds are in their own sections).
    runtime = sorted(e for e in {r["experiment"] for r in rows if r["estimator"].startswith("stage:")}
                     - set(experiments) - set(lds_settings)
                     if len({r["n_train"] for r in rows if r["experiment"] == e}) > 1)
    for experiment in runtime:
        print(f"\n#### Seconds against n ({experiment}; influence stage = fit + scoring)\n")
        ns = sorted({int(r["n_train"]) for r in rows if r["experiment"] == experiment})
        columns = [e for e in ORDER if any(r["experiment"] == experiment and r["estimator"] == e for r in rows)]
        print("| n | gradient extraction | " + " | ".join(NAMES[e] for e in columns) + " |")
        print("| ---: | ---: | " + " | ".join("---:" for _ in columns) + " |")
        for n in ns:
            g = [r for r in rows if r["experiment"] == experiment and int(r["n_train"]) == n and r["estimator"] == "stage:gradients"]
            vals = []
            for e in columns:
                hit = [r for r in rows if r["experiment"] == experiment and int(r["n_train"]) == n and r["estimator"] == e and r["metric"] == "seconds"]
                vals.append(f"{float(hit[0]['mean']):.3f}" if hit else "-")
            print(f"| {n} | {float(g[0]['mean']):.2f} | " if g else f"| {n} | - | ", end="")
            print(" | ".join(vals) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
