"""The layout of a results root (`inflab run --out ROOT`): ROOT/<experiment>/<run>/, a run finished
when its metrics.csv (written last) exists."""
import os
import re


def sweep_label(run):
    """What a run's name says beyond seed, rank and n (the axes summary.csv has columns for):
    runs of one experiment that differ in anything else are summarised apart, as
    "<experiment>@<rest>" (e.g. class_detection_llm_transformations@learning_rate0.002)."""
    rest = re.sub(r"(?:^|_)(?:seed|rank|n_train)-?[0-9.e+-]+(?=_|$)", "", run).strip("_")
    return "" if rest in ("", "run") else "@" + rest


def finished_runs(root):
    """(experiment, run, run directory) of every finished run (RUN/metrics.csv, written last)."""
    for experiment in sorted(os.listdir(root)):
        exp_dir = os.path.join(root, experiment)
        if not os.path.isdir(exp_dir) or experiment == "figures":
            continue
        for run in sorted(os.listdir(exp_dir)):
            if os.path.exists(os.path.join(exp_dir, run, "metrics.csv")):
                yield experiment, run, os.path.join(exp_dir, run)
