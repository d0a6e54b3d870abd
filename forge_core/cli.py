"""The ``forge`` command: a thin layer over :class:`forge_core.Pipeline`.

``forge run`` gets its plugin-specific options (``--base-url``, ``--output``, ...) from the
:class:`~forge_core.Option` s the installed sources, sinks and transforms declare.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import traceback
from typing import Any
from urllib.parse import urlsplit

import click

from . import __version__
from .errors import ForgeError, UsageError
from .http import GaveUp
from .logs import configure
from .options import FALSE_WORDS, Option
from .pipeline import DEFAULT_WORKERS, Pipeline, RunResult
from .plugins import Plugins, Registration
from .progress import ProgressLine
from .timeframes import NAMES
from .times import ACCEPTED, display

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


def _click_option(opt: Option, also: list[Option]) -> click.Option:
    """The one ``--flag`` of an option name; several chosen plugins may share it.

    Values stay text: the core converts and validates them for each plugin that declares the
    name, exactly as it does for the Python API."""
    kwargs: dict[str, Any] = {"help": opt.help, "default": None, "show_default": False}
    if opt.is_flag:
        kwargs.update(is_flag=True, default=None)
    if opt.multiple:
        kwargs["multiple"] = True
        kwargs["default"] = ()
    choices = {tuple(o.choices) for o in [opt, *also] if o.choices}
    if opt.metavar:
        kwargs["metavar"] = opt.metavar
    elif len(choices) == 1 and not opt.is_flag:
        kwargs["metavar"] = "[" + "|".join(next(iter(choices))) + "]"
    return click.Option([opt.flag, opt.name], **kwargs)


def _opt_help(opt: Option) -> tuple[str, str]:
    """One row of ``forge run --help``: the flag and its help, choices, default and variable."""
    metavar = "" if opt.is_flag else " " + (opt.metavar or ("[" + "|".join(opt.choices) + "]" if opt.choices else "TEXT"))
    extra = []
    if opt.default not in (None, "", ()) and not opt.secret:
        extra.append(f"default: {opt.default}")
    if opt.envvar:
        extra.append(f"env: {opt.env_help()}")
    if opt.required:
        extra.append("required")
    return opt.flag + metavar, opt.help + (f"  [{'; '.join(extra)}]" if extra else "")


def plugin_args(args: list[str]) -> tuple[str | None, list[str], list[str]]:
    """The source, sinks and registered transforms named on a ``forge run`` command line,
    read before Click parses it: the options it accepts depend on them."""
    source: str | None = None
    sinks: list[str] = []
    transforms: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            break
        value: str | None = None
        for flags, short in ((("--source",), "-s"), (("--sink",), None), (("--transform",), None)):
            if a in flags or a == short:
                value = args[i + 1] if i + 1 < len(args) else None
                i += 1
            elif any(a.startswith(f + "=") for f in flags):
                value = a.split("=", 1)[1]
            elif short and a.startswith(short) and len(a) > 2 and not a.startswith("--"):
                value = a[2:]
            else:
                continue
            if value is not None:
                if flags[0] == "--source":
                    source = value
                elif flags[0] == "--sink":
                    sinks.append(value)
                elif ":" not in value:
                    transforms.append(value)
            break
        i += 1
    return source, sinks, transforms


class _Chosen:
    """The plugins of one ``forge run``, and the options they declare, by option name."""

    def __init__(self, plugins: Plugins, source: str | None, sinks: list[str], transforms: list[str] | None) -> None:
        """``transforms=None``: a command that takes none (verify, repair, status)."""
        self.regs: list[Registration] = []
        if source is None:  # forge run --help (or a run missing --source): every plugin, by section
            self.regs = [r for r in plugins.all() if transforms is not None or r.kind != "transform"]
            self.everything = True
        else:
            self.everything = False
            for kind, names in (("source", [source]), ("sink", sinks or ["csv"]), ("transform", transforms or [])):
                for name in names:
                    reg = plugins.find(kind, name)
                    if reg is not None and reg not in self.regs:
                        self.regs.append(reg)
        self.options: dict[str, list[tuple[Registration, Option]]] = {}
        for reg in self.regs:
            for opt in getattr(reg.cls, "options", ()):
                self.options.setdefault(opt.name, []).append((reg, opt))

    def params(self) -> list[click.Option]:
        return [_click_option(owners[0][1], [o for _, o in owners[1:]]) for owners in self.options.values()]

    def route(self, given: dict[str, Any], cls: type) -> dict[str, Any]:
        names = {o.name for o in getattr(cls, "options", ())}
        return {k: v for k, v in given.items() if k in names}


class RunCommand(click.Command):
    """``forge run``: its ``--help`` lists the plugins' options in one section per plugin."""

    chosen: _Chosen

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        plugin_names = set(self.chosen.options)
        core = [p.get_help_record(ctx) for p in self.get_params(ctx) if p.name not in plugin_names]
        with formatter.section("Options"):
            formatter.write_dl([r for r in core if r is not None])
        for reg in self.chosen.regs:
            options = getattr(reg.cls, "options", ())
            if not options:
                continue
            with formatter.section(f"{reg.kind.capitalize()} {reg.name} ({reg.distribution})"):
                formatter.write_dl([_opt_help(o) for o in options])
        if not self.chosen.everything:
            formatter.write_paragraph()
            formatter.write_text("Options of the plugins not chosen here: forge run --help (without --source).")


