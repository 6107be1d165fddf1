"""Every example flagfile names a valid experiment whose models initialise at the configured size."""
import pathlib

import jax
import pytest

from conftest import REPO, read_study_flagfile
from jaxgan import experiment
from jaxgan.cli import common as _common

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


def test_sngan_config_has_the_papers_widths_and_parameter_counts():
    """cifar10_sngan.cfg is SNGAN's CIFAR-10 ResNet (Miyato et al. 2018, Appendix B.4, Table 4): G z(128) -> dense
    4x4x256, three up ResBlocks of 256 channels (BN, ReLU, up, conv3x3, BN, ReLU, conv3x3; 1x1 shortcut conv),
    BN, ReLU, conv3x3 -> 3; D two down ResBlocks then two ResBlocks, all 128 channels, ReLU, sum pooling, dense.
    Counted by hand from that table (biases included; spectral-norm vectors are not parameters):
    G = 128*4096+4096 + 3*(2*512 + 2*(9*256*256+256) + 256*256+256) + 512 + 9*256*3+3 = 4,276,739;
    D = (9*3*128+128 + 9*128*128+128 + 3*128+128) + (2*(9*128*128+128) + 128*128+128) + 2*2*(9*128*128+128)
        + 128+1 = 1,053,825."""
    config = experiment.Config(**_common.read_flagfile(REPO / "launch" / "configs" / "cifar10_sngan.cfg",
                                                       experiment.Config))
    state = jax.eval_shape(experiment.build(config).init, jax.random.key(0))
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    assert count(state.g.params) == 128 * 4096 + 4096 + 3 * (2 * 512 + 2 * (9 * 256 * 256 + 256) + 256 * 256 + 256) \
        + 512 + 9 * 256 * 3 + 3 == 4_276_739
    assert count(state.d.params) == 1_053_825


def test_expected_configs_exist():
    names = {p.name for p in CONFIGS}
    for name in ("quickstart.cfg", "mnist_dcgan.cfg", "mnist_lsgan.cfg", "fashion_mnist_wgan.cfg", "mnist_wgan_gp.cfg",
                 "cifar10_dcgan.cfg", "cifar10_sngan.cfg", "cifar10_sagan_hinge.cfg", "cifar10_cond_biggan.cfg",
                 "celeba64_dcgan.cfg", "ring8_gan.cfg", "ring8_minimax.cfg", "ring8_lsgan.cfg",
                 "ring8_wgan_gp.cfg", "ring8_pacgan2.cfg", "ring8_realness.cfg"):
        assert name in names, name


STUDIES = sorted((REPO / "launch" / "configs" / "studies").glob("*.cfg"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_flagfile_plans_valid_groups(path: pathlib.Path, tmp_path):
    """Every study flagfile parses, and each of its groups is a valid experiment (no training)."""
    from jaxgan import sweep
    base, _, sweeps, losses = read_study_flagfile(path, tmp_path)
    groups = sweep.plan(base, seeds=2, sweep=sweeps, groups=losses)
    assert groups and all(len(g.runs) >= 2 for g in groups)
    for group in groups:
        experiment.validate(group.config)
        for run in group.runs:
            experiment.validate(run.config)
    assert len(STUDIES) >= 9
