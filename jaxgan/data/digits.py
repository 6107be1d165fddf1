"""scikit-learn's embedded 8x8 handwritten digits (1797 images, 10 classes) as an image source.

The data ship inside scikit-learn (``sklearn.datasets.load_digits``), so this works offline and is the
quickest real-image data set for smoke tests and CPU runs. Pixel values 0..16 are mapped linearly to
[-1, 1] (``v / 8 - 1``) and upsampled to ``image_size`` with bilinear interpolation in float32 (PIL mode
"F", no 8-bit rounding); bilinear weights are convex, so values stay in [-1, 1]. ``channels=3`` repeats the
gray channel.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from jaxgan.data.images import DatasetError, ImageSource, check_image_options

NUM_EXAMPLES = 1797
NUM_CLASSES = 10


@functools.lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images float32 [1797, 8, 8] in 0..16, labels int32 [1797])``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images, dtype=np.float32)
    labels = np.asarray(d.target, dtype=np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def upsample_digit(image: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """float [8, 8] in 0..16 -> float32 [image_size, image_size, channels] in [-1, 1]."""
    x = np.asarray(image, dtype=np.float32) / np.float32(8.0) - np.float32(1.0)
    if x.shape[0] != image_size:
        im = Image.fromarray(x).resize((image_size, image_size), resample=Image.BILINEAR)
        x = np.clip(np.asarray(im, dtype=np.float32), -1.0, 1.0)
    x = x[:, :, None]
    return np.repeat(x, 3, axis=-1) if channels == 3 else x


def digits_source(*, split: str = "train", image_size: int, channels: int, crop: str = "center") -> ImageSource:
    """All 1797 scikit-learn digits with labels 0..9 (one split: "train"; the images are square, crop is moot)."""
    check_image_options(image_size, channels, crop)
    if split not in ("train", "all"):
        raise DatasetError(f"split={split!r} is not accepted for 'digits'; it has one split: 'train' (1797 images)")
    images, labels = load_digits_arrays()

    def transform(i: int) -> dict:
        i = int(i)
        return {"x": upsample_digit(images[i], image_size, channels), "label": labels[i]}

    return ImageSource(range(len(images)), transform, len(images), NUM_CLASSES, "scikit-learn digits")