def run_command(plugins: Plugins, args: list[str] | None = None) -> click.Command:
    """``forge run``, with the options of the plugins ``args`` (the words after ``run``) name."""
    args = args or []
    source_name, sink_names, transform_names = plugin_args(args)
    by_partition = any(a == "--partition" or a.startswith("--partition=") for a in args)
    following = "--follow" in args  # --since then says where a new series starts: no --from needed
    if by_partition and source_name is None:  # the keys name the source: binance:spot:BTCUSDT:1m:2024-03
        keys = [args[i + 1] if a == "--partition" else a.split("=", 1)[1]
                for i, a in enumerate(args) if (a == "--partition" and i + 1 < len(args)) or a.startswith("--partition=")]
        from .partitions import read_keys

        first = next((k for k in keys if not k.startswith("@") and ":" in k), None)
        source_name = first.split(":", 1)[0] if first else None
        if source_name is None and keys and not any(a in ("-h", "--help") for a in args):
            source_name = read_keys(keys)[0].source  # only @FILEs: a bad file or key is its one line here
    chosen = _Chosen(plugins, source_name, sink_names, transform_names)
    declared = chosen.options
    asks_help = any(a in ("-h", "--help") for a in args)

    def run(**kw: Any) -> None:
        ctx = click.get_current_context()
        parent = ctx.parent.params if ctx.parent is not None else {}
        if kw["verbose"] or kw["log_format"]:  # given after ``run``: as if given before it
            configure(parent.get("verbose", 0) + kw["verbose"], kw["log_format"] or parent.get("log_format", "console"))
        log_format = kw["log_format"] or parent.get("log_format") or "console"
        given = {k: v for k, v in kw.items() if k in declared and v not in (None, ())}
        if kw["partition"] and not kw["source"]:
            kw["source"] = source_name  # as the first key names it
        source_cls = plugins.get("source", kw["source"])
        sink_classes = [plugins.get("sink", name) for name in (kw["sink"] or ("csv",))]
        twice = next((name for i, name in enumerate(kw["sink"]) if name in kw["sink"][:i]), None)
        if twice is not None:  # one set of options per plugin: both would write the same place
            raise UsageError(f"--sink {twice} is given twice; a run writes each sink once "
                             "(two destinations of one sink are two runs, or Pipeline(sinks=[...]))")
        transform_specs: list[Any] = []
        for name in kw["transform"]:
            transform_specs.append(_load_transform(plugins, name))
        used = set(chosen.route(given, source_cls))
        for cls in sink_classes:
            used |= set(chosen.route(given, cls))
        for spec in transform_specs:
            if isinstance(spec, tuple):
                used |= set(chosen.route(given, plugins.get("transform", spec[0])))
        for name in given:
            if name not in used:
                owners = ", ".join(f"{r.kind} {r.name}" for r, _ in declared[name])
                raise UsageError(f"option --{name.replace('_', '-')} belongs to {owners}, "
                                 "not to this run's source or sinks")
        transforms = [(spec[0], chosen.route(given, plugins.get("transform", spec[0])))
                      if isinstance(spec, tuple) else spec for spec in transform_specs]
        _follow_only_options(ctx, kw)
        if kw["partition"]:  # forge run --partition KEY: exactly those partitions (docs/scale-out.md)
            return _run_partitions(plugins, kw, chosen.route(given, source_cls),
                                   [(cls.name, chosen.route(given, cls)) for cls in sink_classes], transforms)
        if kw["follow"] and not kw["from_"]:
            kw["from_"] = "auto"  # (without --since either: the follow's own line says what it needs)
        for name in ("source", "symbol", "from_"):
            if not kw[name]:
                raise click.UsageError(f"Missing option '--{name.rstrip('_')}'.", ctx)
        progress = None if kw["quiet"] else ProgressLine()
        pipeline = Pipeline(
            (kw["source"], chosen.route(given, source_cls)),
            [(cls.name, chosen.route(given, cls)) for cls in sink_classes],
            transforms,
            plugins=plugins,
            workers=kw["workers"],
            commit_every=kw["commit_every"],
            on_progress=progress,
            rate_budget=kw["rate_budget"],
        )
        if kw["follow"]:  # never-ending: forge_core/follow.py
            from .follow import run_cli

            if kw["to"] != "now":
                raise UsageError(f"--follow runs until stopped; drop --to {kw['to']}")
            if progress is not None:
                progress.finish()  # follow's own status line owns the terminal: no retry redraws
            auto = str(kw["from_"]).strip().lower() == "auto"
            code = run_cli(pipeline, kw["symbol"], kw["timeframe"], kw["since"] or (None if auto else kw["from_"]),
                           lag_warning=kw["lag_warning"], quiet=kw["quiet"], echo=click.echo,
                           sink_give_up=kw["sink_give_up"])
            if code:
                raise click.exceptions.Exit(code)
            return
        status, error = "failed", None
        try:
            result = pipeline.run(kw["symbol"], kw["timeframe"], kw["from_"], kw["to"], since=kw["since"])
            status = "ok"
        except KeyboardInterrupt as exc:
            status = "interrupted"
            raise Interrupted(f"interrupted: {_kept(pipeline)}; run the same command again to resume",
                              signal_exit_code(exc)) from None
        except GaveUp as exc:
            error = str(exc)
            raise GaveUp(f"{exc}; gave up: {_kept(pipeline)}; run the same command again to resume "
                         "after them", exc.status) from None
        except ForgeError as exc:
            error = str(exc)
            raise
        finally:
            if progress is not None:
                progress.finish()
            if kw["summary_json"] and pipeline.result is not None:
                _write_json(kw["summary_json"], {**run_result_dict(pipeline.result), "status": status,
                                                 "error": error})
        if log_format == "json":
            click.echo(json.dumps({"event": "run_summary", "status": status, **run_result_dict(result)}))
        else:
            click.echo(result.summary())

    def names(kind: str) -> str:
        # listing every installed plugin imports them all: only for --help
        return ", ".join(plugins.names(kind)) or "none installed" if asks_help else "see 'forge plugins'"

    params: list[click.Parameter] = [
        click.Option(["--source", "-s"], required=not by_partition, metavar="NAME",
                     help=f"Source plugin: {names('source')}."),
        click.Option(["--sink"], multiple=True, metavar="NAME",
                     help=f"Sink plugin, repeatable (default csv): {names('sink')}."),
        click.Option(["--symbol"], multiple=True, required=not by_partition,
                     help="Symbol as the exchange spells it (BTCUSDT, BTC-USDT); repeat or comma-separate."),
        click.Option(["--timeframe", "-t"], default="1m", show_default=True,
                     help=f"Candle period: {' '.join(NAMES)} (1M = month); the exchange's own name of one "
                          "works too (OKX 1H, 1Dutc)."),
        click.Option(["--from", "from_"], required=not by_partition and not following, metavar="WHEN",
                     help=f"First candle's open time, inclusive: {ACCEPTED}; or 'auto' to continue "
                          "each symbol after the newest candle the sink holds."),
        click.Option(["--to"], default="now", show_default=True, metavar="WHEN",
                     help="Last open time, inclusive; a bare date includes that whole day."),
        click.Option(["--transform"], multiple=True, metavar="NAME|module:function",
                     help="Transform to apply, repeatable: a registered name or a per-row function."),
        click.Option(["--workers"], type=click.IntRange(1, 64), default=DEFAULT_WORKERS, show_default=True,
                     help="Concurrent requests to the exchange (within its rate limit)."),
        click.Option(["--commit-every"], type=click.IntRange(1), default=50_000, show_default=True,
                     help="Commit the sinks at least every N rows (and at the end of each symbol)."),
        click.Option(["--quiet", "-q"], is_flag=True, help="No progress display."),
        # beyond one machine (docs/scale-out.md)
        click.Option(["--partition"], multiple=True, metavar="KEY|@FILE",
                     help="Run exactly these partitions (source:market:symbol:tf:YYYY-MM, see forge plan) "
                          "instead of --source/--symbol/--from/--to; repeatable, or @FILE with one a line."),
        click.Option(["--rate-budget"], metavar="URL", envvar="FORGE_RATE_BUDGET",
                     help="Share the exchange's rate budget with every process using this store: "
                          "sqlite:///FILE (one host) or postgresql://... (many hosts) [env: FORGE_RATE_BUDGET]."),
        # --follow (docs/follow.md)
        click.Option(["--follow"], is_flag=True,
                     help="After the backfill, keep every series current until SIGTERM/Ctrl-C: each candle "
                          "is committed right after it closes (exchange time). CSV files are appended to."),
        click.Option(["--since"], metavar="WHEN",
                     help="With --from auto or --follow: where a series the sinks do not hold yet starts."),
        click.Option(["--lag-warning"], type=click.FloatRange(0), default=30.0, show_default=True,
                     metavar="SECONDS", help="--follow: warn when a series falls this far behind."),
        click.Option(["--sink-give-up"], type=click.FloatRange(0), default=None, metavar="SECONDS",
                     help="--follow: end the run (exit 1) when a destination stays down this long, "
                          "after one retry at least (default: wait for it with backoff, however long)."),
        click.Option(["--summary-json"], metavar="FILE", type=click.Path(dir_okay=False),
                     help="Also write the run's summary as JSON to FILE (even when the run fails), for scripts."),
        click.Option(["-v", "--verbose"], count=True, help="More logs (-v info, -vv debug); tracebacks on errors."),
        click.Option(["--log-format"], type=click.Choice(["console", "json"]), default=None,
                     help="Log line format (logs go to stderr); json also prints the summary as one JSON object."),
    ]
    params += chosen.params()
    command = RunCommand(
        "run", callback=run, params=params, epilog=RUN_EPILOG,
        help="Backfill the closed candles of SYMBOL(s) from a source into sinks.",
        context_settings={"max_content_width": 100},
    )
    command.chosen = chosen
    return command


