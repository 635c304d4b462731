#!/usr/bin/env python3
"""inflab report: tables and figures from finished runs.

    ./inflab report results/paper            (figures into results/paper/figures/)
    ./inflab report results/paper --html     (and results/paper/html/index.html: html_report.py)

Reads every RUN/config.toml, RUN/metrics.csv and RUN/manifest.json under the given directory
(layout: <dir>/<experiment>/<run>/), writes <dir>/summary.csv (mean and 95% confidence interval
over seeds, per experiment, rank, n and estimator) and draws:
  fig1_correlation_vs_rank   Pearson correlation with Exact against LoRA rank (paper Figure 1)
  fig2_auc_rank4             mislabel-detection AUC at rank 4 (paper Figure 2)
  fig2b_auc_vs_rank          AUC against rank
  fig3_runtime_vs_n          influence-stage seconds against n, and gradient extraction (log axes)
  fig4_lissa_variants        LiSSA as the paper writes it against the paper's code
  fig5_class_detection       class detection per task (LLM and diffusion) (class_detection.py, which also writes
                             <dir>/class_detection.csv: intervals over test examples and seeds)
  fig6_lds                   linear datamodeling score (ground truth by retraining) per estimator
as PNG and PDF (colours fixed per estimator across figures), and writes <dir>/paired.csv: each
estimator minus DataInf and minus Hessian-free, paired over the runs (seeds) of a setting, mean
and 95% t interval.
"""
import csv
import json
import math
import os
import sys
import tomllib
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import scipy.stats  # noqa: E402

import class_detection  # noqa: E402
import images  # noqa: E402
from results_tree import finished_runs, sweep_label  # noqa: E402
from style import COLOURS, LABELS, ORDER, save  # noqa: E402

