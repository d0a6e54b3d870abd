"""The streamforge user guide itself (``000_566f02d9e648efb0.txt``), when it is available.

The guide is not shipped with Forge, and the suite reads nothing outside the repository: the
guide is read only from ``$FORGE_SEED_GUIDE``. Without it this test skips (the reason names the
file). With it, the repository's verbatim copy of its examples (``guide_examples.py``) must be
exactly the guide's Python blocks, in order: ``test_guide_examples.py`` runs that copy and
checks what every example produced, so the guide's examples are covered with or without the
guide (running the identical blocks twice would only double a six-minute test).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from guide_checks import FRAGMENTS, parse_guide
from guide_examples import BLOCKS, SOURCE

SEED = Path(os.environ["FORGE_SEED_GUIDE"]) if os.environ.get("FORGE_SEED_GUIDE") else None
pytestmark = pytest.mark.skipif(
    SEED is None or not SEED.is_file(),
    reason=f"the streamforge guide {SOURCE} is not available (set FORGE_SEED_GUIDE to its path); "
           "tests/test_guide_examples.py runs the repository's copy of its examples")


def test_the_repository_copy_is_exactly_the_guides_examples():
    assert SEED is not None
    blocks = parse_guide(SEED.read_text())
    assert len(blocks) == 27
    assert [h for h, _ in blocks] == [h for h, _ in BLOCKS]
    for (heading, code), (_, copied) in zip(blocks, BLOCKS, strict=True):
        assert code == copied, f"tests/guide_examples.py differs from the guide under {heading!r}: copy it again"
    assert {h for h, code in blocks if "(...)" in code} == FRAGMENTS