def _follow_only_options(ctx: click.Context, kw: dict[str, Any]) -> None:
    """Options that only a follow run (or ``--from auto``) reads are refused elsewhere: silently
    ignored, ``--sink-give-up 600`` would look like a promise the run does not keep."""
    given = {name for name in ("lag_warning", "sink_give_up")
             if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    if kw["follow"] and kw["partition"]:
        raise UsageError("--follow keeps series current until stopped, --partition runs fixed months: "
                         "give one of them")
    if kw["summary_json"]:
        if kw["follow"] or kw["partition"]:
            raise UsageError(f"--summary-json applies to one bounded run, not to --{'follow' if kw['follow'] else 'partition'}"
                             "; drop --summary-json")
        _check_writable(kw["summary_json"])
    if kw["follow"] and kw["since"] and kw["from_"] and str(kw["from_"]).strip().lower() != "auto":
        raise UsageError("--follow starts a series the sinks do not hold at --since or at --from DATE, not both: "
                         f"drop --from {kw['from_']} or --since {kw['since']}")
    if not kw["follow"]:
        for name in sorted(given):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {kw[name]:g} applies only with --follow; add --follow or drop {flag}")
        auto = str(kw["from_"] or "").strip().lower() == "auto"
        if kw["since"] and not auto:
            where = f" (--from {kw['from_']} says where the run starts)" if kw["from_"] else ""
            raise UsageError(f"--since {kw['since']} applies only with --from auto or --follow{where}; drop --since")


def _check_writable(path: str) -> None:
    """Before the run, not after it: a summary that cannot be written fails the run at its end."""
    tmp = f"{path}.tmp"  # what _write_json writes first
    try:
        with open(tmp, "x"):
            pass
        os.remove(tmp)
    except FileExistsError:
        pass  # left by an earlier run: _write_json replaces it
    except OSError as exc:
        raise UsageError(f"cannot write --summary-json {path}: {exc.strerror or exc}; "
                         "give a file path in a writable directory") from None


def run_result_dict(result: RunResult) -> dict[str, Any]:
    """A :class:`~forge_core.RunResult` as plain JSON-ready fields, for ``--summary-json`` and
    ``--log-format json``: every field of the result, the total, and the range as text."""
    fields = dataclasses.asdict(result)
    fields["total"] = result.total
    fields["start_time"] = display(result.start)
    fields["end_time"] = display(result.end - 1) if result.end else None
    fields["resumed_after"] = {s: display(t) for s, t in result.resumed.items()}
    for e in fields["ended"].values():
        e["last_candle"] = None if e["last_open"] is None else display(e["last_open"])
    fields["elapsed"] = round(result.elapsed, 3)
    return fields


def _kept(pipeline: Pipeline) -> str:
    result = pipeline.result
    done = result.committed if result is not None else 0
    resumed = f" (after what earlier runs kept for {', '.join(result.resumed)})" if result and result.resumed else ""
    return f"{done} candles committed and kept{resumed}"


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ForgeError(f"cannot write --summary-json {path}: {exc.strerror or exc}") from None


def _run_partitions(plugins: Plugins, kw: dict[str, Any], source_options: dict[str, Any],
                    sinks: list[Any], transforms: list[Any]) -> None:
    from . import partitions

    keys = partitions.read_keys(kw["partition"])
    for other in ("symbol", "from_"):
        if kw[other]:
            raise UsageError(f"--partition names the symbols and months itself; drop --{other.rstrip('_')}")
    if kw["to"] != "now":
        raise UsageError("--partition names the symbols and months itself; drop --to")
    sources = {k.source for k in keys}
    if len(sources) > 1:
        raise UsageError(f"all partitions of one run must have one source; got {', '.join(sorted(sources))}")
    if kw["source"] and sources != {kw["source"]}:
        raise UsageError(f"--source {kw['source']} is not the source of the partition keys ({', '.join(sources)}); "
                         "drop --source: the keys name it")
    markets = {k.market for k in keys}
    if source_options.get("market") is not None and markets != {source_options["market"]}:
        raise UsageError(f"--market {source_options['market']} is not the market of the partition keys "
                         f"({', '.join(sorted(markets))}); drop --market: the keys name it")
    source_options = {k: v for k, v in source_options.items() if k != "market"}  # the keys name the market
    results = partitions.run(keys, sinks, plugins=plugins, transforms=transforms, source_options=source_options,
                             rate_budget=kw["rate_budget"], workers=kw["workers"], commit_every=kw["commit_every"])
    for result in results:
        click.echo(result.summary())
    click.echo(f"{len(keys)} partitions done in {len(results)} runs")


class Interrupted(ForgeError):
    """A run stopped by a signal; its exit code is the shell's 128 + the signal's number."""

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def signal_exit_code(exc: BaseException | None) -> int:
    """128 + the number of the signal that stopped the run, as a shell reports a process it
    killed and as schedulers expect: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP.
    A ``KeyboardInterrupt`` no signal handler of the run raised counts as Ctrl-C."""
    while exc is not None and not isinstance(exc, KeyboardInterrupt):
        exc = exc.__cause__ or exc.__context__  # click wraps it in Abort
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _load_transform(plugins: Plugins, spec: str) -> Any:
    if ":" not in spec:
        plugins.get("transform", spec)  # raises a clear error when unknown
        return (spec, {})
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name.strip() or not attr.strip():
        raise UsageError(f"bad transform {spec!r}: use a registered name or module:function, e.g. my_indicators:add_rsi")
    if os.getcwd() not in sys.path:  # a console script does not see the current directory
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load transform {spec!r}: {exc}") from None
    except Exception as exc:  # the module raises on import
        raise UsageError(f"cannot load transform {spec!r}: importing {module_name} raised "
                         f"{type(exc).__name__}: {exc}") from None
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
        for b in plugins.broken_plugins():
            click.echo(f"broken    {b.plugin:<{width}}  {b.distribution}  {b.error}")

    return click.Command(
        "plugins", callback=list_plugins, help="List installed sources, transforms and sinks.",
        params=[click.Option(["--json", "as_json"], is_flag=True, help="Machine-readable output.")],
    )


GROUP_FLAGS = ("-v", "-vv", "-vvv", "--verbose", "--version", "-h", "--help")


def command_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The subcommand of a ``forge`` command line and the words after it."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--log-format":
            i += 2
            continue
        if a in GROUP_FLAGS or a.startswith("--log-format="):
            i += 1
            continue
        return (None, []) if a.startswith("-") else (a, args[i + 1:])
    return None, []


def build_cli(plugins: Plugins | None = None, args: list[str] | None = None) -> click.Group:
    """The ``forge`` group. With ``args`` (the whole command line) a ``forge run`` loads only
    the plugins it names; anything else (``forge --help``, ``forge plugins``, a plugin's own
    command) loads every installed plugin."""
    plugins = plugins or Plugins()
    command, rest = command_args(list(args or []))
    if command != "run":
        plugins.load()

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="forge")
    @click.option("-v", "--verbose", count=True, help="More logs (-v info, -vv debug); tracebacks on errors.")
    @click.option("--log-format", type=click.Choice(["console", "json"]), default="console",
                  show_default=True, help="Log line format (logs go to stderr).")
    def cli(verbose: int, log_format: str) -> None:
        """Forge backfills exact historical candles from crypto exchanges into files and databases."""
        configure(verbose, log_format)

    cli.add_command(plugins_command(plugins))
    cli.add_command(run_command(plugins, rest if command == "run" else []))
    if command != "run":  # their options come from every plugin: building them imports all
        from .integrity.commands import add_commands as add_integrity_commands

        add_integrity_commands(cli, plugins, rest)  # forge status / verify / repair (forge_core/integrity)
        from .plan_command import plan_command

        cli.add_command(plan_command(plugins))  # forge plan (forge_core/partitions)
    plugins.add_commands(cli)
    return cli


