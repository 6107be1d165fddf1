"""The Config's field metadata and what is derived from it: flags, --help, the sweep's grouping, the resume rule;
and validation that runs once per run and builds no model."""
import dataclasses
import json
import re
import subprocess
import sys
import typing

import pytest
from absl import flags

from conftest import REPO
from jaxgan import config as config_lib
from jaxgan import experiment, objectives, sweep, training
from jaxgan.cli import common as _common
from jaxgan.config import Config, ConfigError

FIELDS = dataclasses.fields(Config)


def test_every_field_declares_help_section_sweep_kind_and_resume():
    for f in FIELDS:
        assert f.metadata["help"].strip(), f.name
        assert f.metadata["section"] in config_lib.SECTIONS, f.name
        assert f.metadata["sweep"] is None or f.metadata["sweep"] in config_lib.SWEEP_KINDS, f.name
        assert isinstance(f.metadata["resume"], bool), f.name
        assert config_lib.field_type(f.name) in (bool, int, float, str), f.name
    assert {f.metadata["section"] for f in FIELDS} == set(config_lib.SECTIONS)  # no section without a field
    by_section = [n for s in config_lib.SECTIONS for n in config_lib.section_fields(s)]
    assert sorted(by_section) == sorted(f.name for f in FIELDS)
    with pytest.raises(ValueError, match="section 'modle'"):
        config_lib.option(0, "x", section="modle")


# Regression check of the derivation: the hand-kept tuples of jaxgan/sweep.py and jaxgan/training.py before the
# fields carried their own metadata, written here once. Fields added since (the toolbox's weights, ...) join the
# derived lists by their own metadata; the old fields must keep their kinds.
OLD_RUNTIME_HPARAMS = ("g_lr", "d_lr", "penalty_weight", "label_smoothing", "instance_noise", "ema_decay")
OLD_GROUP_FIELDS = ("loss", "penalty", "clip_weights", "b1", "b2", "optimizer", "lr_decay",
                    "instance_noise_anneal_steps", "ema_start")
OLD_GROUP_ONLY_FIELDS = ("n_critic", "batch_size")  # batch_size since PacGAN's groups (--packing=m, batch 100*m)
OLD_SHAPE_FIELDS = ("batch_size", "n_critic", "width", "g_width", "d_width", "depth", "latent_dim", "model", "dataset",
                    "image_size", "channels", "mixture_modes", "mixture_radius", "mixture_std", "mixture_spacing",
                    "num_samples", "d_normalization", "conditional", "attention_resolution")
OLD_STR_FIELDS = ("loss", "penalty", "optimizer", "lr_decay")
OLD_INT_FIELDS = ("instance_noise_anneal_steps", "ema_start", "n_critic", "batch_size")
OLD_RESUMABLE_FIELDS = ("steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "num_samples",
                        "on_nan", "nan_lr_factor", "max_rollbacks", "eval_every", "eval_metrics", "eval_num_samples",
                        "eval_inception_weights", "steps_per_call", "conv_impl")


def test_derived_field_lists_keep_the_old_hand_kept_ones():
    derived = {"runtime": sweep.RUNTIME_HPARAMS, "group": sweep.GROUP_FIELDS, "group_entry": sweep.GROUP_ONLY_FIELDS,
               "shape": sweep.SHAPE_FIELDS, "resume": training.RESUMABLE_FIELDS}
    old = {"runtime": OLD_RUNTIME_HPARAMS, "group": OLD_GROUP_FIELDS, "group_entry": OLD_GROUP_ONLY_FIELDS,
           "shape": OLD_SHAPE_FIELDS, "resume": OLD_RESUMABLE_FIELDS}
    old_fields = {n for names in old.values() for n in names}
    for kind, names in old.items():  # an old field keeps its kind, and no old field gained one
        assert set(names) == set(derived[kind]) & old_fields, kind
    sweepable = OLD_RUNTIME_HPARAMS + OLD_GROUP_FIELDS + OLD_GROUP_ONLY_FIELDS
    assert {n for n in sweepable if config_lib.field_type(n) is str} == set(OLD_STR_FIELDS)
    assert {n for n in sweepable if config_lib.field_type(n) is int} == set(OLD_INT_FIELDS)
    runtime_floats = {n for n in sweep.RUNTIME_HPARAMS if config_lib.field_type(n) is not float}
    assert not runtime_floats  # run-time hyperparameters are float32 scalars in GANState.hparams


def test_sweep_values_are_parsed_with_the_fields_types():
    assert sweep.parse_sweep_flag("ema_start:0,5") == ("ema_start", [0, 5])
    assert all(type(v) is int for v in sweep.parse_sweep_flag("ema_start:0,5")[1])
    assert sweep.parse_sweep_flag("g_lr:1e-4,2e-4") == ("g_lr", [1e-4, 2e-4])
    assert sweep.parse_sweep_flag("optimizer:adam,sgd") == ("optimizer", ["adam", "sgd"])
    with pytest.raises(ConfigError, match="'1.5' is not an integer"):
        sweep.parse_sweep_flag("instance_noise_anneal_steps:1.5")


def test_train_help_lists_every_config_flag_with_its_help_text():
    """``--help`` (not only --helpfull) shows the training options; absl wraps the text, so spaces are normalised."""
    result = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--help"], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    text = " ".join(result.stdout.split())
    for f in FIELDS:
        flag = f"--[no]{f.name}" if config_lib.field_type(f.name) is bool else f"--{f.name}"
        assert f"{flag}: {' '.join(f.metadata['help'].split())}" in text, f.name
    assert "--workdir: directory for checkpoints" in text  # the launcher's own flags stay


