"""``python launch/sweep.py`` in a checkout = ``jaxgan-sweep`` (`jaxgan.cli.sweep`; flags: --help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgan.cli.sweep import entry_point  # noqa: E402  (it installs the signal handler before JAX loads)

if __name__ == "__main__":
    entry_point()
