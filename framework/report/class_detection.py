#!/usr/bin/env python3
"""Class detection (paper Table 2) per test example, pooled over seeds, with intervals.

    /usr/bin/python3 framework/report/class_detection.py results/paper   (also run by `inflab report`)

For every finished pairwise run with examples.jsonl and scores_<estimator>.npy (n_train x
n_query), recomputes each query's class-detection AUC and recall at s (s = training examples of
the query's class, or its query examples when the run set evaluation.class_recall_at = "queries"; the most helpful, i.e. most negative, scores ranked first) independently of
the C++ metric, and checks that their means equal the run's metrics.csv. Runs of one experiment
that differ only in the seed are pooled: every (seed, test example) pair is one unit. Writes
<root>/class_detection.csv: per experiment group and estimator (with its number of classes: chance
recall at s is one over it) the mean AUC and recall with 95%
bootstrap percentile intervals over those units (2000 resamples, seeded by the group's name), the paired
difference to Hessian-free and to DataInf over the same units with its interval, the runs, the
units and the mean exact-match test accuracy of the fine-tuned models, and a diagnostic that is not
the paper's: the AUC when |score| ranks (are same-class examples influential in either direction?);
and the figure
figures/fig5_class_detection (AUC and recall per estimator and task, the paper's values marked).
"""
import csv
import json
import os
import sys
import tomllib
import zlib

import numpy as np
import scipy.stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_numbers import TABLE2  # noqa: E402
from results_tree import finished_runs, sweep_label  # noqa: E402
from style import COLOURS, LABELS, ORDER, save  # noqa: E402

# The paper's Table 2: (Hessian-free, DataInf) AUC and recall per task.
PAPER = {task: {metric: (entry["hessian_free"][k], entry["datainf"][k]) for k, metric in enumerate(("auc", "recall"))}
         for task, entry in TABLE2.items()}
RESAMPLES = 2000


