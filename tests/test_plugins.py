"""Plugin discovery through entry points, registration, and the errors around it."""

from importlib import metadata

import pytest

from forge_core import Plugins, Sink, Source, hookimpl
from forge_core.errors import UsageError
from forge_core.logs import configure


def test_installed_plugins_are_found_by_entry_point():
    plugins = Plugins()
    assert "binance" in plugins.names("source")
    assert "csv" in plugins.names("sink")
    reg = plugins.registry["source"]["binance"]
    assert reg.distribution == "forge-etl-binance" and reg.version


def test_core_imports_no_plugin():
    import subprocess
    import sys

    code = ("import sys, forge_core, forge_core.cli;"
            "bad=[m for m in sys.modules if m.startswith(('forge_binance','forge_okx','forge_sink'))];"
            "print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


class EchoSource(Source):
    name = "echo"


class EchoPlugin:
    @hookimpl
    def forge_register_sources(self, register):
        register(EchoSource)


def test_register_adds_a_plugin_for_embedding_apps():
    plugins = Plugins(entry_points=False)
    plugins.register(EchoPlugin(), name="echo-plugin")
    assert plugins.get("source", "echo") is EchoSource
    assert plugins.names("sink") == []


def test_unknown_plugin_lists_the_installed_ones():
    with pytest.raises(UsageError, match=r"unknown source 'bitfinex'; installed sources: .*binance"):
        Plugins().get("source", "bitfinex")


def test_two_plugins_with_one_name_disable_the_newcomer_only(capsys):
    # issue 11: this used to raise for every question (and so took the whole CLI down); the
    # clash now disables the plugin that registers the taken name, with one warning
    class Other(Sink):
        name = "csv"

    class Extra(Sink):
        name = "extra"

    class Clash:
        @hookimpl
        def forge_register_sinks(self, register):
            register(Other)
            register(Extra)

    configure()
    plugins = Plugins()
    plugins.register(Clash(), name="clash", distribution="clash-dist")
    assert "csv" in plugins.names("sink") and "extra" not in plugins.names("sink")  # all of clash is off
    assert plugins.get("sink", "csv").__module__ == "forge_sink_csv.sink"
    err = capsys.readouterr().err
    assert err.count("plugin_disabled") == 1 and "clash" in err and "clash-dist" in err
    assert "forge-etl-sink-csv" in err
    assert [b for b, _ in plugins.broken] == ["clash"]


def test_a_broken_plugin_is_skipped_with_a_warning(monkeypatch):
    real = metadata.entry_points

    class Broken:
        name, group, dist = "broken", "forge_etl", None

        def load(self):
            raise ImportError("No module named 'missing_dep'")

    def fake(**kw):
        eps = list(real(**kw))
        return [*eps, Broken()] if kw.get("group") == "forge_etl" else eps

    monkeypatch.setattr(metadata, "entry_points", fake)
    plugins = Plugins()
    assert "binance" in plugins.names("source")
    assert plugins.broken == [("broken", "ImportError: No module named 'missing_dep'")]


def test_load_plugins_allow_list(monkeypatch):
    monkeypatch.setenv("FORGE_LOAD_PLUGINS", "csv")
    plugins = Plugins()
    assert plugins.names("source") == [] and plugins.names("sink") == ["csv"]


# -- loading that never takes the CLI down (issue 11) ---------------------------------------------
class Raising:
    @hookimpl
    def forge_register_sources(self, register):
        raise RuntimeError("config file missing")


class Misspelt:
    @hookimpl
    def forge_register_source(self, register):  # missing "s": never called
        register(EchoSource)


def _fake_entry_points(monkeypatch, *extra):
    real = metadata.entry_points

    def fake(**kw):
        eps = list(real(**kw))
        return [*eps, *extra] if kw.get("group") == "forge_etl" else eps

    monkeypatch.setattr(metadata, "entry_points", fake)


class _Dist:
    name, version = "forge-etl-coinbase", "0.3"


class BrokenCoinbase:
    name, group, dist = "coinbase", "forge_etl", _Dist()

    def load(self):
        raise ImportError("No module named 'websockets'")


def test_a_raising_registration_hook_disables_that_plugin_only(forge, capsys):
    configure()
    plugins = Plugins()
    plugins.register(Raising(), name="raising", distribution="raising-dist")
    assert "binance" in plugins.names("source")
    err = capsys.readouterr().err
    assert err.count("plugin_disabled") == 1 and "raising-dist" in err and "config file missing" in err
    assert plugins.broken == [("raising", "forge_register_sources raised RuntimeError: config file missing")]


def test_forge_help_survives_a_raising_hook_and_a_clash(capsys):
    from forge_core.cli import main

    class Other(Source):
        name = "binance"

    class Clash:
        @hookimpl
        def forge_register_sources(self, register):
            register(Other)

    plugins = Plugins()
    plugins.register(Raising(), name="raising")
    plugins.register(Clash(), name="clash")
    assert main(["--help"], plugins=plugins) == 0
    assert "run" in capsys.readouterr().out
    assert main(["plugins"], plugins=plugins) == 0
    out = capsys.readouterr().out
    assert "forge-etl-binance" in out and "broken    raising" in out and "broken    clash" in out


def test_a_misspelt_hook_is_reported_naming_the_plugin(capsys):
    configure()
    plugins = Plugins(entry_points=False)
    plugins.register(Misspelt(), name="misspelt", distribution="misspelt-dist")
    err = capsys.readouterr().err
    assert "plugin_unknown_hook" in err and "forge_register_source" in err and "misspelt-dist" in err
    assert plugins.names("source") == []


def test_an_installed_but_broken_source_says_so(forge, monkeypatch, in_tmp):
    _fake_entry_points(monkeypatch, BrokenCoinbase())
    result = forge("run", "-q", "-s", "coinbase", "--symbol", "BTC-USD", "--from", "2024-01-01", "--to", "2024-01-02")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert ("source 'coinbase' is installed (plugin coinbase, distribution forge-etl-coinbase) but broken: "
            "ImportError: No module named 'websockets'") in line
    assert result.err.count("plugin_disabled") == 1  # the warning, once
    help_result = forge("--help")
    assert help_result.code == 0 and "run" in help_result.out


def test_a_pipeline_given_instances_loads_no_entry_point(monkeypatch):
    from forge_core import Pipeline

    def refuse(**kw):
        raise AssertionError("entry points were listed")

    class EchoSink(Sink):
        name = "echo-sink"

    monkeypatch.setattr(metadata, "entry_points", refuse)
    pipeline = Pipeline(EchoSource(), [EchoSink()])
    assert pipeline.plugins.entry_point_loads == 0


def test_asking_for_one_plugin_imports_only_its_entry_point():
    plugins = Plugins()
    assert plugins.get("source", "okx").__name__ == "OkxSource"
    assert plugins.entry_point_loads == 1
    plugins.names("source")  # the full list needs everything
    assert plugins.entry_point_loads > 1


def test_forge_run_imports_only_the_plugins_it_names():
    import subprocess
    import sys

    code = ("import sys; from forge_core.cli import main;"
            "code = main(['run', '-q', '-s', 'okx', '--symbol', 'X', '--from', '2024-02-30']);"
            "bad = [m for m in ('forge_binance', 'forge_sink_postgres', 'forge_mock_exchange', 'sqlalchemy') "
            "if m in sys.modules]; print(bad); sys.exit(3 if bad else 1 if code == 2 else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 2 from main (bad date) -> exit 1 here
    assert proc.stdout.strip() == "[]" and "bad from date '2024-02-30'" in proc.stderr


def test_a_csv_run_imports_no_database_columnar_or_logging_library(mock, tmp_path):
    """Start-up (issue 18): a whole ``forge run -s binance --sink csv`` against the mock imports
    neither the PostgreSQL nor the Parquet stack, nor structlog (nothing was logged), nor the
    integrity commands or the testing kit."""
    import subprocess
    import sys

    heavy = ("sqlalchemy", "psycopg2", "pyarrow", "polars", "structlog", "rich", "forge_sink_postgres",
             "forge_sink_parquet", "forge_core.integrity", "forge_core.testing")
    code = ("import sys; from forge_core.cli import main;"
            f"code = main(['run', '-q', '-s', 'binance', '--sink', 'csv', '--symbol', 'BTCUSDT', '--from', "
            f"'2024-01-01', '--to', '2024-01-01 01:00', '--archive', 'rest', '--base-url', {mock.url!r}, "
            f"'--output', {str(tmp_path / 'out.csv')!r}]);"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m.startswith({heavy!r})));"
            "sys.exit(code)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("FORGE_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 1 + 61  # header + 00:00..01:00


def test_the_streamforge_layer_builds_its_plugins_once(monkeypatch):
    import forge_core as sf
    from forge_core import compat

    built = []

    class Counting(Plugins):
        def __init__(self, **kw):
            built.append(1)
            super().__init__(**kw)

    monkeypatch.setattr(compat, "Plugins", Counting)
    monkeypatch.setattr(compat, "_plugins", None)
    monkeypatch.setattr(compat, "_cache", {})
    emitter = sf.CsvEmitter().set_output("x.csv")
    backfiller = sf.BinanceBackfilling("BTCUSDT", "1m", "2024-01-01", "2024-01-02")
    backfiller.register_emitter(emitter)
    emitter.make()
    sf.PostgresEmitter(host="localhost").on_conflict(["open_ts"]).make()
    compat.available()
    assert len(built) == 1
