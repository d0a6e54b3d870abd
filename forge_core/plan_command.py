"""``forge plan``: the partitions of a request and their state in the store (see
:mod:`forge_core.partitions`), as text or ``--json`` for orchestrators (Airflow's dynamic task
mapping, a Dagster sensor, a shell loop over ``forge run --partition``)."""

from __future__ import annotations

import json
from typing import Any

import click

from . import partitions as parts
from .errors import UsageError
from .integrity.commands import open_store
from .plugins import Plugins
from .sources import Source
from .timeframes import Timeframe, source_timeframe
from .times import ACCEPTED, display, parse_range


def market_of(settings: dict[str, Any]) -> str:
    return str(settings.get("market") or "-")


def plan_command(plugins: Plugins) -> click.Command:
    from .cli import _Chosen  # the CLI's plugin options, routed to the plugin declaring each

    chosen = _Chosen(plugins, None, [], [])
    declared = {n: owners for n, owners in chosen.options.items() if any(r.kind in ("source", "sink") for r, _ in owners)}
    _route = chosen.route

    def callback(**kw: Any) -> None:
        from .pipeline import _symbols, refuse_future_start

        given = {k: v for k, v in kw.items() if k in declared and v not in (None, ())}
        source_cls = plugins.get("source", kw["source"])
        sink_cls = plugins.get("sink", kw["sink"]) if kw["sink"] else None
        used = set(_route(given, source_cls)) | (set(_route(given, sink_cls)) if sink_cls else set())
        for opt in given:  # --output without --sink read nothing: every partition 'unknown'
            if opt not in used:
                owners = [f"{r.kind} {r.name}" for r, _ in declared[opt]]
                sinks = [o.split(" ", 1)[1] for o in owners if o.startswith("sink ")]
                hint = f"; add --sink {sinks[0]} to read the partitions' state from it" if sinks and not kw["sink"] else ""
                raise UsageError(f"option --{opt.replace('_', '-')} belongs to {', '.join(owners)}, not to this "
                                 f"command's source or sink{hint}")
        source = source_cls(**_route(given, source_cls))
        try:
            timeframe = source_timeframe(source, kw["timeframe"])
            tf = timeframe.name
            start, end = parse_range(kw["from_"], kw["to"])
            symbols = _symbols(list(kw["symbol"]))
            now = source.server_time()  # as a run: what has closed, and how old the last candle is
            refuse_future_start(start, now)  # the run's own refusal, and no partition after the exchange's now
            end = min(end, now + 1)
            listed, ended = _bounds(source, symbols, timeframe, start, end)
            every = parts.plan(source.name, market_of(source.settings), symbols, tf, start, end)
            before = {p.symbol for p in every if p.symbol in listed and p.end <= listed[p.symbol]["first_open"]}
            listed = {symbol: first for symbol, first in listed.items() if symbol in before}
            planned = [p for p in every if (p.symbol not in ended or p.start < ended[p.symbol]["stop"])
                       and (p.symbol not in listed or p.end > listed[p.symbol]["first_open"])]
            states = _states(plugins, kw["sink"], _route(given, sink_cls), source.source_value, planned) if sink_cls else {}
        finally:
            source.close()
        rows = [{**p.as_json(), "state": states.get(p.key, "unknown"), "slots": p.slots} for p in planned]
        if kw["needs_work"]:
            rows = [r for r in rows if r["state"] not in ("verified", "complete")]
        if kw["as_json"]:
            click.echo(json.dumps({"partitions": rows, "listed": listed, "ended": {
                symbol: {k: v for k, v in e.items() if k != "stop"} for symbol, e in ended.items()}}, indent=1))
            return
        for r in rows:
            click.echo(f"{r['key']}  {r['state']}")
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        click.echo(f"{len(rows)} partitions" + "".join(
            f"{': ' if i == 0 else ', '}{n} {state}" for i, (state, n) in enumerate(sorted(counts.items()))))
        for symbol, first in listed.items():
            click.echo(f"{symbol} first candle {first['first_candle']} (its listing): no partition before "
                       f"{first['first_candle'][:7]}")
        for symbol, e in ended.items():
            click.echo(f"{symbol} {e['reason']}: " + (
                "no candles at all, no partition" if e["last_open"] is None else
                f"last candle {e['last_candle']}, no partition after {e['last_candle'][:7]}"))

    params: list[click.Parameter] = [
        click.Option(["--source", "-s"], required=True, metavar="NAME",
                     help=f"Source plugin: {', '.join(plugins.names('source')) or 'none installed'}."),
        click.Option(["--sink"], metavar="NAME", help="Read each partition's state from this store (csv, postgres, ...)."),
        click.Option(["--symbol"], multiple=True, required=True, help="Symbols, repeat or comma-separate."),
        click.Option(["--timeframe", "-t"], default="1m", show_default=True, help="Candle period."),
        click.Option(["--from", "from_"], required=True, metavar="WHEN", help=f"First open time: {ACCEPTED}."),
        click.Option(["--to"], default="now", show_default=True, metavar="WHEN", help="Last open time, inclusive."),
        click.Option(["--needs-work"], is_flag=True, help="Only partitions not verified or complete."),
        click.Option(["--json", "as_json"], is_flag=True, help="One JSON document: {\"partitions\": [...]}."),
    ]
    params += [p for p in chosen.params() if p.name in declared and p.name not in ("source", "symbol", "timeframe")]
    return click.Command("plan", callback=callback, params=params, context_settings={"max_content_width": 100},
                         help="List the partitions (series x month) of a request and their state in the store; "
                              "run them with forge run --partition KEY.")


def _bounds(source: Source, symbols: list[str], tf: Timeframe, start: int,
            end: int) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Where ``forge run`` starts and stops each series, as the exchange says: the symbols
    listed after ``start`` (no partition before the month of their first candle, which a run
    of it refuses) and those whose series ends before ``end`` (``SymbolInfo.ended``: none after
    the last candle), in its words."""
    source.prepare_symbols(symbols, tf)
    listed, ended = {}, {}
    for symbol in symbols:
        info = source.prepare(symbol, tf)
        if info.first_open is not None and tf.floor(info.first_open) > start:
            first = tf.floor(info.first_open)
            listed[symbol] = {"first_open": first, "first_candle": display(first)}
        if info.ended is None:
            continue
        last = info.last_open
        stop = 0 if last is None else tf.next_open(tf.floor(last))
        if stop < end:
            ended[symbol] = {"reason": info.ended, "last_open": last,
                             "last_candle": None if last is None else display(last), "stop": stop}
    return listed, ended


def _states(plugins: Plugins, sink: str, given: dict[str, Any], source_value: str,
            planned: list[parts.Partition]) -> dict[str, str]:
    store = open_store(plugins, sink, given)
    try:
        out = {}
        for (_, _, symbol, tf), group in _by_series(planned).items():
            start, end = group[0].start, group[-1].end
            held = store.partitions(source_value, symbol, tf, start, end)
            ledger = store.ledger(source_value, symbol, tf)
            for p in group:
                out[p.key] = parts.state(p, held.get(p.month), ledger.get(p.month))
        return out
    finally:
        store.close()


def _by_series(planned: list[parts.Partition]) -> dict[tuple[str, str, str, str], list[parts.Partition]]:
    out: dict[tuple[str, str, str, str], list[parts.Partition]] = {}
    for p in planned:
        out.setdefault((p.source, p.market, p.symbol, p.timeframe), []).append(p)
    return out