def auc_of(ranking, same):
    """AUC (Mann-Whitney, ties one half) of `same` when `ranking` (larger first) ranks."""
    positives, negatives = same.sum(), (~same).sum()
    ranks = scipy.stats.rankdata(ranking)  # mid-ranks: tied values share their mean rank
    return (ranks[same].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def detection(column, same, s=None):
    """AUC of `same` when helpfulness (-score) ranks, recall at s (default: the same-class count),
    and (a diagnostic, not the paper's ranking) the AUC when the magnitude |score| ranks: whether
    same-class examples are influential in either direction."""
    helpfulness = -np.asarray(column, dtype=np.float64)
    top = np.argsort(-helpfulness, kind="mergesort")[:same.sum() if s is None else s]
    return auc_of(helpfulness, same), same[top].mean(), auc_of(np.abs(helpfulness), same)


def interval(values, rng):
    values = np.asarray(values)
    means = values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(axis=1)
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


UNITS = "class_detection_units.csv"  # per run: each query's AUC, recall and |score| AUC per estimator
UNIT_FIELDS = ["estimator", "query", "query_class", "train_classes", "auc", "recall", "auc_by_magnitude"]


def units_from_scores(run_dir, estimators):
    """{estimator: per-query rows (auc, recall, auc_by_magnitude)}, query classes and the number of
    training classes, recomputed from scores_<estimator>.npy and examples.jsonl."""
    examples = [json.loads(line) for line in open(os.path.join(run_dir, "examples.jsonl"))]
    train = np.array([e["label"] for e in examples if e["split"] == "train"])
    query = np.array([e["label"] for e in examples if e["split"] == "query"])
    # evaluation.class_recall_at = "queries": s = the query class's query examples (the notebook).
    with open(os.path.join(run_dir, "config.toml"), "rb") as f:
        at_queries = tomllib.load(f).get("evaluation", {}).get("class_recall_at", "training") == "queries"
    units = {}
    for estimator in estimators:
        scores = np.load(os.path.join(run_dir, f"scores_{estimator}.npy"))
        if scores.shape != (len(train), len(query)):
            sys.exit(f"{run_dir}: scores_{estimator}.npy is {scores.shape}, examples.jsonl has "
                     f"{len(train)} training and {len(query)} query examples")
        units[estimator] = np.array([detection(scores[:, q], train == query[q],
                                               int((query == query[q]).sum()) if at_queries else None)
                                     for q in range(len(query))])
    return units, query, len(set(train.tolist()))


def write_units(run_dir, units, query, classes):
    path = os.path.join(run_dir, UNITS)
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(UNIT_FIELDS)
        for estimator, per_query in units.items():
            for q, values in enumerate(per_query):  # repr: the pooled means are the same from this file
                writer.writerow([estimator, q, query[q], classes, *(repr(float(v)) for v in values)])
    os.replace(path + ".tmp", path)


def read_units(run_dir, estimators):
    units, classes = {}, None
    for row in csv.DictReader(open(os.path.join(run_dir, UNITS))):
        units.setdefault(row["estimator"], []).append([float(row[k]) for k in UNIT_FIELDS[4:]])
        classes = int(row["train_classes"])
    missing = [e for e in estimators if e not in units]
    if missing:
        sys.exit(f"{run_dir}: {UNITS} has no rows for {', '.join(missing)} (metrics.csv has them) and the run "
                 f"has no scores_*.npy to recompute them from; rerun the experiment with --no-resume")
    return {e: np.array(units[e]) for e in estimators}, classes


def run_units(run_dir):
    """{estimator: per query (auc, recall, auc_by_magnitude)} plus "classes", and the test accuracy.
    From the run's score arrays when it has them (and then written to class_detection_units.csv),
    else from that file: results/ keeps the file, not the arrays (docs/experiments.md)."""
    metrics = {}
    for row in csv.DictReader(open(os.path.join(run_dir, "metrics.csv"))):
        metrics.setdefault(row["estimator"], {})[row["metric"]] = float(row["value"])
    estimators = [e for e, values in metrics.items() if "class_auc" in values]
    arrays = all(os.path.exists(os.path.join(run_dir, f"scores_{e}.npy")) for e in estimators)
    if arrays and os.path.exists(os.path.join(run_dir, "examples.jsonl")):
        units, query, classes = units_from_scores(run_dir, estimators)
        write_units(run_dir, units, query, classes)
    elif os.path.exists(os.path.join(run_dir, UNITS)):
        units, classes = read_units(run_dir, estimators)
    elif arrays:  # a run of an inflab older than examples.jsonl: left out, said so, the rest reported
        print(f"class_detection: {run_dir} has score arrays but no examples.jsonl (an older run): left out of "
              "class_detection.csv; rerun its experiment with --no-resume to include it", file=sys.stderr)
        return None
    else:
        sys.exit(f"{run_dir}: neither scores_<estimator>.npy nor {UNITS}: rerun the experiment with --no-resume")
    for estimator in estimators:  # an independent check of the C++ metric (and of the file)
        for k, metric in enumerate(("class_auc", "class_recall")):
            if abs(units[estimator][:, k].mean() - metrics[estimator][metric]) > 1e-6:
                sys.exit(f"{run_dir}: {estimator} {metric} recomputed from the scores is "
                         f"{units[estimator][:, k].mean():.8f}, metrics.csv says {metrics[estimator][metric]:.8f}")
    units["classes"] = classes
    return units, metrics.get("model", {}).get("test_accuracy")


def task_of(group):
    for task in sorted(PAPER, key=len, reverse=True):
        if task in group:
            return task
    return None


def summarise(groups):
    """groups: {name: [run_dir, ...]} -> rows of class_detection.csv."""
    rows = []
    for group, run_dirs in sorted(groups.items()):
        rng = np.random.default_rng(zlib.crc32(group.encode()))  # a group's intervals depend on it alone
        loaded = [u for u in (run_units(d) for d in sorted(run_dirs)) if u is not None]
        if not loaded:
            continue
        classes = loaded[0][0].pop("classes")
        for units, _ in loaded[1:]:
            units.pop("classes")
        estimators = [e for e in loaded[0][0] if all(e in units for units, _ in loaded)]
        pooled = {e: np.concatenate([units[e] for units, _ in loaded]) for e in estimators}
        accuracies = [a for _, a in loaded if a is not None]
        for estimator in estimators:
            row = {"experiment": group, "estimator": estimator, "runs": len(loaded), "classes": classes,
                   "units": len(pooled[estimator]),
                   "test_accuracy": f"{np.mean(accuracies):.4g}" if accuracies else ""}
            for k, metric in enumerate(("auc", "recall")):
                values = pooled[estimator][:, k]
                low, high = interval(values, rng)
                row.update({metric: f"{values.mean():.6f}", f"{metric}_low": f"{low:.6f}",
                            f"{metric}_high": f"{high:.6f}"})
                for baseline in ("hessian_free", "datainf"):
                    if baseline in pooled and baseline != estimator:
                        difference = values - pooled[baseline][:, k]
                        low, high = interval(difference, rng)
                        row[f"{metric}_minus_{baseline}"] = (f"{difference.mean():+.4f} "
                                                             f"[{low:+.4f}, {high:+.4f}]")
            magnitude = pooled[estimator][:, 2]
            low, high = interval(magnitude, np.random.default_rng(zlib.crc32((group + estimator).encode())))
            row["auc_by_magnitude"] = f"{magnitude.mean():.4f} [{low:.4f}, {high:.4f}]"
            rows.append(row)
    return rows


def figure(rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["experiment"] for r in rows})
    # At most four tasks a row (AUC above recall), so the figure stays legible at page width.
    columns = min(4, len(groups))
    bands = (len(groups) + columns - 1) // columns
    fig, grid = plt.subplots(2 * bands, columns, figsize=(3.0 * columns, 4.4 * bands), squeeze=False)
    for k in range(len(groups), bands * columns):
        grid[2 * (k // columns)][k % columns].set_visible(False)
        grid[2 * (k // columns) + 1][k % columns].set_visible(False)
    for index, group in enumerate(groups):
        column = index % columns
        axes = [grid[2 * (index // columns)], grid[2 * (index // columns) + 1]]
        mine = sorted((r for r in rows if r["experiment"] == group), key=lambda r: ORDER.index(r["estimator"])
                      if r["estimator"] in ORDER else len(ORDER))
        for line, metric in enumerate(("auc", "recall")):
            ax = axes[line][column]
            for i, r in enumerate(mine):
                mean = float(r[metric])
                ax.bar(i, mean, 0.7, color=COLOURS.get(r["estimator"], "#bbbbbb"),
                       yerr=[[mean - float(r[f"{metric}_low"])], [float(r[f"{metric}_high"]) - mean]], capsize=2)
            task = task_of(group)
            if task:
                for value, style, name in zip(PAPER[task][metric], ("--", "-"), ("Hessian-free", "DataInf")):
                    ax.axhline(value, color="#555555", linestyle=style, linewidth=1,
                               label=f"paper: {name}" if index == 0 and line == 0 else None)
            chance = 0.5 if metric == "auc" else 1 / mine[0]["classes"]  # recall at s: the class's share
            ax.axhline(chance, color="#aaaaaa", linestyle=":", linewidth=1,
                       label="chance" if index == 0 and line == 0 else None)
            ax.set_xticks(range(len(mine)), [LABELS.get(r["estimator"], r["estimator"]) for r in mine],
                          rotation=60, fontsize=7)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3, axis="y")
            if column == 0:
                ax.set_ylabel("class AUC" if metric == "auc" else "recall at s")
            if line == 0:
                runs = mine[0]["runs"] if mine else 0
                accuracy = mine[0]["test_accuracy"] if mine else ""
                name = group.replace("class_detection_llm_", "").replace("class_detection_", "")
                ax.set_title(f"{name}\n{runs} seed(s)" + (f", test acc. {accuracy}" if accuracy else ""), fontsize=8)
    fig.legend(loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.01))
    fig.suptitle("Class detection: mean over test examples and seeds, 95% bootstrap intervals", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    save(fig, out, "fig5_class_detection")


def find_groups(root):
    groups = {}
    for experiment, run, run_dir in finished_runs(root):
        if any("class_auc" in line for line in open(os.path.join(run_dir, "metrics.csv"))):
            groups.setdefault(experiment + sweep_label(run), []).append(run_dir)
    return groups


def main(root):
    groups = find_groups(root)
    if not groups:
        return None
    rows = summarise(groups)
    if not rows:  # every class-detection run was left out (see the messages above)
        return None
    fields = ["experiment", "estimator", "runs", "classes", "units", "test_accuracy", "auc", "auc_low", "auc_high",
              "auc_minus_hessian_free", "auc_minus_datainf", "recall", "recall_low", "recall_high",
              "recall_minus_hessian_free", "recall_minus_datainf", "auc_by_magnitude"]
    path = os.path.join(root, "class_detection.csv")
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    figure(rows, os.path.join(root, "figures"))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: class_detection.py RESULTS_DIR   (e.g. results/paper)")
    print(main(sys.argv[1]) or f"{sys.argv[1]}: no finished class-detection runs")
