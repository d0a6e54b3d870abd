"""The PostgreSQL sink against Forge's sink contract (forge_core.testing), on the kit's
throwaway server (or FORGE_TEST_DATABASE_URL)."""

from __future__ import annotations

import psycopg2
import psycopg2.extras
import pytest

from forge_core.testing import SinkContract


class TestPostgresSinkContract(SinkContract):
    sink = "postgres"
    visible_before_close = True  # committed transactions are visible at once

    @pytest.fixture
    def sink_options(self, pg_url, request):
        table = "contract_" + request.node.name.removeprefix("test_")[:40]
        conn = psycopg2.connect(pg_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.close()
        return {"database_url": pg_url, "table": table}

    @pytest.fixture
    def bad_sink_options(self, pg_url):
        return {"database_url": pg_url.rsplit("/", 1)[0] + "/no_such_database"}

    def read_back(self, options, symbol):
        conn = psycopg2.connect(options["database_url"])
        try:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute("SELECT to_regclass(%s)", (options["table"],))
                if cur.fetchone()["to_regclass"] is None:
                    return []
                cur.execute(f'SELECT * FROM "{options["table"]}" WHERE symbol = %s ORDER BY open_ts', (symbol,))
                return [dict(r) for r in cur.fetchall()]
        finally:
            conn.close()
