"""Moved to `jaxgan.cli.common`; ``from launch import _common`` still imports that module."""
import sys

from jaxgan.cli import common

sys.modules[__name__] = common
