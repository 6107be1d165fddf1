"""Tests for jaxgan.data.{images,digits,pipeline}: TFDS (mock data), folders of files, sklearn digits."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from jaxgan.data.images import DatasetError, prepare_image  # noqa: E402
from jaxgan.data.pipeline import make_image_dataset  # noqa: E402


def take(it, k):
    return [next(it) for _ in range(k)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["x"], y["x"])
        np.testing.assert_array_equal(x["label"], y["label"])


def keys_of(batches):
    """One identity per example (the bytes of its pixels); mock images are random, hence distinct."""
    return [ex.tobytes() for b in batches for ex in b["x"]]


def one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------------------------------------------------
# TFDS on mock data


@pytest.mark.parametrize("name,channels", [("mnist", 1), ("mnist", 3), ("cifar10", 3), ("cifar10", 1)])
def test_tfds_shapes_dtype_range_labels(name, channels):
    with tfds.testing.mock_data(num_examples=24):
        it = make_image_dataset(name, image_size=16, channels=channels, batch_size=8, seed=0, num_threads=0)
        batches = take(it, 4)  # crosses the epoch boundary (3 batches per epoch)
    assert (it.num_examples, it.num_classes, it.labels_available) == (24, 10, True)
    assert it.image_shape == (16, 16, channels) and it.steps_per_epoch == 3
    for b in batches:
        assert set(b) == {"x", "label"}
        assert b["x"].shape == (8, 16, 16, channels) and b["x"].dtype == np.float32
        assert b["label"].shape == (8,) and b["label"].dtype == np.int32
        assert -1.0 <= b["x"].min() and b["x"].max() <= 1.0
        assert ((0 <= b["label"]) & (b["label"] < 10)).all()
        if channels == 3 and name == "mnist":  # gray -> RGB repeats the channel
            np.testing.assert_array_equal(b["x"][..., 0], b["x"][..., 2])


def test_tfds_native_size_is_exact_uint8_mapping():
    with tfds.testing.mock_data(num_examples=16):
        it = make_image_dataset("mnist", image_size=28, channels=1, batch_size=16, seed=0, num_threads=0)
        x = next(it)["x"]
    levels = np.round((x + 1.0) * 127.5)
    np.testing.assert_allclose(levels / 127.5 - 1.0, x, atol=1e-6)
    assert x.min() < -0.5 and x.max() > 0.5  # mock pixels span 0..255


def test_celeb_a_center_crop_pipeline_and_preprocessing():
    with tfds.testing.mock_data(num_examples=16):
        it = make_image_dataset("celeb_a", image_size=32, channels=3, batch_size=4, seed=1, num_threads=0)
        b = next(it)
    assert b["x"].shape == (4, 32, 32, 3) and (b["label"] == -1).all()
    assert it.labels_available is False and it.num_classes == 0
    # A 218x178 face-sized image whose top and bottom 20 rows are red: the centred 178x178 crop drops them.
    img = np.full((218, 178, 3), 255, np.uint8)
    img[:20] = img[-20:] = (255, 0, 0)
    centred = prepare_image(img, 16, 3, "center")
    np.testing.assert_array_equal(centred, np.ones((16, 16, 3), np.float32))
    whole = prepare_image(img, 16, 3, "none")
    assert whole[0, :, 1].max() < 0  # green channel of the top row comes from the red band


def test_determinism_and_seed():
    with tfds.testing.mock_data(num_examples=32):
        kw = dict(image_size=8, channels=1, batch_size=8, num_threads=2)
        a = take(make_image_dataset("mnist", seed=3, **kw), 6)
        b = take(make_image_dataset("mnist", seed=3, **kw), 6)
        c = take(make_image_dataset("mnist", seed=4, **kw), 6)
    assert_batches_equal(a, b)
    assert any(not np.array_equal(x["x"], y["x"]) for x, y in zip(a, c))


def test_epochs_are_reshuffled_permutations():
    with tfds.testing.mock_data(num_examples=32):
        it = make_image_dataset("mnist", image_size=28, channels=1, batch_size=8, seed=0, num_threads=0)
        e0, e1 = keys_of(take(it, 4)), keys_of(take(it, 4))
    assert len(set(e0)) == 32 and set(e0) == set(e1)  # each epoch sees every record once
    assert e0 != e1  # in a new order


def test_resume_continues_identically_across_epoch_boundary():
    with tfds.testing.mock_data(num_examples=40):
        kw = dict(image_size=8, channels=3, batch_size=8, seed=7, num_threads=2)
        it = make_image_dataset("cifar10", **kw)
        take(it, 3)
        state = json.loads(json.dumps(it.get_state()))  # JSON round trip, as a checkpoint would store it
        expected = take(it, 5)  # batches 3..7: the epoch ends after batch 4
        fresh = make_image_dataset("cifar10", **kw)
        fresh.set_state(state)
        assert_batches_equal(take(fresh, 5), expected)
        it.set_state(state)  # rewinding the same iterator works too
        assert_batches_equal(take(it, 5), expected)
        other = make_image_dataset("cifar10", **{**kw, "seed": 8})
        with pytest.raises(DatasetError, match="seed=7"):
            other.set_state(state)


def test_finite_epochs_stop():
    with tfds.testing.mock_data(num_examples=20):
        it = make_image_dataset("mnist", image_size=8, channels=1, batch_size=6, seed=0, num_epochs=2, num_threads=0)
        assert len(list(it)) == 40 // 6


@pytest.mark.parametrize("num_examples", [40, 41])
def test_two_processes_get_disjoint_shards(num_examples):
    with tfds.testing.mock_data(num_examples=num_examples):
        kw = dict(image_size=28, channels=1, batch_size=4, seed=5, process_count=2, num_threads=0)
        it0 = make_image_dataset("mnist", process_index=0, **kw)
        it1 = make_image_dataset("mnist", process_index=1, **kw)
        k0, k1 = keys_of(take(it0, 5)), keys_of(take(it1, 5))  # one epoch of each 20-record shard
        assert it0.shard_size == it1.shard_size == 20
        assert it0.get_state() == it1.get_state()  # same state on every process
        whole = make_image_dataset("mnist", image_size=28, channels=1, batch_size=num_examples, seed=5, num_threads=0)
        everything = keys_of([next(whole)])
    assert len(set(k0)) == len(set(k1)) == 20 and not set(k0) & set(k1)
    assert set(k0) | set(k1) <= set(everything)
    # Process p reads records p, p + 2, p + 4, ... of the single-process order (the same global shuffle).
    assert k0 == everything[0:40:2] and k1 == everything[1:40:2]


# ---------------------------------------------------------------------------------------------------------
# Folder of image files


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    colour = (200, 100, 50)
    Image.new("RGB", (10, 20), colour).save(root / "a.png")
    palette = Image.new("RGB", (37, 23), colour).convert("P", palette=Image.ADAPTIVE)
    palette.save(root / "sub" / "b.PNG")  # palette image, upper-case extension
    Image.new("RGBA", (64, 64), colour + (128,)).save(root / "sub" / "deeper" / "c.png")
    Image.new("RGB", (50, 30), colour).save(root / "sub" / "d.jpg", quality=100)
    Image.new("L", (12, 9), 77).save(root / "gray.jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_exact_pixels_and_conversions(image_folder):
    # luminance of (200, 100, 50) with PIL's ITU-R 601-2 weights: 124.2 -> 124
    for channels, value in [(3, np.array([200, 100, 50])), (1, np.array([124]))]:
        it = make_image_dataset(f"folder:{image_folder}", image_size=8, channels=channels, batch_size=5, seed=0,
                                num_threads=0)
        assert (it.num_examples, it.num_classes, it.labels_available) == (5, 0, False)
        b = next(it)
        assert b["x"].shape == (5, 8, 8, channels) and b["x"].dtype == np.float32
        assert (b["label"] == -1).all() and b["label"].dtype == np.int32
        expected = (value / 127.5 - 1.0).astype(np.float32)
        gray = np.all(np.abs(b["x"] - (77 / 127.5 - 1.0)) < 1e-6, axis=(1, 2, 3))
        assert gray.sum() == 1  # the grayscale JPEG (gray -> RGB repeats; gray -> gray is exact)
        exact = [np.array_equal(x, np.broadcast_to(expected, x.shape)) for x in b["x"]]
        assert sum(exact) >= 3  # the three PNGs (RGB, palette, RGBA) are exact; the JPEG is close
        colour = b["x"][~gray]
        assert np.abs(colour - expected).max() <= 4 / 127.5


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError) as e:
        make_image_dataset(f"folder:{empty}", image_size=8, channels=3, batch_size=1, seed=0)
    msg = one_line(e)
    assert str(empty) in msg and ".png" in msg and ".jpg" in msg
    with pytest.raises(DatasetError) as e:
        make_image_dataset(f"folder:{tmp_path / 'missing'}", image_size=8, channels=3, batch_size=1, seed=0)
    assert str(tmp_path / "missing") in one_line(e) and "does not exist" in one_line(e)

    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(bad / "full.png")
    data = (bad / "full.png").read_bytes()
    (bad / "full.png").unlink()
    (bad / "truncated.png").write_bytes(data[: len(data) // 2])
    (bad / "garbage.jpg").write_bytes(b"definitely not a jpeg" * 10)
    with pytest.raises(DatasetError) as e:  # every file is decoded when the folder is opened
        make_image_dataset(f"folder:{bad}", image_size=8, channels=3, batch_size=3, seed=0)
    msg = one_line(e)
    assert str(bad / "truncated.png") in msg and str(bad / "garbage.jpg") in msg and "--skip_corrupt_images" in msg
    for threads in (0, 2):  # a file that breaks after the open: errors in grain's reader threads reach the caller
        for i in range(4):
            Image.new("RGB", (16, 16), (i, 2, 3)).save(bad / f"ok{i}.png")
        it = make_image_dataset(f"folder:{bad}", image_size=8, channels=3, batch_size=3, seed=0, num_threads=threads,
                                skip_corrupt_images=True)
        for i in range(4):
            (bad / f"ok{i}.png").write_bytes(b"broken")
        with pytest.raises(DatasetError) as e:
            next(it)
        assert "ok" in one_line(e) and "corrupt or truncated" in one_line(e)


# ---------------------------------------------------------------------------------------------------------
# scikit-learn digits


def test_digits():
    kw = dict(image_size=32, channels=1, batch_size=64, seed=0, num_threads=0)
    it = make_image_dataset("digits", **kw)
    assert (it.num_examples, it.num_classes, it.labels_available) == (1797, 10, True)
    a = take(it, 3)
    assert_batches_equal(a, take(make_image_dataset("digits", **kw), 3))
    x = np.concatenate([b["x"] for b in a])
    labels = np.concatenate([b["label"] for b in a])
    assert x.shape == (192, 32, 32, 1) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.min() == -1.0 and x.max() > 0.9
    assert labels.dtype == np.int32 and set(labels.tolist()) == set(range(10))
    # native 8x8: values are exactly v / 8 - 1 for v in 0..16; RGB repeats the channel
    b8 = next(make_image_dataset("digits", image_size=8, channels=3, batch_size=16, seed=0, num_threads=0))["x"]
    np.testing.assert_array_equal((b8 + 1) * 8, np.round((b8 + 1) * 8))
    np.testing.assert_array_equal(b8[..., 0], b8[..., 1])


# ---------------------------------------------------------------------------------------------------------
# Errors


def test_unknown_dataset_message():
    with pytest.raises(DatasetError) as e:
        make_image_dataset("mnits", image_size=32, channels=1, batch_size=8, seed=0)
    msg = one_line(e)
    assert "'mnits'" in msg and "mnist" in msg and "cifar10" in msg and "folder:" in msg and "digits" in msg
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("missing", [False, True])
def test_not_prepared_dataset_message(tmp_path, missing):
    data_dir = str(tmp_path / "no_such_dir" if missing else tmp_path)  # TFDS fails differently in the two cases
    with pytest.raises(DatasetError) as e:
        make_image_dataset("mnist", image_size=32, channels=1, batch_size=8, seed=0, data_dir=data_dir)
    msg = one_line(e)
    assert "not prepared" in msg and data_dir in msg
    assert f"tfds build mnist --data_dir={data_dir} --file_format=array_record" in msg


@pytest.mark.parametrize("kwargs,needle", [
    (dict(image_size=4), "image_size=4"),
    (dict(channels=2), "channels=2"),
    (dict(crop="random"), "crop='random'"),
    (dict(batch_size=1000, process_count=2, process_index=1), "shard of 898 examples"),
    (dict(process_index=2, process_count=2), "process_index=2"),
    (dict(num_epochs=0), "num_epochs=0"),
])
def test_argument_errors(kwargs, needle):
    args = {**dict(image_size=16, channels=1, batch_size=8, seed=0), **kwargs}
    with pytest.raises(DatasetError) as e:
        make_image_dataset("digits", **args)
    assert needle in one_line(e)


# ---------------------------------------------------------------------------------------------------------
# Corrupt files in a folder: found when it is opened; --skip_corrupt_images


@pytest.fixture(autouse=True)
def _image_check_cache(tmp_path, monkeypatch):
    """The decoded-once cache of jaxgan.data.images in the test's own directory, not ~/.cache."""
    from jaxgan.data import images
    monkeypatch.setattr(images, "DEFAULT_CHECK_CACHE", str(tmp_path / "image_checks"))


