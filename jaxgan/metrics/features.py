"""Inception features for FID / Inception Score, matching pytorch-fid.

The protocol is pytorch-fid's (``InceptionV3([3])`` with ``use_fid_inception=True``):

1. images in [-1, 1] (pytorch-fid maps [0, 1] to [-1, 1] with ``2x - 1``; since bilinear resizing is
   affine-invariant, resizing before or after that map gives the same numbers),
2. resized to 299x299 with ``F.interpolate(mode='bilinear', align_corners=False)`` (half-pixel centres,
   no antialiasing; :func:`resize_bilinear_299`),
3. the FID Inception-v3 (:class:`jaxgan.metrics.inception.FIDInceptionV3`) with the weights of
   ``pt_inception-2015-12-05-6726825d.pth`` (a port of TensorFlow's 2015-12-05 Inception graph),
4. pool3 features ``[N, 2048]`` for FID/KID, and the 1008-way logits ``[N, 1008]`` for the Inception Score.

Weights are a local ``.npz`` converted once from the PyTorch file (torch is needed for that step only)::

    curl -LO https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m jaxgan.metrics.features convert pt_inception-2015-12-05-6726825d.pth inception_fid.npz

The converter writes ``inception_fid.npz`` and ``inception_fid.npz.sha256`` (the npz's SHA-256, in
``sha256sum`` format); :func:`load_inception_params` verifies it. The npz is written deterministically
(sorted entries, fixed timestamps, no compression), so the same ``.pth`` always gives the same digest.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgan.metrics.inception import NUM_CLASSES, POOL3_DIM, FIDInceptionV3

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
PTH_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# SHA-256 of the published .pth. Its first 8 hex digits are in the file name (torch.hub convention);
# the full digest (and size) is the one recorded by several independent projects that pin this file
# (e.g. torch-fidelity-based evaluators, which verify it before use); not re-computed here, since the
# file is not downloaded by this library. A .pth whose digest differs is rejected by the converter.
PTH_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PTH_SIZE_BYTES = 95_628_359
CONVERT_COMMAND = "python -m jaxgan.metrics.features convert IN.pth OUT.npz"
INCEPTION_SIZE = 299

_NET = FIDInceptionV3()


# ----------------------------------------------------------------------------------------------
# Resizing
# ----------------------------------------------------------------------------------------------
def _linear_taps(in_size: int, out_size: int):
    """Source taps of torch's bilinear ``align_corners=False`` along one axis.

    src = max((dst + 0.5) * in/out - 0.5, 0); i0 = floor(src); i1 = min(i0 + 1, in - 1);
    weight of i1 = src - i0. Computed in float64 (torch does this in float32; the difference is at
    most ~1 ulp of the source coordinate, < 3e-5 of a pixel step at 512 px).
    """
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    return i0, i1, lam


def resize_bilinear(images, size: tuple[int, int]):
    """Bilinear resize identical to torch ``F.interpolate(mode='bilinear', align_corners=False)``.

    Half-pixel centres, edge clamping, and NO antialiasing when downsampling (unlike
    ``jax.image.resize(..., 'bilinear')``, which antialiases).

    Args:
      images: ``[N, H, W, C]`` float array (any range; the map is affine).
      size: ``(out_h, out_w)``.
    Returns:
      ``[N, out_h, out_w, C]`` float32. Works under ``jit`` (the taps depend only on static shapes).
    """
    if getattr(images, "ndim", None) != 4:
        raise ValueError(
            f"resize_bilinear expects images of shape [N, H, W, C]; got shape {getattr(images, 'shape', None)}"
        )
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize_bilinear size must be two positive ints; got {size!r}")
    x = jnp.asarray(images, jnp.float32)
    _, h, w, _ = x.shape
    if (h, w) == (out_h, out_w):
        return x  # torch's result is exactly the input then (src == dst, weight 0)
    i0, i1, lam = _linear_taps(h, out_h)
    lam = jnp.asarray(lam, jnp.float32)[None, :, None, None]
    x = jnp.take(x, i0, axis=1) * (1.0 - lam) + jnp.take(x, i1, axis=1) * lam
    j0, j1, lam = _linear_taps(w, out_w)
    lam = jnp.asarray(lam, jnp.float32)[None, None, :, None]
    return jnp.take(x, j0, axis=2) * (1.0 - lam) + jnp.take(x, j1, axis=2) * lam


def resize_bilinear_299(images):
    """``[N, H, W, C]`` -> ``[N, 299, 299, C]`` float32, exactly as pytorch-fid resizes its input.

    See :func:`resize_bilinear`.
    """
    return resize_bilinear(images, (INCEPTION_SIZE, INCEPTION_SIZE))


# ----------------------------------------------------------------------------------------------
# PyTorch state-dict <-> Flax variables
# ----------------------------------------------------------------------------------------------
def _torch_name(flax_path: tuple[str, ...]) -> tuple[str, str]:
    """Flax flat path -> (PyTorch state-dict name, kind of layout change)."""
    collection, *mods, leaf = flax_path
    prefix = ".".join(mods)
    table = {
        ("params", "kernel"): ("weight", "oihw" if mods[-1] == "conv" else "linear"),
        ("params", "scale"): ("weight", "same"),
        ("params", "bias"): ("bias", "same"),
        ("batch_stats", "mean"): ("running_mean", "same"),
        ("batch_stats", "var"): ("running_var", "same"),
    }
    if (collection, leaf) not in table:
        raise AssertionError(f"unexpected Flax variable {'/'.join(flax_path)}")  # module bug, not user error
    torch_leaf, kind = table[(collection, leaf)]
    return f"{prefix}.{torch_leaf}", kind


def _torch_shape(flax_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == "oihw":  # HWIO -> OIHW
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if kind == "linear":  # [in, out] -> [out, in]
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def _to_flax_layout(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "oihw":
        return np.transpose(array, (2, 3, 1, 0))
    if kind == "linear":
        return np.transpose(array)
    return array


@functools.lru_cache(maxsize=1)
def _flax_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat Flax path -> shape of every variable of FIDInceptionV3 (no computation: eval_shape)."""
    dummy = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    shapes = jax.eval_shape(_NET.init, jax.random.key(0), dummy)
    flat = traverse_util.flatten_dict(jax.tree.map(lambda s: tuple(s.shape), shapes))
    return dict(flat)


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """PyTorch state-dict name -> shape that the converter requires (pytorch-fid's FIDInceptionV3).

    Conv weights are OIHW (``Conv2d_1a_3x3.conv.weight: (32, 3, 3, 3)``), BatchNorm entries are
    ``*.bn.weight/bias/running_mean/running_var``, and ``fc.weight: (1008, 2048)``, ``fc.bias: (1008,)``.
    ``*.bn.num_batches_tracked`` entries are accepted by the converter and ignored (not listed).
    Derived from the Flax module, so it is exactly what the module needs.
    """
    out = {}
    for path, shape in _flax_shapes().items():
        name, kind = _torch_name(path)
        out[name] = _torch_shape(shape, kind)
    return out


