"""FID Inception-v3: architecture vs pytorch-fid, weight conversion and checksums, numerics vs numpy.

The reference below is written from torchvision's ``models/inception.py`` (BasicConv2d, InceptionA-E)
and pytorch-fid's ``inception.py`` (fid_inception_v3: num_classes=1008, aux_logits=False,
FIDInceptionA/C/E_1 average pools with count_include_pad=False, FIDInceptionE_2 max pool), independently
of jaxgan's module: a compact spec of every conv (name, in, out, kernel, stride, padding) gives the
expected state-dict names/shapes, and a float64 numpy forward pass on a PyTorch-layout (OIHW) state dict
is compared with the Flax network end to end (resize + network + pool3 + fc).
"""
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgan.metrics import features as F
from jaxgan.metrics import inception as I

# ---------------------------------------------------------------------------------------------
# Reference architecture spec (transcribed from torchvision / pytorch-fid)
# ---------------------------------------------------------------------------------------------


def _cv(cin, cout, k, s=1, p=0):
    k = k if isinstance(k, tuple) else (k, k)
    s = s if isinstance(s, tuple) else (s, s)
    p = p if isinstance(p, tuple) else (p, p)
    return dict(cin=cin, cout=cout, k=k, s=s, p=p)


def _spec_a(cin, pool_features):  # InceptionA
    return {
        "branch1x1": _cv(cin, 64, 1),
        "branch5x5_1": _cv(cin, 48, 1),
        "branch5x5_2": _cv(48, 64, 5, p=2),
        "branch3x3dbl_1": _cv(cin, 64, 1),
        "branch3x3dbl_2": _cv(64, 96, 3, p=1),
        "branch3x3dbl_3": _cv(96, 96, 3, p=1),
        "branch_pool": _cv(cin, pool_features, 1),
    }


def _spec_b(cin):  # InceptionB
    return {
        "branch3x3": _cv(cin, 384, 3, s=2),
        "branch3x3dbl_1": _cv(cin, 64, 1),
        "branch3x3dbl_2": _cv(64, 96, 3, p=1),
        "branch3x3dbl_3": _cv(96, 96, 3, s=2),
    }


def _spec_c(cin, c7):  # InceptionC
    return {
        "branch1x1": _cv(cin, 192, 1),
        "branch7x7_1": _cv(cin, c7, 1),
        "branch7x7_2": _cv(c7, c7, (1, 7), p=(0, 3)),
        "branch7x7_3": _cv(c7, 192, (7, 1), p=(3, 0)),
        "branch7x7dbl_1": _cv(cin, c7, 1),
        "branch7x7dbl_2": _cv(c7, c7, (7, 1), p=(3, 0)),
        "branch7x7dbl_3": _cv(c7, c7, (1, 7), p=(0, 3)),
        "branch7x7dbl_4": _cv(c7, c7, (7, 1), p=(3, 0)),
        "branch7x7dbl_5": _cv(c7, 192, (1, 7), p=(0, 3)),
        "branch_pool": _cv(cin, 192, 1),
    }


def _spec_d(cin):  # InceptionD
    return {
        "branch3x3_1": _cv(cin, 192, 1),
        "branch3x3_2": _cv(192, 320, 3, s=2),
        "branch7x7x3_1": _cv(cin, 192, 1),
        "branch7x7x3_2": _cv(192, 192, (1, 7), p=(0, 3)),
        "branch7x7x3_3": _cv(192, 192, (7, 1), p=(3, 0)),
        "branch7x7x3_4": _cv(192, 192, 3, s=2),
    }


def _spec_e(cin):  # InceptionE
    return {
        "branch1x1": _cv(cin, 320, 1),
        "branch3x3_1": _cv(cin, 384, 1),
        "branch3x3_2a": _cv(384, 384, (1, 3), p=(0, 1)),
        "branch3x3_2b": _cv(384, 384, (3, 1), p=(1, 0)),
        "branch3x3dbl_1": _cv(cin, 448, 1),
        "branch3x3dbl_2": _cv(448, 384, 3, p=1),
        "branch3x3dbl_3a": _cv(384, 384, (1, 3), p=(0, 1)),
        "branch3x3dbl_3b": _cv(384, 384, (3, 1), p=(1, 0)),
        "branch_pool": _cv(cin, 192, 1),
    }


