"""jaxgan as an installable package: the README's library example, the programs and configs of a built wheel,
``--flagfile`` by shipped name, the learning-rate walkers (optax.tree_utils) and a step that compiles once."""
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
import jaxgan
from jaxgan.cli import common
from jaxgan.experiment import Config
from jaxgan.state import get_learning_rate, init_gan_state, set_learning_rate

PROGRAMS = ("train", "sample", "evaluate", "sweep")


def readme_library_code() -> str:
    """The first ```python block of README.md's "## The library" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## The library\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def readme_example():
    """The namespace of the README's library example, run as written (its printed line captured)."""
    namespace, out = {"__name__": "readme_example"}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_library_code(), str(REPO / "README.md"), "exec"), namespace)
    namespace["printed"] = out.getvalue()
    return namespace


def test_readme_library_example_runs_as_written(readme_example):
    ns = readme_example
    assert int(ns["state"].step) == 10 and ns["printed"].startswith("10 {")
    assert ns["x"].shape == (512, 2) and np.isfinite(np.asarray(ns["x"])).all()
    # the last single-GAN metrics: D's total is the composed objective, non-saturating loss + 5 * R1
    single = ns["step"](ns["init"](jax.random.key(3)), {"x": ns["real"]})[1]
    assert float(single["d/total"]) == pytest.approx(float(single["d/loss"]) + 5.0 * float(single["d/r1"]),
                                                      rel=1e-5)
    # the vmapped part: 4 independent GANs, each one step further, seed i's equal to its own unbatched step
    np.testing.assert_array_equal(np.asarray(ns["states"].step), [1, 1, 1, 1])
    assert all(np.isfinite(np.asarray(v)).all() and v.shape == (4,) for v in ns["metrics"].values())
    keys = jax.random.split(jax.random.key(0), 4)
    one = ns["step"](ns["init"](keys[2]), {"x": ns["real"]})[1]
    np.testing.assert_allclose(float(ns["metrics"]["d/total"][2]), float(one["d/total"]), rtol=1e-4, atol=1e-6)
    assert len({round(float(v), 6) for v in ns["metrics"]["d/total"]}) == 4  # the seeds differ


def test_set_learning_rate_takes_effect_without_recompiling(readme_example):
    """`set_learning_rate` between steps: lr 0 freezes both players, and the jitted step is traced once
    (`chex.assert_max_traces`), so a rollback's lower learning rates reuse the compiled step."""
    G, D, objective = readme_example["G"], readme_example["D"], readme_example["objective"]
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=2e-4, b1=0.5)
    step = jax.jit(chex.assert_max_traces(readme_example["make_train_step"](G, D, objective, opt, opt), n=1))
    state = init_gan_state(jax.random.key(0), G, D, opt, opt, data_shape=(2,), hparams=objective.hparams)
    batch = {"x": readme_example["real"]}
    state, _ = step(state, batch)
    frozen = state.replace(g=state.g.replace(opt_state=set_learning_rate(state.g.opt_state, 0.0)),
                           d=state.d.replace(opt_state=set_learning_rate(state.d.opt_state, 0.0)))
    after, _ = step(frozen, batch)
    for before_p, after_p in ((frozen.g.params, after.g.params), (frozen.d.params, after.d.params)):
        jax.tree.map(np.testing.assert_array_equal, before_p, after_p)
    thawed = after.replace(g=after.g.replace(opt_state=set_learning_rate(after.g.opt_state, 1e-2)))
    moved, _ = step(thawed, batch)
    assert float(get_learning_rate(moved.g.opt_state)) == pytest.approx(1e-2)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(thawed.g.params),
                                                       jax.tree.leaves(moved.g.params)))
    chex.clear_trace_counter()