def state_dict_to_variables(state_dict: Mapping[str, Any]) -> dict:
    """Map a pytorch-fid Inception state dict to Flax variables (numpy float32 leaves).

    Args:
      state_dict: name -> array (numpy arrays, or anything ``np.asarray`` accepts; torch tensors too),
        with the names and PyTorch shapes of :func:`expected_state_dict_shapes`.
    Returns:
      ``{'params': ..., 'batch_stats': ...}`` nested dicts for :class:`FIDInceptionV3`.
    Raises:
      ValueError: missing or unexpected names, or a wrong shape (naming the entry and both shapes).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping name -> array; got {type(state_dict).__name__}")
    expected = {}
    for path, shape in _flax_shapes().items():
        name, kind = _torch_name(path)
        expected[name] = (path, kind, _torch_shape(shape, kind))
    given = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise ValueError(
            "state dict does not match pytorch-fid's FID Inception-v3 "
            f"({len(expected)} entries expected): missing {len(missing)} {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {len(unexpected)} {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}. Accepted: the state dict of {PTH_FILENAME} "
            "(see expected_state_dict_shapes())."
        )
    flat = {}
    for name, (path, kind, torch_shape) in expected.items():
        value = given[name]
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        value = np.asarray(value, dtype=np.float32)
        if value.shape != torch_shape:
            raise ValueError(f"state dict entry {name!r} has shape {value.shape}; expected {torch_shape}")
        flat[path] = np.ascontiguousarray(_to_flax_layout(value, kind))
    return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path) -> str:
    return os.fspath(path) + ".sha256"


def _write_npz_deterministic(path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez-compatible archive with sorted entries and fixed timestamps (byte-reproducible)."""
    tmp = os.fspath(path) + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def missing_weights_message(path) -> str:
    """The error for absent FID Inception weights at ``path``: where to download them and how to convert them."""
    return (
        f"FID Inception weights not found at {os.fspath(path)!r}. Download {PTH_FILENAME} "
        f"(pytorch-fid's port of TensorFlow's 2015-12-05 Inception, SHA-256 {PTH_SHA256}) from "
        f"{FID_WEIGHTS_URL} and convert it once (needs `pip install torch`, for the conversion only): "
        f"python -m jaxgan.metrics.features convert {PTH_FILENAME} {os.fspath(path)}  "
        f"(in general: {CONVERT_COMMAND})"
    )


