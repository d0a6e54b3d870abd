"""The ``forge`` command: a thin layer over :class:`forge_core.Pipeline`.

``forge run`` gets its plugin-specific options (``--base-url``, ``--output``, ...) from the
:class:`~forge_core.Option` s the installed sources, sinks and transforms declare.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

import click

from . import __version__
from .errors import ForgeError, UsageError
from .integrity.commands import add_commands as add_integrity_commands
from .logs import configure
from .options import Option
from .pipeline import Pipeline
from .plugins import Plugins
from .progress import ProgressLine
from .timeframes import NAMES
from .times import ACCEPTED

RUN_EPILOG = """\b
Examples:
  forge run --source binance --sink csv --symbol BTCUSDT --timeframe 1m \\
            --from 2024-01-01 --to 2024-01-31
      -> Binance-BTCUSDT-1m-2024-01-01_2024-01-31.csv
  forge run -s binance --symbol BTCUSDT,ETHUSDT -t 1h --from 2024-01-01 --to now
  forge run -s binance --market usdm --symbol BTCUSDT -t 5m --from "2024-03-01 12:00:00" \\
            --to 2024-03-02 --output btc-perp.csv
  FORGE_BINANCE_URL=http://127.0.0.1:8000 forge run -s binance --symbol BTCUSDT --from 2024-01-01 --to 2024-01-02