def _config_lines(path):
    """The Config flags of a shipped flagfile (a study's also holds launch/sweep.py's own flags)."""
    names = {f.name for f in FIELDS} | {"no" + f.name for f in FIELDS}
    return [line for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip().lstrip("-").partition("=")[0] in names]


@pytest.mark.parametrize("path", sorted((REPO / "launch" / "configs").rglob("*.cfg")),
                         ids=lambda p: p.relative_to(REPO / "launch" / "configs").as_posix())
def test_shipped_flagfile_parses_through_the_derived_flags(path, tmp_path):
    """absl, with the flags defined from the metadata, reads each shipped flagfile as `read_flagfile` does."""
    (tmp_path / "config.cfg").write_text("\n".join(_config_lines(path)))
    values = flags.FlagValues()
    _common.define_config_flags(Config, values)
    values(["prog", f"--flagfile={tmp_path / 'config.cfg'}"])
    parsed = _common.config_from_flags(Config, values)
    assert parsed == Config(**_common.read_flagfile(tmp_path / "config.cfg", Config))
    for f in FIELDS:
        assert type(getattr(parsed, f.name)) is typing.get_type_hints(Config)[f.name], f.name


def test_label_smoothing_follows_the_objectives_hparams(monkeypatch):
    """The losses that take --label_smoothing are those whose objective has the hparam (no list kept by hand)."""
    takers = {n for n, make in objectives.LOSSES.items() if "label_smoothing" in make().hparams}
    assert set(experiment.label_smoothing_losses()) == takers == {"non_saturating", "minimax"}
    with pytest.raises(ConfigError, match="--label_smoothing applies to --loss=non_saturating or minimax, not hinge"):
        experiment.validate(Config(loss="hinge", label_smoothing=0.1))
    monkeypatch.setitem(objectives.LOSSES, "smooth_copy", objectives.non_saturating)  # a newly registered loss
    experiment.validate(Config(loss="smooth_copy", label_smoothing=0.1))
    objectives.build("smooth_copy", label_smoothing=0.1)  # and build agrees


def test_batch_norm_with_a_gradient_penalty_is_refused_without_building_models(monkeypatch):
    from jaxgan import models

    def no_models(*args, **kwargs):
        raise AssertionError("validate built the models")
    monkeypatch.setattr(models, "build_models", no_models)
    image = dict(dataset="digits", model="dcgan", image_size=32, loss="wasserstein", penalty="gradient_penalty")
    with pytest.raises(ConfigError, match="--penalty=gradient_penalty needs per-example gradients.*BatchNorm"):
        experiment.validate(Config(**image))
    experiment.validate(Config(**image, d_normalization="layer_norm"))
    experiment.validate(Config(**{**image, "model": "sngan"}))


TINY = Config(dataset="ring8", width=8, depth=1, batch_size=16, steps=2, log_every=1, checkpoint_every=2,
              num_samples=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step MLP run, trained with `experiment.validate` counted: (workdir, validate calls)."""
    workdir = tmp_path_factory.mktemp("run")
    calls = []
    original = experiment.validate
    with pytest.MonkeyPatch.context() as m:
        m.setattr(experiment, "validate", lambda *a, **k: (calls.append(a[0]), original(*a, **k))[1])
        training.train(TINY, workdir)
    return workdir, calls


def test_validate_runs_once_per_train(trained):
    _, calls = trained
    assert calls == [TINY]


def test_old_config_json_without_new_fields_still_loads(trained, tmp_path):
    """A workdir written before fields existed: they take their defaults, for load_run and for a resume."""
    workdir, _ = trained
    old = tmp_path / "old"
    old.mkdir()
    for item in workdir.iterdir():
        if item.is_file():
            (old / item.name).write_bytes(item.read_bytes())
    (old / "checkpoints").symlink_to(workdir / "checkpoints")
    stored = json.loads((workdir / "config.json").read_text())
    for newer in ("compute_dtype", "mesh_seed", "steps_per_call", "eval_inception_weights"):
        del stored[newer]
    (old / "config.json").write_text(json.dumps(stored))
    exp, state = training.load_run(old)
    assert exp.config == TINY and int(state.step) == 2
    training.check_workdir(TINY, old, overwrite=False)  # a resume with the defaults is accepted
    training.check_workdir(dataclasses.replace(TINY, steps_per_call=2), old, overwrite=False)  # resumable
    with pytest.raises(ConfigError, match=re.escape("--mesh_seed=2 (workdir has 1)")):
        training.check_workdir(dataclasses.replace(TINY, mesh_seed=2), old, overwrite=False)


def test_a_new_loss_is_one_registry_line_away_from_a_flag(monkeypatch):
    """Adding a loss is its function and one `objectives.LOSSES` line: --help lists it, a config naming it
    validates, and a step trains with it (nothing else keeps a list of loss names)."""
    def least_absolute():  # a toy game: D pushes real outputs up and fake outputs down, |.|-shaped
        return objectives.Objective((
            objectives.Term("loss", "d", lambda t: (abs(1 - t.real_outputs) + abs(t.fake_outputs)).mean()),
            objectives.Term("loss", "g", lambda t: abs(1 - t.fake_outputs).mean())))
    monkeypatch.setitem(objectives.LOSSES, "least_absolute", least_absolute)
    flag_values = flags.FlagValues()
    _common.define_config_flags(Config, flag_values)
    assert "least_absolute" in flag_values["loss"].help
    config = Config(loss="least_absolute", width=8, depth=1, batch_size=16)
    experiment.validate(config)
    exp = experiment.build(config)
    import jax
    state = exp.init(jax.random.key(0))
    _, metrics = jax.jit(exp.train_step())(state, {"x": jax.random.normal(jax.random.key(1), (1, 16, 2))})
    assert set(metrics) >= {"d/loss", "g/loss"} and all(bool(jax.numpy.isfinite(v)) for v in metrics.values())
