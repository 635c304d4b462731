#!/usr/bin/env python3
"""Generated images: how recognisable they are, and their most and least helpful training images.

    images.py quality RUN_DIR...             class of each generated query, judged (also run by `inflab report`)
    images.py digits SAMPLES.npy --count N   digit of each image from `inflab sample --npy`, judged
    images.py influential RUN_DIR [--estimator datainf] [--top 4] --out FIGURE.png

The judge is a 5-nearest-neighbour classifier (Euclidean distance on the pixels, majority vote,
ties to the nearest) fitted on real images: for `quality` the run's training images (train.npy,
classes from examples.jsonl), for `digits` all 1797 real 8x8 digits (digits.csv.gz in the data
cache). A nearest-neighbour judge is chosen because it needs no training of its own and no
library beyond NumPy, and because it asks the question that matters for class detection: does a
generated image lie among the real images of its class? Its own accuracy on real images (leave one
out) is printed beside it, as the ceiling for the generated ones.

`influential` draws, for the first generated (or real) query of each class, the query, its --top
most helpful training images (most negative scores: up-weighting them lowers the query's loss)
and its --top least helpful (most positive), each captioned with its class.
"""
import argparse
import csv
import functools
import gzip
import json
import os
import sys

import numpy as np

NEIGHBOURS = 5


def knn_predict(train, labels, queries, leave_one_out=False):
    """Labels of `queries` by majority of the NEIGHBOURS nearest `train` rows (ties: nearest wins)."""
    d = (queries**2).sum(1)[:, None] - 2 * queries @ train.T + (train**2).sum(1)[None, :]
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :NEIGHBOURS]
    out = np.empty(len(queries), dtype=labels.dtype)
    for i, row in enumerate(labels[nearest]):
        values, counts = np.unique(row, return_counts=True)
        best = values[counts == counts.max()]
        out[i] = next(v for v in row if v in best)  # of the tied classes, the one nearest first
    return out


def run_examples(run):
    examples = [json.loads(line) for line in open(os.path.join(run, "examples.jsonl"))]
    train = np.array([e["label"] for e in examples if e["split"] == "train"])
    query = np.array([e["label"] for e in examples if e["split"] == "query"])
    return train, query


def class_names(run):
    """The dataset's class (condition) names from the run's config, when it names them."""
    try:
        import tomllib

        config = tomllib.load(open(os.path.join(run, "config.toml"), "rb"))
        styles = config.get("dataset", {}).get("styles")
        if styles:
            return {10 + i: s for i, s in enumerate(styles)}
    except (OSError, ValueError):
        pass
    return {}


@functools.lru_cache(maxsize=None)
def fashion_judge():
    """judge.py's CNN, the real images and its (classes, features) of the 10,000 test images, once per
    process (a report judges several clothing runs)."""
    import judge

    data, data_hash = judge.fashion(judge.DEFAULT_DATA)
    net, _, _ = judge.judge_network(data, data_hash, judge.default_cache())
    return net, data, judge.predict(net, data["test_images"])


def styled_frechet(train, queries):
    """Styled clothing (no class the CNN knows): the Frechet distance on the judge CNN's features of
    the generated queries to the run's real styled training images, and its floor: as many of those
    real images (a fixed draw) to the others."""
    import judge

    net, _, _ = fashion_judge()
    real = judge.predict(net, train)[1]
    generated = judge.predict(net, queries)[1]
    drawn = np.zeros(len(real), dtype=bool)
    drawn[np.random.default_rng(0).choice(len(real), len(generated), replace=False)] = True
    return judge.frechet(generated, real), judge.frechet(real[drawn], real[~drawn])


