"""``forge run`` options scoped to the plugins chosen on its command line (issue 11), and the
options every ``forge run`` accepts after ``run`` (issue 16)."""

from __future__ import annotations

import pytest

import forge_sink_csv.plugin
from forge_core import Option, Plugins, Source, SourceError, hookimpl
from forge_core.cli import main, plugin_args

SEEN: list[dict] = []


class Alpha(Source):
    name = "alpha"
    options = (Option("market", "Alpha market.", choices=("spot", "perp"), default="spot"),
               Option("flavour", "Alpha only.", metavar="NAME"))

    def __init__(self, **options):
        super().__init__(**options)
        SEEN.append(dict(self.settings))

    def prepare(self, symbol, timeframe):
        raise SourceError("stop before any request")


class Beta(Alpha):
    name = "beta"
    options = (Option("market", "Beta market.", choices=("futures", "options")),
               Option("depth", "Beta only.", type=int, default=5))


class Pair:
    @hookimpl
    def forge_register_sources(self, register):
        register(Alpha)
        register(Beta)


@pytest.fixture
def cli(capsys, in_tmp):
    SEEN.clear()
    plugins = Plugins(entry_points=False)
    plugins.register(forge_sink_csv.plugin, name="csv")
    plugins.register(Pair(), name="pair", distribution="forge-pair")

    def run(*args: str):
        capsys.readouterr()
        code = main(list(args), plugins=plugins)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


RANGE = ["--symbol", "X", "--from", "2024-01-01", "--to", "2024-01-02"]


def test_two_plugins_may_declare_one_option_with_different_choices(cli):
    code, _, err = cli("run", "-q", "-s", "beta", "--market", "futures", *RANGE)
    assert code == 1 and "stop before any request" in err  # got past option checks
    assert SEEN == [{"market": "futures", "depth": 5}]
    code, _, err = cli("run", "-q", "-s", "alpha", "--market", "perp", *RANGE)
    assert code == 1 and SEEN[-1]["market"] == "perp"
    code, _, err = cli("run", "-q", "-s", "alpha", "--market", "futures", *RANGE)
    assert code == 2
    assert err.strip() == ("forge: error: source 'alpha' option market (--market): 'futures' is not one of "
                           "'spot', 'perp'")


def test_an_option_of_a_plugin_not_chosen_is_refused_naming_its_plugin(cli):
    code, _, err = cli("run", "-q", "-s", "alpha", "--depth", "3", *RANGE)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "option --depth belongs to source beta" in err
    assert SEEN == []


def test_types_are_converted_from_the_command_line(cli):
    code, _, err = cli("run", "-q", "-s", "beta", "--depth", "deep", *RANGE)
    assert code == 2 and "source 'beta' option depth (--depth): 'deep' is not an integer" in err
    cli("run", "-q", "-s", "beta", "--depth", "12", *RANGE)
    assert SEEN[-1]["depth"] == 12


def test_run_help_groups_options_by_plugin(cli):
    code, out, _ = cli("run", "--help")
    assert code == 0
    assert "Source alpha (forge-pair):" in out and "Source beta (forge-pair):" in out
    assert "Sink csv (" in out
    alpha = out.split("Source alpha (forge-pair):")[1].split("Source beta")[0]
    assert "Alpha market." in alpha and "--flavour" in alpha and "--depth" not in alpha
    beta = out.split("Source beta (forge-pair):")[1]
    assert "Beta market." in beta and "[futures|options]" in beta


def test_run_help_with_a_source_shows_what_applies(cli):
    code, out, _ = cli("run", "--source", "beta", "--help")
    assert code == 0
    assert "Source beta (forge-pair):" in out and "Sink csv (" in out
    assert "Source alpha" not in out and "--flavour" not in out


def test_real_plugins_keep_their_flags(forge):
    result = forge("run", "-s", "binance", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    for flag in ("--base-url", "--market", "--archive", "--archive-url", "--output",
                 "FORGE_BINANCE_FUTURES_URL (market usdm)"):
        assert flag in text
    result = forge("run", "-s", "okx", "--sink", "postgres", "--help")
    for flag in ("--database-url", "--table", "--model", "--on-conflict", "--password-file"):
        assert flag in result.out
    assert "--market" not in result.out.split("Examples:")[0]
    result = forge("run", "-s", "binance", "--transform", "resample", "--help")
    assert "--resample-to" in result.out


@pytest.mark.parametrize("args,want", [
    (["-s", "okx", "--sink", "csv", "--sink=postgres"], ("okx", ["csv", "postgres"], [])),
    (["--source=binance", "--transform", "resample", "--transform", "mod:fn"], ("binance", [], ["resample"])),
    (["-sbybit", "--symbol", "-s"], ("bybit", [], [])),
])
def test_plugin_args_are_read_before_parsing(args, want):
    assert plugin_args(args) == want


def test_verbose_and_log_format_are_accepted_after_run(forge, exchange_env, in_tmp):
    result = forge("run", "-q", "-s", "binance", "--symbol", "FOOBAR", *RANGE[2:], "-v")
    assert result.code == 1 and "Traceback" in result.err  # -v after run: tracebacks, as before run
    result = forge("run", "-q", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", *RANGE[2:], "-v",
                   "--log-format", "json")
    assert result.code == 0, result
    assert '"event": "run_done"' in result.err and '"level": "info"' in result.err  # info logs, as JSON
