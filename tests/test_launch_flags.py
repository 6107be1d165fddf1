"""Bad values of the flags of launch/sample.py, evaluate.py, sweep.py (and train.py's own): one ``error:`` line
naming the flag, exit code 2, nothing written.

Starting Python + JAX costs seconds, so the cases of each launcher run one after another in one driver
subprocess through the launcher's own code path (`_common.parse_flags_one_line`, then ``main``); a few run as
real processes, for absl's FATAL form. The flag rules that need no process are tested in-process.
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, read_study_flagfile, subprocess_xla_flags
from jaxgan import experiment
from jaxgan.experiment import Config, ConfigError
from jaxgan.cli import common as _common

CACHE = str(REPO / ".jax_cache")
ENV = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(1), "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": str(REPO)}

# Runs [(name, [args...], [paths that must not exist afterwards])] through launch/<argv[1]>.py's parse + main.
# ``stop``: a dotted attribute replaced by a function that exits 99 (the point where the launcher would start
# work), so that valid flags are checked without training. ``post``: code run afterwards with the module as lt.
_DRIVER = r"""
import contextlib, importlib, io, json, os, sys
from absl import flags
module, cases, stop, post = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3], sys.argv[4]
lt = importlib.import_module(f"jaxgan.cli.{module}")
if stop:
    owner, _, attr = stop.rpartition(".")
    def _stop(*a, **k):
        raise SystemExit(99)
    setattr(importlib.import_module(owner), attr, _stop)
results = {}
for name, args, paths in cases:
    flags.FLAGS.unparse_flags()
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = lt.main(lt._common.parse_flags_one_line([f"launch/{module}.py", *args]))
        except SystemExit as e:
            rc = e.code
        except BaseException:  # a traceback in real life
            import traceback
            traceback.print_exc(file=err)
            rc = "Traceback"
    results[name] = {"rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue(),
                     "written": [p for p in paths if os.path.exists(p)]}
