#!/usr/bin/env python3
"""Judge generated clothing: a CNN trained on Fashion-MNIST's real images scores `inflab sample` output.

    judge.py fashion SAMPLES.npy --count N [--conditions NAME...] [--figure GRID.png] [--json]

SAMPLES.npy is `inflab sample --npy` of a denoiser trained on 28x28 Fashion-MNIST (styled_fashion):
images x 784 values in [-1, 1], N per condition, condition after condition in the order given
(default: the ten classes in order). Printed (and with --json, one JSON object):
  - the judge's accuracy on the 10,000 real test-file images, overall and per class: the ceiling
    for generated ones (some classes, shirts above all, are confused even when real);
  - the share of the samples judged as the class they were conditioned on, overall and per class;
  - the Frechet distance between the judge's penultimate features (128 values) of the samples and
    those of the real test-file images of the same classes, and beside it the distance of as many
    real training-file images drawn with the same class mix (the floor at this sample size: the
    distance of two finite real samples is not 0).

The judge (two 3x3 convolutions with max pooling, then 128 hidden units) is trained on the 60,000
training-file images with Adam, 5 epochs, seed 0, one thread, and cached under
$INFLAB_CACHE/judge/ (default ~/.cache/inflab) keyed by the SHA-256 of the four IDX files and
JUDGE_VERSION; its test accuracy is measured on every use. It needs python3-torch (Debian).
"""
import argparse
import gzip
import hashlib
import json
import os
import sys

import numpy as np

JUDGE_VERSION = 1
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
         "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}


def read_idx(path):
    """An IDX file (gzip) as a uint8 array: images (n, 28, 28) or labels (n,)."""
    data = gzip.open(path, "rb").read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if array.size != int(np.prod(shape)):
        sys.exit(f"{path}: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def fashion(data_dir):
    """Real images in [-1, 1] (styled_fashion's pixels: 2 x value / 255 - 1) and labels, and the
    files' SHA-256 (the judge's cache key)."""
    missing = [f for f in FILES.values() if not os.path.exists(os.path.join(data_dir, f))]
    if missing:
        sys.exit(f"{data_dir}: missing {', '.join(missing)}; install Debian's dataset-fashion-mnist "
                 "(./inflab setup does) or pass --data")
    out, digest = {}, hashlib.sha256()
    for key, name in FILES.items():
        path = os.path.join(data_dir, name)
        digest.update(open(path, "rb").read())
        array = read_idx(path)
        out[key] = (2 * array.reshape(len(array), -1).astype(np.float32) / 255 - 1) if "images" in key else array.astype(np.int64)
    return out, digest.hexdigest()


def default_cache():
    return os.environ.get("INFLAB_CACHE", os.path.expanduser("~/.cache/inflab"))


def network():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),  # features: this layer's output
        nn.Linear(128, 10))


def judge_network(data, data_hash, cache):
    """The trained judge: from the cache, or trained now (about a minute an epoch on one thread) and
    written there atomically."""
    import torch

    torch.set_num_threads(1)
    key = hashlib.sha256(f"{data_hash} judge {JUDGE_VERSION}".encode()).hexdigest()[:16]
    path = os.path.join(cache, "judge", f"fashion_cnn_{key}.pt")
    torch.manual_seed(0)
    net = network()
    if os.path.exists(path):
        net.load_state_dict(torch.load(path))
        return net.eval(), path, False
    images = torch.from_numpy(data["train_images"]).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(data["train_labels"])
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    epochs, batch = 5, 128
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch):
            rows = order[start:start + batch]
            loss = torch.nn.functional.cross_entropy(net(images[rows]), labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss) * len(rows)
        print(f"[judge] training the judge: epoch {epoch + 1}/{epochs}, loss {total / len(images):.4f}", file=sys.stderr)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(net.state_dict(), path + ".partial")
    os.replace(path + ".partial", path)
    return net.eval(), path, True


