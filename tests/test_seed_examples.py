"""The streamforge user guide itself (``000_566f02d9e648efb0.txt``), when it is available.

The guide is not shipped with Forge: it is looked for at ``$FORGE_SEED_GUIDE``, else in
``../shared/seeds/`` beside the repository. Without it these tests skip (the reason names the
file) and ``test_guide_examples.py`` still runs the repository's verbatim copy of its examples.
With it, the copy must be exactly the guide's examples, and the guide's own blocks are run and
checked as well (``guide_checks.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from guide_checks import *  # noqa: F403  (the guide fixture and the checks, collected here)
from guide_checks import parse_guide
from guide_examples import BLOCKS, SOURCE

ROOT = Path(__file__).resolve().parent.parent


def find_guide() -> Path | None:
    if os.environ.get("FORGE_SEED_GUIDE"):
        return Path(os.environ["FORGE_SEED_GUIDE"])
    found = sorted((ROOT.parent / "shared" / "seeds").glob("000_*.txt"))
    return found[0] if found else None


SEED = find_guide()
pytestmark = pytest.mark.skipif(
    SEED is None or not SEED.is_file(),
    reason=f"the streamforge guide {SOURCE} is not available (set FORGE_SEED_GUIDE or put it in "
           f"../shared/seeds/); tests/test_guide_examples.py runs the repository's copy of its examples")


@pytest.fixture(scope="module")
def guide_blocks() -> list[tuple[str, str]]:
    assert SEED is not None
    return parse_guide(SEED.read_text())


def test_the_repository_copy_is_exactly_the_guides_examples(guide_blocks):
    assert [h for h, _ in guide_blocks] == [h for h, _ in BLOCKS]
    assert guide_blocks == BLOCKS, "tests/guide_examples.py differs from the guide: copy it again"
