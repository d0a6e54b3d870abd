"""Plugin discovery: a small facade over pluggy's PluginManager, one per pipeline or CLI run.

Plugins are found through the entry-point group ``forge_etl`` (and :meth:`Plugins.register`
for embedding apps and tests). Entry points load lazily, on the first question that needs
them: a :class:`~forge_core.Pipeline` handed instances loads none, and asking for one plugin
by name first imports only the entry point of that name (falling back to all of them when no
entry point has that name). ``FORGE_LOAD_PLUGINS=binance,csv`` restricts which entry points
load (an empty value loads none).

One bad plugin never takes ``forge`` down: a plugin that fails to import, whose registration
hook raises, or that registers a name another plugin already has, is disabled alone, with one
warning naming it and its distribution, and listed in :attr:`Plugins.broken`. A hook whose
name is not a Forge hook (a misspelling, pluggy's ``check_pending``) is reported as a
warning. When two plugins register one name, the plugin whose entry point has that name
keeps it (so loading only that entry point gives the same answer), else the first loaded.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import __version__, hookspecs
from .errors import UsageError
from .logs import get_logger

ENTRY_POINT_GROUP = hookspecs.PROJECT
KINDS = ("source", "sink", "transform")
log = get_logger(__name__)


@dataclass(frozen=True)
class Registration:
    kind: str  # "source" | "sink" | "transform"
    name: str
    cls: type
    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class Broken:
    """A plugin that is installed but disabled, and why."""

    plugin: str
    distribution: str
    error: str


class Plugins:
    """The installed sources, sinks and transforms, by name."""

    def __init__(self, *, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str, str]] = {}
        self._registry: dict[str, dict[str, Registration]] | None = None
        self._broken: dict[str, Broken] = {}
        self._lock = threading.RLock()
        self._use_entry_points = entry_points
        self._all_loaded = not entry_points
        self._tried: set[str] = set()  # entry-point names already loaded (or failed)
        self._eps: list[Any] | None = None  # the group's entry points, read once (a scan of every distribution)
        self.entry_point_loads = 0  # how many entry points were imported: for tests and start-up checks
        from . import builtin_transforms

        self.register(builtin_transforms, name="builtin", distribution="forge-etl", version=__version__)

    # --- loading ---------------------------------------------------------------------------
    @property
    def broken(self) -> list[tuple[str, str]]:
        """``(plugin, error)`` of every disabled plugin; loads every entry point."""
        self.load()
        self.registry  # noqa: B018 - registration errors disable plugins too
        return [(b.plugin, b.error) for b in self._broken.values()]

    def broken_plugins(self) -> list[Broken]:
        self.load()
        self.registry  # noqa: B018
        return list(self._broken.values())

    def _entry_points(self) -> list[Any]:
        allow = os.environ.get("FORGE_LOAD_PLUGINS")
        allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        if self._eps is None:
            self._eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        return [ep for ep in self._eps if allowed is None or ep.name in allowed]

    def load(self, names: set[str] | None = None) -> None:
        """Import the entry points called ``names`` (all of them when ``None``)."""
        if not self._use_entry_points or (names is None and self._all_loaded):
            return
        with self._lock:
            wanted = [ep for ep in self._entry_points()
                      if ep.name not in self._tried and (names is None or ep.name in names)]
            for ep in wanted:
                self._tried.add(ep.name)
                self._load_one(ep)
            if names is None:
                self._all_loaded = True

    def _load_one(self, ep: Any) -> None:
        dist = getattr(ep, "dist", None)
        dist_name, version = (dist.name, dist.version) if dist else ("?", "?")
        if self.pm.has_plugin(ep.name):
            return
        self.entry_point_loads += 1
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break the CLI
            self._disable(ep.name, dist_name, f"{type(exc).__name__}: {exc}")
            return
        try:
            self.register(plugin, name=ep.name, distribution=dist_name, version=version)
        except Exception as exc:  # e.g. a hook with the wrong arguments (pluggy validates)
            self._disable(ep.name, dist_name, f"{type(exc).__name__}: {exc}")

    def _disable(self, plugin: str, distribution: str, error: str) -> None:
        if plugin in self._broken:
            return
        self._broken[plugin] = Broken(plugin, distribution, error)
        log.warning("plugin_disabled", plugin=plugin, distribution=distribution, error=error)
        registered = self.pm.get_plugin(plugin)
        if registered is not None:
            self.pm.unregister(registered)
        self._registry = None

    def register(self, plugin: Any, name: str | None = None, *, distribution: str = "(registered)",
                 version: str = "") -> None:
        """Register a plugin module or object, e.g. a test's or an embedding app's own."""
        with self._lock:
            name = self.pm.register(plugin, name=name)
            self._dists[name] = (distribution, version)
            self._registry = None
            self._check_hooks(plugin, name, distribution)

    def _check_hooks(self, plugin: Any, name: str, distribution: str) -> None:
        """What ``pm.check_pending()`` checks, for one plugin, as warnings: a hook nobody calls."""
        known = sorted(n for n in dir(hookspecs) if n.startswith("forge_"))
        for caller in self.pm.get_hookcallers(plugin) or ():
            if caller.spec is None:
                log.warning("plugin_unknown_hook", plugin=name, distribution=distribution, hook=caller.name,
                            known=", ".join(known), hint="misspelt? this hook is never called")

    # --- the registry built from the hooks -------------------------------------------------
    def _collect(self) -> tuple[dict[str, list[tuple[str, str, type]]], list[str]]:
        """Every plugin's registrations, calling each hook once; a raising hook disables its plugin."""
        found: dict[str, list[tuple[str, str, type]]] = {}  # plugin -> (kind, name, cls)
        order: list[str] = []
        hooks = {
            "source": self.pm.hook.forge_register_sources,
            "sink": self.pm.hook.forge_register_sinks,
            "transform": self.pm.hook.forge_register_transforms,
        }
        failed: set[str] = set()
        for kind, hook in hooks.items():
            for impl in reversed(hook.get_hookimpls()):  # registration order
                plugin_name = self.pm.get_name(impl.plugin) or "?"
                if plugin_name in failed:
                    continue
                if plugin_name not in found:
                    found[plugin_name] = []
                    order.append(plugin_name)
                got: list[tuple[str, str, type]] = []

                def register(cls: type, _kind: str = kind, _got: list[tuple[str, str, type]] = got,
                             _plugin: str = plugin_name) -> None:
                    if not getattr(cls, "name", None):
                        raise TypeError(f"{cls!r} registered by plugin {_plugin!r} has no name")
                    _got.append((_kind, cls.name, cls))

                try:
                    impl.function(register=register)
                except Exception as exc:
                    failed.add(plugin_name)
                    self._disable(plugin_name, self._dists.get(plugin_name, ("?", ""))[0],
                                  f"{impl.function.__name__} raised {type(exc).__name__}: {exc}")
                    continue
                found[plugin_name].extend(got)
        for plugin_name in failed:
            found.pop(plugin_name, None)
        return found, [p for p in order if p not in failed]

    def _build(self) -> dict[str, dict[str, Registration]]:
        found, order = self._collect()
        owners: dict[tuple[str, str], list[tuple[str, type]]] = {}
        for plugin_name in order:
            for kind, name, cls in found[plugin_name]:
                owners.setdefault((kind, name), []).append((plugin_name, cls))
        losers: dict[str, str] = {}
        for (kind, name), claims in owners.items():
            if len({id(cls) for _, cls in claims}) < 2:
                continue
            plugins = [p for p, _ in claims]
            winner = name if name in plugins else plugins[0]
            dist = self._dists.get(winner, ("?", ""))[0]
            for loser in plugins:
                if loser != winner and loser not in losers:
                    losers[loser] = (f"registers a {kind} named {name!r}, which plugin {winner!r} ({dist}) "
                                     "already registers; uninstall one, or set FORGE_LOAD_PLUGINS")
        for loser, why in losers.items():
            self._disable(loser, self._dists.get(loser, ("?", ""))[0], why)
        registry: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        for plugin_name in order:
            if plugin_name in losers:
                continue
            dist, version = self._dists.get(plugin_name, ("?", ""))
            for kind, name, cls in found[plugin_name]:
                registry[kind].setdefault(name, Registration(kind, name, cls, plugin_name, dist, version))
        return registry

    @property
    def registry(self) -> dict[str, dict[str, Registration]]:
        """Every registration by kind and name; loads every entry point."""
        self.load()
        return self._current()

    def _current(self) -> dict[str, dict[str, Registration]]:
        with self._lock:
            if self._registry is None:
                self._registry = self._build()
            return self._registry

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry[kind])

    def find(self, kind: str, name: str) -> Registration | None:
        """The registration of ``name``, importing only the entry point of that name when it
        registers it (else every entry point)."""
        self.load({name})
        reg = self._current()[kind].get(name)
        if reg is None:
            self.load()
            reg = self._current()[kind].get(name)
        return reg

    def get(self, kind: str, name: str) -> type:
        reg = self.find(kind, name)
        if reg is not None:
            return reg.cls
        broken = self._broken.get(name)
        if broken is not None:
            raise UsageError(f"{kind} {name!r} is installed (plugin {broken.plugin}, distribution "
                             f"{broken.distribution}) but broken: {broken.error}")
        installed = ", ".join(self.names(kind)) or "none"
        others = "".join(f"; broken plugin {b.plugin} ({b.distribution}): {b.error}" for b in self._broken.values())
        allow = os.environ.get("FORGE_LOAD_PLUGINS") if self._use_entry_points else None
        if allow is not None and any(ep.name not in self._tried for ep in self._eps or ()):
            others += f" (FORGE_LOAD_PLUGINS={allow!r} loads only those entry points; unset it to load all)"
        raise UsageError(f"unknown {kind} {name!r}; installed {kind}s: {installed}{others}")

    def all(self) -> list[Registration]:
        return [reg for kind in ("source", "transform", "sink")
                for _, reg in sorted(self.registry[kind].items())]

    def add_commands(self, cli: Any) -> None:
        """Let every loaded plugin add its commands; one that raises is disabled alone."""
        for impl in reversed(self.pm.hook.forge_register_commands.get_hookimpls()):
            plugin_name = self.pm.get_name(impl.plugin) or "?"
            try:
                impl.function(cli=cli)
            except Exception as exc:
                self._disable(plugin_name, self._dists.get(plugin_name, ("?", ""))[0],
                              f"forge_register_commands raised {type(exc).__name__}: {exc}")

