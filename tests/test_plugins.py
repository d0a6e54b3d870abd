"""Plugin discovery through entry points, registration, and the errors around it."""

from importlib import metadata

import pytest

from forge_core import Plugins, Sink, Source, hookimpl
from forge_core.errors import UsageError


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


def test_two_plugins_with_one_name_are_refused_loudly():
    class Other(Sink):
        name = "csv"

    class Clash:
        @hookimpl
        def forge_register_sinks(self, register):
            register(Other)

    plugins = Plugins()
    plugins.register(Clash(), name="clash")
    with pytest.raises(UsageError, match="two plugins register a sink named 'csv'"):
        plugins.names("sink")


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
