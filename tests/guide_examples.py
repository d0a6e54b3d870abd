"""The 27 Python examples of the streamforge backfilling user guide, verbatim, in document order.

Copied (code blocks only, each with the heading it appears under) from the guide the project was
created from, "Backfilling" in the streamforge documentation (``shared/seeds/000_566f02d9e648efb0.txt``
in the project's reference collection, not shipped). ``tests/test_guide_examples.py`` runs them; when
the guide itself is present, ``tests/test_seed_examples.py`` checks this copy is still exactly its
examples. Do not edit a block: it is what users of streamforge paste.
"""

from __future__ import annotations

SOURCE = "000_566f02d9e648efb0.txt"  # the guide's file name in shared/seeds

# ruff: noqa: W291, W293  (trailing whitespace is part of the copied blocks)
BLOCKS: list[tuple[str, str]] = [
    ('What is Backfilling?', r'''backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1m",
    from_date="2024-01-01",
    to_date="2024-12-31"
)

backfiller.run()  # Downloads year of data
'''),
    ('Binance Backfilling', r'''import streamforge as sf

backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1m",
    from_date="2024-10-01",
    to_date="2024-10-31"
)

# Defaults to CSV if no emitter registered
backfiller.run()
'''),
    ('OKX Backfilling', r'''backfiller = sf.OkxBackfilling(
    symbol="BTC-USDT",      # OKX format
    timeframe="1m",
    from_date="2024-10-01",
    to_date="2024-10-31"
)

backfiller.run()
'''),
    ('Date Formats', r'''# YYYY-MM-DD
from_date="2024-01-01"

# YYYY-MM-DD HH:MM:SS
from_date="2024-01-01 12:00:00"

# Special: "now"
to_date="now"  # Until present
'''),
    ('Default: CSV', r'''backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1h",
    from_date="2024-01-01",
    to_date="2024-12-31"
)

backfiller.run()
# Creates: Binance-BTCUSDT-1h-2024-01-01_2024-12-31.csv
'''),
    ('PostgreSQL', r'''import streamforge as sf
from sqlalchemy.orm import declarative_base
from sqlalchemy import Column, String, Float, BigInteger

Base = declarative_base()

class KlineTable(Base):
    __tablename__ = 'klines'
    source = Column(String, primary_key=True)
    symbol = Column(String, primary_key=True)
    timeframe = Column(String, primary_key=True)
    open_ts = Column(BigInteger, primary_key=True)
    end_ts = Column(BigInteger)
    open = Column(Float)
    high = Column(Float)
    low = Column(Float)
    close = Column(Float)
    volume = Column(Float)

# Create emitter with upsert
postgres = (sf.PostgresEmitter(
        host="localhost",
        dbname="crypto",
        user="postgres",
        password="secret"
    )
    .set_model(KlineTable)
    .on_conflict(["source", "symbol", "timeframe", "open_ts"])  # Important!
)

# Backfill
backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1m",
    from_date="2024-01-01",
    to_date="2024-12-31"
)

backfiller.register_emitter(postgres)
backfiller.run()
'''),
    ('Custom Path for CSV', r'''backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1m",
    from_date="2024-01-01",
    to_date="2024-12-31",
    file_path="my_custom_name.csv"  # Custom filename
)

backfiller.run()
'''),
    ('Example 1: Simple CSV Backfill', r'''import streamforge as sf

def backfill_to_csv():
    """Backfill BTC data to CSV"""
    
    backfiller = sf.BinanceBackfilling(
        symbol="BTCUSDT",
        timeframe="1h",
        from_date="2024-01-01",
        to_date="2024-12-31"
    )
    
    print("Starting backfill...")
    backfiller.run()
    print("✓ Backfill complete!")

if __name__ == "__main__":
    backfill_to_csv()
'''),
    ('Example 2: PostgreSQL Backfill', r'''import streamforge as sf
from sqlalchemy.orm import declarative_base
from sqlalchemy import Column, String, Float, BigInteger

Base = declarative_base()

class KlineTable(Base):
    __tablename__ = 'klines'
    source = Column(String, primary_key=True)
    symbol = Column(String, primary_key=True)
    timeframe = Column(String, primary_key=True)
    open_ts = Column(BigInteger, primary_key=True)
    end_ts = Column(BigInteger)
    open = Column(Float)
    high = Column(Float)
    low = Column(Float)
    close = Column(Float)
    volume = Column(Float)

def backfill_to_postgres():
    """Backfill to PostgreSQL database"""
    
    # Create emitter
    postgres = (sf.PostgresEmitter(
            host="localhost",
            dbname="crypto",
            user="postgres",
            password="mysecretpassword"
        )
        .set_model(KlineTable)
        .on_conflict(["source", "symbol", "timeframe", "open_ts"])
    )
    
    # Backfill
    backfiller = sf.BinanceBackfilling(
        symbol="BTCUSDT",
        timeframe="1m",
        from_date="2024-10-01",
        to_date="2024-10-31"
    )
    
    backfiller.register_emitter(postgres)
    
    print("Backfilling to PostgreSQL...")
    backfiller.run()
    print("✓ Done!")

if __name__ == "__main__":
    backfill_to_postgres()
'''),
    ('Example 3: Multiple Symbols', r'''import streamforge as sf
from sqlalchemy.orm import declarative_base
from sqlalchemy import Column, String, Float, BigInteger

Base = declarative_base()

class KlineTable(Base):
    __tablename__ = 'klines'
    source = Column(String, primary_key=True)
    symbol = Column(String, primary_key=True)
    timeframe = Column(String, primary_key=True)
    open_ts = Column(BigInteger, primary_key=True)
    end_ts = Column(BigInteger)
    open = Column(Float)
    high = Column(Float)
    low = Column(Float)
    close = Column(Float)
    volume = Column(Float)

def backfill_multiple_symbols():
    """Backfill multiple symbols to database"""
    
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "ADAUSDT"]
    
    postgres = (sf.PostgresEmitter(
            host="localhost",
            dbname="crypto",
            user="postgres",
            password="secret"
        )
        .set_model(KlineTable)
        .on_conflict(["source", "symbol", "timeframe", "open_ts"])
    )
    
    for symbol in symbols:
        print(f"\n📊 Backfilling {symbol}...")
        
        backfiller = sf.BinanceBackfilling(
            symbol=symbol,
            timeframe="1h",
            from_date="2024-01-01",
            to_date="2024-12-31"
        )
        
        backfiller.register_emitter(postgres)
        backfiller.run()
        
        print(f"✓ {symbol} complete!")
    
    print("\n✓ All symbols backfilled!")

if __name__ == "__main__":
    backfill_multiple_symbols()
'''),
    ('Example 4: With Transformer', r'''import streamforge as sf

def price_transformer(data: dict) -> dict:
    """Add computed fields"""
    return {
        **data,
        "price_change_pct": ((data["close"] - data["open"]) / data["open"]) * 100,
        "is_bullish": data["close"] > data["open"],
        "price_range": data["high"] - data["low"]
    }

def backfill_with_transformation():
    """Backfill with data transformation"""
    
    backfiller = sf.BinanceBackfilling(
        symbol="BTCUSDT",
        timeframe="1h",
        from_date="2024-01-01",
        to_date="2024-12-31",
        file_path="btc_with_indicators.csv"
    )
    
    backfiller.set_transformer(price_transformer)
    
    print("Backfilling with transformation...")
    backfiller.run()
    print("✓ Done!")

if __name__ == "__main__":
    backfill_with_transformation()
'''),
    ('Backfill to Present', r'''backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1m",
    from_date="2024-01-01",
    to_date="now"  # Until now
)

backfiller.run()
'''),
    ('Short Period (Days)', r'''# 7 days
backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1m",
    from_date="2024-10-01",
    to_date="2024-10-07"
)
'''),
    ('Medium Period (Months)', r'''# 3 months
backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1h",
    from_date="2024-07-01",
    to_date="2024-09-30"
)
'''),
    ('Long Period (Years)', r'''# 2 years
backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1d",
    from_date="2023-01-01",
    to_date="2024-12-31"
)
'''),
    ('Rate Limiting', r'''# Automatic rate limiting - no configuration needed
backfiller = sf.BinanceBackfilling(...)
backfiller.run()  # Respects exchange rate limits
'''),
    ('Safe Re-Running', r'''postgres = (sf.PostgresEmitter(...)
    .set_model(KlineTable)
    .on_conflict(["source", "symbol", "timeframe", "open_ts"])  # Upsert!
)

# Run once
backfiller.register_emitter(postgres)
backfiller.run()

# Run again - no duplicates, updates existing records
backfiller.run()
'''),
    ('Safe Re-Running', r'''# ✗ Will create duplicates
postgres.set_model(KlineTable)  # No on_conflict()

backfiller.register_emitter(postgres)
backfiller.run()  # First run
backfiller.run()  # Second run - DUPLICATES!
'''),
    ('Gap Filling', r'''# You have data for Jan-Mar and Jul-Dec
# Fill the Apr-Jun gap:

backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1h",
    from_date="2024-04-01",  # Gap start
    to_date="2024-06-30"     # Gap end
)

backfiller.register_emitter(postgres_with_upsert)
backfiller.run()
'''),
    ('1. Always Use Upsert for PostgreSQL', r'''# ✓ Safe to re-run
postgres.on_conflict(["source", "symbol", "timeframe", "open_ts"])

# ✗ Will create duplicates
postgres.set_model(KlineTable)  # No upsert
'''),
    ('2. Choose Appropriate Timeframe', r'''# ✓ Good - 1h for analysis
backfiller = sf.BinanceBackfilling(
    timeframe="1h",
    from_date="2023-01-01",
    to_date="2024-12-31"
)

# ⚠️ Slower - 1m for 2 years
backfiller = sf.BinanceBackfilling(
    timeframe="1m",  # Lots of data!
    from_date="2023-01-01",
    to_date="2024-12-31"
)
'''),
    ('3. Batch Large Backfills', r'''import pandas as pd

# Generate date ranges
date_ranges = pd.date_range(
    start="2020-01-01",
    end="2024-12-31",
    freq="3MS"  # 3-month intervals
)

# Backfill in chunks
for i in range(len(date_ranges) - 1):
    from_date = date_ranges[i].strftime("%Y-%m-%d")
    to_date = date_ranges[i + 1].strftime("%Y-%m-%d")
    
    print(f"Backfilling {from_date} to {to_date}...")
    
    backfiller = sf.BinanceBackfilling(
        symbol="BTCUSDT",
        timeframe="1h",
        from_date=from_date,
        to_date=to_date
    )
    
    backfiller.register_emitter(postgres)
    backfiller.run()
'''),
    ('4. Test with Small Ranges First', r'''# ✓ Test first
backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1h",
    from_date="2024-10-01",
    to_date="2024-10-02"  # Just 1 day
)

# Then scale up
backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1h",
    from_date="2024-01-01",
    to_date="2024-12-31"  # Full year
)
'''),
    ('Pattern 1: Initial Database Population', r'''# Populate fresh database
symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]

for symbol in symbols:
    backfiller = sf.BinanceBackfilling(
        symbol=symbol,
        timeframe="1h",
        from_date="2024-01-01",
        to_date="now"
    )
    backfiller.register_emitter(postgres_with_upsert)
    backfiller.run()
'''),
    ('Pattern 2: Daily Update', r'''from datetime import datetime, timedelta

# Backfill yesterday's data
yesterday = (datetime.now() - timedelta(days=1)).strftime("%Y-%m-%d")
today = datetime.now().strftime("%Y-%m-%d")

backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1m",
    from_date=yesterday,
    to_date=today
)

backfiller.register_emitter(postgres_with_upsert)
backfiller.run()
'''),
    ('Pattern 3: Multi-Exchange Backfill', r'''# Backfill same symbol from multiple exchanges
symbols_by_exchange = {
    "Binance": "BTCUSDT",
    "OKX": "BTC-USDT"
}

# Binance
binance_backfiller = sf.BinanceBackfilling(
    symbol="BTCUSDT",
    timeframe="1h",
    from_date="2024-01-01",
    to_date="2024-12-31"
)
binance_backfiller.register_emitter(postgres)
binance_backfiller.run()

# OKX
okx_backfiller = sf.OkxBackfilling(
    symbol="BTC-USDT",
    timeframe="1h",
    from_date="2024-01-01",
    to_date="2024-12-31"
)
okx_backfiller.register_emitter(postgres)
okx_backfiller.run()
'''),
    ('Duplicate Data', r'''postgres.on_conflict(["source", "symbol", "timeframe", "open_ts"])
'''),
]
