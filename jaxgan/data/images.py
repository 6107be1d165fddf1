"""Image record sources for GAN training: TFDS datasets and folders of image files.

A *source* here is a random-access sequence of raw records (``len`` and ``__getitem__``, which is all
``grain.MapDataset.source`` needs) plus a per-record ``transform`` that turns one raw record into
``{"x": float32 [image_size, image_size, channels] in [-1, 1], "label": int32 scalar}``.
``jaxgan.data.pipeline.make_image_dataset`` shuffles, shards, repeats and batches them with grain.

Preprocessing (the same for every source; see :func:`prepare_image`):

1. channel conversion with PIL: RGB -> grayscale by ITU-R 601-2 luma
   (``L = 0.299 R + 0.587 G + 0.114 B``, PIL's ``convert("L")``), grayscale -> RGB by repetition,
   alpha dropped, palette images expanded, 16-bit images reduced to their top 8 bits;
2. ``crop="center"``: the largest centred square is cut out (for CelebA's 218x178 faces that is the
   centred 178x178 square); ``crop="none"``: the whole image is used and its aspect ratio is not kept;
3. resize to ``image_size x image_size`` with PIL: area averaging (``Image.BOX``) when shrinking in
   both directions, bilinear (``Image.BILINEAR``, antialiased) otherwise; an image that already has
   the target size is not resampled, so e.g. CIFAR-10 at 32 is bit-exact;
4. ``x = uint8 / 127.5 - 1`` so 0 -> -1.0 and 255 -> 1.0.

Errors are :class:`DatasetError` (a ``ValueError``) with a one-line message naming the bad value and
what is accepted, so a launcher can print it without a traceback.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from jaxgan import logging as log_lib

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
KNOWN_IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "celeb_a", "lsun/bedroom", "svhn_cropped")
CROP_MODES = ("center", "none")
ACCEPTED_NAMES = (
    "a TFDS image dataset name (e.g. " + ", ".join(KNOWN_IMAGE_DATASETS) + "), "
    "'folder:PATH' (a directory of .png/.jpg/.jpeg files) or 'digits' (scikit-learn 8x8 digits)"
)


class DatasetError(ValueError):
    """A data set cannot be opened or read; the message is one line naming the problem and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """A random-access record source and the transform that preprocesses one of its records.

    Attributes:
      records: sequence of raw records (``len``/``__getitem__``), e.g. a TFDS ``ArrayRecordDataSource``.
      transform: ``record -> {"x": float32 [S, S, C] in [-1, 1], "label": int32 scalar}``.
      num_examples: ``len(records)``.
      num_classes: number of classes, 0 when unlabelled.
      description: short human-readable name used in error messages.
    """

    records: Sequence[Any]
    transform: Callable[[Any], dict]
    num_examples: int
    num_classes: int
    description: str

    @property
    def labels_available(self) -> bool:
        return self.num_classes > 0


