"""Options resolved and validated by the core (issue 11): given > environment > default, types,
choices, required options and secrets, the same from every entry point (class, Pipeline,
streamforge layer)."""

from __future__ import annotations

import pytest

import forge_core as sf
from forge_core import Option, Pipeline, Sink, Source, UsageError


class Probe(Source):
    """Reads nothing from the environment itself: whatever it sees, the core resolved."""

    name = "probe"
    options = (
        Option("base_url", "host", envvar="PROBE_URL", default="https://probe.example"),
        Option("limit", "rows per page", type=int, envvar="PROBE_LIMIT", default=100),
        Option("ratio", "a float", type=float),
        Option("strict", "a yes/no", type=bool, envvar="PROBE_STRICT"),
        Option("kind", "market", choices=("spot", "perp"), default="spot"),
        Option("token", "API token", envvar="PROBE_TOKEN", secret=True),
        Option("tags", "several", multiple=True, choices=("a", "b")),
    )


class Needy(Sink):
    name = "needy"
    options = (Option("dsn", "where to write", required=True, envvar="NEEDY_DSN", secret=True),)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("PROBE_URL", "PROBE_LIMIT", "PROBE_STRICT", "PROBE_TOKEN", "NEEDY_DSN"):
        monkeypatch.delenv(var, raising=False)


def test_given_beats_environment_beats_default(monkeypatch):
    assert Probe().settings["base_url"] == "https://probe.example"
    monkeypatch.setenv("PROBE_URL", "http://from-env")
    source = Probe()
    assert source.settings["base_url"] == "http://from-env"
    assert source.settings.origin("base_url") == "env PROBE_URL"
    assert Probe(base_url="http://given").settings["base_url"] == "http://given"
    assert Probe(base_url=None).settings["base_url"] == "http://from-env"  # None = not given
    monkeypatch.setenv("PROBE_URL", "")
    assert Probe().settings["base_url"] == "https://probe.example"  # empty = unset


def test_types_are_converted_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("PROBE_LIMIT", "250")
    monkeypatch.setenv("PROBE_STRICT", "yes")
    settings = Probe(ratio="0.5").settings
    assert settings["limit"] == 250 and settings["strict"] is True and settings["ratio"] == 0.5
    monkeypatch.setenv("PROBE_LIMIT", "lots")
    with pytest.raises(UsageError) as info:
        Probe()
    assert str(info.value) == "source 'probe' option limit (--limit): 'lots' (from PROBE_LIMIT) is not an integer"
    with pytest.raises(UsageError, match=r"option ratio \(--ratio\): 'half' is not a number"):
        Probe(ratio="half", limit=1)
    with pytest.raises(UsageError, match="'maybe' is not a yes/no value"):
        Probe(strict="maybe", limit=1)


def test_choices_are_enforced_for_every_plugin():
    with pytest.raises(UsageError) as info:
        Probe(kind="futures")
    assert str(info.value) == "source 'probe' option kind (--kind): 'futures' is not one of 'spot', 'perp'"
    assert Probe(tags="a,b").settings["tags"] == ("a", "b")
    with pytest.raises(UsageError, match="'c' is not one of 'a', 'b'"):
        Probe(tags=["a", "c"])


def test_required_option_names_the_flag_and_the_variable(monkeypatch):
    with pytest.raises(UsageError) as info:
        Needy()
    assert "sink 'needy' needs option dsn (--dsn) or set NEEDY_DSN" in str(info.value)
    monkeypatch.setenv("NEEDY_DSN", "postgresql://u:pw@h/db")
    assert Needy().settings["dsn"] == "postgresql://u:pw@h/db"


def test_secrets_are_masked_in_repr_and_errors(monkeypatch):
    monkeypatch.setenv("PROBE_TOKEN", "s3cret-token")
    source = Probe()
    assert source.settings["token"] == "s3cret-token"
    assert "s3cret-token" not in repr(source.settings) and "'***'" in repr(source.settings)
    assert "s3cret-token" not in str(source.settings)

    class Picky(Source):
        name = "picky"
        options = (Option("password", "pw", secret=True, choices=("a", "b")),
                   Option("pin", "pin", secret=True, type=int))

    for bad in ({"password": "hunter2"}, {"pin": "hunter2"}):
        with pytest.raises(UsageError) as info:
            Picky(**bad)
        assert "hunter2" not in str(info.value) and "'***'" in str(info.value)


def test_an_envvar_may_depend_on_another_option(monkeypatch):
    class Markets(Source):
        name = "markets"
        options = (Option("base_url", "host", envvar={"spot": "M_SPOT_URL", "perp": "M_PERP_URL"}, envvar_by="market"),
                   Option("market", "market", choices=("spot", "perp"), default="spot"))

    monkeypatch.setenv("M_SPOT_URL", "http://spot")
    monkeypatch.setenv("M_PERP_URL", "http://perp")
    assert Markets().settings["base_url"] == "http://spot"
    assert Markets(market="perp").settings["base_url"] == "http://perp"
    assert Markets(market="perp").settings.origin("base_url") == "env M_PERP_URL"


def test_binance_reads_the_variable_of_its_market_through_the_core(monkeypatch):
    from forge_binance import BinanceSource

    monkeypatch.setenv("FORGE_BINANCE_URL", "http://spot.test")
    monkeypatch.setenv("FORGE_BINANCE_FUTURES_URL", "http://usdm.test")
    monkeypatch.setenv("FORGE_BINANCE_COINM_URL", "http://coinm.test")
    for market, host in (("spot", "spot"), ("usdm", "usdm"), ("coinm", "coinm")):
        source = BinanceSource(market=market)
        assert source.http.base_url == f"http://{host}.test"
        assert source.settings.origin("base_url") == f"env {BinanceSource.options[0].envvar[market]}"


BAD_CATEGORY = "source 'bybit' option category (--category): 'linearr' is not one of 'spot', 'linear', 'inverse'"


@pytest.mark.parametrize("build", [
    lambda: __import__("forge_bybit").BybitSource(category="linearr"),
    lambda: Pipeline(("bybit", {"category": "linearr"})),
    lambda: sf.BybitBackfilling("BTCUSDT", "1h", "2024-01-01", "2024-01-02", category="linearr").run(),
], ids=["class", "pipeline", "streamforge"])
def test_bybit_category_typo_is_refused_the_same_everywhere(build, in_tmp):
    with pytest.raises(UsageError) as info:
        build()
    assert str(info.value) == BAD_CATEGORY
    assert not list(in_tmp.iterdir())


def test_okx_and_bybit_base_urls_come_from_their_variables(monkeypatch):
    from forge_bybit import BybitSource
    from forge_okx.source import OkxSource

    monkeypatch.setenv("FORGE_OKX_URL", "http://okx.test")
    monkeypatch.setenv("FORGE_BYBIT_URL", "http://bybit.test")
    assert OkxSource().settings.origin("base_url") == "env FORGE_OKX_URL"
    assert BybitSource().settings.origin("base_url") == "env FORGE_BYBIT_URL"
    assert BybitSource().http.base_url == "http://bybit.test"