def mean_ci(values):
    values = [v for v in values if not math.isnan(v)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan"), 1
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = scipy.stats.t.ppf(0.975, n - 1)  # Student's t for any number of runs
    return mean, t * sd / math.sqrt(n), n


def load_runs(root):
    runs = []
    for experiment, run, run_dir in finished_runs(root):
        config = tomllib.load(open(os.path.join(run_dir, "config.toml"), "rb"))
        manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
        metrics = defaultdict(dict)
        for row in csv.DictReader(open(os.path.join(run_dir, "metrics.csv"))):
            metrics[row["estimator"]][row["metric"]] = float(row["value"])
        runs.append({
            "experiment": experiment + sweep_label(run), "run": run, "rank": config["model"]["lora"]["rank"],
            "seed": config["experiment"]["seed"], "n_train": manifest["train_examples"],
            "metrics": metrics, "stages": manifest.get("stage_seconds", {}),
            "stages_cached": manifest.get("stage_cached", {}), "commit": manifest.get("git_commit"),
        })
    return runs


def summarise(runs):
    groups = defaultdict(list)
    for r in runs:
        for estimator, metrics in r["metrics"].items():
            for metric, value in metrics.items():
                groups[(r["experiment"], r["rank"], r["n_train"], estimator, metric)].append(value)
        for stage, seconds in r["stages"].items():
            if not r["stages_cached"].get(stage, False):
                groups[(r["experiment"], r["rank"], r["n_train"], "stage:" + stage, "seconds")].append(seconds)
    table = {}
    for key, values in groups.items():
        table[key] = mean_ci(values)
    return table


def experiments_with(table, predicate):
    return sorted({k[0] for k in table if predicate(k)})


def paired(runs, metric, estimator, baseline):
    """Differences estimator - baseline over the runs that have both (the same seed and data)."""
    return [r["metrics"][estimator][metric] - r["metrics"][baseline][metric] for r in runs
            if metric in r["metrics"].get(estimator, {}) and metric in r["metrics"].get(baseline, {})]


def write_paired(runs, root):
    """paired.csv: per experiment, rank and metric, each estimator minus DataInf and minus
    Hessian-free, paired over the runs (seeds) that have both; mean and 95% t interval."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["experiment"], r["rank"])].append(r)
    path = os.path.join(root, "paired.csv")
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "rank", "metric", "estimator", "baseline", "mean_difference", "ci_low",
                    "ci_high", "runs"])
        for (experiment, rank), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            estimators = sorted({e for r in members for e in r["metrics"] if e != "model"})
            for metric in ("auc", "lds", "pearson", "class_auc", "class_recall"):
                for baseline in ("datainf", "hessian_free"):
                    for estimator in estimators:
                        if estimator == baseline:
                            continue
                        differences = paired(members, metric, estimator, baseline)
                        if len(differences) < 2:
                            continue
                        mean, half, n = mean_ci(differences)
                        w.writerow([experiment, rank, metric, estimator, baseline, f"{mean:.4g}",
                                    f"{mean - half:.4g}", f"{mean + half:.4g}", n])
    os.replace(path + ".tmp", path)


def lds_figure(table, out):
    """fig6_lds: per setting, each estimator's linear datamodeling score and, where measured, its
    leave-one-out correlation (mean, 95% CI over seeds), one panel each."""
    metrics = [(m, label) for m, label in (("lds", "LDS (Spearman, retraining on halves)"),
                                           ("loo", "leave-one-out (Pearson, -score vs change)"))
               if experiments_with(table, lambda k, m=m: k[4] == m)]
    if not metrics:
        return
    settings = experiments_with(table, lambda k: k[4] == "lds")
    estimators = [e for e in ORDER if any(k[3] == e and k[4] == "lds" for k in table)]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(5.0, 1.9 * len(settings)), 3.2 * len(metrics) + 0.6),
                             squeeze=False, sharex=True)
    width = 0.8 / len(estimators)
    runs = {e: max(k_v[1][2] for k_v in table.items() if k_v[0][0] == e and k_v[0][4] == "lds") for e in settings}
    for ax, (metric, ylabel) in zip(axes[:, 0], metrics):
        for j, estimator in enumerate(estimators):
            xs, ys, errs = [], [], []
            for i, experiment in enumerate(settings):
                hits = [table[k] for k in table if k[0] == experiment and k[3] == estimator and k[4] == metric]
                if hits:
                    xs.append(i + (j - len(estimators) / 2 + 0.5) * width)
                    ys.append(hits[0][0])
                    errs.append(0 if math.isnan(hits[0][1]) else hits[0][1])
            ax.bar(xs, ys, width, yerr=errs, capsize=2, color=COLOURS[estimator],
                   label=LABELS[estimator] if metric == metrics[0][0] else None)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.grid(alpha=0.3, axis="y")
    axes[-1, 0].set_xticks(range(len(settings)),
                           [f"{e.replace('ground_truth_', '')}\n({runs[e]} seeds)" for e in settings], fontsize=8)
    fig.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, -0.01))
    fig.suptitle("Ground truth per estimator: retraining on halves (LDS) and without single examples "
                 "(mean, 95% CI over seeds)", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    save(fig, out, "fig6_lds")


def write_loo_noise(root):
    """leave_one_out_noise.csv: per run with leave-one-out, how much training noise moves a single
    example's measured effect: the correlation over the left-out examples between the changes
    measured with two training seeds (each pair of seeds), the mean |change| (mean over seeds) and
    the mean standard deviation of a change over the seeds."""
    out = []
    for experiment, run, run_dir in finished_runs(root):
        path = os.path.join(run_dir, "leave_one_out.csv")
        if not os.path.exists(path):
            continue
        rows = list(csv.DictReader(open(path)))
        seeds = sorted(k for k in rows[0] if k.startswith("change_seed"))
        if len(rows) < 3 or len(seeds) < 2:
            continue
        changes = [[float(r[k]) for k in seeds] for r in rows]
        columns = list(zip(*changes))
        pairs = [(a, b) for a in range(len(seeds)) for b in range(a + 1, len(seeds))]
        correlations = [float(scipy.stats.pearsonr(columns[a], columns[b])[0]) for a, b in pairs]
        means = [sum(c) / len(c) for c in changes]
        spread = [math.sqrt(sum((x - m) ** 2 for x in c) / (len(c) - 1)) for c, m in zip(changes, means)]
        out.append([experiment, run, len(rows), " ".join(f"{x:.3f}" for x in correlations),
                    f"{sum(abs(m) for m in means) / len(means):.4g}", f"{sum(spread) / len(spread):.4g}"])
    if out:
        with open(os.path.join(root, "leave_one_out_noise.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["experiment", "run", "examples_left_out", "between_seed_correlations",
                        "mean_abs_change", "mean_sd_over_seeds"])
            w.writerows(out)


def main(root):
    runs = load_runs(root)
    if not runs:
        sys.exit(f"{root}: no finished runs (RUN/metrics.csv) found")
    table = summarise(runs)
    with open(os.path.join(root, "summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "rank", "n_train", "estimator", "metric", "mean", "ci95", "runs"])
        for key in sorted(table, key=lambda k: tuple(str(x) for x in k)):
            mean, ci, n = table[key]
            w.writerow([*key, f"{mean:.6g}", "" if math.isnan(ci) else f"{ci:.4g}", n])
    out = os.path.join(root, "figures")
    ranks_of = lambda e: sorted({k[1] for k in table if k[0] == e})  # noqa: E731
    studies = [e for e in experiments_with(table, lambda k: k[4] == "pearson") if len(ranks_of(e)) > 1]

    def per_rank_figure(metric, ylabel, name, title, skip=("exact", "cg")):
        if not studies:
            return
        # A grid of at most three columns, so the figure stays legible at the width of a page.
        columns = min(3, len(studies))
        rows = (len(studies) + columns - 1) // columns
        fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.1 * rows), squeeze=False, sharey=True)
        for ax in axes.flat[len(studies):]:
            ax.set_visible(False)
        for ax, experiment in zip(axes.flat, studies):
            ranks = ranks_of(experiment)
            for estimator in ORDER:
                if estimator in skip:
                    continue
                points = [(r, *table[(experiment, r, n, estimator, metric)][:2]) for (e, r, n, est, m) in table
                          if e == experiment and est == estimator and m == metric]
                if not points:
                    continue
                points.sort()
                ax.errorbar([p[0] for p in points], [p[1] for p in points],
                            yerr=[0 if math.isnan(p[2]) else p[2] for p in points], marker="o", capsize=3,
                            color=COLOURS[estimator], label=LABELS[estimator])
            ax.set_xscale("log", base=2)
            ax.set_xticks(ranks, [str(r) for r in ranks])
            ax.set_xlabel("LoRA rank r")
            ax.set_title(experiment, fontsize=9)
            ax.grid(alpha=0.3)
        for row in axes:
            row[0].set_ylabel(ylabel, fontsize=8)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, ncol=min(4, len(labels)), loc="lower center",
                   bbox_to_anchor=(0.5, -0.01))
        fig.suptitle(title, fontsize=10)
        legend_rows = -(-len(labels) // min(4, max(1, len(labels))))  # room below the panels for the legend
        fig.tight_layout(rect=(0, min(0.3, 0.03 + 0.028 * legend_rows / (len(axes) / 2)), 1, 0.95))
        save(fig, out, name)

    per_rank_figure("pearson", "Pearson correlation with Exact", "fig1_correlation_vs_rank",
                    "Approximation error: correlation of each method's scores with Exact (mean, 95% CI)")
    per_rank_figure("auc", "mislabel-detection ROC AUC", "fig2b_auc_vs_rank",
                    "Mislabeled-data detection against LoRA rank (mean, 95% CI)", skip=("cg",))

    rank4 = [e for e in experiments_with(table, lambda k: k[1] == 4 and k[4] == "auc") if e in studies]
    if rank4:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rank4) * 1.5), 3.8))
        estimators = [e for e in ORDER if e != "cg" and any(k[0] in rank4 and k[1] == 4 and k[3] == e for k in table)]
        width = 0.8 / len(estimators)
        for j, estimator in enumerate(estimators):
            xs, ys, errs = [], [], []
            for i, experiment in enumerate(rank4):
                hits = [table[k] for k in table if k[0] == experiment and k[1] == 4 and k[3] == estimator and k[4] == "auc"]
                if hits:
                    xs.append(i + (j - len(estimators) / 2 + 0.5) * width)
                    ys.append(hits[0][0])
                    errs.append(0 if math.isnan(hits[0][1]) else hits[0][1])
            ax.bar(xs, ys, width, yerr=errs, capsize=2, color=COLOURS[estimator], label=LABELS[estimator])
        ax.set_xticks(range(len(rank4)), rank4)
        ax.set_ylabel("mislabel-detection ROC AUC")
        ax.set_ylim(0.4, 1.0)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
        ax.set_title("Mislabeled-data detection at LoRA rank 4 (mean, 95% CI over seeds)")
        save(fig, out, "fig2_auc_rank4")

    runtime = [e for e in experiments_with(table, lambda k: k[4] == "seconds") if len({k[2] for k in table if k[0] == e}) > 1]
    for experiment in runtime:
        fig, ax = plt.subplots(figsize=(6, 4))
        for estimator in ORDER + ["stage:gradients"]:
            points = sorted((k[2], table[k][0]) for k in table if k[0] == experiment and k[3] == estimator and k[4] == "seconds")
            if not points:
                continue
            label = "gradient extraction" if estimator == "stage:gradients" else LABELS[estimator]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label,
                    color=COLOURS.get(estimator, "#ff7f0e"), ls="--" if estimator.startswith("stage") else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training examples n")
        ax.set_ylabel("seconds (influence stage: fit + scoring)")
        ax.set_title(f"Runtime against n ({experiment}, 2 CPU cores)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        save(fig, out, "fig3_runtime_vs_n")

    if studies:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, metric, ylabel in ((axes[0], "auc", "mislabel AUC"), (axes[1], "pearson", "Pearson with Exact")):
            for i, experiment in enumerate(studies):
                for j, estimator in enumerate(("lissa", "lissa_reference_code")):
                    hits = [table[k] for k in table if k[0] == experiment and k[1] == 4 and k[3] == estimator and k[4] == metric]
                    if hits:
                        ax.bar(i + (j - 0.5) * 0.38, hits[0][0], 0.38, yerr=0 if math.isnan(hits[0][1]) else hits[0][1],
                               capsize=3, color=COLOURS[estimator], label=LABELS[estimator] if i == 0 else None)
            ax.set_xticks(range(len(studies)), studies, rotation=15)
            ax.set_ylabel(ylabel + " (rank 4)")
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend(fontsize=8)
        fig.suptitle("LiSSA as the paper writes it (damping added, converged) vs the paper's code")
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        save(fig, out, "fig4_lissa_variants")
    lds_figure(table, out)
    write_paired(runs, root)
    class_detection.main(root)
    images.write_quality(root, [run_dir for _, _, run_dir in finished_runs(root)])
    write_loo_noise(root)
    commits = sorted({r["commit"] for r in runs})
    print(f"{len(runs)} runs from {len(studies)} studies; commits {', '.join(commits)}; "
          f"summary in {os.path.join(root, 'summary.csv')}, figures in {out}/")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="inflab report", description="summary.csv, figures and (--html) a report page "
                                     "from the finished runs under RESULTS_DIR (layout RESULTS_DIR/<experiment>/<run>/)")
    parser.add_argument("root", metavar="RESULTS_DIR", help="e.g. results/paper")
    parser.add_argument("--html", action="store_true", help="also write RESULTS_DIR/html/index.html: every study and run "
                        "in one self-contained page (opens from file://; see docs/report.md)")
    parser.add_argument("--top", type=int, default=10, help="run pages: most helpful and most harmful examples shown "
                        "per estimator and query (default 10)")
    parser.add_argument("--queries-per-class", type=int, default=2, help="run pages of pairwise runs: the first N "
                        "queries of each class are offered besides the mean query (default 2, at most 20 queries)")
    args = parser.parse_args()
    if args.top < 1 or args.queries_per_class < 0:
        parser.error("--top must be >= 1 and --queries-per-class >= 0")
    main(args.root)
    if args.html:
        import html_report

        html_report.build(args.root, top=args.top, per_class=args.queries_per_class)
