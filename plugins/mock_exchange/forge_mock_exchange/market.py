"""Compatibility: the synthetic market is :mod:`forge_core.testing.market`."""

from forge_core.testing.market import *  # noqa: F403
from forge_core.testing.market import __all__  # noqa: F401
