"""The ``forge status``, ``forge verify`` and ``forge repair`` commands.

They take the same plugin options as ``forge run`` (``--output``, ``--database-url``,
``--base-url``, ``--market`` ...), route each to the plugin declaring it, and work on any sink
whose class has an ``integrity()`` method (see ``docs/plugin-hooks.md``).
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import UsageError
from ..plugins import Plugins
from ..timeframes import NAMES, parse_timeframe
from ..times import ACCEPTED, iso, parse_range
from .engine import UNCONFIRMED, Checker, SeriesReport, hole_json, mark_outages
from .model import FETCH_FAILED, REASON_TEXT, IntegrityStore, LedgerEntry

KINDS = ("missing", "extra", "duplicate", "changed")


def add_commands(cli: click.Group, plugins: Plugins, args: list[str] | None = None) -> None:
    """``forge verify/repair/status``; ``args`` (the words after the command) name the source and
    sink whose options the command takes, as for ``forge run``."""
    for name in ("verify", "repair", "status"):
        cli.add_command(_command(plugins, name, args or []))


def open_store(plugins: Plugins, sink_name: str, options: dict[str, Any]) -> IntegrityStore:
    """The integrity hooks of sink ``sink_name`` built with its ``options``, or a one-line refusal."""
    cls = plugins.get("sink", sink_name)
    if not hasattr(cls, "integrity"):
        able = [n for n in plugins.names("sink") if hasattr(plugins.get("sink", n), "integrity")]
        raise UsageError(f"sink {sink_name!r} does not support status, verify or repair (it has no integrity "
                         f"hooks); sinks that do: {', '.join(able) or 'none installed'}")
    return cls(**options).integrity()


def _command(plugins: Plugins, name: str, args: list[str]) -> click.Command:
    # the CLI's scoped plugin options (forge_core/options.py), as forge run resolves them
    from ..cli import _Chosen, plugin_args

    source_name, sink_names, _ = plugin_args(args)
    if name == "status":  # --source is a column value there, not a plugin: only the sink's options
        source_name = ""
    chosen = _Chosen(plugins, source_name, sink_names[-1:] or ["csv"], None)
    declared = chosen.options

    def callback(**kw: Any) -> int:
        given = {k: v for k, v in kw.items() if k in declared and v not in (None, ())}
        sink_cls = plugins.get("sink", kw["sink"])
        source_cls = plugins.get("source", kw["source"]) if name != "status" else None
        used = set(chosen.route(given, sink_cls)) | (set(chosen.route(given, source_cls)) if source_cls else set())
        for opt in given:
            if opt not in used:
                owners = ", ".join(f"{r.kind} {r.name}" for r, _ in declared[opt])
                raise UsageError(f"option --{opt.replace('_', '-')} belongs to {owners}, not to this "
                                 f"command's {'sink' if name == 'status' else 'source or sink'}")
        store = open_store(plugins, kw["sink"], chosen.route(given, sink_cls))
        try:
            if name == "status":
                if kw["timeframe"] is not None:
                    held = {s.source for s in store.series(kw["source"], kw["symbol"], None)}
                    kw["timeframe"] = _held_timeframe(plugins, held, kw["timeframe"])
                _status(store, kw)
                return 0
            assert source_cls is not None
            return _check(store, name, source_cls, chosen.route(given, source_cls), kw)
        finally:
            store.close()

    params: list[click.Parameter] = [
        click.Option(["--sink"], default="csv", show_default=True, metavar="NAME",
                     help="The store to look at: a sink plugin with integrity hooks (csv, postgres)."),
        click.Option(["--json", "as_json"], is_flag=True, help="A machine-readable report (docs/verify.md)."),
    ]
    if name == "status":
        params += [
            click.Option(["--source", "-s"], metavar="VALUE", help="Only series of this source column value."),
            click.Option(["--symbol"], metavar="SYMBOL", help="Only this symbol."),
            click.Option(["--timeframe", "-t"], metavar="TF", help="Only this timeframe."),
        ]
    else:
        params += [
            click.Option(["--source", "-s"], required=True, metavar="NAME",
                         help=f"Source plugin: {', '.join(plugins.names('source')) or 'none installed'}."),
            click.Option(["--symbol"], multiple=True, required=True, help="Symbols, repeat or comma-separate."),
            click.Option(["--timeframe", "-t"], default="1m", show_default=True, help="Candle period."),
            click.Option(["--from", "from_"], required=True, metavar="WHEN", help=f"First open time: {ACCEPTED}."),
            click.Option(["--to"], default="now", show_default=True, metavar="WHEN",
                         help="Last open time, inclusive; a bare date includes that whole day."),
            click.Option(["--workers"], type=click.IntRange(1, 64), default=4, show_default=True,
                         help="Concurrent requests to the exchange."),
            click.Option(["--recheck"], is_flag=True,
                         help="Fetch every partition again, downloading archive files whose .CHECKSUM is "
                              "still the one the ledger recorded (repair skips, verify trusts those)."),
        ]
    if name == "verify":
        params += [
            click.Option(["--deep"], type=click.IntRange(1), metavar="DAYS",
                         help="Also cross-check the archive files' candles against REST on DAYS days of the "
                              "range, drawn at random (--deep-seed); disagreements make the exit 1."),
            click.Option(["--deep-seed"], type=int, default=0, show_default=True,
                         help="Seed of the days --deep draws: the same seed, the same days."),
        ]
    if name == "repair":
        params += [
            click.Option(["--delete-extra"], is_flag=True,
                         help="Also delete rows the exchange does not have (off grid, before listing, in a hole)."),
        ]
    params += [p for p in chosen.params() if p.name not in ("source", "symbol", "timeframe", "sink")]
    helps = {
        "verify": "Compare the store with the exchange: missing, extra, duplicated and changed candles. "
                  "Exit 0 identical, 1 differences, 2 bad usage.",
        "repair": "Make the store identical to the exchange over the range, writing only what differs.",
        "status": "What the store holds per series: range, candles, holes and when last verified.",
    }
    return click.Command(name, callback=callback, params=params, help=helps[name],
                         context_settings={"max_content_width": 100})


def _held_timeframe(plugins: Plugins, sources: set[str], name: str) -> str:
    """``forge status -t`` in the spellings ``forge run -t`` takes, with its errors: any Forge
    timeframe (a store may hold resampled periods its exchange does not serve) or the own name
    for one of a source whose series the store holds (OKX's ``1H``; a source column value is
    the plugin name, or the name and a market: ``binance-usdm``)."""
    aliases: dict[str, str] = {}
    owners = []
    for plugin in plugins.names("source"):
        if not any(v == plugin or v.startswith(plugin + "-") for v in sources):
            continue
        own = getattr(plugins.get("source", plugin), "timeframe_aliases", None) or {}
        owners += [plugin] if own else []
        for alias, forge_name in own.items():
            if aliases.setdefault(alias, forge_name) != forge_name:  # two sources disagree: neither
                aliases[alias] = alias
    return parse_timeframe(name, NAMES, aliases, source=owners[0] if len(owners) == 1 else None).name


def _check(store: IntegrityStore, name: str, source_cls: type, source_opts: dict[str, Any], kw: dict[str, Any]) -> int:
    from ..cli import Interrupted, signal_exit_code
    from ..pipeline import _stop_signals

    try:
        with _stop_signals():  # SIGTERM and SIGHUP stop it as Ctrl-C does (exit 143, 129)
            return _checked(store, name, source_cls, source_opts, kw)
    except KeyboardInterrupt as exc:
        kept = ("every partition repaired before it is kept"
                if name == "repair" else "the store was not changed")
        raise Interrupted(f"interrupted: {kept}; run the same command again to resume", signal_exit_code(exc)) from None


def _checked(store: IntegrityStore, name: str, source_cls: type, source_opts: dict[str, Any],
             kw: dict[str, Any]) -> int:
    from ..pipeline import _symbols

    start, end = parse_range(kw["from_"], kw["to"])
    checker = Checker(store, lambda: source_cls(**source_opts), repair=name == "repair",
                      delete_extra=bool(kw.get("delete_extra")), recheck=bool(kw.get("recheck")),
                      workers=kw["workers"], deep=kw.get("deep") or 0, deep_seed=kw.get("deep_seed") or 0)
    reports: list[SeriesReport] = []
    symbols = _symbols(list(kw["symbol"]))
    if len(symbols) > 1:  # one alone is refused as cheaply by run()
        checker.check_held(symbols, kw["timeframe"], start, end)
    for symbol in symbols:
        reports.append(checker.run(symbol, kw["timeframe"], start, end))
    mark_outages(store, reports)  # the same hole in several symbols: the venue's outage
    if not kw["as_json"]:
        for report in reports:
            for text in _lines(report, name, bool(kw.get("delete_extra"))):
                click.echo(text)
    totals = {k: sum(r.count(k) for r in reports) for k in KINDS}
    failed = sum(1 for r in reports for p in r.partitions if p.status == "failed")
    different = any(totals.values())
    disagreements = sum(r.disagreements for r in reports)
    code = 1 if failed or (name == "verify" and (different or disagreements)) else 0
    holes = _holes(reports)
    summary = _summary(name, reports, totals, failed, checker.fetches, holes)
    if checker.deep:
        days = sum(len(r.deep["days"]) for r in reports if r.deep)
        summary += (f"; deep: {days} day(s) of archive files cross-checked against REST, "
                    f"{disagreements} candle(s) disagree")
    if kw["as_json"]:
        click.echo(json.dumps({"command": name, "store": store.describe(), "exit": code,
                               "series": [r.as_json() for r in reports],
                               "summary": {**totals, "series": len(reports), "failed_partitions": failed,
                                           **({"deep_disagreements": disagreements} if checker.deep else {}),
                                           "exchange_holes": holes[0], "unconfirmed_holes": holes[1],
                                           "fetches": checker.fetches,
                                           "written": sum(r.written for r in reports),
                                           "deleted": sum(r.deleted for r in reports), "text": summary}},
                              indent=1))
    else:
        click.echo(summary)
    return code


def _fmt(ts: int) -> str:
    return iso(ts).replace("T", " ").replace(":00Z", "").replace("Z", "")


def _range(first: int, last: int) -> str:
    return _fmt(first) if first == last else f"{_fmt(first)} .. {_fmt(last)}"


def _lines(report: SeriesReport, name: str, delete_extra: bool) -> list[str]:
    head = f"{report.source} {report.symbol} {report.timeframe}"
    out = []
    for issue in report.issues:
        what = {"missing": "missing", "extra": "extra", "duplicate": "duplicate", "changed": "changed"}[issue.kind]
        detail = ""
        if issue.reason:
            kept = name == "repair" and (not delete_extra or issue.reason == "in_unconfirmed_hole")
            detail = f" ({issue.reason.replace('_', ' ')}{', kept' if kept else ''})"
        if issue.fields:
            detail = f" ({', '.join(issue.fields)})"
        out.append(f"{head}: {what} {issue.count}: {_range(issue.first, issue.last)}{detail}")
    for hole in report.holes:
        symbols = hole.evidence.get("symbols") if hole.reason == "venue_outage" else None
        why = (f"the same hole in {len(symbols)} symbols of the venue: an outage" if symbols else
               REASON_TEXT.get(hole.reason, hole.reason.replace("_", " ")))
        if hole.reason == "after_last_candle":  # name the exchange's own words for it
            last = hole.evidence.get("last_candle")
            why = f"after its last candle{' ' + last if last else ''}: {hole.evidence.get('exchange')}"
        out.append(f"{head}: hole {_range(hole.first, hole.last)}, {hole.slots} slots ({why})")
    deep_text = {"archive_lacks": "REST has, the archive file lacks", "archive_only": "the archive file has, REST lacks",
                 "archive_differs": "the archive file and REST differ"}
    for issue in (report.deep or {}).get("disagreements", []):
        fields = f" ({', '.join(issue.fields)})" if issue.fields else ""
        out.append(f"{head}: {deep_text[issue.kind]} {issue.count}: {_range(issue.first, issue.last)}{fields} "
                   f"[{issue.file}]")
    for part in report.partitions:
        if part.status == "failed":
            out.append(f"{head}: {part.partition} not checked: {part.error}")
    return out


def _holes(reports: list[SeriesReport]) -> tuple[int, int]:
    """The exchange's holes, and those that are not its word (unconfirmed, fetch failed)."""
    holes = [h for r in reports for h in r.holes]
    doubtful = sum(h.reason in (UNCONFIRMED, FETCH_FAILED) for h in holes)
    return len(holes) - doubtful, doubtful


