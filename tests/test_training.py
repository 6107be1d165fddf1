"""The training loop: exact resume, workdir contents, refusal of a foreign workdir."""
import json

import jax
import numpy as np
import pytest

from jaxgan.experiment import Config, ConfigError
from jaxgan.logging import read_metrics
from jaxgan.training import load_run, train

RUNS = {
    "mlp": Config(dataset="ring8", width=16, depth=2, batch_size=32, log_every=5, checkpoint_every=5),
    "dcgan": Config(dataset="digits", model="dcgan", image_size=28, width=8, latent_dim=16, batch_size=8,
                    ema_decay=0.9, log_every=2, checkpoint_every=2, sample_every=4),
}


def leaves(tree):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_resumed_run_equals_uninterrupted_run(name, tmp_path):
    config = RUNS[name]
    n = 4 if name == "dcgan" else 10
    full = train(config.__class__(**{**config.__dict__, "steps": 2 * n}), tmp_path / "full")
    half = config.__class__(**{**config.__dict__, "steps": n})
    train(half, tmp_path / "resumed")
    resumed = train(config.__class__(**{**config.__dict__, "steps": 2 * n}), tmp_path / "resumed")
    for a, b in zip(leaves((full.g, full.d, full.g_ema_params, full.key)),
                    leaves((resumed.g, resumed.d, resumed.g_ema_params, resumed.key))):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.step) == 2 * n
    # the resumed run's log has each step once, in order
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 2 * n
    # what load_run restores is what training ended with
    _, loaded = load_run(tmp_path / "resumed")
    for a, b in zip(leaves(loaded.g.params), leaves(resumed.g.params)):
        np.testing.assert_array_equal(a, b)


def test_image_run_writes_grids_and_tensorboard(tmp_path):
    config = Config(**{**RUNS["dcgan"].__dict__, "steps": 4})
    train(config, tmp_path)
    assert (tmp_path / "samples" / "step_0000004.png").exists() and (tmp_path / "samples.png").exists()
    assert any((tmp_path / "tb").iterdir())
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["num_classes"] == 0 and info["device_count"] >= 1 and "jax" in info["versions"]


def test_foreign_workdir_is_refused(tmp_path):
    config = Config(**{**RUNS["mlp"].__dict__, "steps": 2})
    train(config, tmp_path)
    with pytest.raises(ConfigError, match="--g_lr=0.001 .workdir has 0.0002"):
        train(Config(**{**config.__dict__, "g_lr": 1e-3}), tmp_path)
    train(Config(**{**config.__dict__, "g_lr": 1e-3}), tmp_path, overwrite=True)