def _load_pth(path) -> Mapping[str, Any]:
    try:
        import torch  # noqa: PLC0415 - optional, conversion only
    except ImportError as e:
        raise ImportError(
            f"reading {os.fspath(path)!r} needs PyTorch: `pip install torch` (needed for the weight "
            "conversion only; jaxgan never imports torch otherwise). Alternatively pass an already "
            "loaded state dict of numpy arrays to convert_pytorch_fid_weights."
        ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch < 1.13 has no weights_only
        return torch.load(path, map_location="cpu")


def convert_pytorch_fid_weights(pth_or_state_dict, out_npz, *, check_pth_digest: bool = True) -> str:
    """Convert pytorch-fid's Inception weights to a Flax ``.npz`` plus ``<out_npz>.sha256``.

    Args:
      pth_or_state_dict: path to ``pt_inception-2015-12-05-6726825d.pth`` (read with torch, which must
        then be installed), or an already loaded state dict (name -> numpy array / torch tensor).
      out_npz: output path; entries are Flax paths such as ``params/Mixed_5b/branch1x1/conv/kernel``
        (HWIO kernels, ``fc/kernel`` [2048, 1008]) and ``batch_stats/.../bn/mean``.
      check_pth_digest: for a path, require its SHA-256 to be :data:`PTH_SHA256` (the published file).
    Returns:
      the hex SHA-256 of the written npz (also written to ``<out_npz>.sha256``).
    Raises:
      FileNotFoundError: the .pth path does not exist (says where to download it).
      ImportError: a path was given and torch is not installed.
      ValueError: wrong .pth digest (naming both digests), or state-dict names/shapes that do not
        match (see :func:`state_dict_to_variables`).
    """
    if isinstance(pth_or_state_dict, Mapping):
        state_dict = pth_or_state_dict
    elif isinstance(pth_or_state_dict, (str, os.PathLike)):
        pth = pth_or_state_dict
        if not os.path.isfile(pth):
            raise FileNotFoundError(
                f"PyTorch weights {os.fspath(pth)!r} not found; download {PTH_FILENAME} from {FID_WEIGHTS_URL}"
            )
        if check_pth_digest:
            actual = file_sha256(pth)
            if actual != PTH_SHA256:
                raise ValueError(
                    f"{os.fspath(pth)!r} has SHA-256 {actual}, expected {PTH_SHA256} ({PTH_FILENAME}, "
                    f"{PTH_SIZE_BYTES} bytes, from {FID_WEIGHTS_URL}); pass check_pth_digest=False "
                    "(CLI: --no-check-digest) to convert another file with the same layout."
                )
        state_dict = _load_pth(pth)
    else:
        raise TypeError(
            "pth_or_state_dict must be a path to the .pth or a mapping name -> array; "
            f"got {type(pth_or_state_dict).__name__}"
        )
    variables = state_dict_to_variables(state_dict)
    flat = traverse_util.flatten_dict(variables, sep="/")
    _write_npz_deterministic(out_npz, flat)
    digest = file_sha256(out_npz)
    with open(_sidecar(out_npz), "w") as f:
        f.write(f"{digest}  {os.path.basename(os.fspath(out_npz))}\n")
    return digest


def load_inception_params(path, *, expected_sha256: str | None = None) -> dict:
    """Load converted FID Inception weights, verifying the file's SHA-256.

    Args:
      path: the ``.npz`` written by :func:`convert_pytorch_fid_weights`.
      expected_sha256: the digest to require; by default the one in ``<path>.sha256`` (written by the
        converter).
    Returns:
      ``{'params': ..., 'batch_stats': ...}`` (jax arrays) for :func:`inception_features`.
    Raises:
      FileNotFoundError: the npz (message: where to get the .pth and the converter command) or its
        ``.sha256`` file is missing.
      ValueError: the digest does not match (naming both digests), or the entries do not match the
        network.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(missing_weights_message(path))
    if expected_sha256 is None:
        side = _sidecar(path)
        if not os.path.isfile(side):
            raise FileNotFoundError(
                f"checksum file {side!r} for {os.fspath(path)!r} not found; re-run the converter "
                f"({CONVERT_COMMAND}) or pass expected_sha256=..."
            )
        with open(side) as f:
            tokens = f.read().split()
        expected_sha256, source = (tokens[0] if tokens else ""), side
    else:
        source = "expected_sha256"
    expected_sha256 = expected_sha256.lower()
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise ValueError(
            f"SHA-256 of {os.fspath(path)!r} is {actual}, but {expected_sha256} is expected (from {source}); "
            f"the file is corrupted or not the converted FID Inception weights. Re-create it: {CONVERT_COMMAND}"
        )
    with np.load(path, allow_pickle=False) as data:
        flat = {tuple(k.split("/")): np.asarray(data[k]) for k in data.files}
    expected = _flax_shapes()
    missing = sorted("/".join(p) for p in set(expected) - set(flat))
    unexpected = sorted("/".join(p) for p in set(flat) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{os.fspath(path)!r} does not hold FID Inception weights: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    for p, shape in expected.items():
        if flat[p].shape != shape:
            raise ValueError(f"{os.fspath(path)!r}: {'/'.join(p)} has shape {flat[p].shape}; expected {shape}")
    return traverse_util.unflatten_dict({p: jnp.asarray(v, jnp.float32) for p, v in flat.items()})


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------
@jax.jit
def _features_batch(variables, images):
    return _NET.apply(variables, resize_bilinear_299(images))


def inception_features(params, images, *, batch_size: int = 50, check_range: bool = True):
    """pool3 features and logits of pytorch-fid's FID Inception-v3.

    Args:
      params: ``{'params': ..., 'batch_stats': ...}`` from :func:`load_inception_params`.
      images: ``[N, H, W, 3]`` float in [-1, 1] (NHWC, any H, W): resized to 299x299 exactly like
        pytorch-fid (:func:`resize_bilinear_299`) inside the compiled function.
      batch_size: images per compiled call; the last batch is zero-padded to the same shape so one
        compilation serves every batch (per input size).
      check_range: raise if values fall outside [-1, 1] (by more than 1e-3) or are not finite.
    Returns:
      ``(pool3, logits)``: numpy float32 ``[N, 2048]`` (FID/KID features) and ``[N, 1008]`` (Inception
      Score logits; class 0 is TensorFlow's background class, as in pytorch-fid's weights).
    """
    if not (isinstance(params, Mapping) and "params" in params and "batch_stats" in params):
        raise ValueError(
            "params must be the variables dict {'params': ..., 'batch_stats': ...} returned by "
            f"load_inception_params; got {type(params).__name__}"
            + (f" with keys {sorted(params)}" if isinstance(params, Mapping) else "")
        )
    if not isinstance(images, jax.Array):
        images = np.asarray(images)
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] != 3:
        hint = " (looks like NCHW; transpose to NHWC)" if len(shape) == 4 and shape[1] == 3 else ""
        raise ValueError(f"images must be NHWC RGB [N, H, W, 3]; got shape {shape}{hint}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    n = shape[0]
    if n == 0:
        return np.zeros((0, POOL3_DIM), np.float32), np.zeros((0, NUM_CLASSES), np.float32)
    if check_range:
        lo, hi = float(images.min()), float(images.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1.001 or hi > 1.001:
            raise ValueError(
                f"images must be finite and in [-1, 1]; got values in [{lo}, {hi}]. Map uint8 [0, 255] "
                "with x / 127.5 - 1 and [0, 1] with 2 * x - 1 (or pass check_range=False)."
            )
    bs = min(batch_size, n)
    pools, logits = [], []
    for start in range(0, n, bs):
        chunk = images[start : start + bs]
        m = chunk.shape[0]
        if m < bs:
            pad = [(0, bs - m), (0, 0), (0, 0), (0, 0)]
            chunk = jnp.pad(chunk, pad) if isinstance(chunk, jax.Array) else np.pad(chunk, pad)
        p, lg = _features_batch(params, jnp.asarray(chunk, jnp.float32))
        pools.append(np.asarray(p)[:m])
        logits.append(np.asarray(lg)[:m])
    return np.concatenate(pools), np.concatenate(logits)


# ----------------------------------------------------------------------------------------------
# CLI: python -m jaxgan.metrics.features convert IN.pth OUT.npz
# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxgan.metrics.features",
        description="Convert pytorch-fid's FID Inception weights to a jaxgan .npz.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help=f"IN.pth ({PTH_FILENAME}) -> OUT.npz (+ OUT.npz.sha256)")
    conv.add_argument("pth", help=f"the PyTorch weights, from {FID_WEIGHTS_URL}")
    conv.add_argument("npz", help="output .npz path")
    conv.add_argument("--no-check-digest", action="store_true", help=f"skip the check against {PTH_SHA256}")
    args = parser.parse_args(argv)
    digest = convert_pytorch_fid_weights(args.pth, args.npz, check_pth_digest=not args.no_check_digest)
    print(f"wrote {args.npz} (sha256 {digest}) and {_sidecar(args.npz)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ImportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