def _summary(name: str, reports: list[SeriesReport], totals: dict[str, int], failed: int, fetches: int,
             holes: tuple[int, int]) -> str:
    parts = sum(len(r.partitions) for r in reports)
    by_status: dict[str, int] = {}
    for r in reports:
        for p in r.partitions:
            by_status[p.status] = by_status.get(p.status, 0) + 1
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
    counts = ", ".join(f"{k} {totals[k]}" for k in KINDS)
    hole_text = f"{holes[0]} exchange hole(s)" + (f", {holes[1]} unconfirmed" if holes[1] else "")
    tail = ""
    if name == "repair":
        tail = (f"; wrote {sum(r.written for r in reports)}, deleted {sum(r.deleted for r in reports)}; "
                f"{fetches} fetch{'es' if fetches != 1 else ''} from the exchange")
    verdict = ("identical" if not any(totals.values()) and not failed else
               f"{failed} partition(s) not checked" if failed else "differences found")
    if name == "repair" and not failed:
        verdict = "repaired" if any(totals.values()) else "nothing to repair"
    return f"{name}: {len(reports)} series, {parts} partitions ({statuses}); {counts}; {hole_text}{tail}: {verdict}"


def _status(store: IntegrityStore, kw: dict[str, Any]) -> None:
    held = store.series(kw.get("source"), kw.get("symbol"), kw.get("timeframe"))
    if not held:
        what = " ".join(v for v in (kw.get("source"), kw.get("symbol"), kw.get("timeframe")) if v)
        raise UsageError(f"{store.describe()} holds no {what + ' ' if what else ''}candles")
    out = []
    for s in held:
        ledger: dict[str, LedgerEntry] = store.ledger(s.source, s.symbol, s.timeframe)
        states = store.partitions(s.source, s.symbol, s.timeframe, s.first_open, s.last_open + 1)
        current = [e for k, e in ledger.items() if k in states and states[k].digest == e.store_digest]
        verified = max((e.verified_at for e in ledger.values()), default=None)
        holes = [h for e in sorted(ledger.values(), key=lambda e: e.start) for h in e.holes
                 if h.reason != "before_listing" or s.first_open <= h.last]
        out.append({"source": s.source, "symbol": s.symbol, "timeframe": s.timeframe, "rows": s.rows,
                    "first_open": iso(s.first_open), "last_open": iso(s.last_open),
                    "partitions": len(states), "ledger_partitions": len(ledger),
                    "ledger_current": len(current),
                    "exchange_rows": sum(e.rows for e in ledger.values()) if ledger else None,
                    "last_verified": verified,
                    "holes": [hole_json(h) for h in holes]})
    if kw["as_json"]:
        click.echo(json.dumps({"command": "status", "store": store.describe(), "series": out}, indent=1))
        return
    for row in out:
        known = (f"exchange has {row['exchange_rows']:,} in {row['ledger_partitions']} checked partition(s), "
                 f"{row['ledger_current']} unchanged since; last verified {row['last_verified']}"
                 if row["ledger_partitions"] else "never verified")
        click.echo(f"{row['source']} {row['symbol']} {row['timeframe']}: {row['rows']:,} candles "
                   f"{row['first_open']} .. "
                   f"{row['last_open']} in {row['partitions']} partition(s); {known}")
        for h in row["holes"]:
            click.echo(f"  hole {h['from']} .. {h['to']}, {h['slots']} slots "
                       f"({REASON_TEXT.get(h['reason'], h['reason'].replace('_', ' '))})")
    click.echo(f"status: {len(out)} series in {store.describe()}")
