"""Projected gradients against full ones: one row per (projection kind, dim, estimator) of a sweep
over [projection] (experiments/projection_*.toml). Per seed, the run with kind "none" is the
reference: the same fine-tuned adapter (projection changes only the gradients stage), so the
difference is the projection's alone.

    /usr/bin/python3 framework/report/projection.py ROOT/<experiment> [--write]

Columns: mislabel-detection AUC, or class-detection AUC and recall, and the LDS where the runs have
ground truth (mean and sd over seeds, as the runs measured them) beside the full gradients' value, the
Pearson correlation of each seed's projected scores with the same estimator's full scores and with
full Exact's (mean over seeds), and the gradients stage's seconds (manifest, mean over the runs
that computed their gradients rather than finding them cached). Writes
ROOT/<experiment>/projection_summary.csv and figures/projection_<auc|class_auc|lds>.{png,pdf} with --write;
prints the table either way. Needs the runs' scores_*.npy (a rerun makes them).
"""
import csv
import json
import os
import sys
import tomllib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import style  # noqa: E402


def load(experiment_dir):
    runs = []
    for name in sorted(os.listdir(experiment_dir)):
        run_dir = os.path.join(experiment_dir, name)
        if not os.path.exists(os.path.join(run_dir, "metrics.csv")):
            continue
        with open(os.path.join(run_dir, "config.toml"), "rb") as f:
            config = tomllib.load(f)
        projection = config.get("projection", {"kind": "none", "dim": 0})
        with open(os.path.join(run_dir, "manifest.json")) as f:
            manifest = json.load(f)
        metrics = {}
        with open(os.path.join(run_dir, "metrics.csv")) as f:
            for row in csv.DictReader(f):
                metrics[(row["estimator"], row["metric"])] = float(row["value"])
        runs.append({
            "dir": run_dir,
            "kind": projection["kind"],
            "dim": int(projection.get("dim", 0)) if projection["kind"] != "none" else 0,
            "seed": config["experiment"]["seed"],
            "metrics": metrics,
            "gradient_seconds": manifest["stage_seconds"].get("gradients"),
            "gradients_cached": manifest.get("stage_cached", {}).get("gradients", False),
        })
    return runs


def scores(run, estimator):
    return np.load(os.path.join(run["dir"], f"scores_{estimator}.npy")).astype(np.float64).ravel()


def summarise(runs):
    full = {r["seed"]: r for r in runs if r["kind"] == "none"}
    # Mislabel detection (auc) or class detection (class_auc, class_recall), whichever the runs have.
    measures = [m for m in ("auc", "class_auc", "class_recall", "lds")
                if any(k[1] == m for r in runs for k in r["metrics"])]
    estimators = sorted({e for r in runs for (e, m) in r["metrics"] if m == measures[0]},
                        key=lambda e: style.ORDER.index(e) if e in style.ORDER else 99)
    groups = {}
    for r in runs:
        if r["kind"] != "none":
            groups.setdefault((r["kind"], r["dim"]), []).append(r)
    rows = []
    for (kind, dim), members in sorted(groups.items()):
        members = [m for m in members if m["seed"] in full]
        for estimator in estimators:
            row = {"kind": kind, "dim": dim, "estimator": estimator, "seeds": len(members)}
            for measure in measures:
                value = [m["metrics"][(estimator, measure)] for m in members]
                reference = [full[m["seed"]]["metrics"][(estimator, measure)] for m in members]
                row[measure] = np.mean(value)
                row[measure + "_sd"] = np.std(value, ddof=1) if len(value) > 1 else 0.0
                row[measure + "_full"] = np.mean(reference)
                row[measure + "_minus_full"] = np.mean(np.subtract(value, reference))
            same = [np.corrcoef(scores(m, estimator), scores(full[m["seed"]], estimator))[0, 1] for m in members]
            exact = [np.corrcoef(scores(m, estimator), scores(full[m["seed"]], "exact"))[0, 1] for m in members]
            seconds = [m["gradient_seconds"] for m in members if not m["gradients_cached"]]
            full_seconds = [full[m["seed"]]["gradient_seconds"] for m in members
                            if not full[m["seed"]]["gradients_cached"]]
            row.update({
                "pearson_vs_full_same": np.mean(same), "pearson_vs_full_exact": np.mean(exact),
                "gradient_seconds": np.mean(seconds) if seconds else float("nan"),
                "gradient_seconds_full": np.mean(full_seconds) if full_seconds else float("nan"),
            })
            rows.append(row)
    return rows


def figure(rows, out, measure):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    estimators = [e for e in style.ORDER if any(r["estimator"] == e for r in rows)]
    kinds = sorted({r["kind"] for r in rows})
    fig, axes = plt.subplots(1, len(estimators), figsize=(4 * len(estimators), 3.2), sharey=True)
    for ax, estimator in zip(np.atleast_1d(axes), estimators):
        for kind, marker in zip(kinds, "osd^"):
            part = sorted((r for r in rows if r["estimator"] == estimator and r["kind"] == kind),
                          key=lambda r: r["dim"])
            ax.errorbar([r["dim"] for r in part], [r[measure] for r in part],
                        yerr=[r[measure + "_sd"] for r in part], marker=marker, capsize=3, label=kind)
        full = [r[measure + "_full"] for r in rows if r["estimator"] == estimator]
        ax.axhline(full[0], color="black", linestyle="--", linewidth=1, label="full gradients")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("values per block (dim)")
        ax.set_title(style.LABELS.get(estimator, estimator))
    label = {"auc": "mislabel AUC", "class_auc": "class-detection AUC", "lds": "LDS (ground truth)"}[measure]
    np.atleast_1d(axes)[0].set_ylabel(f"{label} (mean, sd over seeds)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    style.save(fig, out, "projection_" + measure)


def main(argv):
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    experiment_dir, write = argv[0], "--write" in argv
    rows = summarise(load(experiment_dir))
    if not rows:
        print(f"{experiment_dir}: no projected runs with a kind = \"none\" run of the same seed", file=sys.stderr)
        return 1
    columns = list(rows[0].keys())
    print(" ".join(f"{c:>12}" for c in columns))
    for r in rows:
        print(" ".join(f"{r[c]:>12.4f}" if isinstance(r[c], float) else f"{r[c]:>12}" for c in columns))
    if write:
        with open(os.path.join(experiment_dir, "projection_summary.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({c: f"{v:.6g}" if isinstance(v, float) else v for c, v in r.items()})
        figures = os.path.join(experiment_dir, "figures")
        figure(rows, figures, "auc" if "auc" in rows[0] else "class_auc")
        if "lds" in rows[0]:
            figure(rows, figures, "lds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
