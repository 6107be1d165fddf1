"""Test-wide JAX settings: persistent compile cache, typed keys only, 4 fake CPU devices."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

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
