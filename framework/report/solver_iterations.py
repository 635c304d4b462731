#!/usr/bin/env python3
"""Iterations and seconds of the iterative solvers per run and block, from the runs' manifests.

    python3 framework/report/solver_iterations.py results/methods/preconditioned_solvers

writes <dir>/iterations.csv (run, estimator, block, iterations, relative_residual, seconds: the
estimator's fit and scoring time from metrics.csv) and prints, per estimator, the iterations
summed over blocks and the seconds, as ranges over the runs. Reads every <dir>/*/*/manifest.json
whose diagnostics report "<block>.iterations" (cg, lissa, arnoldi).
"""
import csv
import glob
import json
import os
import sys


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: solver_iterations.py RESULTS_DIR (a folder of runs from `inflab run --out`)")
    root = sys.argv[1]
    rows = []
    for manifest in sorted(glob.glob(os.path.join(root, "*", "*", "manifest.json"))):
        run = os.path.relpath(os.path.dirname(manifest), root)
        diagnostics = json.load(open(manifest)).get("diagnostics", {})
        seconds = {}
        metrics = os.path.join(os.path.dirname(manifest), "metrics.csv")
        if os.path.exists(metrics):
            seconds = {r["estimator"]: float(r["value"]) for r in csv.DictReader(open(metrics)) if r["metric"] == "seconds"}
        for estimator, values in diagnostics.items():
            for key, value in values.items():
                if key.endswith(".iterations"):
                    block = key[: -len(".iterations")]
                    rows.append([run, estimator, block, int(value), values.get(block + ".relative_residual", ""),
                                 seconds.get(estimator, "")])
    if not rows:
        sys.exit(f"{root}: no run reports iterations (diagnostics '<block>.iterations' in */*/manifest.json)")
    out = os.path.join(root, "iterations.csv")
    with open(out + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "estimator", "block", "iterations", "relative_residual", "seconds"])
        w.writerows(rows)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")
    totals = {}
    for run, estimator, _, iterations, _, seconds in rows:
        entry = totals.setdefault(estimator, {}).setdefault(run, [0, seconds])
        entry[0] += iterations
    print("| estimator | iterations (sum over blocks) | seconds |\n| --- | ---: | ---: |")
    for estimator, runs in totals.items():
        its = [v[0] for v in runs.values()]
        secs = [v[1] for v in runs.values() if v[1] != ""]
        print(f"| {estimator} | {min(its)}-{max(its)} | {min(secs):.2f}-{max(secs):.2f} |" if secs else
              f"| {estimator} | {min(its)}-{max(its)} | - |")


if __name__ == "__main__":
    main()
