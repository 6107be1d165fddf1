"""Every example flagfile names a valid experiment whose models initialise at the configured size."""
import pathlib

import jax
import pytest

from conftest import REPO
from jaxgan import experiment
from launch import _common

CONFIGS = sorted((REPO / "launch" / "configs").glob("*.cfg"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_flagfile_builds(path: pathlib.Path):
    config = experiment.Config(**_common.read_flagfile(path, experiment.Config))
    experiment.validate(config)
    exp = experiment.build(config, num_classes=10 if config.conditional else 0)
    state = jax.eval_shape(exp.init, jax.random.key(0))
    g_params = sum(x.size for x in jax.tree.leaves(state.g.params))
    assert g_params > 0
    if not config.is_toy:
        assert exp.data_shape == (config.image_size, config.image_size, config.channels)


def test_expected_configs_exist():
    names = {p.name for p in CONFIGS}
    for name in ("quickstart.cfg", "mnist_dcgan.cfg", "mnist_lsgan.cfg", "fashion_mnist_wgan.cfg", "mnist_wgan_gp.cfg",
                 "cifar10_dcgan.cfg", "cifar10_sngan.cfg", "cifar10_sagan_hinge.cfg", "cifar10_cond_biggan.cfg",
                 "celeba64_dcgan.cfg", "ring8_gan.cfg", "ring8_minimax.cfg", "ring8_lsgan.cfg", "ring8_wgan_clip.cfg",
                 "ring8_wgan_gp.cfg"):
        assert name in names, name
