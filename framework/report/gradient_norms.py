#!/usr/bin/env python3
"""Mean norm of the training examples' gradients (all blocks together) per class.

    ./inflab gradients FILE.toml --out DIR
    /usr/bin/python3 framework/report/gradient_norms.py DIR

Influence scores are inner products with these gradients, so classes with large gradients
(often the ones the model fits worst) dominate the rankings of every query.
"""
import json
import os
import sys

import numpy as np


def main(directory):
    meta = json.load(open(os.path.join(directory, "blocks.json")))
    squared = sum(np.square(np.load(os.path.join(directory, "train", b["name"] + ".npy"), mmap_mode="r")).sum(1)
                  for b in meta["blocks"])
    labels = np.array(meta["train"]["labels"])
    norms = np.sqrt(squared)
    print("class,examples,mean_gradient_norm")
    for c in sorted(set(labels.tolist())):
        print(f"{c},{int((labels == c).sum())},{norms[labels == c].mean():.4g}")


if __name__ == "__main__":
    main(sys.argv[1])