def _logging_args(args: list[str]) -> tuple[int, str]:
    """``-v``/``-vv``/``--verbose`` and ``--log-format``, before or after ``run``, read ahead of
    Click's parsing: logging must be ready before plugins load (a broken plugin logs a warning)."""
    verbosity = sum(len(a) - 1 for a in args if a.startswith("-v") and set(a[1:]) == {"v"})
    verbosity += args.count("--verbose")
    fmt = "console"
    for i, a in enumerate(args):
        if a == "--log-format" and i + 1 < len(args):
            fmt = args[i + 1]
        elif a.startswith("--log-format="):
            fmt = a.split("=", 1)[1]
    return verbosity, fmt if fmt in ("console", "json") else "console"


def _env_flag(name: str) -> bool:
    """``FORGE_DEBUG=1`` is on; unset, and the words a plugin's flag option takes for false, are off."""
    return os.environ.get(name, "").strip().lower() not in FALSE_WORDS


def _owner_of(plugins: Plugins, flag: str) -> str | None:
    """``sink postgres`` for ``--table``: which installed plugins declare an option."""
    owners = [f"{r.kind} {r.name}" for r in plugins.all()
              for o in getattr(r.cls, "options", ()) if o.flag == flag]
    return ", ".join(owners) or None


# options whose value may be a URL with a password, and the variable that gives it instead
_CORE_URL_ENV = {"--rate-budget": "FORGE_RATE_BUDGET"}


