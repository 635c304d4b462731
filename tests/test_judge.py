#!/usr/bin/env python3
"""Tests of framework/report/judge.py (the Fashion-MNIST judge of generated clothing) against
closed forms and the real files: the Frechet distance of a shifted or scaled copy, the IDX reader
against the files' documented layout, and bad input that stops before any training."""
import gzip
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
JUDGE = os.path.join(HERE, "..", "framework", "report", "judge.py")
sys.path.insert(0, os.path.dirname(JUDGE))
import judge  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"


def test_frechet_closed_forms():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    shift = rng.normal(size=6)
    # The same covariance: the distance is the squared distance of the means.
    assert abs(judge.frechet(a, a + shift) - float(shift @ shift)) < 1e-8
    # A scaled copy (about its mean): cov c^2 A, (A c^2 A)^(1/2) = c A, so the trace term is (1 - c)^2 tr A.
    c = 2.5
    scaled = a.mean(0) + c * (a - a.mean(0))
    expected = (1 - c) ** 2 * np.trace(np.cov(a, rowvar=False))
    assert abs(judge.frechet(a, scaled) - expected) < 1e-6 * expected
    assert abs(judge.frechet(a, a)) < 1e-6


def test_idx_reader_follows_the_format():
    # IDX: magic 0x00000803 (uint8, 3 dimensions), sizes big-endian, then the pixels row by row.
    raw = gzip.open(os.path.join(DATA, "t10k-images-idx3-ubyte.gz"), "rb").read()
    assert raw[:4] == bytes([0, 0, 8, 3])
    images = judge.read_idx(os.path.join(DATA, "t10k-images-idx3-ubyte.gz"))
    labels = judge.read_idx(os.path.join(DATA, "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert images[9999, 27, 27] == raw[-1] and images[0, 0, 5] == raw[16 + 5]
    assert labels[0] == 9  # the test file's first image is an ankle boot (Fashion-MNIST's README)
    assert np.bincount(labels).tolist() == [1000] * 10
    with tempfile.TemporaryDirectory() as tmp:
        short = os.path.join(tmp, "short.gz")
        with gzip.open(short, "wb") as f:
            f.write(raw[:16 + 100])
        result = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(JUDGE)!r}); "
                                 f"import judge; judge.read_idx({short!r})"], capture_output=True, text=True)
        assert result.returncode != 0 and "header says (10000, 28, 28), found 100 values" in result.stderr


def run(*args):
    return subprocess.run([sys.executable, JUDGE, "fashion", *args], capture_output=True, text=True)


def test_bad_input_is_named_before_any_training():
    with tempfile.TemporaryDirectory() as tmp:
        samples = os.path.join(tmp, "s.npy")
        np.save(samples, np.zeros((6, 784), np.float32))
        r = run(samples, "--count", "4")
        assert r.returncode != 0 and "6 images, expected 10 conditions x --count 4" in r.stderr
        r = run(samples, "--count", "2", "--conditions", "Trouser", "Hat", "Bag")
        assert r.returncode != 0 and '"Hat" is not a Fashion-MNIST class' in r.stderr
        np.save(samples, np.zeros((6, 64), np.float32))
        r = run(samples, "--count", "2", "--conditions", "0", "1", "2")
        assert r.returncode != 0 and "expected images x 784 values (28x28), found shape (6, 64)" in r.stderr
        np.save(samples, np.zeros((2, 784), np.float32))
        r = run(samples, "--count", "2", "--conditions", "0", "--data", tmp)
        assert r.returncode != 0 and "missing train-images-idx3-ubyte.gz" in r.stderr


if __name__ == "__main__":
    for name, test in list(globals().items()):
        if name.startswith("test_"):
            test()
            print(f"ok {name}")
