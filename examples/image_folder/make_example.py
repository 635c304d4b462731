"""Writes this example's images: real UCI handwritten digits (the copy `./inflab setup` keeps in
the data cache), 8 x 8 grey, one sub-folder per class. Training images are PNG (lossless) except
every fifth, a JPEG (quality 95); validation images are JPEG. File names carry the row of
digits.csv.gz they come from (the dataset test compares every pixel with it).

    /usr/bin/python3 examples/image_folder/make_example.py
"""
import gzip
import os
import shutil

import numpy as np
from PIL import Image

here = os.path.dirname(os.path.abspath(__file__))
data = os.path.join(os.environ.get("INFLAB_DATA", os.path.expanduser("~/.cache/inflab/data")),
                    "sklearn", "digits.csv.gz")
table = np.loadtxt(gzip.open(data), delimiter=",", dtype=np.int64)
classes = ["0", "1", "7"]  # three classes, sized for a test that runs in seconds
rng = np.random.default_rng(0)
for split, per_class in (("train", 60), ("validation", 20)):
    shutil.rmtree(os.path.join(here, split), ignore_errors=True)
rows_by_class = {c: rng.permutation(np.flatnonzero(table[:, 64] == int(c))) for c in classes}
for c in classes:
    rows = rows_by_class[c]
    for split, chosen in (("train", rows[:60]), ("validation", rows[60:80])):
        folder = os.path.join(here, split, c)
        os.makedirs(folder, exist_ok=True)
        for k, row in enumerate(chosen):
            pixels = np.rint(table[row, :64].reshape(8, 8) * 255 / 16).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L")
            if split == "train" and k % 5 != 4:
                image.save(os.path.join(folder, f"row{row:04d}.png"))
            else:
                image.save(os.path.join(folder, f"row{row:04d}.jpg"), quality=95)
print("wrote", here)