def quality(run):
    """Judge of the run's generated queries (queries.npy): the share put in their condition's class,
    overall and per class, and the judge's accuracy on real images (its ceiling). Queries of
    Fashion-MNIST classes (28x28 images, conditions 0-9: styled_fashion's subject mode) are judged by
    judge.py's CNN trained on the 60,000 real training images (accuracy on the 10,000 test images),
    which also gives the Frechet distance of its features to the real test images of those classes,
    beside the floor of as many real training images;
    any other run's (styles, digits) by the nearest-neighbour vote over the run's own training images
    (leave-one-out accuracy on them); styled clothing's Frechet distance is styled_frechet's."""
    train = np.load(os.path.join(run, "train.npy")).astype(np.float64)
    queries = np.load(os.path.join(run, "queries.npy")).reshape(-1, train.shape[1]).astype(np.float64)
    train_labels, query_labels = run_examples(run)
    if len(train_labels) != len(train) or len(query_labels) != len(queries):
        sys.exit(f"{run}: examples.jsonl lists {len(train_labels)} training and {len(query_labels)} query rows, "
                 f"train.npy and queries.npy hold {len(train)} and {len(queries)}")
    names = class_names(run)
    frechet = (None, None)  # only with the CNN judge (its features)
    if train.shape[1] == 784 and query_labels.max() < 10 and fashion_run(run):
        import judge

        net, data, test = fashion_judge()
        classes, counts = np.unique(query_labels, return_counts=True)
        if (counts != counts[0]).any() or (query_labels != np.repeat(classes, counts[0])).any():
            sys.exit(f"{run}: expected the generated queries class by class, as many of each; found {counts}")
        result, judged = judge.judge(queries, classes.astype(int), int(counts[0]), data, net, test)
        real = result["judge_accuracy_real"]
        frechet = (result["frechet_distance"], result["frechet_distance_real_floor"])
        names = dict(enumerate(judge.CLASSES))
        who = "Fashion-MNIST CNN (judge.py)"
    else:
        real = (knn_predict(train, train_labels, train, leave_one_out=True) == train_labels).mean()
        judged = knn_predict(train, train_labels, queries)
        who = f"{NEIGHBOURS}-NN on the run's training images"
        if train.shape[1] == 784 and fashion_run(run):
            frechet = styled_frechet(train, queries)
    per_class = {names.get(int(c), str(c)): float((judged[query_labels == c] == c).mean())
                 for c in np.unique(query_labels)}
    return {"judge": who, "judge_accuracy_real": float(real),
            "generated_accuracy": float((judged == query_labels).mean()),
            "generated": int(len(queries)), "per_class": per_class,
            "frechet": frechet[0], "frechet_real_floor": frechet[1]}


def fashion_run(run):
    """Whether the run's dataset is styled_fashion (its images are Fashion-MNIST's)."""
    try:
        import tomllib

        return tomllib.load(open(os.path.join(run, "config.toml"), "rb")).get("dataset", {}).get("plugin") == "styled_fashion"
    except (OSError, ValueError):
        return False


def write_quality(root, runs):
    """generated_images.csv under `root`: one row per run with generated queries; and, for the
    first such run of each experiment, figures/fig8_influential_<experiment>.png (DataInf)."""
    rows, drawn = [], set()
    for run in runs:
        if not (os.path.exists(os.path.join(run, "queries.npy")) and os.path.exists(os.path.join(run, "train.npy"))):
            continue
        experiment = os.path.basename(os.path.dirname(os.path.normpath(run)))
        if experiment not in drawn and os.path.exists(os.path.join(run, "scores_datainf.npy")):
            drawn.add(experiment)
            draw_influential(run, "datainf", 4, 0, os.path.join(root, "figures", f"fig8_influential_{experiment}.png"))
        q = quality(run)
        rows.append([os.path.relpath(run, root), q["judge"], q["generated"], f"{q['judge_accuracy_real']:.4f}",
                     f"{q['generated_accuracy']:.4f}",
                     " ".join(f"{k}={v:.2f}" for k, v in q["per_class"].items()),
                     "" if q["frechet"] is None else f"{q['frechet']:.2f}",
                     "" if q["frechet_real_floor"] is None else f"{q['frechet_real_floor']:.2f}"])
    if rows:
        with open(os.path.join(root, "generated_images.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run", "judge", "generated", "judge_accuracy_on_real", "generated_in_their_class", "per_class",
                        "frechet", "frechet_real_floor"])
            w.writerows(rows)
    return rows


def real_digits(path, pixels):
    rows = np.loadtxt(gzip.open(path, "rt"), delimiter=",")
    images, labels = rows[:, :64] / 16.0, rows[:, 64].astype(int)
    return (2 * images - 1 if pixels == "signed" else images), labels


