"""The streamforge-style API: ``sf.BinanceBackfilling(...)``, ``sf.PostgresEmitter(...)``.

Scripts written for streamforge run with one change, ``import forge_core as sf``. The names are
not defined here: ``<Name>Backfilling`` resolves to the installed source plugin called
``name`` and ``<Name>Emitter`` to the sink, so a third-party source ``foo`` gets
``sf.FooBackfilling`` for free. Both are thin layers over :class:`~forge_core.Pipeline`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .errors import UsageError
from .pipeline import Pipeline, RunResult
from .plugins import Plugins

_cache: dict[str, type] = {}
_plugins: Plugins | None = None
_lock = threading.Lock()


def plugins() -> Plugins:
    """The one plugin set of the streamforge layer, built on first use and kept for the
    process: a script naming ``sf.BinanceBackfilling``, ``sf.PostgresEmitter`` and running
    them loads the entry points once (a :class:`Pipeline` still builds its own plugins and
    instances each run)."""
    global _plugins
    with _lock:
        if _plugins is None:
            _plugins = Plugins()
        return _plugins


class Emitter:
    """A sink's settings, chainable: ``PostgresEmitter(host=...).set_model(M).on_conflict([...])``.

    Any option the sink declares can be set by a method of the same name or ``set_<name>``. A
    fresh sink is built from these settings for every run, so one emitter can serve many
    backfillers and repeated runs.
    """

    sink_name = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def __getattr__(self, attr: str) -> Callable[[Any], Emitter]:
        name = attr[4:] if attr.startswith("set_") else attr
        if attr.startswith("_") or name not in _option_names("sink", self.sink_name):
            raise AttributeError(f"{type(self).__name__} has no method {attr!r}; options: "
                                 f"{', '.join(sorted(_option_names('sink', self.sink_name)))}")

        def setter(value: Any) -> Emitter:
            self.options[name] = value
            return self

        return setter

    def make(self) -> tuple[str, dict[str, Any]]:
        """The sink's name and options: what was set, over the sink's ``compat_defaults``."""
        defaults = getattr(plugins().get("sink", self.sink_name), "compat_defaults", {})
        return self.sink_name, {**defaults, **self.options}


class Backfilling:
    """``<Name>Backfilling(symbol, timeframe, from_date, to_date="now", file_path=None, **options)``.

    Without a registered emitter, writes CSV (to ``file_path`` or the default
    ``Binance-BTCUSDT-1m-2024-10-01_2024-10-31.csv``). ``run()`` is synchronous, returns a
    :class:`~forge_core.RunResult`, and may be called again (a safe re-run with an upserting
    emitter). Extra keyword arguments are the source's options (``base_url``, ``market``, ...).
    """

    source_name = ""

    def __init__(self, symbol: str | list[str] | None = None, timeframe: str = "1m", from_date: str | None = None,
                 to_date: str = "now", file_path: str | None = None, **source_options: Any) -> None:
        self.symbol, self.timeframe = symbol, timeframe
        self.from_date, self.to_date = from_date, to_date
        self.file_path = file_path
        self.source_options = source_options
        self.emitters: list[Emitter | Any] = []
        self.transformers: list[Any] = []
        self.workers = 4
        self.on_progress: Callable[..., None] | None = None

    def register_emitter(self, emitter: Emitter | Any) -> Backfilling:
        """Add a destination: an ``sf.<Name>Emitter`` or a :class:`~forge_core.Sink` instance."""
        self.emitters.append(emitter)
        return self

    def set_transformer(self, transformer: Callable[[dict[str, Any]], dict[str, Any]] | Any) -> Backfilling:
        """Apply ``fn(candle_dict) -> dict`` to every candle (or a Transform instance)."""
        self.transformers = [transformer]
        return self

    def run(self) -> RunResult:
        if not self.symbol or not self.from_date:
            missing = "symbol" if not self.symbol else "from_date"
            raise UsageError(f"{type(self).__name__} needs {missing}=..., e.g. symbol='BTCUSDT', "
                             "from_date='2024-01-01'")
        sinks: list[Any] = [e.make() if isinstance(e, Emitter) else e for e in self.emitters]
        if not sinks:
            sinks = [("csv", {"output": self.file_path} if self.file_path else {})]
        pipeline = Pipeline((self.source_name, dict(self.source_options)), sinks, list(self.transformers),
                            plugins=plugins(), workers=self.workers, on_progress=self.on_progress)
        return pipeline.run(self.symbol, self.timeframe, self.from_date, self.to_date)


def _option_names(kind: str, name: str) -> set[str]:
    return {o.name for o in getattr(plugins().get(kind, name), "options", ())}


def resolve(attr: str) -> type:
    """``BinanceBackfilling`` -> a Backfilling bound to the installed source ``binance``."""
    if attr in _cache:
        return _cache[attr]
    for suffix, kind, base in (("Backfilling", "source", Backfilling), ("Emitter", "sink", Emitter)):
        if attr.endswith(suffix) and len(attr) > len(suffix):
            wanted = attr[: -len(suffix)].lower()
            found = plugins().find(kind, wanted)  # imports only that entry point when names match
            candidates = [found.name] if found is not None else plugins().names(kind)
            for name in candidates:
                if name.replace("_", "").replace("-", "").lower() == wanted:
                    attrs = {"source_name" if kind == "source" else "sink_name": name,
                             "__doc__": (base.__doc__ or "") + f"\n\nBound to the {kind} plugin {name!r}."}
                    cls = type(attr, (base,), attrs)
                    _cache[attr] = cls
                    return cls
            raise AttributeError(f"module 'forge_core' has no attribute {attr!r}: no {kind} plugin named "
                                 f"{wanted!r} is installed; available: {', '.join(available())}")
    raise AttributeError(f"module 'forge_core' has no attribute {attr!r}")


def available(using: Plugins | None = None) -> list[str]:
    using = using or plugins()
    return ([_camel(n) + "Backfilling" for n in using.names("source")]
            + [_camel(n) + "Emitter" for n in using.names("sink")])


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