def _fid_inception_convs():
    """Every BasicConv2d of pytorch-fid's FIDInceptionV3: full name -> conv spec."""
    convs = {
        "Conv2d_1a_3x3": _cv(3, 32, 3, s=2),
        "Conv2d_2a_3x3": _cv(32, 32, 3),
        "Conv2d_2b_3x3": _cv(32, 64, 3, p=1),
        "Conv2d_3b_1x1": _cv(64, 80, 1),
        "Conv2d_4a_3x3": _cv(80, 192, 3),
    }
    blocks = {
        "Mixed_5b": _spec_a(192, 32),
        "Mixed_5c": _spec_a(256, 64),
        "Mixed_5d": _spec_a(288, 64),
        "Mixed_6a": _spec_b(288),
        "Mixed_6b": _spec_c(768, 128),
        "Mixed_6c": _spec_c(768, 160),
        "Mixed_6d": _spec_c(768, 160),
        "Mixed_6e": _spec_c(768, 192),
        "Mixed_7a": _spec_d(768),
        "Mixed_7b": _spec_e(1280),
        "Mixed_7c": _spec_e(2048),
    }
    for block, spec in blocks.items():
        for name, c in spec.items():
            convs[f"{block}.{name}"] = c
    return convs


CONVS = _fid_inception_convs()


def _state_dict_shapes(convs, num_classes, fc_in=2048):
    """torch state-dict name -> shape (parameters + BN running buffers, no num_batches_tracked)."""
    out = {}
    for name, c in convs.items():
        out[f"{name}.conv.weight"] = (c["cout"], c["cin"], *c["k"])
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.bn.{leaf}"] = (c["cout"],)
    out["fc.weight"] = (num_classes, fc_in)
    out["fc.bias"] = (num_classes,)
    return out


REFERENCE_SHAPES = _state_dict_shapes(CONVS, 1008)


def _n_params(shapes):
    """Trainable parameters (torch .parameters()): everything but the BN running buffers."""
    return sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))


FID_INCEPTION_NUM_PARAMS = 23_850_960  # 1008-way fc, no aux head


def _random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("conv.weight"):
            sd[k] = rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))
        elif k.endswith("bn.weight"):
            sd[k] = rng.uniform(0.5, 1.5, s)
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 1.5, s)
        elif k.endswith("fc.weight"):
            sd[k] = rng.standard_normal(s) / np.sqrt(s[1])
        else:  # bn.bias, running_mean, fc.bias
            sd[k] = rng.normal(0.0, 0.1, s)
        sd[k] = sd[k].astype(np.float32)
    return sd


# ---------------------------------------------------------------------------------------------
# numpy float64 reference forward (NHWC activations, PyTorch OIHW weights)
# ---------------------------------------------------------------------------------------------


def _np_conv_bn_relu(x, sd, name, c):
    w = sd[f"{name}.conv.weight"].astype(np.float64)  # [O, I, kh, kw]
    (kh, kw), (sh, sw), (ph, pw) = c["k"], c["s"], c["p"]
    x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    n, h, wd, cin = x.shape
    ho, wo = (h - kh) // sh + 1, (wd - kw) // sw + 1
    cols = [
        x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] for i in range(kh) for j in range(kw)
    ]
    cols = np.concatenate(cols, axis=-1).reshape(-1, kh * kw * cin)  # im2col, (i, j, c) order
    y = (cols @ np.transpose(w, (2, 3, 1, 0)).reshape(kh * kw * cin, -1)).reshape(n, ho, wo, -1)
    g = lambda leaf: sd[f"{name}.bn.{leaf}"].astype(np.float64)  # noqa: E731
    y = (y - g("running_mean")) / np.sqrt(g("running_var") + 1e-3) * g("weight") + g("bias")
    return np.maximum(y, 0.0)