def digits(args):
    path = args.data or os.path.join(os.environ.get("INFLAB_DATA", os.path.expanduser("~/.cache/inflab/data")),
                                     "sklearn", "digits.csv.gz")
    train, labels = real_digits(path, args.pixels)
    samples = np.load(args.samples).reshape(-1, 64).astype(np.float64)
    conditions = np.repeat(np.array([int(c) for c in args.conditions]), args.count)
    if len(conditions) != len(samples):
        sys.exit(f"{args.samples}: {len(samples)} images, expected {len(args.conditions)} conditions x {args.count}")
    real = (knn_predict(train, labels, train, leave_one_out=True) == labels).mean()
    judged = knn_predict(train, labels, samples)
    print(f"judge: {NEIGHBOURS}-nearest neighbours on {len(train)} real digits ({path}); "
          f"leave-one-out accuracy {real:.4f}")
    print(f"generated: {len(samples)} images; judged as the digit they were conditioned on: "
          f"{(judged == conditions).mean():.4f}")
    print("per digit: " + " ".join(f"{c}={(judged[conditions == int(c)] == int(c)).mean():.2f}"
                                   for c in args.conditions))
    if args.figure:  # the first 12 images of each condition, a row each, for a reader to look at
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = min(12, args.count)
        fig, axes = plt.subplots(len(args.conditions), shown, figsize=(0.45 * shown + 0.6, 0.5 * len(args.conditions) + 0.4),
                                 squeeze=False)
        for i, condition in enumerate(args.conditions):
            for j in range(shown):
                image = samples[i * args.count + j].reshape(8, 8)
                axes[i][j].imshow(image, cmap="gray", vmin=-1 if args.pixels == "signed" else 0, vmax=1)
                axes[i][j].set_xticks([]), axes[i][j].set_yticks([])
            axes[i][0].set_ylabel(condition, rotation=0, labelpad=8)
        fig.suptitle(f"{os.path.basename(args.samples)}: {shown} per condition; judged as their digit: "
                     f"{(judged == conditions).mean():.2f}", fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        fig.savefig(args.figure, dpi=90)


def influential(args):
    draw_influential(args.run, args.estimator, args.top, args.query, args.out)
    print(f"wrote {args.out}")


def draw_influential(run, estimator, top, query, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = np.load(os.path.join(run, "train.npy"))
    generated = os.path.exists(os.path.join(run, "queries.npy"))
    if not generated:
        sys.exit(f"{run}: no queries.npy (only runs whose queries are generated images are drawn)")
    queries = np.load(os.path.join(run, "queries.npy")).reshape(-1, train.shape[1])
    scores = np.load(os.path.join(run, f"scores_{estimator}.npy"))
    train_labels, query_labels = run_examples(run)
    if scores.shape != (len(train), len(queries)):
        sys.exit(f"scores_{estimator}.npy is {scores.shape}, expected {(len(train), len(queries))} (pairwise)")
    names = class_names(run)
    side = int(round(np.sqrt(train.shape[1])))
    classes = list(dict.fromkeys(query_labels.tolist()))
    chosen = [int(np.flatnonzero(query_labels == c)[query]) for c in classes]
    columns = 1 + 2 * top
    fig, axes = plt.subplots(len(chosen), columns, figsize=(0.95 * columns + 0.4, 1.25 * len(chosen) + 0.6),
                             squeeze=False)
    show = lambda ax, image: ax.imshow(image.reshape(side, side), cmap="gray", vmin=-1, vmax=1)  # noqa: E731
    for row, q in zip(axes, chosen):
        order = np.argsort(scores[:, q], kind="stable")
        show(row[0], queries[q])
        row[0].set_title(f"generated: {names.get(int(query_labels[q]), query_labels[q])}", fontsize=7, fontweight="bold")
        for k, i in enumerate(list(order[:top]) + list(order[::-1][:top])):
            ax = row[1 + k]
            show(ax, train[i])
            same = train_labels[i] == query_labels[q]
            ax.set_title(names.get(int(train_labels[i]), str(train_labels[i])), fontsize=7,
                         color="black" if same else "firebrick")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{os.path.normpath(run)}: {estimator} (captions in red: another class)", fontsize=8, y=0.02,
                 va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 0.93))
    for first, last, text in ((1, top, "most helpful"), (1 + top, 2 * top, "least helpful")):
        left, right = axes[0][first].get_position().x0, axes[0][last].get_position().x1
        fig.text((left + right) / 2, 0.975, f"{top} {text}", ha="center", va="top", fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality", help="judge the generated queries of finished runs")
    q.add_argument("runs", nargs="+")
    d = sub.add_parser("digits", help="judge images from `inflab sample --npy` conditioned on digits")
    d.add_argument("samples")
    d.add_argument("--count", type=int, required=True, help="images per condition (inflab sample --count)")
    d.add_argument("--conditions", nargs="+", default=[str(c) for c in range(10)])
    d.add_argument("--pixels", choices=["signed", "unit"], default="signed",
                   help="signed: [-1, 1] (styled_digits); unit: [0, 1] (digits)")
    d.add_argument("--data", help="digits.csv.gz (default: the data cache's)")
    d.add_argument("--figure", help="also draw the first 12 images of each condition into this PNG")
    i = sub.add_parser("influential", help="figure: generated queries with their most and least helpful images")
    i.add_argument("run")
    i.add_argument("--estimator", default="datainf")
    i.add_argument("--top", type=int, default=4)
    i.add_argument("--query", type=int, default=0, help="which query of each class (default the first)")
    i.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "quality":
        for run in args.runs:
            print(json.dumps({"run": run, **quality(run)}))
    elif args.command == "digits":
        digits(args)
    else:
        influential(args)


if __name__ == "__main__":
    main()
