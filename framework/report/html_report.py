#!/usr/bin/env python3
"""inflab report DIR --html: one self-contained page for every study and run under DIR.

    ./inflab report results/paper --html [--top 10] [--queries-per-class 2]

Writes DIR/html/ (index.html, report.js, report.css, data/*.js, figures/): no network, no
server, opens from file://. Data is held in .js files that assign JSON (a browser refuses to
fetch() local JSON from file://), one for the index and one per run, loaded when its page opens.

Study pages: summary.csv pivoted per setting (estimator x metric, mean and 95% interval, the
paper's Table 2 number beside DataInf's and Hessian-free's class-detection rows), paired.csv's
differences, class_detection.csv's intervals, the cost per estimator, the figures.
Run pages: for the mean query (and, for pairwise runs, the first --queries-per-class queries of
each class), each estimator's --top most helpful (most negative scores) and most harmful (most
positive) training examples with their text or image, class, observed label and flip; the
estimators' rank agreement (Spearman); LDS and leave-one-out where the run has them. Runs whose
score arrays are not in DIR (results/ does not keep them) get their metrics and a note saying so.
"""
import csv
import functools
import gzip
import json
import os
import re
import shutil
import sys

import numpy as np
import scipy.stats

from paper_numbers import TABLE2
from results_tree import finished_runs, sweep_label
from style import COLOURS, LABELS, ORDER

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "html_assets")


def read_csv(path):
    return list(csv.DictReader(open(path))) if os.path.exists(path) else []


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def paper_task(experiment):
    """The Table 2 task an experiment reproduces (the longest task name its name contains)."""
    found = [key for key in TABLE2 if re.search(r"(^|_)" + key + r"(_|$)", experiment)]
    return max(found, key=len) if found else None


def ordered(estimators):
    known = [e for e in ORDER if e in estimators]
    return known + sorted(e for e in estimators if e not in known)


# ---------------------------------------------------------------------------------------------
# Images: where a run's examples come from when they are pictures.


@functools.lru_cache(maxsize=None)  # once per report, not once per run of the dataset
def idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    count, rows, cols = (int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)


@functools.lru_cache(maxsize=None)
def digits_pixels(path):
    return np.loadtxt(gzip.open(path, "rt"), delimiter=",")[:, :64]


def image_source(run_dir, config):
    """A function (split, row, id) -> 2-D or HxWxC image array, or None when the run has none."""
    train_file, query_file = os.path.join(run_dir, "train.npy"), os.path.join(run_dir, "queries.npy")
    if os.path.exists(train_file):  # denoisers: the training images and the generated queries
        train = np.load(train_file)
        queries = np.load(query_file).reshape(-1, train.shape[1]) if os.path.exists(query_file) else None
        side = int(round(np.sqrt(train.shape[1])))
        if side * side != train.shape[1]:
            return None

        def from_arrays(split, row, _id):
            source = train if split == "train" else queries
            return None if source is None or row >= len(source) else source[row].reshape(side, side)

        return from_arrays
    dataset = config.get("dataset", {})
    plugin = dataset.get("plugin")
    if plugin == "fashion_mnist":  # ids are rows of the idx files (train for train, t10k for queries)
        directory = dataset.get("data_dir", "/usr/share/datasets/fashion-mnist")
        files = {"train": os.path.join(directory, "train-images-idx3-ubyte.gz"),
                 "query": os.path.join(directory, "t10k-images-idx3-ubyte.gz")}
        if not all(os.path.exists(f) for f in files.values()):
            return None
        return lambda split, _row, identifier: idx_images(files[split])[identifier]
    if plugin == "digits":  # ids are rows of digits.csv.gz
        path = dataset.get("path") or os.path.join(
            os.environ.get("INFLAB_DATA", os.path.expanduser("~/.cache/inflab/data")), "sklearn", "digits.csv.gz")
        if not os.path.exists(path):
            return None
        return lambda _split, _row, identifier: digits_pixels(path)[identifier].reshape(8, 8)
    return None


