"""Command-line programs: ``jaxgan-train``, ``jaxgan-sample``, ``jaxgan-evaluate``, ``jaxgan-sweep``.

Each is also ``python -m jaxgan.cli.NAME`` (and ``python launch/NAME.py`` in a checkout). This package imports
nothing: each program installs its signal handler (`jaxgan.interrupts`) before it imports JAX.
"""
