"""The benchmark on a tiny range (``bench/run.py --quick``), so it cannot rot.

Asserts that the table is produced with sane numbers, never how fast anything is: timings on
a shared 2-core machine are noise at this size. streamforge and ccxt are skipped in quick mode
(no virtualenvs are created).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_produces_the_table(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    by_case = {r["case"].split(" ")[0]: r for r in data["results"]}

    assert data["quick"] is True
    assert data["machine"]["nproc"] and data["machine"]["python"]
    for case in ("1.", "2.", "5.", "6."):
        assert case in by_case, f"case {case} missing from {list(by_case)}"
    assert not any(c.startswith("7") for c in by_case), "quick mode must not run streamforge/ccxt"

    single = by_case["1."]["data"]
    assert single["rows"] == 3 * 1440  # three whole days of 1m candles, no hole in the mock there
    assert single["requests"] >= 3 and single["http_429"] == 0 and single["http_418"] == 0
    assert single["candles_per_s"] > 0 and 0 < by_case["1."]["ratio"] < 100

    weight = by_case["2."]["data"]
    assert weight["rows"] > 0 and weight["http_429"] == 0 and weight["http_418"] == 0
    assert math.isfinite(by_case["2."]["ratio"]) and by_case["2."]["ratio"] > 0

    okx = by_case.get("3.")
    assert okx is not None
    if okx["measured"] != "not available":
        assert okx["data"]["rows"] == 1440 and okx["data"]["http_429"] == 0

    csv_case = by_case["5."]
    assert csv_case["data"]["identical"] is True and csv_case["ratio"] > 0

    memory = by_case["6."]["data"]
    assert 10 < memory["month"]["maxrss_mib"] < 2000 and 10 < memory["year"]["maxrss_mib"] < 2000

    for row in data["results"]:
        if row["case"].startswith("4.") and row["measured"] != "not available":
            assert row["ratio"] > 0

    profile = data["profile"]
    assert profile["rows"] > 0 and set(profile["stages_ms_per_1000"]) >= {"json decode", "csv.writer.writerows"}
    table = (tmp_path / "results.md").read_text()
    assert "| case | measured |" in table and "1. Binance 1m" in table