def thumbnail(image, bundle):
    """The image as a PNG data URI at its native size (the page scales it up, pixelated), kept in
    `bundle` (one per study, data/images<N>.js) under a key of its content, which is returned: the
    runs and seeds of a study that show one training image share it, and there are no thousands of
    half-kilobyte files taking a 4 KB block apiece."""
    import base64
    import hashlib
    import io

    from PIL import Image

    image = np.asarray(image, dtype=np.float64)
    low, high = float(image.min()), float(image.max())
    scaled = np.zeros_like(image) if high <= low else (image - low) / (high - low)
    encoded = io.BytesIO()
    Image.fromarray((scaled * 255).round().astype(np.uint8)).save(encoded, format="PNG", optimize=True)
    key = hashlib.sha256(encoded.getvalue()).hexdigest()[:16]
    bundle.setdefault(key, "data:image/png;base64," + base64.b64encode(encoded.getvalue()).decode("ascii"))
    return key


# ---------------------------------------------------------------------------------------------
# Runs


def load_scores(run_dir, estimators, n_train):
    """estimator -> float64 array (n_train x n_query), for the estimators whose array is present."""
    scores = {}
    for name in estimators:
        path = os.path.join(run_dir, f"scores_{name}.npy")
        if os.path.exists(path):
            array = np.load(path).astype(np.float64)
            array = array.reshape(n_train, -1) if array.ndim == 1 else array
            if array.shape[0] == n_train:
                scores[name] = array
    return scores


def chosen_queries(query_examples, n_query, per_class, limit):
    """The first `per_class` queries of each class (in row order), at most `limit`."""
    taken, count = [], {}
    for q in range(n_query):
        label = query_examples[q]["label"] if q < len(query_examples) else None
        if count.get(label, 0) < per_class:
            count[label] = count.get(label, 0) + 1
            taken.append(q)
        if len(taken) == limit:
            break
    return taken


def spearman_matrix(columns):
    names = list(columns)
    ranks = {n: scipy.stats.rankdata(columns[n]) for n in names}
    matrix = [[float(np.corrcoef(ranks[a], ranks[b])[0, 1]) if np.std(ranks[a]) > 0 and np.std(ranks[b]) > 0
               else None for b in names] for a in names]
    return {"estimators": names, "matrix": matrix}


def example_record(example, meta):
    record = {"id": example.get("id"), "label": example.get("label")}
    for key in ("text", "response", "answer"):
        if key in example:
            record[key] = example[key][:600]
    if meta:
        record["true_label"] = int(meta["label"])
        record["observed_label"] = int(meta["observed_label"])
        record["flipped"] = meta["flipped"] == "1"
    return record


def run_page(run_id, experiment, run, run_dir, bundle, top, per_class, max_queries):
    import tomllib

    config = tomllib.load(open(os.path.join(run_dir, "config.toml"), "rb"))
    manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
    metrics = {}
    for row in read_csv(os.path.join(run_dir, "metrics.csv")):
        metrics.setdefault(row["estimator"], {})[row["metric"]] = number(row["value"])
    estimators = ordered([e for e in metrics if e != "model"])
    page = {"id": run_id, "study": experiment, "run": run, "mode": config.get("evaluation", {}).get("mode"),
            "n_train": manifest.get("train_examples"), "n_query": manifest.get("query_examples"),
            "commit": manifest.get("git_commit"), "threads": manifest.get("threads"),
            "estimators": estimators, "metrics": metrics}
    loo = read_csv(os.path.join(run_dir, "leave_one_out.csv"))
    if loo:
        page["loo_points"] = {"measured": [number(r["measured_change"]) for r in loo],
                              "predicted": {e: [number(r[e]) for r in loo] for e in estimators if e in loo[0]}}
    examples_file = os.path.join(run_dir, "examples.jsonl")
    examples = [json.loads(line) for line in open(examples_file)] if os.path.exists(examples_file) else []
    train = [e for e in examples if e["split"] == "train"]
    query = [e for e in examples if e["split"] == "query"]
    n_train = page["n_train"] or len(train)
    scores = load_scores(run_dir, estimators, n_train)
    page["has_scores"] = bool(scores)
    if not scores:
        return page
    meta = {row["example_id"]: row for row in read_csv(os.path.join(run_dir, "scores.csv"))}
    n_query = next(iter(scores.values())).shape[1]
    queries = [{"index": -1, "title": "mean query" if n_query == 1 or page["mode"] == "aggregate"
                else f"mean of the scores over all {n_query} queries"}]
    if page["mode"] != "aggregate" and n_query > 1:
        for q in chosen_queries(query, n_query, per_class, max_queries):
            entry = {"index": q, "title": f"query {q}"}
            if q < len(query):
                entry["example"] = example_record(query[q], None)
            queries.append(entry)
    images = image_source(run_dir, config)
    used_rows, tops, agreement = set(), {}, {}
    for entry in queries:
        q = entry["index"]
        columns = {e: (s.mean(axis=1) if q < 0 else s[:, q]) for e, s in scores.items()}
        agreement[str(q)] = spearman_matrix(columns)
        for name, column in columns.items():
            order = np.argsort(column, kind="stable")
            helpful = [[int(i), float(column[i])] for i in order[:top]]
            harmful = [[int(i), float(column[i])] for i in order[::-1][:top]]
            tops.setdefault(name, {})[str(q)] = {"helpful": helpful, "harmful": harmful}
            used_rows.update(i for i, _ in helpful + harmful)
    records = {}
    for row in sorted(used_rows):
        example = train[row] if row < len(train) else {"id": row, "label": None}
        record = example_record(example, meta.get(str(example.get("id"))))
        if images:
            image = images("train", row, example.get("id"))
            if image is not None:
                record["image"] = thumbnail(image, bundle)
        records[str(row)] = record
    if images:
        for entry in queries:
            if "example" in entry:
                image = images("query", entry["index"], entry["example"].get("id"))
                if image is not None:
                    entry["example"]["image"] = thumbnail(image, bundle)
    page.update({"queries": queries, "top": tops, "examples": records, "agreement": agreement,
                 "scored_estimators": ordered(list(scores))})
    return page


