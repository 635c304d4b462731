#!/usr/bin/env python3
"""The most influential training examples of a few test examples, as text (Markdown).

    /usr/bin/python3 framework/report/influential.py RUN_DIR [--estimator datainf] [--queries 3] [--top 3]

RUN_DIR is a finished pairwise run of a text dataset: it holds examples.jsonl (every example's
text, response and class, in the row order of the scores) and scores_<estimator>.npy (n_train x
n_query). The most influential training examples of a query are its most helpful ones: the most
negative scores (up-weighting them lowers the query's loss). Queries are taken from different
classes, the first test example of each of the first --queries classes.
"""
import argparse
import json
import os

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--estimator", default="datainf")
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--top", type=int, default=3)
    args = parser.parse_args()
    examples = [json.loads(line) for line in open(os.path.join(args.run, "examples.jsonl"))]
    train = [e for e in examples if e["split"] == "train"]
    query = [e for e in examples if e["split"] == "query"]
    scores = np.load(os.path.join(args.run, f"scores_{args.estimator}.npy"))
    if scores.shape != (len(train), len(query)):
        raise SystemExit(f"scores_{args.estimator}.npy is {scores.shape}, expected {(len(train), len(query))} (pairwise)")

    def show(e):
        text = e["text"] + (f"  ->  {e['response']}" if "response" in e else "")
        return text.replace("|", "\\|").replace("\n", " ")

    chosen, seen = [], set()
    for q, e in enumerate(query):
        if e["label"] not in seen:
            seen.add(e["label"])
            chosen.append(q)
        if len(chosen) == args.queries:
            break
    print(f"Most influential training examples by {args.estimator} ({os.path.normpath(args.run)})\n")
    for q in chosen:
        print(f"**Test example (class {query[q]['label']}):** {show(query[q])}\n")
        print("| rank | class | training example | score |")
        print("| ---: | ---: | --- | ---: |")
        for rank, i in enumerate(np.argsort(scores[:, q], kind="stable")[: args.top], 1):
            print(f"| {rank} | {train[i]['label']} | {show(train[i])} | {scores[i, q]:.3g} |")
        print()


if __name__ == "__main__":
    main()