def test_learning_rate_walkers_through_chains_and_schedules():
    """The walkers find ``inject_hyperparams`` states inside chains, leave a schedule's own state alone, keep
    the dtype, trace under vmap, and refuse an optimizer without an injectable learning rate."""
    schedule = optax.linear_schedule(1.0, 0.0, 10)
    chain = optax.chain(optax.clip(1.0), optax.inject_hyperparams(optax.adam)(learning_rate=schedule),
                        optax.inject_hyperparams(optax.sgd)(learning_rate=0.3))
    state = chain.init(jnp.zeros(3))
    assert float(get_learning_rate(state)) == 1.0  # the first one
    new = set_learning_rate(state, 0.5)
    assert [float(s.hyperparams["learning_rate"]) for s in new[1:]] == [0.5, 0.5]
    assert all(s.hyperparams["learning_rate"].dtype == jnp.float32 for s in new[1:])
    assert jax.tree.structure(new) == jax.tree.structure(state)
    chex.assert_trees_all_equal(new[1].hyperparams_states, state[1].hyperparams_states)
    lrs = jax.vmap(lambda lr: get_learning_rate(set_learning_rate(state, lr)))(jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(lrs, [0.1, 0.2])
    plain = optax.adam(1e-3).init(jnp.zeros(3))
    assert get_learning_rate(plain) is None
    with pytest.raises(ValueError, match="no injectable 'learning_rate'"):
        set_learning_rate(plain, 0.1)


def test_flagfile_takes_a_shipped_config_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quick = common.CONFIG_DIR / "quickstart.cfg"
    study = common.CONFIG_DIR / "studies" / "loss_zoo_ring8.cfg"
    resolve = common.resolve_flagfiles
    assert resolve(["p", "--flagfile=quickstart.cfg", "--steps=3"]) == ["p", f"--flagfile={quick}", "--steps=3"]
    assert resolve(["p", "-flagfile=quickstart"]) == ["p", f"-flagfile={quick}"]
    assert resolve(["p", "--flagfile", "launch/configs/studies/loss_zoo_ring8.cfg"]) == ["p", "--flagfile",
                                                                                         str(study)]
    assert resolve(["p", "--flagfile=nope.cfg", "--", "--flagfile=quickstart.cfg"]) == \
        ["p", "--flagfile=nope.cfg", "--", "--flagfile=quickstart.cfg"]  # absl reads no flags after --
    (tmp_path / "quickstart.cfg").write_text("--steps=1\n")
    assert resolve(["p", "--flagfile=quickstart.cfg"]) == ["p", "--flagfile=quickstart.cfg"]  # a local file wins
    assert "quickstart.cfg" in common.shipped_configs() and "studies/loss_zoo_ring8.cfg" in common.shipped_configs()
    with pytest.raises(SystemExit) as e:
        common.parse_flags_one_line(["p", "--flagfile=nope.cfg"])
    lines = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: --flagfile:")
    assert "nope.cfg" in lines[0] and "quickstart.cfg" in lines[0] and "studies/loss_zoo_ring8.cfg" in lines[0]
    # the repository's launch/configs is the package's directory
    assert (REPO / "launch" / "configs").resolve() == common.CONFIG_DIR


_SPY = r"""
import importlib, sys
import jaxgan.interrupts as interrupts
seen = {}
class Installed(Exception):
    pass
def install(*args, **kwargs):
    seen[name] = sorted(m for m in sys.modules if m == "jax" or m.startswith("jax."))
    raise Installed
interrupts.install = install
for name in sys.argv[1:]:
    try:
        importlib.import_module("jaxgan.cli." + name)
    except Installed:
        pass
print(seen)
"""


def test_programs_install_the_signal_handler_before_jax_loads():
    """Each program's module calls `jaxgan.interrupts.install` with no JAX module imported yet."""
    result = subprocess.run([sys.executable, "-c", _SPY, *PROGRAMS], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == repr({name: [] for name in PROGRAMS})


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """(the wheel, a directory it is installed into) built from a copy of the package sources."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "jaxgan", src / "jaxgan", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel, = (root / "dist").glob("jaxgan-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(root / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return wheel, root / "site"


def test_wheel_ships_programs_configs_and_license(installed_wheel):
    wheel, _ = installed_wheel
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        license_text = z.read(f"{info}/licenses/LICENSE").decode()
    assert {f"jaxgan/cli/{p}.py" for p in (*PROGRAMS, "common")} <= names
    shipped = {f"jaxgan/configs/{n}" for n in common.shipped_configs()}
    assert len(shipped) == len(list((REPO / "jaxgan" / "configs").rglob("*.cfg"))) and shipped <= names
    for program in PROGRAMS:
        assert f"jaxgan-{program} = jaxgan.cli.{program}:entry_point" in entry_points
    assert license_text == (REPO / "LICENSE").read_text() and "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text and "License-Expression: Apache-2.0" in metadata
    assert re.search(r"^Version: (.+)$", metadata, re.M).group(1) == jaxgan.__version__
    assert "version" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dynamic"]
    assert not any(line.startswith("Requires-Dist: chex") and "extra ==" not in line
                   for line in metadata.splitlines())  # chex: tests only (optax brings it anyway)


def _run_installed(site, tmp_path, *args, code=None):
    """Runs the installed package from ``tmp_path`` (outside the repository) with only ``site`` added."""
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)


def test_installed_wheel_runs_outside_the_repository(installed_wheel, tmp_path):
    _, site = installed_wheel
    result = _run_installed(site, tmp_path, "jaxgan.cli.train", "--helpfull")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]  # absl's help: 1
    for flag in ("--workdir", "--flagfile", "--loss", "--steps", "--on_nan", "--jax_cache_dir"):
        assert flag in result.stdout, flag
    assert "jaxgan-train --flagfile=quickstart.cfg" in result.stdout  # the program's docstring as its usage
    # a shipped config by name: the flags hold the values of the packaged file
    code = ("import json, sys; import jaxgan, jaxgan.cli.train as t; from absl import flags; "
            "t._common.parse_flags_one_line(['jaxgan-train', '--flagfile=quickstart.cfg', '--workdir=w']); "
            "print(json.dumps([jaxgan.__file__, {n: flags.FLAGS[n].value for n in flags.FLAGS}], default=str))")
    result = _run_installed(site, tmp_path, code=code)
    assert result.returncode == 0, result.stderr[-2000:]
    module_file, values = json.loads(result.stdout.splitlines()[-1])
    assert module_file.startswith(str(site))  # the wheel's package, not the repository's
    expected = common.read_flagfile(REPO / "jaxgan" / "configs" / "quickstart.cfg", Config)
    assert len(expected) > 5 and {k: values[k] for k in expected} == expected
    assert not (tmp_path / "w").exists()