def check_image_options(image_size: int, channels: int, crop: str) -> None:
    """Raise :class:`DatasetError` unless ``image_size >= 8``, ``channels in {1, 3}`` and crop is known."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise DatasetError(f"image_size={image_size!r} is not accepted; use an integer >= 8 (e.g. 32 or 64)")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise DatasetError(f"channels={channels!r} is not accepted; use 1 (grayscale) or 3 (RGB)")
    if crop not in CROP_MODES:
        raise DatasetError(f"crop={crop!r} is not accepted; use one of {', '.join(map(repr, CROP_MODES))}")


# ----------------------------------------------------------------------------------------------------------
# Preprocessing


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Converts a PIL image of any common mode to 'L' (channels=1) or 'RGB' (channels=3)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":  # 16-bit grayscale PNGs: keep the top 8 bits
        arr = np.asarray(im).astype(np.int64)
        im = Image.fromarray(np.clip(arr >> 8, 0, 255).astype(np.uint8))
    elif mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8))
    elif mode not in ("L", "RGB"):
        # 1, P, PA, LA, RGBA, RGBX, CMYK, YCbCr, LAB, HSV: PIL's own conversions (alpha dropped).
        im = im.convert("L" if mode in ("1", "LA", "La") else "RGB")
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def _crop_and_resize(im: Image.Image, image_size: int, crop: str, *, enlarge=Image.BILINEAR) -> Image.Image:
    w, h = im.size
    if crop == "center" and w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
        w, h = s, s
    if (w, h) != (image_size, image_size):
        shrinking = w >= image_size and h >= image_size
        im = im.resize((image_size, image_size), resample=Image.BOX if shrinking else enlarge)
    return im


def prepare_image(image: Image.Image | np.ndarray, image_size: int, channels: int, crop: str = "center") -> np.ndarray:
    """Turns one image into a model input.

    Args:
      image: a PIL image of any common mode, or a uint8/uint16 array [H, W], [H, W, 1], [H, W, 3] or
        [H, W, 4] (values 0..255, or 0..65535 for uint16).
      image_size: output height and width S.
      channels: 1 (grayscale) or 3 (RGB).
      crop: "center" (centred square crop, then resize) or "none" (resize the whole image).

    Returns:
      float32 [S, S, channels] in [-1, 1]; a uint8 value v maps to ``v / 127.5 - 1``.
    """
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    im = _crop_and_resize(_to_mode(image, channels), image_size, crop)
    x = np.asarray(im, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    return (x - np.float32(127.5)) / np.float32(127.5)  # one rounding: the nearest float32 to v / 127.5 - 1


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise DatasetError(f"image array of dtype {arr.dtype} is not accepted; expected uint8 (or uint16/bool)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr))  # mode "L"
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr))  # mode "RGB" or "RGBA"
    raise DatasetError(f"image array of shape {arr.shape} is not accepted; expected [H, W] or [H, W, 1|3|4]")


# ----------------------------------------------------------------------------------------------------------
# TFDS


def _tfds_prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir if data_dir is not None else "DIR"
    return (
        f"prepare it on a machine with internet with `tfds build {name} --data_dir={where} "
        f"--file_format=array_record` (pip install tensorflow-datasets tensorflow), copy {where} here "
        f"and pass --data_dir={where}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tfds_source(
    name: str, *, split: str, image_size: int, channels: int, crop: str, data_dir: str | None = None
) -> ImageSource:
    """Opens a locally prepared TFDS image dataset with ``tfds.data_source`` (no TensorFlow, no download).

    The dataset must have been prepared in ``array_record`` format. The image feature is ``"image"``
    (or the only ``Image`` feature); the label is ``"label"`` when it is a ``ClassLabel``.
    Raises :class:`DatasetError` for unknown names, datasets not prepared under ``data_dir``, unknown
    splits and datasets without an image feature.
    """
    import tensorflow_datasets as tfds  # imported lazily: it takes a second or two

    check_image_options(image_size, channels, crop)
    base = name.split(":")[0].split("/")[0]
    where = data_dir if data_dir is not None else "the default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    try:
        records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        import difflib

        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DatasetError(f"unknown dataset {name!r}{hint}; accepted: {ACCEPTED_NAMES}") from None
    except (NotImplementedError, FileNotFoundError, KeyError) as e:
        # TFRECORD (the default format when nothing is prepared) has no random access; a data_dir without the
        # dataset's dataset_info.json gives an empty split dict ("... has not been generated yet").
        if isinstance(e, KeyError) and "not been generated" not in str(e):
            raise DatasetError(f"cannot open TFDS dataset {name!r} split {split!r} in {where}: {_first_line(e)}") from e
        raise DatasetError(
            f"TFDS dataset {name!r} is not prepared in array_record format in {where}; "
            + _tfds_prepare_hint(name, data_dir)
        ) from e
    except Exception as e:  # bad config/version/split: TFDS says which values exist
        raise DatasetError(f"cannot open TFDS dataset {name!r} split {split!r} in {where}: {_first_line(e)}") from e

    features = records.dataset_info.features
    image_key = _image_key(features)
    if image_key is None:
        raise DatasetError(
            f"TFDS dataset {name!r} has no image feature (features: {', '.join(features.keys())}); "
            f"accepted: {ACCEPTED_NAMES}"
        )
    label_feature = features["label"] if "label" in features.keys() else None
    num_classes = int(label_feature.num_classes or 0) if isinstance(label_feature, tfds.features.ClassLabel) else 0
    use_label = num_classes > 0

    def transform(example: dict) -> dict:
        x = prepare_image(np.asarray(example[image_key]), image_size, channels, crop)
        label = np.int32(example["label"]) if use_label else np.int32(-1)
        return {"x": x, "label": label}

    return ImageSource(records, transform, len(records), num_classes, f"TFDS dataset {name!r} split {split!r}")


def _image_key(features) -> str | None:
    import tensorflow_datasets as tfds

    if "image" in features.keys():
        return "image"
    keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    return keys[0] if len(keys) == 1 else None


# ----------------------------------------------------------------------------------------------------------
# Folder of image files


def list_image_files(folder: str) -> list[str]:
    """All .png/.jpg/.jpeg files (any case) under ``folder``, recursively, sorted for determinism."""
    if not os.path.isdir(folder):
        raise DatasetError(
            f"image folder {folder!r} does not exist or is not a directory; "
            f"use folder:PATH with a directory of {'/'.join(IMAGE_EXTENSIONS)} files"
        )
    paths = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        paths.extend(os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise DatasetError(
            f"image folder {folder!r} contains no image files; accepted extensions: {', '.join(IMAGE_EXTENSIONS)} "
            "(searched recursively)"
        )
    return sorted(paths)


def load_image_file(path: str) -> Image.Image:
    """Opens and fully decodes one image file (EXIF orientation applied); corrupt files raise DatasetError."""
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)  # a new image (a copy when there is no EXIF rotation)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image file {path!r} (corrupt or truncated?): {_first_line(e)}") from None


DEFAULT_CHECK_CACHE = "~/.cache/jaxgan/image_checks"  # files already decoded once, by (size, mtime)
_MAX_NAMED = 5  # unreadable files named in one error or warning line


def _check_cache_file(folder: str, cache_dir: str) -> str:
    key = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:20]
    return os.path.join(os.path.expanduser(cache_dir), f"{key}.json")


def _file_key(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def find_unreadable_images(folder: str, paths: Sequence[str], *, cache_dir: str | None = None,
                           num_threads: int = 8) -> list[tuple[str, str]]:
    """``[(path, reason)]`` of the files in ``paths`` that `load_image_file` cannot decode.

    Every file is decoded once (PIL releases the GIL, so ``num_threads`` decode in parallel). Files that
    decoded before with the same size and modification time are skipped: the good ones are remembered in
    ``cache_dir`` (one JSON per folder; None: `DEFAULT_CHECK_CACHE`; '' disables it). Its cost per file is
    in docs/performance.md.
    """
    cache_dir = DEFAULT_CHECK_CACHE if cache_dir is None else cache_dir
    cache_path = _check_cache_file(folder, cache_dir) if cache_dir else None
    known = {}
    if cache_path:
        try:
            with open(cache_path) as f:
                known = json.load(f)
        except (OSError, ValueError):
            known = {}
    keys = {p: _file_key(p) for p in paths}
    todo = [p for p in paths if known.get(p) != keys[p]]

    def check(path: str) -> str | None:
        try:
            load_image_file(path)
        except DatasetError as e:
            return str(e).partition("(corrupt or truncated?): ")[2]
        return None

    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        reasons = dict(zip(todo, pool.map(check, todo)))
    bad = [(p, r) for p, r in reasons.items() if r is not None]
    if cache_path and todo:
        good = {p: keys[p] for p in paths if reasons.get(p) is None}
        with contextlib.suppress(OSError):  # best effort: a read-only home only costs the next run the check
            log_lib.atomic_write_text(cache_path, json.dumps(good))
    return sorted(bad)


def _name_files(bad: Sequence[tuple[str, str]], with_reasons: bool) -> str:
    named = [f"{p!r} ({r})" if with_reasons else repr(p) for p, r in bad[:_MAX_NAMED]]
    more = f" and {len(bad) - _MAX_NAMED} more" if len(bad) > _MAX_NAMED else ""
    return ", ".join(named) + more


def folder_source(folder: str, *, image_size: int, channels: int, crop: str, skip_corrupt: bool = False,
                  check_cache: str | None = None) -> ImageSource:
    """Unlabelled images from a directory tree (label -1, ``num_classes`` 0).

    Every file is decoded once when the folder is opened (`find_unreadable_images`), so a corrupt file is
    found here, not at some step of a long run: `DatasetError` naming it, or with ``skip_corrupt``
    (``--skip_corrupt_images``) the unreadable files are left out with one warning line listing them.
    """
    check_image_options(image_size, channels, crop)
    paths = list_image_files(folder)
    bad = find_unreadable_images(folder, paths, cache_dir=check_cache)
    if bad and not skip_corrupt:
        raise DatasetError(
            f"image folder {folder!r}: {len(bad)} of {len(paths)} image files cannot be decoded (corrupt or "
            f"truncated?): {_name_files(bad, True)}; fix or delete them, or pass --skip_corrupt_images to train "
            f"on the others")
    if bad:
        if len(bad) == len(paths):
            raise DatasetError(f"image folder {folder!r}: none of its {len(paths)} image files can be decoded, "
                               f"e.g. {_name_files(bad, True)}")
        logging.warning("--skip_corrupt_images: leaving out %d of %d image files of %r that cannot be decoded: %s",
                        len(bad), len(paths), folder, _name_files(bad, False))
        dropped = {p for p, _ in bad}
        paths = [p for p in paths if p not in dropped]

    def transform(path: str) -> dict:
        return {"x": prepare_image(load_image_file(path), image_size, channels, crop), "label": np.int32(-1)}

    return ImageSource(paths, transform, len(paths), 0, f"image folder {folder!r}")