def _folder_with_corrupt_png(root, good=6):
    root.mkdir()
    for i in range(good):  # gray level 10 * (i + 1): each example tells which file it came from
        Image.new("L", (8, 8), 10 * (i + 1)).save(root / f"img{i}.png")
    Image.new("L", (32, 32), 200).save(root / "whole.png")
    data = (root / "whole.png").read_bytes()
    (root / "whole.png").unlink()
    (root / "zz_corrupt.png").write_bytes(data[:40])  # the header survives, the pixel data does not
    return root / "zz_corrupt.png"


def test_corrupt_png_refused_at_open_and_skipped_with_the_flag(tmp_path, caplog):
    bad = _folder_with_corrupt_png(tmp_path / "imgs")
    kw = dict(image_size=8, channels=1, batch_size=4, seed=0, num_threads=0)
    with pytest.raises(DatasetError) as e:
        make_image_dataset(f"folder:{tmp_path / 'imgs'}", **kw)
    msg = one_line(e)
    assert str(bad) in msg and "1 of 7 image files cannot be decoded" in msg and "--skip_corrupt_images" in msg
    with caplog.at_level("WARNING"):
        it = make_image_dataset(f"folder:{tmp_path / 'imgs'}", skip_corrupt_images=True, **kw)
    warnings = [r.getMessage() for r in caplog.records if "--skip_corrupt_images" in r.getMessage()]
    assert len(warnings) == 1 and repr(str(bad)) in warnings[0] and "1 of 7" in warnings[0]
    assert it.num_examples == 6
    # 3 epochs of batches (18 examples): every example is one of the six good images, each value 10 * (i + 1)
    values = np.concatenate([np.round((b["x"][:, 0, 0, 0] + 1) * 127.5) for b in take(it, 4)])
    assert set(values.tolist()) <= {10.0 * (i + 1) for i in range(6)} and len(set(values.tolist())) == 6


