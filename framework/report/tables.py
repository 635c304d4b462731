#!/usr/bin/env python3
"""Markdown tables for docs/results.md from a report's summary.csv.

    python3 framework/report/tables.py results/paper/summary.csv            print every table
    python3 framework/report/tables.py results/paper/summary.csv --check    exit 1 when a generated
                                                                           block of docs/results.md differs
    python3 framework/report/tables.py results/paper/summary.csv --write    rewrite those blocks

docs/results.md holds its tables between the markers <!-- tables.py:NAME begin --> and
<!-- tables.py:NAME end -->, NAME one of BLOCKS below. From summary.csv: the correlation / mislabel
tables, runtime, the ground-truth (LDS) and leave-one-out tables; from class_detection.csv beside it
(and the runs' metrics.csv, for the test accuracy of each seed): the class-detection tables of the
text-generation and image-generation sections.
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from doc_blocks import sync  # noqa: E402
from paper_numbers import TABLE2  # noqa: E402
from style import LABELS, ORDER  # noqa: E402
from table2 import cell as auc_recall  # noqa: E402  ("AUC / recall" of a class_detection.csv row)

NAMES = {"exact": "Exact", "cg": "CG", "datainf": "DataInf", "ekfac": "EK-FAC", "kfac": "K-FAC",
         "lissa": "LiSSA (eq.)", "lissa_reference_code": "LiSSA (code)", "hessian_free": "Hessian-free"}


def cell(row):
    if not row:
        return "-"
    mean, ci = float(row["mean"]), row["ci95"]
    return f"{mean:.3f} ± {float(ci):.3f}" if ci else f"{mean:.3f}"


def correlations(rows, index):
    """The Pearson, Spearman and mislabel-AUC tables of the studies without ground truth."""
    out = []
    experiments = sorted({r["experiment"] for r in rows if r["metric"] == "pearson"} -
                         {r["experiment"] for r in rows if r["metric"] == "lds"})  # those get their own table
    for metric, title in (("pearson", "Pearson correlation with Exact"), ("spearman", "Spearman correlation with Exact"),
                          ("auc", "Mislabel-detection ROC AUC")):
        out.append(f"\n#### {title} (mean ± 95% CI over seeds)\n")
        for experiment in experiments:
            keys = sorted({(k[1], k[2]) for k in index if k[0] == experiment})
            runs = {k[1]: index[(experiment, k[0], k[1], "datainf", metric)]["runs"] for k in keys if (experiment, k[0], k[1], "datainf", metric) in index}
            out.append(f"{experiment} (n = {keys[0][1]}, {next(iter(runs.values()), '?')} seeds per rank)\n")
            estimators = [e for e in ORDER if e not in (("exact", "cg") if metric != "auc" else ())
                          and any(k[0] == experiment and k[3] == e for k in index)]
            out.append("| rank | " + " | ".join(NAMES.get(e, LABELS.get(e, e)) for e in estimators) + " |")
            out.append("| ---: | " + " | ".join("---:" for _ in estimators) + " |")
            for rank, n in keys:
                out.append(f"| {rank} | " + " | ".join(cell(index.get((experiment, rank, n, e, metric))) for e in estimators) + " |")
            out.append("")
    return out, experiments


def ground_truth(rows):
    out = []
    for experiment in sorted({r["experiment"] for r in rows if r["metric"] == "lds"}):
        labels = sorted({r["estimator"] for r in rows if r["experiment"] == experiment and r["metric"] == "lds"},
                        key=lambda e: (ORDER.index(e) if e in ORDER else len(ORDER), e))
        seeds = max(int(r["runs"]) for r in rows if r["experiment"] == experiment and r["metric"] == "lds")
        out.append(f"\n#### Ground truth: {experiment} ({seeds} seeds; mean ± 95% CI over seeds)\n")
        out.append("| estimator | LDS | leave-one-out (Pearson) | leave-one-out sign | Pearson with Exact | mislabel AUC | seconds |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for e in labels:
            get = lambda m: next((r for r in rows if r["experiment"] == experiment and r["estimator"] == e  # noqa: E731
                                  and r["metric"] == m), None)
            seconds = get("seconds")
            out.append(f"| {NAMES.get(e, e)} | {cell(get('lds'))} | {cell(get('loo'))} | {cell(get('loo_sign'))} | "
                       f"{cell(get('pearson'))} | {cell(get('auc'))} | "
                       + (f"{float(seconds['mean']):.2f} |" if seconds else " - |"))
    return out


BEYOND_PAPER_ROWS = [("arnoldi", "Arnoldi (p = 64)"),
                     ("exact_unit", "Exact, unit-normalised"), ("exact_relatif", "Exact, RelatIF"),
                     ("datainf_unit", "DataInf, unit-normalised"), ("datainf_relatif", "DataInf, RelatIF"),
                     ("hessian_free_unit", "Hessian-free, unit-normalised (gradient cosine)"),
                     ("tracin", "TracIn (3 checkpoints)")]
GROUND_TRUTH_ROWS = [("exact", "Exact"), ("datainf", "DataInf"), ("hessian_free", "Hessian-free"), ("kfac", "K-FAC"),
                     ("ekfac", "EK-FAC"), ("lissa", "LiSSA (paper's equation, converged)"),
                     ("lissa_reference_code", "LiSSA (paper's code)")] + BEYOND_PAPER_ROWS


def ground_truth_side_by_side(rows, studies):
    """docs/results.md's ground-truth tables: per study (experiment, title) LDS, Pearson with Exact and
    mislabel AUC at rank 4, the studies side by side."""
    index = {(r["experiment"], r["estimator"], r["metric"]): r for r in rows if r["rank"] == "4"}
    header = "| estimator | " + " | ".join(f"{title}: LDS | Pearson with Exact | mislabel AUC" for _, title in studies) + " |"
    out = ["", header, "| --- | " + " | ".join("---: | ---: | ---:" for _ in studies) + " |"]
    for estimator, name in GROUND_TRUTH_ROWS:
        cells = []
        for experiment, _ in studies:
            pearson = index.get((experiment, estimator, "pearson"))
            cells += [cell(index.get((experiment, estimator, "lds"))),
                      "1" if estimator == "exact" and pearson and float(pearson["mean"]) == 1 else cell(pearson),
                      cell(index.get((experiment, estimator, "auc")))]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + [""]


def leave_one_out(rows, studies):
    """Leave-one-out Pearson and sign agreement (metrics loo, loo_sign) per study at rank 4."""
    index = {(r["experiment"], r["estimator"], r["metric"]): r for r in rows if r["rank"] == "4"}
    header = "| estimator | " + " | ".join(f"{title}: LOO Pearson | sign" for _, title in studies) + " |"
    out = ["", header, "| --- | " + " | ".join("---: | ---:" for _ in studies) + " |"]
    for estimator, name in GROUND_TRUTH_ROWS:
        cells = [cell(index.get((experiment, estimator, metric))) for experiment, _ in studies
                 for metric in ("loo", "loo_sign")]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + [""]


CLASS_DETECTION_ROWS = [("hessian_free", "Hessian-free"), ("datainf", "DataInf"), ("exact", "Exact"),
                        ("kfac", "K-FAC"), ("ekfac", "EK-FAC"), ("lissa", "LiSSA (paper's equation, 100 iterations)")]


def test_accuracy_per_seed(root, group):
    """The fine-tuned model's exact-match test accuracy of each run of a class_detection.csv group
    ("experiment" or "experiment@run-prefix"), from the runs' metrics.csv, in run order."""
    experiment, _, prefix = group.partition("@")
    base = os.path.join(root, experiment)
    values = []
    for run in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, run, "metrics.csv")
        if run.startswith(prefix) and os.path.exists(path):
            values += [float(r["value"]) for r in csv.DictReader(open(path))
                       if r["estimator"] == "model" and r["metric"] == "test_accuracy"]
    return ", ".join(f"{v:.2f}" for v in values) or "-"