# ---------------------------------------------------------------------------------------------
# The index: studies, their tables, figures


def study_tables(root, studies):
    summary = read_csv(os.path.join(root, "summary.csv"))
    paired = read_csv(os.path.join(root, "paired.csv"))
    detection = read_csv(os.path.join(root, "class_detection.csv"))
    for row in summary:
        base = row["experiment"].split("@")[0]
        if base in studies:
            task = paper_task(base)
            paper = TABLE2.get(task, {}).get(row["estimator"]) if task else None
            if paper and row["metric"] in ("class_auc", "class_recall"):
                row["paper"] = paper[0] if row["metric"] == "class_auc" else paper[1]
            studies[base]["summary"].append(row)
    for row in paired:
        base = row["experiment"].split("@")[0]
        if base in studies:
            studies[base]["paired"].append(row)
    for row in detection:
        base = row["experiment"].split("@")[0]
        if base in studies:
            studies[base]["class_detection"].append(row)


def write_js(path, variable, value):
    with open(path, "w") as f:
        f.write(f"{variable} = ")
        json.dump(value, f, separators=(",", ":"), allow_nan=False, default=str)
        f.write(";\n")


def clean(value):
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def start_folder(out, subfolders):
    """A staging folder beside `out` with the page's assets: the page is written there, then
    swapped in whole (swap_into_place), so a reader never sees half a page."""
    staging = out.rstrip("/") + f".tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for sub in subfolders:
        os.makedirs(os.path.join(staging, sub))
    for asset in os.listdir(ASSETS):
        shutil.copy(os.path.join(ASSETS, asset), staging)
    return staging


def swap_into_place(staging, out):
    old = out.rstrip("/") + f".old-{os.getpid()}"
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def build(root, top=10, per_class=2, max_queries=20, out=None):
    out = out or os.path.join(root, "html")
    staging = start_folder(out, ("data", "figures"))
    studies, figures, bundles = {}, [], {}
    figure_dir = os.path.join(root, "figures")
    if os.path.isdir(figure_dir):
        for name in sorted(os.listdir(figure_dir)):
            if name.endswith(".png"):
                shutil.copy(os.path.join(figure_dir, name), os.path.join(staging, "figures", name))
                figures.append("figures/" + name)
    for run_id, (experiment, run, run_dir) in enumerate(finished_runs(root)):
        study = studies.setdefault(experiment, {"name": experiment, "runs": [], "summary": [], "paired": [],
                                                "class_detection": [], "figures": [], "paper_task": None})
        bundle = bundles.setdefault(experiment, {})
        page = run_page(run_id, experiment, run, run_dir, bundle, top, per_class, max_queries)
        if bundle:
            page["image_bundle"] = list(bundles).index(experiment)  # data/images<N>.js
        write_js(os.path.join(staging, "data", f"run{run_id}.js"), f"INFLAB.runs[{run_id}]", clean(page))
        study["runs"].append({"id": run_id, "run": run, "setting": sweep_label(run).lstrip("@"),
                              "has_scores": page["has_scores"], "mode": page["mode"]})
    for number, bundle in enumerate(bundles.values()):
        if bundle:
            write_js(os.path.join(staging, "data", f"images{number}.js"), f"INFLAB.images[{number}]", bundle)
    for name, study in studies.items():
        study["figures"] = [f for f in figures if name in f]
        task = paper_task(name)
        if task:
            study["paper_task"] = {"task": task, **TABLE2[task]}
    study_tables(root, studies)
    index = {"root": os.path.normpath(root), "studies": [studies[k] for k in sorted(studies)],
             "figures": [f for f in figures if not any(s in f for s in studies)],
             "labels": LABELS, "colours": COLOURS, "top": top}
    write_js(os.path.join(staging, "data", "index.js"), "INFLAB.index", clean(index))
    swap_into_place(staging, out)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(out) for f in files)
    runs = sum(len(s["runs"]) for s in studies.values())
    print(f"html: {os.path.join(out, 'index.html')} ({len(studies)} studies, {runs} runs, {size / 1e6:.1f} MB)")
    return out


