"""Test-wide JAX settings: persistent compile cache, typed keys only, 4 fake CPU devices, XLA:CPU programs
compiled without LLVM's optimisations.

The suite is bound by compilation (hundreds of small programs, each compiled once): with LLVM at -O0
(``--xla_backend_optimization_level=0``; XLA's own HLO passes still run) the suite took 12.3 minutes instead of
16.9 on a 2-core machine, and what the tests check (the library's arithmetic against references, equalities of
two code paths, training outcomes with margins over seeds) does not depend on the optimisation level. The
rounding does, slightly: a subprocess whose numbers a test compares with its own must compile the same way, so
tests give their subprocesses ``subprocess_xla_flags(devices)``.
"""
import os
import pathlib

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def subprocess_xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a test's subprocess on ``devices`` simulated CPU devices, compiled as the suite is."""
    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = subprocess_xla_flags(4)
elif "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + TEST_XLA_FLAGS

import jax  # noqa: E402
import numpy as np  # noqa: E402

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_legacy_prng_key", "error")

REPO = pathlib.Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items):
    """Slow tests first (stable order otherwise): pytest-xdist hands tests out in collection order, so the
    minute-long runs start early on both workers instead of finishing last on one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


SWEEP_ONLY_FLAGS = {"sweep", "losses", "eval_samples", "w1_samples", "chunk", "search", "trials", "search_seed"}


def read_study_flagfile(path, tmp_path):
    """(base Config, the Config flags the file gives, parsed --sweep values, --losses entries) of a flagfile.

    A line that names neither a Config field nor a flag of launch/sweep.py (`SWEEP_ONLY_FLAGS`) fails in
    `read_flagfile` (unknown flag)."""
    import dataclasses

    from jaxgan import sweep
    from jaxgan.cli import common
    from jaxgan.config import Config
    fields = {f.name for f in dataclasses.fields(Config)}
    given, sweeps, losses, lines = set(), [], [], []
    for line in pathlib.Path(path).read_text().splitlines():
        flag = line.split("#", 1)[0].strip()
        name, _, value = flag.lstrip("-").partition("=")
        if name == "sweep":
            sweeps.append(sweep.parse_sweep_flag(value))
        elif name == "losses":
            losses = value.split(",")
        elif name and name not in SWEEP_ONLY_FLAGS:
            given.add(name[2:] if name.startswith("no") and name[2:] in fields else name)
            lines.append(flag)
    base_file = tmp_path / "base.cfg"
    base_file.write_text("\n".join(lines))
    return Config(**common.read_flagfile(base_file, Config)), given, sweeps, losses


def state_leaves(tree) -> list:
    """Every leaf of ``tree`` as a NumPy array (typed PRNG keys as their key data), for bitwise comparisons of
    train states."""
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(tree)]

