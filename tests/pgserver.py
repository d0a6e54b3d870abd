"""Compatibility: the throwaway PostgreSQL server moved into the testing kit,
:mod:`forge_core.testing.pgserver` (``import pgserver`` from tests and bench still works)."""

import sys

from forge_core.testing import pgserver

sys.modules[__name__] = pgserver