# ---------------------------------------------------------------------------------------------
# inflab explain --html: the run page's view for explain's own queries


def explain_query_title(q, entry):
    if "prompt" in entry:
        return f"query {q}: " + " ".join(entry["prompt"].split())[:70]
    if "validation_row" in entry:
        return f"query {q}: validation row {entry['validation_row']}"
    if "condition" in entry:
        return f"query {q}: image for condition {entry['condition']}"
    return f"query {q}"


def explain_page(entries, title):
    """`inflab explain --json`'s output as a run page's data (one estimator, its ranked rows)."""
    estimator = entries[0].get("estimator", "estimator") if entries else "estimator"
    if entries and entries[0].get("normalise", "none") not in ("", "none"):
        estimator += "_" + entries[0]["normalise"]
    queries, top, examples = [], {}, {}
    for q, entry in enumerate(entries):
        example = {"label": entry.get("label")}
        if "prompt" in entry:
            example["text"] = entry["prompt"]
        if "answer" in entry or "response" in entry:
            example["answer"] = entry.get("answer", entry.get("response"))
        queries.append({"index": q, "title": explain_query_title(q, entry), "example": example})
        lists = {}
        for kind in ("helpful", "harmful"):
            lists[kind] = [[row["row"], row["score"]] for row in entry.get(kind, [])]
            for row in entry.get(kind, []):
                record = {k: row[k] for k in ("id", "label", "observed_label", "flipped", "text", "response")
                          if k in row}
                examples[str(row["row"])] = record
        top.setdefault(estimator, {})[str(q)] = lists
    return {"id": 0, "study": "explain", "run": title, "mode": "explain", "n_train": None, "n_query": len(entries),
            "commit": None, "threads": None, "estimators": [estimator], "metrics": {}, "has_scores": bool(entries),
            "queries": queries, "top": top, "examples": examples, "agreement": {},
            "scored_estimators": [estimator] if entries else []}


def build_explain(json_file, out, title):
    entries = json.load(open(json_file))
    if not isinstance(entries, list):
        sys.exit(f"{json_file}: expected inflab explain --json's output (a list of queries)")
    staging = start_folder(out, ("data",))
    page = explain_page(entries, title)
    write_js(os.path.join(staging, "data", "run0.js"), "INFLAB.runs[0]", clean(page))
    index = {"root": title, "start": "run/0", "studies": [], "figures": [], "labels": LABELS, "colours": COLOURS,
             "top": max((len(e.get("helpful", [])) for e in entries), default=0)}
    write_js(os.path.join(staging, "data", "index.js"), "INFLAB.index", clean(index))
    swap_into_place(staging, out)
    print(f"html: {os.path.join(out, 'index.html')} ({len(entries)} queries)")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="the report page (normally ./inflab report DIR --html, or "
                                     "./inflab explain ... --html DIR)")
    parser.add_argument("root", nargs="?", metavar="RESULTS_DIR")
    parser.add_argument("--explain", metavar="FILE.json", help="inflab explain --json's output to draw instead")
    parser.add_argument("--out", help="the page's folder (default RESULTS_DIR/html)")
    parser.add_argument("--title", default="inflab explain", help="--explain: what the page is of (the index)")
    args = parser.parse_args()
    if args.explain:
        if not args.out:
            parser.error("--explain needs --out DIR")
        build_explain(args.explain, args.out, args.title)
    elif args.root:
        build(args.root, out=args.out)
    else:
        parser.error("give RESULTS_DIR or --explain FILE.json --out DIR")