\b
The range is inclusive: --to 2024-01-31 includes every candle opening on January 31;
a time (--to "2024-01-31 12:00") includes candles opening at or before it. Naive times are
UTC. Only closed candles are written; with --to now the still-open candle is left out.
"""


def _click_option(opt: Option) -> click.Option:
    kwargs: dict[str, Any] = {"help": opt.help + (f" [env: {opt.envvar}]" if opt.envvar else ""),
                              "default": None, "show_default": False}
    if opt.is_flag:
        kwargs.update(is_flag=True, default=None)
    if opt.choices:
        kwargs["type"] = click.Choice(opt.choices)
    if opt.multiple:
        kwargs["multiple"] = True
        kwargs["default"] = ()
    if opt.metavar:
        kwargs["metavar"] = opt.metavar
    return click.Option([opt.flag, opt.name], **kwargs)


def _plugin_options(plugins: Plugins) -> dict[str, tuple[Option, list[str]]]:
    """Every plugin option by name, with the plugins that declare it."""
    found: dict[str, tuple[Option, list[str]]] = {}
    for reg in plugins.all():
        for opt in getattr(reg.cls, "options", ()):
            if opt.name in found:
                found[opt.name][1].append(f"{reg.kind} {reg.name}")
            else:
                found[opt.name] = (opt, [f"{reg.kind} {reg.name}"])
    return found


def _route(given: dict[str, Any], cls: type) -> dict[str, Any]:
    names = {o.name for o in getattr(cls, "options", ())}
    return {k: v for k, v in given.items() if k in names}


def run_command(plugins: Plugins) -> click.Command:
    declared = _plugin_options(plugins)

    def run(**kw: Any) -> None:
        given = {k: v for k, v in kw.items() if k in declared and v not in (None, ())}
        source_cls = plugins.get("source", kw["source"])
        sink_classes = [plugins.get("sink", name) for name in (kw["sink"] or ("csv",))]
        transform_specs: list[Any] = []
        for name in kw["transform"]:
            transform_specs.append(_load_transform(plugins, name))
        used = set(_route(given, source_cls))
        for cls in sink_classes:
            used |= set(_route(given, cls))
        for spec in transform_specs:
            if isinstance(spec, tuple):
                used |= set(_route(given, plugins.get("transform", spec[0])))
        for name in given:
            if name not in used:
                owners = ", ".join(declared[name][1])
                raise UsageError(f"option {declared[name][0].flag} belongs to {owners}, not to this run's source or sinks")
        transforms = [
            (spec[0], _route(given, plugins.get("transform", spec[0]))) if isinstance(spec, tuple) else spec
            for spec in transform_specs
        ]
        progress = None if kw["quiet"] else ProgressLine()
        pipeline = Pipeline(
            (kw["source"], _route(given, source_cls)),
            [(cls.name, _route(given, cls)) for cls in sink_classes],
            transforms,
            plugins=plugins,
            workers=kw["workers"],
            commit_every=kw["commit_every"],
            on_progress=progress,
        )
        if kw["follow"]:  # never-ending: forge_core/follow.py
            from .follow import run_cli

            if kw["to"] != "now":
                raise UsageError(f"--follow runs until stopped; drop --to {kw['to']}")
            auto = str(kw["from_"]).strip().lower() == "auto"
            code = run_cli(pipeline, kw["symbol"], kw["timeframe"], kw["since"] or (None if auto else kw["from_"]),
                           lag_warning=kw["lag_warning"], quiet=kw["quiet"], echo=click.echo)
            if code:
                raise click.exceptions.Exit(code)
            return
        if kw["since"]:
            raise UsageError("--since is used with --follow (where a series the sinks do not hold starts)")
        try:
            result = pipeline.run(kw["symbol"], kw["timeframe"], kw["from_"], kw["to"])
        except KeyboardInterrupt:
            done = pipeline.result.committed if pipeline.result else 0
            raise Interrupted(f"interrupted: {done} candles committed and kept; run the same command "
                              "again to resume") from None
        finally:
            if progress is not None:
                progress.finish()
        click.echo(result.summary())

    params: list[click.Parameter] = [
        click.Option(["--source", "-s"], required=True, metavar="NAME",
                     help=f"Source plugin: {', '.join(plugins.names('source')) or 'none installed'}."),
        click.Option(["--sink"], multiple=True, metavar="NAME",
                     help=f"Sink plugin, repeatable (default csv): {', '.join(plugins.names('sink')) or 'none installed'}."),
        click.Option(["--symbol"], multiple=True, required=True,
                     help="Symbol as the exchange spells it (BTCUSDT, BTC-USDT); repeat or comma-separate."),
        click.Option(["--timeframe", "-t"], default="1m", show_default=True,
                     help=f"Candle period: {' '.join(NAMES)} (1M = month)."),
        click.Option(["--from", "from_"], required=True, metavar="WHEN",
                     help=f"First candle's open time, inclusive: {ACCEPTED}; or 'auto' to continue "
                          "each symbol after the newest candle the sink holds."),
        click.Option(["--to"], default="now", show_default=True, metavar="WHEN",
                     help="Last open time, inclusive; a bare date includes that whole day."),
        click.Option(["--transform"], multiple=True, metavar="NAME|module:function",
                     help="Transform to apply, repeatable: a registered name or a per-row function."),
        click.Option(["--workers"], type=click.IntRange(1, 64), default=4, show_default=True,
                     help="Concurrent requests to the exchange (within its rate limit)."),
        click.Option(["--commit-every"], type=click.IntRange(1), default=50_000, show_default=True,
                     help="Commit the sinks at least every N rows (and at the end of each symbol)."),
        click.Option(["--quiet", "-q"], is_flag=True, help="No progress display."),
        # --follow (docs/follow.md)
        click.Option(["--follow"], is_flag=True,
                     help="After the backfill, keep every series current until SIGTERM/Ctrl-C: each candle "
                          "is committed right after it closes (exchange time). CSV files are appended to."),
        click.Option(["--since"], metavar="WHEN",
                     help="With --from auto or --follow: where a series the sinks do not hold yet starts."),
        click.Option(["--lag-warning"], type=click.FloatRange(0), default=30.0, show_default=True,
                     metavar="SECONDS", help="--follow: warn when a series falls this far behind."),
    ]
    params += [_click_option(opt) for opt, _ in declared.values()]
    return click.Command(
        "run", callback=run, params=params, epilog=RUN_EPILOG,
        help="Backfill the closed candles of SYMBOL(s) from a source into sinks.",
        context_settings={"max_content_width": 100},
    )


class Interrupted(ForgeError):
    exit_code = 130


def _load_transform(plugins: Plugins, spec: str) -> Any:
    if ":" not in spec:
        plugins.get("transform", spec)  # raises a clear error when unknown
        return (spec, {})
    import importlib

    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # a console script does not see the current directory
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load transform {spec!r}: {exc}") from None
    if not callable(fn):
        raise UsageError(f"transform {spec!r} is not callable")
    return fn


def plugins_command(plugins: Plugins) -> click.Command:
    def list_plugins(as_json: bool) -> None:
        rows = [
            {"kind": r.kind, "name": r.name, "distribution": r.distribution, "version": r.version,
             "description": getattr(r.cls, "description", "")}
            for r in plugins.all()
        ]
        if as_json:
            click.echo(json.dumps({"plugins": rows, "broken": plugins.broken}, indent=2))
            return
        if not rows:
            click.echo("no plugins installed (pip install forge-etl-binance forge-etl-sink-csv ...)")
        width = max((len(r["name"]) for r in rows), default=4)
        for r in rows:
            click.echo(f"{r['kind']:<9} {r['name']:<{width}}  {r['distribution']} {r['version']}  {r['description']}")
        for name, error in plugins.broken:
            click.echo(f"broken    {name:<{width}}  {error}")

    return click.Command(
        "plugins", callback=list_plugins, help="List installed sources, transforms and sinks.",
        params=[click.Option(["--json", "as_json"], is_flag=True, help="Machine-readable output.")],
    )


def build_cli(plugins: Plugins | None = None) -> click.Group:
    plugins = plugins or Plugins()

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="forge")
    @click.option("-v", "--verbose", count=True, help="More logs (-v info, -vv debug); tracebacks on errors.")
    @click.option("--log-format", type=click.Choice(["console", "json"]), default="console",
                  show_default=True, help="Log line format (logs go to stderr).")
    def cli(verbose: int, log_format: str) -> None:
        """Forge backfills exact historical candles from crypto exchanges into files and databases."""
        configure(verbose, log_format)

    cli.add_command(plugins_command(plugins))
    cli.add_command(run_command(plugins))
    add_integrity_commands(cli, plugins)  # forge status / verify / repair (forge_core/integrity)
    plugins.add_commands(cli)
    return cli


def _logging_args(args: list[str]) -> tuple[int, str]:
    """``-v``/``-vv``/``--verbose`` and ``--log-format`` read ahead of Click's parsing."""
    verbosity = sum(len(a) - 1 for a in args if a.startswith("-v") and set(a[1:]) == {"v"})
    verbosity += args.count("--verbose")
    fmt = "console"
    for i, a in enumerate(args):
        if a == "--log-format" and i + 1 < len(args):
            fmt = args[i + 1]
        elif a.startswith("--log-format="):
            fmt = a.split("=", 1)[1]
    return verbosity, fmt if fmt in ("console", "json") else "console"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    verbose = any(a in ("-v", "-vv", "--verbose") for a in args) or bool(os.environ.get("FORGE_DEBUG"))
    # logging must be ready before plugins load (a broken plugin logs a warning)
    configure(*_logging_args(args))
    try:
        code = build_cli().main(args=args, prog_name="forge", standalone_mode=False)
        return code if isinstance(code, int) else 0  # a command's click.exceptions.Exit(code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("forge: interrupted", err=True)
        return 130
    except click.UsageError as exc:  # one line, like every other error
        where = f"forge {exc.ctx.info_name}" if exc.ctx is not None and exc.ctx.info_name != "forge" else "forge"
        click.echo(f"forge: error: {exc.format_message()} (see '{where} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("forge: interrupted; everything committed before this is kept, run again to resume", err=True)
        return 130
    except ForgeError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"forge: error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:  # a bug or an unexpected failure: still one line unless -v
        if verbose:
            traceback.print_exc()
        click.echo(f"forge: unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", err=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
