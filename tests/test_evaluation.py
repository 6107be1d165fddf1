"""jaxgan.evaluation and launch/evaluate.py: records with their protocol, caches, --eval_every, bad input."""
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxgan import evaluation
from jaxgan.experiment import Config, ConfigError
from jaxgan.logging import read_metrics
from jaxgan.metrics import distances
from jaxgan.metrics.frechet import FeatureStats
from jaxgan.training import load_run, train

REPO = pathlib.Path(__file__).resolve().parent.parent
# The same program as tests/test_training.py's dcgan run, so the persistent compile cache serves both.
TINY = Config(dataset="digits", model="dcgan", image_size=28, width=8, latent_dim=16, batch_size=8, ema_decay=0.9,
              log_every=2, checkpoint_every=2, sample_every=4, steps=4)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("eval_cache")


@pytest.fixture(scope="module")
def classifier(cache_dir):
    """The digits classifier at its default place in the test cache (fewer steps than the default, for time)."""
    path = cache_dir / "digits_classifier_28px_v1.npz"
    evaluation.digits_classifier(path, steps=300)
    return path


@pytest.fixture(scope="module")
def extractor(classifier, cache_dir):
    return evaluation.classifier_extractor(classifier, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    train(TINY, workdir)
    return workdir


def test_streaming_score_equals_inception_score():
    logits = np.random.default_rng(0).normal(size=(103, 7)) * 3
    score = evaluation.StreamingScore(103, 7)
    for start, stop in ((0, 5), (5, 50), (50, 51), (51, 103)):
        score.update(logits[start:stop])
    np.testing.assert_allclose(score.score(), distances.inception_score(logits, 10), rtol=1e-10)
    assert score.classes_covered() == len(np.unique(np.argmax(logits, 1)))


def test_fcd_of_real_test_vs_train_is_small_and_of_noise_large(extractor):
    x_tr, _, x_te, y_te = evaluation._digits_arrays_28()
    train_stats = FeatureStats.from_features(extractor.apply(x_tr)[0])
    test_stats = FeatureStats.from_features(extractor.apply(x_te)[0])
    noise = np.random.default_rng(0).uniform(-1, 1, x_te.shape).astype(np.float32)
    noise_stats = FeatureStats.from_features(extractor.apply(noise)[0])
    real = test_stats.frechet_distance(train_stats)
    fake = noise_stats.frechet_distance(train_stats)
    assert abs(train_stats.frechet_distance(train_stats)) < 1e-6
    # Margins: the fixture's classifier trained with seed=0..7 gives fake / real 208 / 274 / 317 (min / mean / max)
    # and held-out accuracy 0.958 / 0.966 / 0.975 (sd 0.005); its reference classifier score on the real digits
    # (test_evaluate_record_has_numbers_and_protocol) 9.25 / 9.37 / 9.45, all 10 classes every time.
    assert 0 < 20 * real < fake, (real, fake)
    logits = extractor.apply(x_te)[1]
    assert np.mean(np.argmax(logits, 1) == y_te) > 0.9


def test_evaluate_record_has_numbers_and_protocol(tiny_run, extractor, cache_dir):
    exp, state = load_run(tiny_run)
    record = evaluation.evaluate(exp, state, num_samples=150, cache_dir=cache_dir, extractor=extractor,
                                 batch_size=64, max_feature_samples=100)
    m, p = record["metrics"], record["protocol"]
    assert set(m) == {"fcd", "kcd", "kcd_std", "classifier_score", "classifier_score_std", "classes_covered",
                      "precision", "recall", "density", "coverage"}
    assert all(np.isfinite(v) for v in m.values()) and 1 <= m["classes_covered"] <= 10
    assert 1.0 <= m["classifier_score"] <= 10.0 and m["fcd"] > 0
    assert p["checkpoint_step"] == 4 and p["n_fake"] == 150 and p["n_real"] == 1797
    assert p["reference_split"] == "train" and p["weights"] == "ema" and p["ema_decay"] == 0.9
    assert p["batch_norm"].startswith("inference")
    assert p["feature_extractor"]["name"] == "classifier"
    assert p["feature_extractor"]["weights_sha256"] == extractor.digest
    assert p["metrics"]["fcd"] == {"n_fake": 150, "n_real": 1797, "statistics": p["metrics"]["fcd"]["statistics"]}
    assert p["metrics"]["kcd"]["n_fake"] == 100 and p["metrics"]["pr"]["n_real"] == 100  # capped, and said so
    assert any("max_feature_samples=100" in w for w in record["warnings"])
    assert record["reference_metrics"]["classes_covered"] == 10
    assert record["reference_metrics"]["classifier_score"] > 8  # real digits: confident and balanced
    assert pathlib.Path(p["reference_cache"]).exists()
    json.dumps(record)  # JSON-ready

    # same seed: same numbers (the reference now comes from the cache); too few samples: the bias is reported
    again = evaluation.evaluate(exp, state, metrics="fid", num_samples=150, cache_dir=cache_dir,
                                extractor=extractor, batch_size=64, max_feature_samples=100)
    assert again["metrics"]["fcd"] == pytest.approx(m["fcd"], rel=1e-6)
    few = evaluation.evaluate(exp, state, metrics=["fid"], num_samples=50, cache_dir=cache_dir, extractor=extractor)
    assert any("biased" in w and "50 generated" in w for w in few["warnings"]), few["warnings"]

    with pytest.raises(ConfigError, match="unknown metric.*'fidd'.*fid,kid,is,pr"):
        evaluation.evaluate(exp, state, metrics="fidd", num_samples=20, extractor=extractor)
    with pytest.raises(ConfigError, match="split='test' is not accepted for 'digits'"):
        evaluation.evaluate(exp, state, metrics="fid", num_samples=20, reference="test", extractor=extractor,
                            cache_dir=cache_dir)


def test_inception_weights_missing_or_corrupt_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        evaluation.inception_extractor(tmp_path / "nope.npz")
    message = str(e.value)
    assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in message
    assert "python -m jaxgan.metrics.features convert" in message
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    (tmp_path / "bad.npz.sha256").write_text("0" * 64 + "  bad.npz\n")
    with pytest.raises(ConfigError, match="SHA-256 of .* is [0-9a-f]{64}, but 0{64} is expected"):
        evaluation.inception_extractor(bad)


def _launch(*args, timeout=300):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(REPO / "launch" / "evaluate.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_launcher_writes_eval_json_and_one_line_errors(tiny_run, classifier, cache_dir, tmp_path):
    common = [f"--workdir={tiny_run}", f"--cache_dir={cache_dir}", f"--classifier_path={classifier}",
              f"--jax_cache_dir={REPO / '.jax_cache'}"]
    r = _launch(*common, "--metrics=fid,is", "--num_samples=100", "--step=2")
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((tiny_run / "eval.json").read_text())
    assert record["protocol"]["checkpoint_step"] == 2 and record["protocol"]["n_fake"] == 100
    assert set(record["metrics"]) == {"fcd", "classifier_score", "classifier_score_std", "classes_covered"}
    assert "warning: fcd: 100 generated samples for 128-dimensional features" in r.stderr
    assert not list(tiny_run.glob("*.tmp"))

    for args, expected in (
        (["--metrics=fid,foo"], "error: --metrics: unknown metric(s) ['foo']"),
        ([f"--inception_weights={tmp_path / 'w.npz'}"], "error: FID Inception weights not found at"),
    ):
        r = _launch(*common, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), r.stderr[-2000:]
    assert "pytorch-fid/releases" in lines[0] and "python -m jaxgan.metrics.features convert" in lines[0]


def test_eval_every_logs_scores_during_training(tmp_path, classifier, monkeypatch):
    monkeypatch.setenv("JAXGAN_CACHE_DIR", str(classifier.parent))  # the test's classifier is found there
    config = Config(**{**TINY.__dict__, "eval_every": 2, "eval_metrics": "fid,is", "eval_num_samples": 20})
    train(config, tmp_path)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/fcd" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(np.isfinite(r["eval/fcd"]) and r["eval/classifier_score"] >= 1 for r in evals)
    with pytest.raises(ConfigError, match="--eval_metrics='fid,bogus': unknown"):
        train(Config(**{**config.__dict__, "eval_metrics": "fid,bogus"}), tmp_path / "bad")


@pytest.mark.slow
def test_quickstart_samples_cover_all_ten_classes(tmp_path, classifier, cache_dir):
    """Trains launch/configs/quickstart.cfg and counts the digit classes of 1000 samples.

    To keep the suite under 15 minutes the test trains the first third of the quickstart run (500 of its
    1500 steps); measured on the full run (1000 samples, `launch/evaluate.py --step=S`): 10 classes at steps
    500, 1000 and 1500 (FCD 90.4 -> 38.8 -> 30.2, classifier score 6.68 -> 7.37 -> 7.55).

    Margin over seeds (this test's config with seed=0..7, run by `jaxgan.sweep.run_group(chunk=1)`, i.e. the
    program of launch/train.py; 1000 samples; this test's classifier): 10 classes for every seed, and the rarest
    class still has 44 / 58 / 76 samples (min / mean / max over seeds), so no class is near 0. An untrained
    generator gives 1 class (all 1000 samples one digit), a collapsed one a few.
    """
    from jaxgan.cli import common as _common
    values = _common.read_flagfile(REPO / "launch" / "configs" / "quickstart.cfg", Config)
    config = Config(**{**values, "sample_every": 0, "steps": values["steps"] // 3})
    start = time.perf_counter()
    state = train(config, tmp_path)
    exp, _ = load_run(tmp_path)
    record = evaluation.evaluate(exp, state, metrics="fid,is", num_samples=1000, cache_dir=cache_dir,
                                 classifier_path=classifier)
    print(f"quickstart ({config.steps} steps) + evaluation: {time.perf_counter() - start:.0f} s; {record['metrics']}")
    assert record["metrics"]["classes_covered"] == 10, record["metrics"]
