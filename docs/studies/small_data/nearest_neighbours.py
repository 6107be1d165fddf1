"""Memorization check of the small-data study: per run of a digits sweep, the mean L2 distance (pixels at 32x32,
values in [-1, 1]) of its final samples (``W/samples.npy``) to the nearest of the N training images (its
``--subset``) and to the nearest of the other digits (held out). A G that copies its training images gives a ratio
near 0; real held-out digits give 1.37 (more held-out images than training ones make the held-out side nearer).

    python docs/studies/small_data/nearest_neighbours.py W [W2 ...]
"""
import json, sys
import numpy as np
from jaxgan.data.digits import load_digits_arrays, upsample_digit
from jaxgan.data.pipeline import SUBSET_SEED
images, _ = load_digits_arrays()
all32 = np.stack([upsample_digit(im, 32, 1) for im in images]).reshape(len(images), -1).astype(np.float64)
for workdir in sys.argv[1:]:
    res = json.load(open(f"{workdir}/results.json"))['runs']
    x = np.load(f"{workdir}/samples.npy")
    for r, s in zip(res, x):
        cfg = r['configuration']
        n = 180 if 'subset=180' in cfg else 449 if 'subset=449' in cfg else 0
        s = s.reshape(len(s), -1).astype(np.float64)
        d = np.sqrt(((s[:, None, :] - all32[None]) ** 2).sum(-1))  # [S, 1797]
        if n:
            idx = np.sort(np.random.RandomState(SUBSET_SEED).permutation(len(images))[:n])
            mask = np.zeros(len(images), bool); mask[idx] = True
            tr, ho = d[:, mask].min(1).mean(), d[:, ~mask].min(1).mean()
            print(f"{r['group']:50s} seed {r['seed']}: nearest training {tr:.2f}, nearest held-out {ho:.2f}, ratio {tr/ho:.3f}")
        else:
            print(f"{r['group']:50s} seed {r['seed']}: nearest digit {d.min(1).mean():.2f}")