exec(post)
print("RESULTS" + json.dumps(results))
"""


def run_cases(tmp_path, module, cases, stop="", post="", timeout=300):
    path = tmp_path / f"{module}_cases.json"
    path.write_text(json.dumps(cases))
    result = subprocess.run([sys.executable, "-c", _DRIVER, module, str(path), stop, post], capture_output=True,
                            text=True, timeout=timeout, cwd=REPO, env=ENV)
    assert result.returncode == 0 and "RESULTS" in result.stdout, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULTS", 1)[1])


def assert_one_line(result, needles):
    assert result["rc"] == 2, result
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"][-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not result["written"], result["written"]


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    """A 2-step ring8 run (its workdir), trained in this process."""
    from jaxgan.training import train
    workdir = tmp_path_factory.mktemp("ring")
    train(Config(dataset="ring8", width=8, depth=1, batch_size=16, steps=2, log_every=1, num_samples=20), workdir)
    return workdir


def test_sample_flags(ring_run, tmp_path):
    out = str(tmp_path / "s.npy")
    w = f"--workdir={ring_run}"
    bad = {  # name: (args, words the line must contain, paths that must stay absent)
        "huge": ([w, f"--out={out}", "--num=2147483647"], ["--num=2147483647", "accepted: 1 to"]),
        "zero": ([w, f"--out={out}", "--num=0"], ["--num=0", "accepted: 1 to"]),
        "nan": ([w, f"--out={out}", "--truncation=nan"], ["--truncation", "nan", "> 0"]),
        "inf": ([w, f"--out={out}", "--truncation=inf"], ["--truncation", "finite"]),
        "seed": ([w, f"--out={out}", "--seed=-1"], ["--seed=-1", "0 to 4294967295"]),
        "trunc_2d": ([w, f"--out={out}", "--truncation=0.5"], ["--truncation", "image models", "ring8"]),
        "png_2d": ([w, f"--out={tmp_path / 's.png'}"], ["--format=png", "image models"]),
        "label_2d": ([w, f"--out={out}", "--label=0"], ["--label", "conditional"]),
        "suffix": ([w, f"--out={tmp_path / 's.png'}", "--format=npy"], ["--out=", ".npy", "--format=npy"]),
        "no_suffix": ([w, f"--out={tmp_path / 's'}"], ["--out=", "suffix", "--format"]),
        "grid_npy": ([w, f"--out={out}", "--nogrid"], ["--grid", "--format=png"]),
        "png_grid_suffix": ([w, f"--out={tmp_path / 's.jpg'}", "--format=png"], ["--out=", ".png", "--nogrid"]),
        "unwritable": ([w, "--out=/dev/null/s.npy"], ["--out=/dev/null/s.npy", "not a directory"]),
        "missing_workdir": ([f"--out={out}"], ["--workdir is required"]),
        "missing_out": ([w], ["--out is required"]),
        "not_int": ([w, f"--out={out}", "--num=abc"], ["--num", "abc"]),
        "stray": ([w, f"--out={out}", "stray"], ["unexpected arguments", "stray"]),
    }
    cases = [(name, args, [out, str(tmp_path / "s.png"), str(tmp_path / "s")]) for name, (args, _) in bad.items()]
    big = str(tmp_path / "big.npy")
    cases += [("ok", [w, f"--out={big}", "--num=2500", "--seed=3"], []),
              ("again", [w, f"--out={tmp_path / 'again.npy'}", "--num=2500", "--seed=3"], [])]
    results = run_cases(tmp_path, "sample", cases)
    for name, (_, needles) in bad.items():
        assert_one_line(results[name], needles)
    assert results["ok"]["rc"] == 0 and f"to {big}" in results["ok"]["stdout"], results["ok"]
    x = np.load(big)  # 2500 > one generator call: batches of fresh latents, finite, reproducible
    assert x.shape == (2500, 2) and np.isfinite(x).all()
    assert not np.allclose(x[:500], x[1000:1500]) and not np.allclose(x[:500], x[2000:])
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), x)
    assert not list(tmp_path.glob("*.tmp*"))


EVALUATE_BAD = {  # name: (args, words the line must contain); every check comes before the workdir is read
    "batch": (["--batch_size=1000000000"], ["--batch_size=1000000000", "accepted: 1 to 1000"]),
    "samples": (["--num_samples=1000000000000"], ["--num_samples=1000000000000", "accepted: 2 to"]),
    "samples_expr": (["--num_samples=10**12"], ["--num_samples", "10**12"]),
    "num_real": (["--num_real=-1"], ["--num_real=-1"]),
    "features": (["--max_feature_samples=10000000"], ["--max_feature_samples"]),
    "seed": (["--seed=-5"], ["--seed=-5"]),
    "step": (["--step=-1"], ["--step=-1"]),
    "reference": (["--reference=val"], ["--reference='val'", "train, test"]),
    "extractor": (["--feature_extractor=vgg"], ["--feature_extractor='vgg'", "inception, classifier"]),
    "out": (["--out=/dev/null/eval.json"], ["--out=/dev/null/eval.json", "not a directory"]),
    "cache_dir": (["--cache_dir=/dev/null/cache"], ["--cache_dir=/dev/null/cache"]),
    "classifier": (["--classifier_path=/dev/null/c.npz"], ["--classifier_path=/dev/null/c.npz"]),
}
# writes records of steps 5, 9, 2 the way the launcher does
_WRITE_STEPS = """
import pathlib
for step in (5, 9, 2):
    lt.write_records(pathlib.Path(RECORDS), {"protocol": {"checkpoint_step": step}, "metrics": {"x": step}})