def test_corrupt_check_decodes_each_file_once_until_it_changes(tmp_path, monkeypatch):
    from jaxgan.data import images
    folder = tmp_path / "imgs"
    _folder_with_corrupt_png(folder, good=3)
    paths = images.list_image_files(str(folder))
    decoded = []
    real = images.load_image_file
    monkeypatch.setattr(images, "load_image_file", lambda p: decoded.append(p) or real(p))
    first = images.find_unreadable_images(str(folder), paths)
    assert [p for p, _ in first] == [str(folder / "zz_corrupt.png")] and len(decoded) == 4
    decoded.clear()
    assert images.find_unreadable_images(str(folder), paths) == first
    assert decoded == [str(folder / "zz_corrupt.png")]  # the good ones are remembered, the bad one is not
    decoded.clear()
    (folder / "img1.png").write_bytes(b"overwritten")  # a changed file is decoded again
    again = images.find_unreadable_images(str(folder), paths)
    assert sorted(decoded) == [str(folder / "img1.png"), str(folder / "zz_corrupt.png")]
    assert [p for p, _ in again] == [str(folder / "img1.png"), str(folder / "zz_corrupt.png")]


def test_skip_corrupt_images_config_reaches_the_training_data(tmp_path):
    from jaxgan.experiment import Config
    from jaxgan.training import make_data
    _folder_with_corrupt_png(tmp_path / "imgs")
    config = Config(dataset=f"folder:{tmp_path / 'imgs'}", model="dcgan", image_size=8, channels=1, batch_size=3)
    with pytest.raises(DatasetError, match="zz_corrupt.png"):
        make_data(config)
    data = make_data(dataclasses.replace(config, skip_corrupt_images=True))
    assert next(data)["x"].shape == (1, 3, 8, 8, 1)


