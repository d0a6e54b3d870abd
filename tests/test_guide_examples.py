"""Every example of the streamforge backfilling guide runs on Forge with ``import forge_core as sf``.

The examples are the repository's own verbatim copy (``guide_examples.py``, with attribution), so
this runs on a plain clone; ``test_seed_examples.py`` checks the copy against the guide itself
when the guide is available. What is run and checked: ``guide_checks.py``.
"""

from __future__ import annotations

import pytest
from guide_checks import *  # noqa: F403  (the guide fixture and the checks, collected here)
from guide_examples import BLOCKS


@pytest.fixture(scope="module")
def guide_blocks() -> list[tuple[str, str]]:
    return BLOCKS