def predict(net, images):
    """Classes and penultimate features of images (n x 784 in [-1, 1])."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.clip(images, -1, 1).astype(np.float32)).reshape(-1, 1, 28, 28)
        features = net[:-1](x)
        return net[-1](features).argmax(1).numpy(), features.double().numpy()


def frechet(a, b):
    """Frechet distance between Gaussians fitted to two feature sets (rows are examples)."""
    import scipy.linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def judge(samples, conditions, count, data, net, test=None):
    """The judged samples (count per condition, condition-major) against the real images; `test`: the
    judge's (classes, features) of the real test images, when already computed."""
    test_pred, test_features = test if test is not None else predict(net, data["test_images"])
    test_labels = data["test_labels"]
    judged, features = predict(net, samples)
    wanted = np.repeat(conditions, count)
    per_class = {CLASSES[c]: float((judged[wanted == c] == c).mean()) for c in conditions}
    real_per_class = {CLASSES[c]: float((test_pred[test_labels == c] == c).mean()) for c in conditions}
    # The real test images of the sampled classes, and as many real training images as samples with
    # the same class mix (a fixed draw), through the same judge.
    reference = test_features[np.isin(test_labels, conditions)]
    rng = np.random.default_rng(0)
    floor_rows = np.concatenate([rng.choice(np.flatnonzero(data["train_labels"] == c), count, replace=False)
                                 for c in conditions])
    _, floor_features = predict(net, data["train_images"][floor_rows])
    return {
        "judge_accuracy_real": float((test_pred == test_labels).mean()),
        "judge_accuracy_real_per_class": real_per_class,
        "generated": int(len(samples)),
        "generated_in_their_class": float((judged == wanted).mean()),
        "per_class": per_class,
        "frechet_distance": frechet(features, reference),
        "frechet_distance_real_floor": frechet(floor_features, reference),
    }, judged


def draw(samples, conditions, count, judged, result, title, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(12, count)
    fig, axes = plt.subplots(len(conditions), shown, figsize=(0.62 * shown + 1.2, 0.66 * len(conditions) + 0.5), squeeze=False)
    for i, c in enumerate(conditions):
        for j in range(shown):
            ax = axes[i][j]
            k = i * count + j
            ax.imshow(samples[k].reshape(28, 28), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if judged[k] != c:  # a red frame: the judge saw another class
                for spine in ax.spines.values():
                    spine.set_edgecolor("firebrick"), spine.set_linewidth(2)
        axes[i][0].set_ylabel(CLASSES[c], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{title}\njudged as their class {result['generated_in_their_class']:.2f} (red frame: another "
                 f"class); Frechet {result['frechet_distance']:.1f} (real floor {result['frechet_distance_real_floor']:.1f})",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out + ".partial.png", dpi=110)
    os.replace(out + ".partial.png", out)
    plt.close(fig)


def condition_index(name):
    if name in CLASSES:
        return CLASSES.index(name)
    if name.isdigit() and int(name) < 10:
        return int(name)
    sys.exit(f"--conditions: \"{name}\" is not a Fashion-MNIST class; classes: {', '.join(CLASSES)} (or 0-9)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fashion", help="judge `inflab sample --npy` images conditioned on Fashion-MNIST classes")
    f.add_argument("samples")
    f.add_argument("--count", type=int, required=True, help="images per condition (inflab sample --count)")
    f.add_argument("--conditions", nargs="+", default=CLASSES, help="in the order sampled (names or 0-9)")
    f.add_argument("--data", default=DEFAULT_DATA, help="folder of the gzip IDX files")
    f.add_argument("--cache", default=default_cache(), help="where the trained judge is kept")
    f.add_argument("--figure", help="also draw the first 12 images of each condition into this PNG")
    f.add_argument("--title", help="the figure's title (default: the samples' file name)")
    f.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    conditions = np.array([condition_index(c) for c in args.conditions])
    samples = np.load(args.samples).astype(np.float64)
    if samples.ndim != 2 or samples.shape[1] != 784:
        sys.exit(f"{args.samples}: expected images x 784 values (28x28), found shape {samples.shape}")
    if len(samples) != len(conditions) * args.count:
        sys.exit(f"{args.samples}: {len(samples)} images, expected {len(conditions)} conditions x --count {args.count}")
    if args.count < 2:
        sys.exit("--count: at least 2 images per condition (the Frechet distance needs a covariance)")
    data, data_hash = fashion(args.data)
    net, path, trained = judge_network(data, data_hash, args.cache)
    result, judged = judge(samples, conditions, args.count, data, net)
    result["judge"] = path
    if args.json:
        print(json.dumps(result))
    else:
        print(f"judge: CNN {'trained now' if trained else 'from the cache'} ({path}); accuracy on the 10,000 real "
              f"test images {result['judge_accuracy_real']:.4f}")
        print("  per class on real images: " + " ".join(f"{k}={v:.2f}" for k, v in result["judge_accuracy_real_per_class"].items()))
        print(f"generated: {result['generated']} images; judged as the class they were conditioned on: "
              f"{result['generated_in_their_class']:.4f}")
        print("  per class: " + " ".join(f"{k}={v:.2f}" for k, v in result["per_class"].items()))
        print(f"Frechet distance on the judge's features to the real test images: {result['frechet_distance']:.2f} "
              f"(real training images, as many, same classes: {result['frechet_distance_real_floor']:.2f})")
    if args.figure:
        draw(samples, conditions, args.count, judged, result, args.title or os.path.basename(args.samples), args.figure)


if __name__ == "__main__":
    main()