def text_generation(root, table):
    """The "Text generation" table: AUC / recall per estimator on inflab's own LLM tasks."""
    columns = [("class_detection_llm_transformations@learning_rate0.0005", "transformations, lr 5e-4", "transformations"),
               ("class_detection_llm_transformations@learning_rate0.002", "lr 2e-3", None),
               ("class_detection_llm_math", "math", "math"),
               ("class_detection_llm_math_reasoning", "math with reasoning", "math_reasoning")]
    runs = lambda group: table[(group, "datainf")]["runs"]  # noqa: E731
    header = ["estimator"] + [f"{title} ({runs(group)} seed{'s' if runs(group) != '1' else ''})"
                              + (": AUC / recall" if i == 0 else "") for i, (group, title, _) in enumerate(columns)]
    out = ["", "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(columns)]
    # the methods beyond the paper where some task has them
    beyond = [row for row in BEYOND_PAPER_ROWS if any((group, row[0]) in table for group, _, _ in columns)]
    for estimator, name in CLASS_DETECTION_ROWS + beyond:
        out.append(f"| {name} | " + " | ".join(auc_recall(table.get((group, estimator))) for group, _, _ in columns) + " |")
    out.append("| exact-match test answers of the fine-tuned model (per seed) | "
               + " | ".join(test_accuracy_per_seed(root, group) for group, _, _ in columns) + " |")
    for estimator, label in (("hessian_free", "Hessian-free"), ("datainf", "DataInf")):
        # the paper's row for the transformations sits under the first of their two columns
        cells = ["{:.3f} / {:.3f}".format(*TABLE2[task][estimator]) if task else "" for _, _, task in columns]
        prefix = f"the paper ({TABLE2['math']['model']}): " if estimator == "hessian_free" else "the paper: "
        out.append(f"| {prefix}{label} | " + " | ".join(cells) + " |")
    return out + [""]


def image_generation(table, generated, real, task):
    """An "Image generation" table: generated vs real held-out queries, AUC and recall with intervals."""
    interval = lambda r, m: f"{float(r[m]):.3f} [{float(r[m + '_low']):.3f}, {float(r[m + '_high']):.3f}]"  # noqa: E731
    out = ["", "| estimator | generated queries: AUC | recall | real held-out queries: AUC | recall |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for estimator, name in CLASS_DETECTION_ROWS:
        cells = []
        for group in (generated, real):
            row = table.get((group, estimator))
            cells += [interval(row, "auc"), interval(row, "recall")] if row else ["-", "-"]
        name = name.replace("paper's equation", "equation")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    paper = TABLE2[task]
    (hf, hf_r), (di, di_r) = paper["hessian_free"], paper["datainf"]
    out.append(f"| the paper ({paper['model']}): Hessian-free / DataInf | {hf:.3f} / {di:.3f} | {hf_r:.3f} / {di_r:.3f} | | |")
    return out + [""]


def image_generation_sizes(table):
    """The image studies at both sizes side by side (8x8 digits, 28x28 clothing): AUC / recall of the
    generated queries, and of the real ones under the paper's notebook protocol."""
    columns = [("class_detection_diffusion_style", "digits 8x8: style"),
               ("class_detection_diffusion_fashion_style", "clothing 28x28: style"),
               ("class_detection_diffusion_subject", "digits: subject"),
               ("class_detection_diffusion_fashion_subject", "clothing: subject"),
               ("class_detection_diffusion_style_notebook_protocol", "digits: style, notebook protocol"),
               ("class_detection_diffusion_fashion_style_notebook_protocol", "clothing: style, notebook protocol")]
    runs = lambda group: table[(group, "datainf")]["runs"] if (group, "datainf") in table else "0"  # noqa: E731
    header = ["estimator"] + [f"{title} ({runs(group)} seeds)" + (": AUC / recall" if i == 0 else "")
                              for i, (group, title) in enumerate(columns)]
    out = ["", "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(columns)]
    for estimator, name in CLASS_DETECTION_ROWS:
        out.append(f"| {name.replace('paper' + chr(39) + 's equation', 'equation')} | "
                   + " | ".join(auc_recall(table.get((group, estimator))) for group, _ in columns) + " |")
    return out + [""]


def class_detection_blocks(root):
    path = os.path.join(root, "class_detection.csv")
    table = {(r["experiment"], r["estimator"]): r for r in csv.DictReader(open(path))}
    return {"text_generation": text_generation(root, table),
            "image_generation_style": image_generation(table, "class_detection_diffusion_style",
                                                       "class_detection_diffusion_style_real_queries", "diffusion_style"),
            "image_generation_subject": image_generation(table, "class_detection_diffusion_subject",
                                                         "class_detection_diffusion_subject_real_queries",
                                                         "diffusion_subject"),
            "image_generation_sizes": image_generation_sizes(table)}


def runtime(rows, experiments):
    """Runtime studies: experiments that vary n (the others' seconds are in their own sections)."""
    out = []
    lds_settings = {r["experiment"] for r in rows if r["metric"] == "lds"}
    studies = sorted(e for e in {r["experiment"] for r in rows if r["estimator"].startswith("stage:")}
                     - set(experiments) - lds_settings
                     if len({r["n_train"] for r in rows if r["experiment"] == e}) > 1)
    for experiment in studies:
        out.append(f"\n#### Seconds against n ({experiment}; influence stage = fit + scoring)\n")
        ns = sorted({int(r["n_train"]) for r in rows if r["experiment"] == experiment})
        columns = [e for e in ORDER if any(r["experiment"] == experiment and r["estimator"] == e for r in rows)]
        out.append("| n | gradient extraction | " + " | ".join(NAMES[e] for e in columns) + " |")
        out.append("| ---: | ---: | " + " | ".join("---:" for _ in columns) + " |")
        for n in ns:
            g = [r for r in rows if r["experiment"] == experiment and int(r["n_train"]) == n and r["estimator"] == "stage:gradients"]
            vals = []
            for e in columns:
                hit = [r for r in rows if r["experiment"] == experiment and int(r["n_train"]) == n and r["estimator"] == e and r["metric"] == "seconds"]
                vals.append(f"{float(hit[0]['mean']):.3f}" if hit else "-")
            out.append((f"| {n} | {float(g[0]['mean']):.2f} | " if g else f"| {n} | - | ") + " | ".join(vals) + " |")
    return out


def blocks(path):
    rows = list(csv.DictReader(open(path)))
    index = {(r["experiment"], int(r["rank"]), int(r["n_train"]), r["estimator"], r["metric"]): r for r in rows}
    tables, experiments = correlations(rows, index)
    return {"correlations": tables, "ground_truth": ground_truth(rows), "runtime": runtime(rows, experiments),
            "ground_truth_images": ground_truth_side_by_side(
                rows, [("ground_truth_fashion_mlp", "Fashion MLP"), ("ground_truth_digits_cnn", "digits CNN")]),
            "ground_truth_text": ground_truth_side_by_side(rows, [("ground_truth_fine_foods_minilm", "MiniLM fine foods")]),
            "leave_one_out": leave_one_out(
                rows, [("ground_truth_fashion_mlp", "Fashion MLP"), ("ground_truth_digits_cnn", "digits CNN")]),
            **class_detection_blocks(os.path.dirname(os.path.abspath(path)))}


DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "results.md")


BLOCKS = ("correlations", "runtime", "ground_truth_images", "ground_truth_text", "leave_one_out", "text_generation",
          "image_generation_style", "image_generation_subject", "image_generation_sizes")


def update_docs(generated, write):
    """Replace (or compare) each marked block of docs/results.md; returns the names that differ."""
    return sync(DOCS, {name: (f"<!-- tables.py:{name} begin -->", f"<!-- tables.py:{name} end -->",
                              "\n".join([f"<!-- tables.py:{name} begin -->", *generated[name],
                                          f"<!-- tables.py:{name} end -->"]))
                       for name in BLOCKS}, write)


def main(argv):
    if len(argv) < 2 or argv[2:] not in ([], ["--check"], ["--write"]):
        sys.exit(__doc__)
    generated = blocks(argv[1])
    if len(argv) == 2:
        print("\n".join(generated["correlations"] + generated["ground_truth"] + generated["runtime"]))
        return 0
    differ = update_docs(generated, argv[2] == "--write")
    if differ and argv[2] == "--check":
        print(f"{DOCS}: the generated tables {', '.join(differ)} differ from what framework/report/tables.py "
              f"writes from {argv[1]}; run it with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
