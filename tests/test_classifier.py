"""The digits classifier used as an evaluation network: data split, accuracy, coverage, FCD, save/load."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxgan.metrics.classifier import (
    ConvClassifier,
    classes_covered,
    classifier_features,
    classifier_logits,
    frechet_classifier_distance,
    load_digits_split,
    load_params,
    save_params,
    train_classifier,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(16, seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    params, history = train_classifier(digits.train_images, digits.train_labels, num_classes=10, steps=400,
                                       batch_size=64, seed=0, test_images=digits.test_images,
                                       test_labels=digits.test_labels)
    return params, history


def test_digits_split_shapes_range_and_determinism(digits):
    assert digits.train_images.shape == (1437, 16, 16, 1) and digits.test_images.shape == (360, 16, 16, 1)
    assert digits.train_images.dtype == np.float32 and digits.train_labels.dtype == np.int32
    assert digits.train_images.min() == -1.0 and digits.train_images.max() == 1.0
    assert digits.test_images.min() >= -1.0 and digits.test_images.max() <= 1.0
    # Stratified: 1797 * 0.2 = 360 test images, 35-37 per class.
    counts = np.bincount(digits.test_labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    again = load_digits_split(16, seed=0)
    np.testing.assert_array_equal(again.test_images, digits.test_images)
    other = load_digits_split(16, seed=1)
    assert not np.array_equal(other.test_labels, digits.test_labels)


def test_digits_scaling_and_bilinear_upsampling():
    small = load_digits_split(8, seed=0)
    raw = load_digits()
    # 8x8: exactly the original pixels mapped 0..16 -> [-1, 1], as a permutation of the 1797 images.
    got = np.sort(np.concatenate([small.train_images, small.test_images]).reshape(1797, 64), axis=0)
    want = np.sort(raw.images.reshape(1797, 64) / 8.0 - 1.0, axis=0)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    # 16x16 bilinear with half-pixel centres: out[2i+1, 2j+1] mixes x[i:i+2, j:j+2] with weights 3/4, 1/4.
    big = load_digits_split(16, seed=0)
    np.testing.assert_array_equal(big.test_labels, small.test_labels)  # same split whatever the size
    x = small.test_images[..., 0].astype(np.float64)
    w = np.array([0.75, 0.25])
    for i, j in [(0, 0), (3, 4), (6, 6)]:
        expected = np.einsum("a,b,nab->n", w, w, x[:, i : i + 2, j : j + 2])
        np.testing.assert_allclose(big.test_images[:, 2 * i + 1, 2 * j + 1, 0], expected, atol=1e-6)


def test_classifier_is_accurate_and_covers_all_classes(trained, digits):
    # Margins: this fixture's training with seed=0..7 gave held-out accuracy 0.950 / 0.966 / 0.978 (min / mean /
    # max, sd 0.009: mean - 4 sd = 0.930), a final/initial loss ratio of 0.017 / 0.022 / 0.032, all 10 classes on
    # the test set and exactly 2 on the zeros and ones. An untrained classifier scores ~0.1 and a ratio ~1.
    params, history = trained
    assert history["loss"].shape == (400,)
    assert history["loss"][-50:].mean() < 0.25 * history["loss"][:10].mean()
    assert history["test_accuracy"] >= 0.92, history["test_accuracy"]
    logits = classifier_logits(params, digits.test_images)
    assert logits.shape == (360, 10)
    np.testing.assert_allclose(np.mean(logits.argmax(1) == digits.test_labels), history["test_accuracy"])
    assert classes_covered(logits) == 10
    # A "generator" that only produces zeros and ones covers 2 classes.
    zeros_and_ones = digits.test_images[digits.test_labels <= 1]
    assert classes_covered(classifier_logits(params, zeros_and_ones), min_count=5) == 2


def test_classes_covered_counts_argmax_classes():
    logits = np.array([[5.0, 0, 0], [4.0, 1, 0], [0, 0, 2.0], [1.0, 0, 0]])  # argmax: 0, 0, 2, 0
    assert classes_covered(logits) == 2
    assert classes_covered(logits, min_count=2) == 1
    assert classes_covered(logits, min_count=4) == 0
    with pytest.raises(ValueError, match="min_count must be a positive integer; got 0"):
        classes_covered(logits, min_count=0)


def test_features_are_batch_independent_and_fcd_orders_sets(trained, digits):
    params, _ = trained
    feats = classifier_features(params, digits.test_images[:50], batch_size=512)
    assert feats.shape == (50, 128) and feats.dtype == np.float32
    np.testing.assert_allclose(classifier_features(params, digits.test_images[:50], batch_size=7), feats,
                               rtol=1e-5, atol=1e-5)
    same = frechet_classifier_distance(params, digits.train_images, digits.test_images)
    half_classes = frechet_classifier_distance(params, digits.train_images,
                                               digits.test_images[digits.test_labels < 5])
    noise = np.random.default_rng(0).uniform(-1, 1, size=(360, 16, 16, 1)).astype(np.float32)
    garbage = frechet_classifier_distance(params, digits.train_images, noise)
    assert abs(frechet_classifier_distance(params, digits.test_images, digits.test_images)) < 1e-6
    # seed=0..7 of the fixture's training: same / half_classes 0.040 .. 0.049, half_classes / garbage 0.08 .. 0.19
    assert 0 < same < 0.25 * half_classes < 0.25 * garbage, (same, half_classes, garbage)


def test_save_load_roundtrip(trained, digits, tmp_path):
    params, _ = trained
    path = tmp_path / "digits_classifier.npz"
    save_params(path, params)
    loaded = load_params(path)
    np.testing.assert_array_equal(classifier_logits(loaded, digits.test_images[:20]),
                                  classifier_logits(params, digits.test_images[:20]))
    with pytest.raises(ValueError, match="do not look like ConvClassifier params"):
        classifier_logits({"params": {"dense": {}}}, digits.test_images[:2])


def test_train_classifier_rejects_out_of_range_labels():
    images = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=r"num_classes=3\).*\[0, 3\]"):
        train_classifier(images, np.array([0, 1, 2, 3]), num_classes=3, steps=1)
    assert ConvClassifier(num_classes=3).channels == (16, 32)
