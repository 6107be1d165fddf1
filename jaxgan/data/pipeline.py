"""One entry point for image data: ``make_image_dataset(name, ...) -> ImageIterator``.

Pipeline (grain ``MapDataset``, all index arithmetic, no hidden state)::

    source --seed(seed).shuffle()--> global permutation, the same on every process, new each epoch
           --[p : n * (N // n) : n]--> process p's shard: every n-th record, N // n of them
           --repeat(num_epochs)--> epoch e of the shard is slice p of the epoch-e permutation
           --map(preprocess)--> {"x": float32 [S, S, C] in [-1, 1], "label": int32}
           --batch(batch_size, drop_remainder=True)--> batches may straddle an epoch boundary

Every process gets exactly ``N // process_count`` records per epoch (the last ``N % process_count`` of
each epoch's permutation are skipped, a different few each epoch), so all processes take the same number
of batches and their iterator states are identical: a checkpoint may store one state and restore it on
every process. Shards of one epoch are disjoint.

Resuming: ``ImageIterator.get_state()`` is a small JSON-serialisable dict (grain's ``next_index`` plus a
fingerprint of the settings that decide the order); ``set_state`` continues with exactly the same batches.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterator

import grain
import numpy as np

from jaxgan.data import digits as digits_lib
from jaxgan.data import images as images_lib
from jaxgan.data.images import DatasetError, ImageSource

STATE_VERSION = 1


class ImageIterator(Iterator[dict]):
    """Iterator over per-process batches ``{"x": float32 [B, S, S, C] in [-1, 1], "label": int32 [B]}``.

    ``label`` is -1 for unlabelled data (folders). Attributes describe the dataset:
    ``num_examples`` (records in the split, all processes), ``shard_size`` (records per process and
    epoch), ``labels_available``, ``num_classes`` (0 when unlabelled), ``image_shape`` ``(S, S, C)``,
    ``batch_size`` (per process) and ``steps_per_epoch`` (``shard_size // batch_size``).
    """

    def __init__(self, dataset: grain.MapDataset, source: ImageSource, *, fingerprint: dict, image_shape,
                 batch_size: int, shard_size: int, read_options: grain.ReadOptions):
        self._dataset = dataset.to_iter_dataset(read_options)
        self._it = iter(self._dataset)
        self._fingerprint = dict(fingerprint)
        self.num_examples: int = source.num_examples
        self.num_classes: int = source.num_classes
        self.labels_available: bool = source.labels_available
        self.description: str = source.description
        self.image_shape: tuple[int, int, int] = tuple(image_shape)
        self.batch_size: int = batch_size
        self.shard_size: int = shard_size
        self.steps_per_epoch: int = shard_size // batch_size

    def __iter__(self) -> "ImageIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    @property
    def epoch(self) -> float:
        """Epochs of this process's shard consumed so far (a float)."""
        return self._it.get_state()["next_index"] * self.batch_size / self.shard_size

    def get_state(self) -> dict[str, Any]:
        """A JSON-serialisable dict: grain's iterator state plus the settings that decide the order."""
        return {"version": STATE_VERSION, "grain": copy.deepcopy(self._it.get_state()),
                **copy.deepcopy(self._fingerprint)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a state from :meth:`get_state` (of this or an identically configured iterator).

        Raises :class:`DatasetError` when the state comes from a pipeline with another dataset, split,
        seed, per-process batch size or process count (the same state is valid on every process).
        """
        if not isinstance(state, dict) or "grain" not in state:
            raise DatasetError(f"data iterator state {state!r} is not accepted; "
                               "pass a dict from ImageIterator.get_state()")
        diff = [f"{k}={state.get(k)!r} (now {v!r})" for k, v in self._fingerprint.items() if state.get(k) != v]
        if diff:
            raise DatasetError(
                "data iterator state does not match this pipeline: " + ", ".join(diff)
                + "; resume with the same dataset, split, seed, batch_size, num_epochs and process_count"
            )
        self._it.set_state(copy.deepcopy(state["grain"]))


def open_image_source(name: str, *, split: str = "train", image_size: int, channels: int, crop: str = "center",
                      data_dir: str | None = None, skip_corrupt_images: bool = False) -> ImageSource:
    """Resolves ``name`` ("digits", "folder:PATH" or a TFDS name) to an :class:`ImageSource`."""
    images_lib.check_image_options(image_size, channels, crop)
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"dataset name {name!r} is not accepted; use {images_lib.ACCEPTED_NAMES}")
    if name == "digits":
        return digits_lib.digits_source(split=split, image_size=image_size, channels=channels, crop=crop)
    if name.startswith("folder:"):
        folder = name[len("folder:"):]
        if not folder:
            raise DatasetError("dataset name 'folder:' has no path; use folder:PATH with a directory of images")
        return images_lib.folder_source(folder, image_size=image_size, channels=channels, crop=crop,
                                        skip_corrupt=skip_corrupt_images)
    return images_lib.tfds_source(name, split=split, image_size=image_size, channels=channels, crop=crop,
                                  data_dir=data_dir)


SUBSET_SEED = 0  # the subset of --subset is drawn once, the same for every run seed (as the ADA paper's --subset)


def subset_source(source: ImageSource, size: int) -> ImageSource:
    """The first ``size`` records of a fixed shuffle (seed `SUBSET_SEED`) of ``source``, in their original order:
    the same images for every run seed, nested (a smaller subset is part of a larger one)."""
    n = source.num_examples
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= n:
        raise DatasetError(f"subset={size!r} is not accepted for {source.description}; use 1..{n} (0: all "
                           f"{n} images)")
    order = np.random.RandomState(SUBSET_SEED).permutation(n)
    index = np.sort(order[:int(size)])
    records = [source.records[int(i)] for i in index]
    return dataclasses.replace(source, records=records, num_examples=len(records),
                               description=f"{source.description} (subset of {len(records)})")


def _check_iterator_arguments(*, image_size, channels, crop, batch_size, seed, process_index, process_count,
                              num_epochs, num_threads, prefetch_batches) -> None:
    """Raises DatasetError naming the first of `make_image_dataset`'s arguments it does not accept."""
    images_lib.check_image_options(image_size, channels, crop)
    for arg, value, low in (("batch_size", batch_size, 1), ("process_count", process_count, 1),
                            ("num_threads", num_threads, 0), ("prefetch_batches", prefetch_batches, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DatasetError(f"{arg}={value!r} is not accepted; use an integer >= {low}")
    if isinstance(process_index, bool) or not isinstance(process_index, (int, np.integer)) \
            or not 0 <= process_index < process_count:
        raise DatasetError(f"process_index={process_index!r} is not accepted; use 0..{process_count - 1} "
                           f"(process_count={process_count})")
    if num_epochs is not None and (isinstance(num_epochs, bool) or not isinstance(num_epochs, (int, np.integer))
                                   or num_epochs < 1):
        raise DatasetError(f"num_epochs={num_epochs!r} is not accepted; use None (repeat forever) or an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DatasetError(f"seed={seed!r} is not accepted; use an integer")


def make_image_dataset(
    name: str,
    *,
    split: str = "train",
    image_size: int,
    channels: int,
    batch_size: int,
    seed: int,
    data_dir: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    crop: str = "center",
    num_threads: int = 4,
    prefetch_batches: int = 4,
    skip_corrupt_images: bool = False,
    subset: int = 0,
) -> ImageIterator:
    """Builds a deterministic, resumable, per-process-sharded iterator of image batches.

    Args:
      name: a TFDS image dataset name read with ``tfds.data_source`` (``mnist``, ``fashion_mnist``,
        ``cifar10``, ``celeb_a``, ``lsun/bedroom``, ``name:version``...; prepared locally in array_record
        format), ``"folder:PATH"`` (PNG/JPEG files under PATH, recursively, unlabelled) or ``"digits"``
        (scikit-learn's 1797 8x8 digits, labelled).
      split: TFDS split string (``"train"``, ``"test"``, ``"train[:90%]"``...); "train" for digits,
        ignored for folders.
      image_size: output height = width S (>= 8). See :mod:`jaxgan.data.images` for crop and resize.
      channels: 1 or 3 (RGB -> gray by luminance, gray -> RGB by repetition).
      batch_size: PER-PROCESS batch size B (global batch = B * process_count).
      seed: shuffle seed; the same seed gives the same batches, each epoch is reshuffled.
      data_dir: TFDS data directory (default: TFDS's own default).
      process_index, process_count: this process reads records ``[p::n]`` of the seeded global shuffle
        (``jax.process_index()``, ``jax.process_count()`` in a multi-host run).
      num_epochs: ``None`` repeats forever; otherwise iteration stops after that many shard epochs
        (the last incomplete batch is dropped).
      crop: "center" (centred square crop, then resize) or "none" (resize the whole image).
      num_threads, prefetch_batches: grain read threads and prefetch buffer (in batches); they do not
        change the order of batches.
      skip_corrupt_images: folders: leave out files that cannot be decoded (one warning line) instead of
        raising `DatasetError` naming them; every file is decoded once when the folder is opened.
      subset: train on this many images only (0: all): `subset_source`, the same images for every ``seed``.

    Returns:
      An :class:`ImageIterator` of ``{"x": float32 [B, S, S, C] in [-1, 1], "label": int32 [B]}``.

    Raises:
      DatasetError: one-line message naming the bad value and what is accepted.
    """
    _check_iterator_arguments(image_size=image_size, channels=channels, crop=crop, batch_size=batch_size,
                              seed=seed, process_index=process_index, process_count=process_count,
                              num_epochs=num_epochs, num_threads=num_threads, prefetch_batches=prefetch_batches)
    image_size, channels = int(image_size), int(channels)
    source = open_image_source(name, split=split, image_size=image_size, channels=channels, crop=crop,
                               data_dir=data_dir, skip_corrupt_images=skip_corrupt_images)
    if subset:
        source = subset_source(source, subset)
    n = source.num_examples
    shard_size = n // process_count
    if batch_size > shard_size:
        raise DatasetError(
            f"batch_size={batch_size} (per process) is larger than this process's shard of {shard_size} examples "
            f"({source.description} has {n} examples over {process_count} process(es)); use batch_size <= {shard_size}"
        )

    ds = grain.MapDataset.source(source.records).seed(int(seed) % 2**32).shuffle()
    ds = ds[process_index: shard_size * process_count: process_count]
    ds = ds.repeat(num_epochs).map(source.transform).batch(batch_size, drop_remainder=True)

    fingerprint = {"name": name, "split": split if not name.startswith("folder:") else None, "seed": int(seed),
                   "batch_size": int(batch_size), "process_count": int(process_count),
                   "num_examples": int(n), "num_epochs": num_epochs, **({"subset": int(subset)} if subset else {})}
    read_options = grain.ReadOptions(num_threads=int(num_threads), prefetch_buffer_size=int(prefetch_batches))
    return ImageIterator(ds, source, fingerprint=fingerprint, image_shape=(image_size, image_size, channels),
                         batch_size=int(batch_size), shard_size=shard_size, read_options=read_options)