def _np_pool3x3(x, stride, pad, kind):
    """kind: 'max' (padding = -inf), 'avg_excl' (count_include_pad=False)."""
    n, h, w, c = x.shape
    ho, wo = (h + 2 * pad - 3) // stride + 1, (w + 2 * pad - 3) // stride + 1
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    ones = np.pad(np.ones((1, h, w, 1)), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    acc = np.full((n, ho, wo, c), -np.inf) if kind == "max" else np.zeros((n, ho, wo, c))
    cnt = np.zeros((1, ho, wo, 1))
    for i in range(3):
        for j in range(3):
            sl = (slice(None), slice(i, i + stride * (ho - 1) + 1, stride), slice(j, j + stride * (wo - 1) + 1, stride))
            if kind == "max":
                acc = np.maximum(acc, xp[sl])
            else:
                acc = acc + xp[sl]
                cnt = cnt + ones[sl]
    return acc if kind == "max" else acc / cnt


def _np_block(x, sd, prefix, spec, kind):
    cv = lambda t, n: _np_conv_bn_relu(t, sd, f"{prefix}.{n}" if prefix else n, spec[n])  # noqa: E731
    if kind == "A":
        b5 = cv(cv(x, "branch5x5_1"), "branch5x5_2")
        bd = cv(cv(cv(x, "branch3x3dbl_1"), "branch3x3dbl_2"), "branch3x3dbl_3")
        bp = cv(_np_pool3x3(x, 1, 1, "avg_excl"), "branch_pool")
        return np.concatenate([cv(x, "branch1x1"), b5, bd, bp], -1)
    if kind == "B":
        bd = cv(cv(cv(x, "branch3x3dbl_1"), "branch3x3dbl_2"), "branch3x3dbl_3")
        return np.concatenate([cv(x, "branch3x3"), bd, _np_pool3x3(x, 2, 0, "max")], -1)
    if kind == "C":
        b7 = cv(cv(cv(x, "branch7x7_1"), "branch7x7_2"), "branch7x7_3")
        bd = x
        for k in range(1, 6):
            bd = cv(bd, f"branch7x7dbl_{k}")
        bp = cv(_np_pool3x3(x, 1, 1, "avg_excl"), "branch_pool")
        return np.concatenate([cv(x, "branch1x1"), b7, bd, bp], -1)
    if kind == "D":
        b3 = cv(cv(x, "branch3x3_1"), "branch3x3_2")
        b7 = x
        for k in range(1, 5):
            b7 = cv(b7, f"branch7x7x3_{k}")
        return np.concatenate([b3, b7, _np_pool3x3(x, 2, 0, "max")], -1)
    if kind in ("E1", "E2"):
        b3 = cv(x, "branch3x3_1")
        b3 = np.concatenate([cv(b3, "branch3x3_2a"), cv(b3, "branch3x3_2b")], -1)
        bd = cv(cv(x, "branch3x3dbl_1"), "branch3x3dbl_2")
        bd = np.concatenate([cv(bd, "branch3x3dbl_3a"), cv(bd, "branch3x3dbl_3b")], -1)
        pooled = _np_pool3x3(x, 1, 1, "avg_excl" if kind == "E1" else "max")
        return np.concatenate([cv(x, "branch1x1"), b3, bd, cv(pooled, "branch_pool")], -1)
    raise ValueError(kind)


def _np_resize_torch(x, out_h, out_w):
    """torch upsample_bilinear2d (align_corners=False), written as its C++ loop, float64."""
    n, h, w, c = x.shape

    def taps(in_size, out_size):
        scale = in_size / out_size
        r = np.maximum(scale * (np.arange(out_size) + 0.5) - 0.5, 0.0)
        i1 = r.astype(np.int64)  # (int) truncation, r >= 0
        i1p = (i1 < in_size - 1).astype(np.int64)
        l1 = r - i1
        return i1, i1 + i1p, 1.0 - l1, l1

    h0, h1, h0l, h1l = taps(h, out_h)
    w0, w1, w0l, w1l = taps(w, out_w)
    x = x.astype(np.float64)
    hl0, hl1 = h0l[None, :, None, None], h1l[None, :, None, None]
    wl0, wl1 = w0l[None, None, :, None], w1l[None, None, :, None]
    return hl0 * (wl0 * x[:, h0][:, :, w0] + wl1 * x[:, h0][:, :, w1]) + hl1 * (
        wl0 * x[:, h1][:, :, w0] + wl1 * x[:, h1][:, :, w1]
    )


def _np_fid_inception(images, sd):
    """pytorch-fid InceptionV3([3]) + fc on NHWC [-1, 1] images: (pool3, logits), float64."""
    x = _np_resize_torch(images, 299, 299)
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
        x = _np_conv_bn_relu(x, sd, name, CONVS[name])
    x = _np_pool3x3(x, 2, 0, "max")
    for name in ("Conv2d_3b_1x1", "Conv2d_4a_3x3"):
        x = _np_conv_bn_relu(x, sd, name, CONVS[name])
    x = _np_pool3x3(x, 2, 0, "max")
    blocks = [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"),
              ("Mixed_6b", "C"), ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"),
              ("Mixed_7a", "D"), ("Mixed_7b", "E1"), ("Mixed_7c", "E2")]  # fmt: skip
    for block, kind in blocks:
        spec = {k[len(block) + 1 :]: c for k, c in CONVS.items() if k.startswith(block + ".")}
        x = _np_block(x, sd, block, spec, kind)
    pool3 = x.mean(axis=(1, 2))
    logits = pool3 @ sd["fc.weight"].astype(np.float64).T + sd["fc.bias"]
    return pool3, logits


def _assert_close(got, ref, rtol):
    """Elementwise, relative to the magnitude of the reference tensor (ReLU nets have exact zeros)."""
    scale = np.abs(ref).max()
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_dict():
    return _random_state_dict(REFERENCE_SHAPES, seed=0)


@pytest.fixture(scope="module")
def converted(state_dict, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "fid_inception.npz"
    digest = F.convert_pytorch_fid_weights(state_dict, path)
    return path, digest


# ---------------------------------------------------------------------------------------------
# Architecture / names
# ---------------------------------------------------------------------------------------------


def test_converter_expects_exactly_pytorch_fid_state_dict():
    got = F.expected_state_dict_shapes()
    assert set(got) == set(REFERENCE_SHAPES), (
        sorted(set(got) ^ set(REFERENCE_SHAPES))[:10]
    )
    assert got == REFERENCE_SHAPES
    assert len(got) == 94 * 5 + 2  # 94 BasicConv2d (conv.weight + 4 BN entries) + fc weight/bias
    assert got["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert got["Mixed_5b.branch1x1.bn.running_mean"] == (64,)
    assert got["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert got["fc.weight"] == (1008, 2048)


def test_parameter_count():
    assert _n_params(REFERENCE_SHAPES) == FID_INCEPTION_NUM_PARAMS
    assert _n_params(F.expected_state_dict_shapes()) == FID_INCEPTION_NUM_PARAMS
    # Anchor the spec on a published number: torchvision's inception_v3 (1000 classes, with the aux
    # head: conv0 768->128 1x1, conv1 128->768 5x5, fc 768->1000) has num_params = 27,161,264.
    aux = {"AuxLogits.conv0": _cv(768, 128, 1), "AuxLogits.conv1": _cv(128, 768, 5)}
    tv = _state_dict_shapes({**CONVS, **aux}, 1000)
    tv["AuxLogits.fc.weight"], tv["AuxLogits.fc.bias"] = (1000, 768), (1000,)
    assert _n_params(tv) == 27_161_264


# ---------------------------------------------------------------------------------------------
# Resize
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(32, 32), (512, 512), (40, 600), (299, 299)])
def test_resize_matches_torch_formula(hw):
    x = np.random.default_rng(1).uniform(-1, 1, (2, *hw, 3)).astype(np.float32)
    got = np.asarray(jax.jit(F.resize_bilinear_299)(x))
    assert got.shape == (2, 299, 299, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _np_resize_torch(x, 299, 299), rtol=0, atol=1e-5)


def test_resize_is_not_antialiased():
    x = np.random.default_rng(2).uniform(-1, 1, (1, 512, 512, 3)).astype(np.float32)
    antialiased = np.asarray(jax.image.resize(x, (1, 299, 299, 3), "bilinear"))
    ours = np.asarray(F.resize_bilinear_299(x))
    assert np.abs(antialiased - ours).max() > 0.1  # the pitfall this function exists to avoid


# ---------------------------------------------------------------------------------------------
# Single blocks vs numpy float64
# ---------------------------------------------------------------------------------------------


def _flax_vars_from_torch(sd, prefix=""):
    """Test-side OIHW->HWIO mapping for a sub-module's state dict (keys relative to prefix)."""
    flat = {}
    for k, v in sd.items():
        if prefix and not k.startswith(prefix + "."):
            continue
        *mods, leaf = (k[len(prefix) + 1 :] if prefix else k).split(".")
        if leaf == "weight" and v.ndim == 4:
            flat[("params", *mods, "kernel")] = np.transpose(v, (2, 3, 1, 0))
        elif leaf == "weight" and mods[-1] == "bn":
            flat[("params", *mods, "scale")] = v
        elif leaf == "bias":
            flat[("params", *mods, "bias")] = v
        elif leaf == "running_mean":
            flat[("batch_stats", *mods, "mean")] = v
        elif leaf == "running_var":
            flat[("batch_stats", *mods, "var")] = v
    return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize(
    "kind,module,spec",
    [
        ("A", I.FIDInceptionA(pool_features=8), _spec_a(16, 8)),  # avg pool, count_include_pad=False
        ("E2", I.FIDInceptionE(pool="max"), _spec_e(16)),  # max pool with padding (-inf)
        ("B", I.InceptionB(), _spec_b(16)),
    ],
)
def test_block_matches_numpy(kind, module, spec):
    shapes = _state_dict_shapes(spec, 1)
    sd = {k: v for k, v in _random_state_dict(shapes, seed=3).items() if not k.startswith("fc.")}
    x = np.random.default_rng(4).standard_normal((2, 7, 7, 16)).astype(np.float32)  # negatives too
    got = jax.jit(module.apply)(_flax_vars_from_torch(sd), jnp.asarray(x))
    ref = _np_block(x.astype(np.float64), sd, "", spec, kind)
    assert got.shape == ref.shape
    _assert_close(got, ref, 1e-4)


def test_stem_conv_bn_matches_numpy():
    spec = {"c": _cv(3, 32, 3, s=2)}
    sd = _random_state_dict(_state_dict_shapes(spec, 1), seed=5)
    x = np.random.default_rng(6).uniform(-1, 1, (1, 11, 11, 3)).astype(np.float32)
    conv = I.BasicConv2d(32, (3, 3), strides=(2, 2))
    got = jax.jit(conv.apply)(_flax_vars_from_torch(sd, "c"), jnp.asarray(x))
    _assert_close(got, _np_conv_bn_relu(x.astype(np.float64), sd, "c", spec["c"]), 1e-5)


# ---------------------------------------------------------------------------------------------
# Convert -> npz -> load -> features, end to end vs numpy
# ---------------------------------------------------------------------------------------------


def test_convert_load_features_match_numpy(state_dict, converted):
    path, digest = converted
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (path.parent / (path.name + ".sha256")).read_text().split()[0] == digest
    params = F.load_inception_params(path)
    images = np.random.default_rng(7).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    pool3, logits = F.inception_features(params, images, batch_size=2)  # 2 batches, last one padded
    assert pool3.shape == (3, 2048) and logits.shape == (3, 1008)
    assert np.isfinite(pool3).all() and np.isfinite(logits).all()
    # numpy reference on the last image only (it went through the zero-padded batch): ~6 GFLOP each
    ref_pool3, ref_logits = _np_fid_inception(images[2:], state_dict)
    _assert_close(pool3[2:], ref_pool3, 1e-4)
    _assert_close(logits[2:], ref_logits, 1e-4)
    assert np.abs(pool3[0] - pool3[1]).max() > 1e-3  # distinct images, distinct features


def test_conversion_is_deterministic_and_ignores_num_batches_tracked(state_dict, converted, tmp_path):
    path, digest = converted
    sd = dict(state_dict)
    sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0, np.int64)
    assert F.convert_pytorch_fid_weights(sd, tmp_path / "again.npz") == digest


def test_corrupted_npz_fails_checksum(converted, tmp_path):
    path, digest = converted
    bad = tmp_path / "bad.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    (tmp_path / "bad.npz.sha256").write_text(f"{digest}  bad.npz\n")
    with pytest.raises(ValueError) as e:
        F.load_inception_params(bad)
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert digest in str(e.value) and actual in str(e.value)
    with pytest.raises(ValueError, match=f"{digest}.*{'0' * 64}"):
        F.load_inception_params(path, expected_sha256="0" * 64)


def test_missing_weights_messages(tmp_path, converted):
    with pytest.raises(FileNotFoundError) as e:
        F.load_inception_params(tmp_path / "nope.npz")
    msg = str(e.value)
    assert F.FID_WEIGHTS_URL in msg and "python -m jaxgan.metrics.features convert" in msg
    assert F.FID_WEIGHTS_URL == (
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
    )
    lonely = tmp_path / "lonely.npz"
    lonely.write_bytes(converted[0].read_bytes()[:100])
    with pytest.raises(FileNotFoundError, match=r"lonely\.npz\.sha256"):
        F.load_inception_params(lonely)


def test_converter_rejects_bad_state_dicts(state_dict, tmp_path):
    sd = dict(state_dict)
    del sd["Mixed_7c.branch_pool.bn.running_var"]
    sd["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
    with pytest.raises(ValueError, match=r"Mixed_7c\.branch_pool\.bn\.running_var.*AuxLogits\.fc\.weight"):
        F.convert_pytorch_fid_weights(sd, tmp_path / "x.npz")
    sd = dict(state_dict)
    sd["fc.weight"] = np.zeros((1000, 2048), np.float32)
    with pytest.raises(ValueError, match=r"'fc\.weight'.*\(1000, 2048\).*\(1008, 2048\)"):
        F.convert_pytorch_fid_weights(sd, tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_pth_path_checks(tmp_path):
    assert F.PTH_SHA256.startswith("6726825d")  # the prefix in the published file name
    with pytest.raises(FileNotFoundError, match="releases/download/fid_weights"):
        F.convert_pytorch_fid_weights(tmp_path / "missing.pth", tmp_path / "o.npz")
    fake = tmp_path / "fake.pth"
    fake.write_bytes(b"not a checkpoint")
    actual = hashlib.sha256(b"not a checkpoint").hexdigest()
    with pytest.raises(ValueError, match=f"{actual}.*{F.PTH_SHA256}"):
        F.main(["convert", os.fspath(fake), os.fspath(tmp_path / "o.npz")])
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch"):
            F.convert_pytorch_fid_weights(fake, tmp_path / "o.npz", check_pth_digest=False)


def test_inception_features_validates_inputs(converted):
    params = F.load_inception_params(converted[0])
    with pytest.raises(ValueError, match=r"NHWC.*\(2, 3, 32, 32\).*NCHW"):
        F.inception_features(params, np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\].*255"):
        F.inception_features(params, np.full((1, 8, 8, 3), 255.0, np.float32))
    with pytest.raises(ValueError, match="batch_stats"):
        F.inception_features(params["params"], np.zeros((1, 8, 8, 3), np.float32))
    pool3, logits = F.inception_features(params, np.zeros((0, 8, 8, 3), np.float32))
    assert pool3.shape == (0, 2048) and logits.shape == (0, 1008)