def test_subset_is_fixed_nested_and_the_same_for_every_seed():
    """--subset=N trains on N images drawn once with a fixed seed (the ADA paper's --subset): every run seed sees
    the same N images (only their order differs), a smaller subset is part of a larger one, and an epoch of the
    iterator visits each of them exactly once."""
    from jaxgan.data.digits import load_digits_arrays
    images, _ = load_digits_arrays()
    flat = images.reshape(len(images), -1) / 8.0 - 1.0  # the digits at their native 8x8 size, as the source maps them

    def drawn(subset, seed):
        it = make_image_dataset("digits", image_size=8, channels=1, batch_size=subset // 4, seed=seed, subset=subset)
        x = np.concatenate([next(it)["x"] for _ in range(4)]).reshape(subset, -1)
        return [int(np.flatnonzero(np.all(np.isclose(flat, row), axis=1))[0]) for row in x]

    small_a, small_b, large = drawn(180, 0), drawn(180, 1), drawn(448, 0)
    assert len(set(small_a)) == 180 and sorted(small_a) == sorted(small_b) and small_a != small_b
    assert set(small_a) <= set(large) and len(set(large)) == 448
    expected = np.sort(np.random.RandomState(0).permutation(len(images))[:180])
    np.testing.assert_array_equal(sorted(small_a), expected)
    with pytest.raises(DatasetError, match=r"subset=1798 is not accepted .* use 1\.\.1797"):
        make_image_dataset("digits", image_size=8, channels=1, batch_size=4, seed=0, subset=1798)