"""


@pytest.fixture(scope="module")
def evaluate_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    none = str(tmp / "none")
    cases = [(n, [f"--workdir={none}", *a], [none]) for n, (a, _) in EVALUATE_BAD.items()]
    cases.append(("missing_workdir", [], [none]))
    (tmp / "records").mkdir()
    run = run_cases(tmp, "evaluate", cases, post=f"RECORDS = {str(tmp / 'records')!r}\n" + _WRITE_STEPS)
    return run, tmp / "records"


def test_evaluate_flags(evaluate_results):
    results, _ = evaluate_results
    for name, (_, needles) in {**EVALUATE_BAD, "missing_workdir": ([], ["--workdir is required"])}.items():
        assert_one_line(results[name], needles)


def test_evaluate_keeps_one_record_per_step(evaluate_results):
    """eval_step_STEP.json per step; eval.json holds the newest step, whatever order the steps are scored in."""
    _, records = evaluate_results
    for step in (2, 5, 9):
        assert json.loads((records / f"eval_step_{step}.json").read_text())["metrics"] == {"x": step}
    assert json.loads((records / "eval.json").read_text())["protocol"]["checkpoint_step"] == 9


def test_sweep_flags(tmp_path):
    base = ["--dataset=ring8", "--width=8", "--depth=1", "--steps=2", "--log_every=1", "--num_samples=20",
            f"--jax_cache_dir={CACHE}"]
    workdir = str(tmp_path / "w")
    w = f"--workdir={workdir}"
    bad = {
        "eval_samples": ([w, "--eval_samples=-1"], ["--eval_samples=-1", "accepted: 0 to"]),
        "w1_samples": ([w, "--w1_samples=-1"], ["--w1_samples=-1"]),
        "w1_huge": ([w, "--w1_samples=100000"], ["--w1_samples=100000"]),
        "seeds": ([w, "--seeds=0"], ["--seeds=0"]),
        "chunk": ([w, "--chunk=-1"], ["--chunk=-1"]),
        "trials_grid": ([w, "--trials=5"], ["--trials", "--search=random"]),
        "search_seed": ([w, "--search=random", "--trials=2", "--search_seed=-3"], ["--search_seed=-3"]),
        "sgd_b1": ([w, "--optimizer=sgd", "--b1=0.9"], ["--b1=0.9", "--optimizer=adam"]),
        "group_b1": ([w, "--losses=non_saturating+optimizer=sgd+b1=0.9"], ["b1=0.9", "--optimizer=adam"]),
        "group_b2": ([w, "--losses=hinge+optimizer=rmsprop", "--sweep=b2:0.9,0.99"], ["b2=0.9", "adam"]),
        "unwritable": (["--workdir=/dev/null/w"], ["--workdir=/dev/null/w", "not a directory"]),
        "dataset": ([w, "--dataset=mnits"], ["--dataset='mnits'"]),
        "missing_workdir": ([], ["--workdir is required"]),
        "not_int": ([w, "--seeds=abc"], ["--seeds", "abc"]),
        "stray": ([w, "stray"], ["unexpected arguments"]),
    }
    cases = [(n, base + a, [workdir]) for n, (a, _) in bad.items()]
    # the base's Adam betas, inherited by an rmsprop group next to Adam groups, are not an error
    cases.append(("zoo", base + [w, "--b2=0.99", "--losses=non_saturating,wasserstein+clip_weights=0.01+"
                                                "optimizer=rmsprop"], []))
    results = run_cases(tmp_path, "sweep", cases, stop="jaxgan.sweep.run_study")
    for name, (_, needles) in bad.items():
        assert_one_line(results[name], needles)
    assert results["zoo"]["rc"] == 99, results["zoo"]


def test_real_processes_use_one_line_not_absls_fatal_form(tmp_path):
    """absl.app's own parser prints 'FATAL Flags parsing error' and a second line; the launchers print one."""
    for script, args, needle in (("sample.py", ["--workdir=w", "--out=x.npy", "--num=x"], "--num=x"),
                                 ("sweep.py", ["--workdir=w", "--seeds=x"], "--seeds=x")):
        result = subprocess.run([sys.executable, str(REPO / "launch" / script), *args], capture_output=True,
                                text=True, timeout=120, cwd=tmp_path, env=ENV)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (script, lines)
        assert needle in lines[0], (script, lines)
        assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------- in-process rules

