"""Compatibility: the fault injector is :mod:`forge_core.testing.faults`."""

from forge_core.testing.faults import *  # noqa: F403
from forge_core.testing.faults import __all__  # noqa: F401