def password_warning(plugins: Plugins, args: list[str]) -> str | None:
    """One line for a password given in a URL on the command line (``--database-url
    postgresql://me:pw@db/x``): every user of the machine can read argv (``ps``,
    ``/proc/PID/cmdline``), so say so, and what to use instead. Never the password itself.
    Forge cannot take it back out of argv: the kernel published it when the process started."""
    flags: list[str] = []
    schemes: set[str] = set()
    for i, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
        elif i and args[i - 1].startswith("--") and "=" not in args[i - 1]:
            flag, value = args[i - 1], arg
        else:
            continue
        if "://" not in value or "@" not in value:
            continue
        try:
            parts = urlsplit(value)
            secret = parts.password
        except ValueError:
            continue
        if secret and flag not in flags:
            flags.append(flag)
            schemes.add(parts.scheme.lower())
    if not flags:
        return None
    envs, files = [], []
    for flag in flags:
        env = _CORE_URL_ENV.get(flag)
        for reg in plugins.all():
            options = getattr(reg.cls, "options", ())
            for opt in options:
                if opt.flag == flag:
                    env = env or (opt.env_help() if opt.envvar else None)
                    files += [o.flag for o in options if o.name == "password_file"]
        if env:
            envs.append(env)
    instead = [f"set {' / '.join(envs)} instead"] if envs else []
    if any(s.startswith("postgres") for s in schemes):
        instead.append(f"leave it out of the URL and use {', '.join([*files, 'PGPASSWORD'])} or ~/.pgpass (PGPASSFILE)")
    what = " and ".join(flags)
    return (f"forge: warning: the password in {what} can be read by every user of this machine (ps, "
            f"/proc/{os.getpid()}/cmdline)" + (f"; {', or '.join(instead)}" if instead else ""))


