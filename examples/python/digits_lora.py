"""A PyTorch user's LoRA, scored by inflab: which training labels are wrong?

UCI handwritten digits (the copy `./inflab setup` keeps in the data cache): a linear classifier is
pretrained on 500 clean images and frozen; a rank-4 LoRA is fine-tuned on 600 others, 20% of
whose labels are flipped; per-example gradients of the LoRA factors come from torch.func (or
functorch on PyTorch 1.13), and inflab.score ranks the training examples by their influence on
the loss of 300 held-out images. Flipped examples should be the most harmful (highest scores):
the script prints the mislabel-detection AUC of each estimator.

    PYTHONPATH=build/python /usr/bin/python3 examples/python/digits_lora.py
"""

import gzip
import os
import sys

import numpy as np
import torch

try:  # PyTorch >= 2.0
    from torch.func import grad, vmap
except ImportError:  # PyTorch 1.13 (Debian bookworm)
    from functorch import grad, vmap

import inflab

data = os.path.join(os.environ.get("INFLAB_DATA", os.path.expanduser("~/.cache/inflab/data")),
                    "sklearn", "digits.csv.gz")
if not os.path.exists(data):
    sys.exit(f"{data}: not found; `./inflab setup` prepares it")
table = np.loadtxt(gzip.open(data), delimiter=",", dtype=np.float32)
torch.manual_seed(0)
order = torch.randperm(len(table), generator=torch.Generator().manual_seed(0))
x = torch.from_numpy(table[:, :64] / 16.0)[order]
y = torch.from_numpy(table[:, 64].astype(np.int64))[order]
x_base, y_base = x[:500], y[:500]
x_train, y_train = x[500:1100], y[500:1100].clone()
x_val, y_val = x[1100:1400], y[1100:1400]
flipped = torch.rand(600, generator=torch.Generator().manual_seed(1)) < 0.2
y_train[flipped] = (y_train[flipped] + torch.randint(1, 10, (int(flipped.sum()),))) % 10

base = torch.nn.Linear(64, 10)  # pretrained on clean data, then frozen
optimizer = torch.optim.Adam(base.parameters(), lr=0.05)
for _ in range(100):
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(base(x_base), y_base).backward()
    optimizer.step()
base.requires_grad_(False)

lora = {"A": (torch.randn(4, 64) * 0.1).requires_grad_(), "B": torch.zeros(10, 4, requires_grad=True)}
optimizer = torch.optim.Adam(lora.values(), lr=0.01)


def loss(lora, x, y):  # one example's loss as a function of the LoRA factors
    logits = base(x) + x @ lora["A"].T @ lora["B"].T
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 10), y.reshape(-1))


for _ in range(300):  # fine-tune the LoRA on the noisy labels
    optimizer.zero_grad()
    loss(lora, x_train, y_train).backward()
    optimizer.step()

# The part this example is about: per-example gradients, then inflab.
weights = {k: v.detach() for k, v in lora.items()}
per_example = vmap(grad(loss), in_dims=(None, 0, 0))
train = {name: g.flatten(1) for name, g in per_example(weights, x_train, y_train).items()}
query = {name: g.flatten(1) for name, g in per_example(weights, x_val, y_val).items()}
for estimator in ["datainf", "exact", "lissa", "hessian_free"]:
    scores = inflab.score(train, query, estimator)  # n scores; higher = more harmful
    # AUC: the chance that a flipped example outscores a clean one (ties count half).
    bad, good = scores[flipped.numpy()], scores[~flipped.numpy()]
    auc = ((bad[:, None] > good[None, :]).mean() + 0.5 * (bad[:, None] == good[None, :]).mean())
    print(f"{estimator:<13} mislabel AUC {auc:.3f}")
