"""jaxgan: GANs in JAX/Flax."""

__version__ = "0.1.0"  # the package version: pyproject.toml reads it (setuptools dynamic attr)

from jaxgan import xla_flags as _xla_flags

# Before any JAX computation creates the CPU backend; see jaxgan/xla_flags.py (opt out: JAXGAN_XLA_DEFAULTS=0).
_xla_flags.apply_cpu_defaults()