def tune_allocator() -> None:
    """The ``forge`` command's process, on glibc: one malloc arena for all its threads. Each
    fetch, download and probe thread would otherwise get a heap of its own, where a month's
    text, a zip and the buffers freed in another thread leave holes no other heap reuses: about
    8 MiB of peak memory on an archive year, at no measurable CPU (the GIL serialises the
    threads' Python anyway; A/B 0.97x CPU). Settings the user gave (``MALLOC_*``,
    ``GLIBC_TUNABLES``) are left alone; elsewhere (musl, macOS) nothing is done. The embedding
    API (:class:`~forge_core.Pipeline`) never calls it: a host process keeps its own allocator."""
    if not sys.platform.startswith("linux") or any(
            k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_arena_max = -8  # <malloc.h>
    mallopt(m_arena_max, 1)


def main(argv: list[str] | None = None, plugins: Plugins | None = None) -> int:
    tune_allocator()
    args = sys.argv[1:] if argv is None else argv
    # logging must be ready before plugins load (a broken plugin logs a warning)
    verbosity, log_format = _logging_args(args)
    verbose = verbosity > 0 or _env_flag("FORGE_DEBUG")  # (-vvv too)
    configure(verbosity, log_format)
    plugins = plugins or Plugins()

    def fail(message: str, code: int, kind: str = "error: ") -> int:
        """The one error line; with --log-format json one JSON object, as the logs and summary are."""
        line = (json.dumps({"event": "error", "level": "error", "message": message, "exit": code})
                if log_format == "json" else f"forge: {kind}{message}")
        click.echo(line, err=True)
        return code

    try:
        cli = build_cli(plugins, args)
        if sys.stderr.isatty():  # for the person who typed it; scripts read errors as one line
            warning = password_warning(plugins, args)
            if warning is not None:
                click.echo(warning, err=True)
        code = cli.main(args=args, prog_name="forge", standalone_mode=False)
        return code if isinstance(code, int) else 0  # a command's click.exceptions.Exit(code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort as exc:
        return fail("interrupted", signal_exit_code(exc), "")
    except click.UsageError as exc:  # one line, like every other error
        where = f"forge {exc.ctx.info_name}" if exc.ctx is not None and exc.ctx.info_name != "forge" else "forge"
        message = exc.format_message()
        if isinstance(exc, click.NoSuchOption) and where in ("forge run", "forge verify", "forge repair", "forge status"):
            owner = _owner_of(plugins, exc.option_name)
            if owner is not None and where != "forge run" and owner.startswith("transform "):
                message = (f"option {exc.option_name} belongs to {owner}; {where} checks the exchange's own "
                           "candles and takes no transforms")
            elif owner is not None:
                what = "this run's source or sinks" if where == "forge run" else f"this {where[6:]}'s source or sink"
                message = (f"option {exc.option_name} belongs to {owner}, not to {what} "
                           f"(choose that plugin, e.g. --{owner.split()[0]} {owner.split()[1].rstrip(',')})")
        return fail(f"{message} (see '{where} --help')", exc.exit_code)
    except click.ClickException as exc:
        return fail(exc.format_message(), exc.exit_code)
    except KeyboardInterrupt as exc:
        return fail("interrupted; everything committed before this is kept, run again to resume",
                    signal_exit_code(exc), "")
    except ForgeError as exc:
        if verbose:
            traceback.print_exc()
        return fail(str(exc), exc.exit_code)
    except Exception as exc:  # a bug or an unexpected failure: still one line unless -v
        if verbose:
            traceback.print_exc()
        return fail(f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", 1, "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