def test_flags_that_would_be_ignored_are_errors():
    ok = Config()
    experiment.validate(ok)
    for changes, needle in (
            ({"penalty_weight": 5.0}, "--penalty_weight=5.0 has no effect"),
            ({"nan_lr_factor": 0.1}, "--nan_lr_factor=0.1 has no effect: it applies to --on_nan=rollback"),
            ({"max_rollbacks": 5, "on_nan": "skip"}, "--max_rollbacks=5 has no effect"),
            ({"mixture_spacing": 3.0}, "--mixture_spacing=3.0 has no effect: it applies to --dataset=grid25"),
            ({"mixture_radius": 2.0, "dataset": "grid25"}, "--mixture_radius=2.0"),
            ({"mixture_std": 0.1, "dataset": "lines"}, "--mixture_std=0.1"),
            ({"image_size": 28}, "--image_size=28 has no effect"),
            ({"attention_resolution": 8}, "--attention_resolution=8"),
            ({"ema_decay": 0.9, "ema_start": 10, "steps": 10}, "--ema_start=10 must be < --steps=10"),
            ({"dataset": "mnits"}, "--dataset='mnits' is not a 2D dataset"),
            ({"dataset": ""}, "--dataset='' is empty"),
            ({"dataset": "folder:", "model": "dcgan"}, "--dataset='folder:' is empty"),
            ({"depth": 4, "dataset": "digits", "model": "dcgan", "image_size": 28}, "--depth=4 has no effect"),
            ({"data_dir": "/d", "dataset": "digits", "model": "dcgan", "image_size": 28}, "--data_dir=/d"),
            ({"eval_num_samples": 10, "dataset": "digits", "model": "dcgan", "image_size": 28},
             "--eval_num_samples=10 has no effect")):
        with pytest.raises(ConfigError, match=None) as info:
            experiment.validate(dataclasses.replace(ok, **changes))
        assert needle in str(info.value), (changes, str(info.value))
    # the same values where they apply pass
    experiment.validate(dataclasses.replace(ok, penalty="r1", penalty_weight=5.0))
    experiment.validate(dataclasses.replace(ok, on_nan="rollback", nan_lr_factor=0.1, max_rollbacks=5))
    experiment.validate(dataclasses.replace(ok, dataset="grid25", mixture_spacing=3.0))
    experiment.validate(dataclasses.replace(ok, ema_decay=0.9, ema_start=9, steps=10))


def test_optimizer_betas_are_adams_only():
    """--b1/--b2 with rmsprop or sgd: refused when given (at any value); a sweep group may inherit them."""
    sgd = Config(optimizer="sgd")
    experiment.validate(dataclasses.replace(sgd, b1=0.9))  # validate leaves b1/b2 to the launchers (sweeps)
    for given in ({"b1"}, {"b2"}):
        with pytest.raises(ConfigError, match=f"--{next(iter(given))}=.* has no effect: it applies to "
                                              f"--optimizer=adam"):
            _common.check_explicit_flags(sgd, given)
    _common.check_explicit_flags(Config(b1=0.9), {"b1", "b2"})  # adam
    _common.check_explicit_flags(dataclasses.replace(sgd, b1=0.9), {"optimizer"})
    # sgd and rmsprop are optax's, with no momentum: the update is -lr * g (sgd) whatever b1 is
    import jax.numpy as jnp
    for config in (sgd, dataclasses.replace(sgd, b1=0.9)):
        opt = experiment.make_optimizer(config, 0.1)
        state = opt.init(jnp.zeros(3))
        for g in (jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 0.5, -1.0])):
            update, state = opt.update(g, state)
            np.testing.assert_allclose(update, -0.1 * g, rtol=1e-6)


def test_conditional_on_an_unlabelled_dataset_is_refused():
    config = Config(dataset="folder:/imgs", model="dcgan", image_size=32, conditional=True)
    with pytest.raises(ConfigError, match="--conditional needs a labelled dataset.*0 classes"):
        experiment.build(config, num_classes=0)
    assert experiment.build(config, num_classes=10).num_classes == 10


@pytest.mark.parametrize("path", sorted((REPO / "launch" / "configs").rglob("*.cfg")), ids=lambda p: p.name)
def test_every_flagfile_passes_the_explicit_flag_checks(path: pathlib.Path, tmp_path):
    """The shipped flagfiles name no flag their configuration ignores (train: the config; sweeps: some group)."""
    from jaxgan import sweep
    base, given, sweeps, losses = read_study_flagfile(path, tmp_path)
    if path.parent.name == "studies":
        _common.check_sweep_flags_apply(base, sweep.plan(base, seeds=1, sweep=sweeps, groups=losses), given)
    else:
        _common.check_explicit_flags(base, given)


def test_networks_too_large_to_allocate_are_refused():
    """--width=65536 passed the old range check, then aborted allocating an 8.6e9-parameter MLP."""
    with pytest.raises(ConfigError, match=r"--width=65536 .* 8.59e\+09 parameters; accepted: up to"):
        experiment.validate(Config(width=65536))
    experiment.validate(Config(width=2000))  # 2 * 2000^2 + ... = 8e6 parameters: fine
