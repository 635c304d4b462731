#!/usr/bin/env python3
"""framework/report/class_detection.py on a hand-made run: each query's class AUC and recall equal a
brute-force count over (same-class, other-class) pairs, with ties counted one half; the run's
class_detection_units.csv is written; with the score arrays and examples removed (what results/
keeps) the same class_detection.csv is rebuilt from that file alone; a units file that disagrees
with metrics.csv is an error naming the run."""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "framework", "report", "class_detection.py")


def brute_auc(helpfulness, same):
    """P(a same-class example is more helpful than an other-class one), ties one half."""
    wins = 0.0
    for i in np.flatnonzero(same):
        for j in np.flatnonzero(~same):
            wins += 1.0 if helpfulness[i] > helpfulness[j] else 0.5 if helpfulness[i] == helpfulness[j] else 0.0
    return wins / (same.sum() * (~same).sum())


def run(root):
    done = subprocess.run([sys.executable, SCRIPT, root], capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def main():
    rng = np.random.default_rng(7)
    train_labels = np.repeat([0, 1, 2], 6)
    query_labels = np.array([0, 1, 2, 2])
    estimators = {"datainf": rng.normal(size=(18, 4)), "hessian_free": np.round(rng.normal(size=(18, 4)), 1)}
    estimators["datainf"][train_labels == 0, 0] -= 3.0  # query 0's class clearly most helpful (negative)
    expected = {}
    for name, scores in estimators.items():
        aucs, recalls = [], []
        for q, label in enumerate(query_labels):
            same = train_labels == label
            helpfulness = -scores[:, q]
            aucs.append(brute_auc(helpfulness, same))
            top = sorted(range(18), key=lambda i: (-helpfulness[i], i))[:same.sum()]
            recalls.append(same[top].mean())
        expected[name] = (np.mean(aucs), np.mean(recalls))
    assert expected["datainf"][0] > 0.5
    with tempfile.TemporaryDirectory() as root:
        run_dir = os.path.join(root, "class_detection_toy", "seed0")
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, "examples.jsonl"), "w") as f:
            for split, labels in (("train", train_labels), ("query", query_labels)):
                for i, label in enumerate(labels):
                    f.write(json.dumps({"id": i, "label": int(label), "split": split}) + "\n")
        with open(os.path.join(run_dir, "config.toml"), "w") as f:
            f.write("[evaluation]\nmode = \"pairwise\"\n")
        with open(os.path.join(run_dir, "metrics.csv"), "w") as f:
            f.write("estimator,metric,value\n")
            for name, (auc, recall) in expected.items():
                f.write(f"{name},class_auc,{auc!r}\n{name},class_recall,{recall!r}\n")
                np.save(os.path.join(run_dir, f"scores_{name}.npy"), estimators[name].astype(np.float32))
        # float32 arrays: the oracle is computed on what the script reads
        for name in estimators:
            estimators[name] = np.load(os.path.join(run_dir, f"scores_{name}.npy")).astype(np.float64)
        code, out = run(root)
        assert code == 0, out
        rows = {r["estimator"]: r for r in csv.DictReader(open(os.path.join(root, "class_detection.csv")))}
        for name, (auc, recall) in expected.items():
            assert abs(float(rows[name]["auc"]) - auc) < 1e-6, (name, rows[name]["auc"], auc)
            assert abs(float(rows[name]["recall"]) - recall) < 1e-6, (name, rows[name]["recall"], recall)
            assert rows[name]["units"] == "4" and rows[name]["classes"] == "3", rows[name]
        units = os.path.join(run_dir, "class_detection_units.csv")
        assert os.path.exists(units), "no class_detection_units.csv written"
        first = open(os.path.join(root, "class_detection.csv")).read()

        # A run of an older inflab (arrays, no examples.jsonl) is left out with a message naming
        # it, and the other runs are still reported.
        old_run = os.path.join(root, "class_detection_toy", "seed1")
        os.makedirs(old_run)
        for name in ("config.toml", "metrics.csv") + tuple(f"scores_{e}.npy" for e in estimators):
            shutil.copy(os.path.join(run_dir, name), old_run)
        code, out = run(root)
        assert code == 0 and old_run in out and "left out" in out, out
        assert open(os.path.join(root, "class_detection.csv")).read() == first, "the older run changed the table"
        shutil.rmtree(old_run)

        # What results/ keeps: no arrays, no examples; the same table from the units file.
        for name in estimators:
            os.remove(os.path.join(run_dir, f"scores_{name}.npy"))
        os.remove(os.path.join(run_dir, "examples.jsonl"))
        code, out = run(root)
        assert code == 0, out
        assert open(os.path.join(root, "class_detection.csv")).read() == first, "units file gives another table"

        # A units file that disagrees with metrics.csv is an error naming the run.
        lines = open(units).read().splitlines()
        fields = lines[1].split(",")
        fields[4] = "0.0" if float(fields[4]) > 0.5 else "1.0"
        with open(units, "w") as f:
            f.write("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
        code, out = run(root)
        assert code != 0 and run_dir in out and "metrics.csv says" in out, out

        # Neither arrays nor units: the error says how to get them back.
        os.remove(units)
        code, out = run(root)
        assert code != 0 and "--no-resume" in out, out
    shutil.rmtree(os.path.join(os.path.dirname(SCRIPT), "__pycache__"), ignore_errors=True)
    print("class_detection: hand-counted AUC and recall, units file round trip, an older run left out, errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
