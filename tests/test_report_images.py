#!/usr/bin/env python3
"""Tests of framework/report/images.py and the magnitude AUC of class_detection.py against
independent oracles: a brute-force nearest-neighbour vote, hand-built runs whose answers are known,
and an AUC counted pair by pair."""
import csv
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "framework", "report"))
import class_detection  # noqa: E402
import images  # noqa: E402


def brute_force_vote(train, labels, query, skip=None):
    distances = sorted((float(np.sum((t - query) ** 2)), i) for i, t in enumerate(train) if i != skip)
    nearest = [labels[i] for _, i in distances[: images.NEIGHBOURS]]
    counts = {c: nearest.count(c) for c in nearest}
    best = max(counts.values())
    return next(c for c in nearest if counts[c] == best)


def test_knn_matches_brute_force():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(60, 5))
    labels = rng.integers(0, 4, 60)
    queries = rng.normal(size=(25, 5))
    got = images.knn_predict(train, labels, queries)
    assert [brute_force_vote(train, labels, q) for q in queries] == got.tolist()
    loo = images.knn_predict(train, labels, train, leave_one_out=True)
    assert [brute_force_vote(train, labels, t, skip=i) for i, t in enumerate(train)] == loo.tolist()


def write_run(directory, train, train_labels, queries, query_labels, scores=None, styles=None):
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, "train.npy"), train.astype(np.float32))
    np.save(os.path.join(directory, "queries.npy"), queries.astype(np.float32))
    with open(os.path.join(directory, "examples.jsonl"), "w") as f:
        for split, labels in (("train", train_labels), ("query", query_labels)):
            for row, label in enumerate(labels):
                f.write(json.dumps({"split": split, "row": row, "id": row, "label": int(label)}) + "\n")
    if styles:
        with open(os.path.join(directory, "config.toml"), "w") as f:
            f.write("[dataset]\nstyles = [" + ", ".join(f'"{s}"' for s in styles) + "]\n")
    if scores is not None:
        np.save(os.path.join(directory, "scores_datainf.npy"), scores.astype(np.float32))


def test_quality_on_runs_with_known_answers():
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=10, size=(3, 64))
    train_labels = np.repeat([10, 11, 12], 8)
    train = centres[train_labels - 10] + rng.normal(size=(24, 64))
    query_labels = np.repeat([10, 11, 12], 2)
    near = centres[query_labels - 10] + rng.normal(size=(6, 64))
    with tempfile.TemporaryDirectory() as work:
        write_run(os.path.join(work, "right"), train, train_labels, near, query_labels,
                  styles=["sketch", "posterize", "negative"])
        q = images.quality(os.path.join(work, "right"))
        assert q["judge_accuracy_real"] == 1.0 and q["generated_accuracy"] == 1.0
        assert q["per_class"] == {"sketch": 1.0, "posterize": 1.0, "negative": 1.0}
        # Queries drawn from the next class's centre: none lies among its own class.
        write_run(os.path.join(work, "wrong"), train, train_labels, near, (query_labels - 10 + 1) % 3 + 10)
        assert images.quality(os.path.join(work, "wrong"))["generated_accuracy"] == 0.0
        # Half right: the first query of each class from its own centre, the second from another.
        mixed = np.stack([near[0], near[2], near[2], near[4], near[4], near[0]])
        write_run(os.path.join(work, "half"), train, train_labels, mixed, query_labels)
        assert images.quality(os.path.join(work, "half"))["generated_accuracy"] == 0.5
        rows = images.write_quality(work, [os.path.join(work, d) for d in ("right", "wrong", "half")])
        assert [r[4] for r in rows] == ["1.0000", "0.0000", "0.5000"]
        assert {r[1] for r in rows} == {"5-NN on the run's training images"}
        assert os.path.exists(os.path.join(work, "generated_images.csv"))


def test_influential_figure_is_drawn():
    rng = np.random.default_rng(7)
    train_labels = np.repeat([10, 11], 6)
    query_labels = np.array([10, 11])
    with tempfile.TemporaryDirectory() as work:
        run = os.path.join(work, "run")
        write_run(run, rng.uniform(-1, 1, (12, 64)), train_labels, rng.uniform(-1, 1, (2, 64)), query_labels,
                  scores=rng.normal(size=(12, 2)))
        out = os.path.join(work, "figure.png")
        sys.argv = ["images.py", "influential", run, "--top", "2", "--out", out]
        images.main()
        with open(out, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_magnitude_auc_counts_pairs():
    rng = np.random.default_rng(11)
    for _ in range(20):
        column = rng.normal(size=15).round(1)  # rounding makes ties
        same = rng.random(15) < 0.4
        if same.all() or not same.any():
            continue
        auc, recall, magnitude = class_detection.detection(column, same)
        pairs = [(np.sign(abs(a) - abs(b)) + 1) / 2 for a in column[same] for b in column[~same]]
        assert abs(magnitude - np.mean(pairs)) < 1e-12
        pairs = [(np.sign(b - a) + 1) / 2 for a in column[same] for b in column[~same]]  # helpful = negative
        assert abs(auc - np.mean(pairs)) < 1e-12


def test_recall_at_s_counts_the_s_most_helpful():
    column = np.array([-3.0, 2.0, -1.0, -2.0, 0.5, 1.0])  # helpfulness order: 0, 3, 2, 4, 5, 1
    same = np.array([True, True, False, True, False, False])
    _, recall, _ = class_detection.detection(column, same)  # s = 3 (the same-class count): 0, 3, 2
    assert abs(recall - 2 / 3) < 1e-12
    _, recall, _ = class_detection.detection(column, same, 2)  # s = 2 (e.g. queries per class): 0, 3
    assert recall == 1.0
    _, recall, _ = class_detection.detection(column, same, 4)  # 0, 3, 2, 4
    assert recall == 0.5


def test_leave_one_out_noise():
    import report  # noqa: E402

    with tempfile.TemporaryDirectory() as root:
        run = os.path.join(root, "gt", "seed0")
        os.makedirs(run)
        open(os.path.join(run, "metrics.csv"), "w").write("estimator,metric,value\n")
        a, b = [0.1, -0.2, 0.3, 0.05], [0.2, -0.4, 0.6, 0.1]  # seed 1 = 2 x seed 0: correlation 1
        with open(os.path.join(run, "leave_one_out.csv"), "w") as f:
            f.write("row,measured_change,change_seed0,change_seed1,datainf\n")
            for i, (x, y) in enumerate(zip(a, b)):
                f.write(f"{i},{(x + y) / 2},{x},{y},0\n")
        report.write_loo_noise(root)
        row = list(csv.DictReader(open(os.path.join(root, "leave_one_out_noise.csv"))))[0]
        assert row["examples_left_out"] == "4" and row["between_seed_correlations"] == "1.000"
        means = [(x + y) / 2 for x, y in zip(a, b)]
        assert abs(float(row["mean_abs_change"]) - np.mean(np.abs(means))) < 1e-4
        sds = [np.std([x, y], ddof=1) for x, y in zip(a, b)]
        assert abs(float(row["mean_sd_over_seeds"]) - np.mean(sds)) < 1e-4


if __name__ == "__main__":
    for name, test in list(globals().items()):
        if name.startswith("test_"):
            test()
            print(f"ok: {name}")
