"""Plugin discovery: a small facade over pluggy's PluginManager, one per pipeline or CLI run.

Plugins are found through the entry-point group ``forge_etl`` (and :meth:`Plugins.register`
for embedding apps and tests). A plugin that fails to import is skipped with a warning so one
broken package cannot break ``forge`` itself. ``FORGE_LOAD_PLUGINS=binance,csv`` restricts
which entry points load (an empty value loads none).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import __version__, hookspecs
from .errors import UsageError
from .logs import get_logger

ENTRY_POINT_GROUP = hookspecs.PROJECT
log = get_logger(__name__)


@dataclass(frozen=True)
class Registration:
    kind: str  # "source" | "sink" | "transform"
    name: str
    cls: type
    plugin: str
    distribution: str
    version: str


class Plugins:
    """The installed sources, sinks and transforms, by name."""

    def __init__(self, *, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str, str]] = {}
        self._registry: dict[str, dict[str, Registration]] | None = None
        self.broken: list[tuple[str, str]] = []
        from . import builtin_transforms

        self.register(builtin_transforms, name="builtin", distribution="forge-etl", version=__version__)
        if entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        allow = os.environ.get("FORGE_LOAD_PLUGINS")
        allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if allowed is not None and ep.name not in allowed:
                continue
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the CLI
                self.broken.append((ep.name, f"{type(exc).__name__}: {exc}"))
                log.warning("plugin_skipped", plugin=ep.name, error=str(exc))
                continue
            dist = ep.dist
            self.register(plugin, name=ep.name, distribution=dist.name if dist else "?",
                          version=dist.version if dist else "?")

    def register(self, plugin: Any, name: str | None = None, *, distribution: str = "(registered)",
                 version: str = "") -> None:
        """Register a plugin module or object, e.g. a test's or an embedding app's own."""
        name = self.pm.register(plugin, name=name)
        self._dists[name] = (distribution, version)
        self._registry = None

    # --- the registry built from the hooks -------------------------------------------------
    def _build(self) -> dict[str, dict[str, Registration]]:
        registry: dict[str, dict[str, Registration]] = {"source": {}, "sink": {}, "transform": {}}
        hooks = {
            "source": self.pm.hook.forge_register_sources,
            "sink": self.pm.hook.forge_register_sinks,
            "transform": self.pm.hook.forge_register_transforms,
        }
        for kind, hook in hooks.items():
            for impl in hook.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin) or "?"
                dist, version = self._dists.get(plugin_name, ("?", ""))

                def register(cls: type, _kind: str = kind, _plugin: str = plugin_name,
                             _dist: str = dist, _version: str = version) -> None:
                    name = getattr(cls, "name", None)
                    if not name:
                        raise TypeError(f"{cls!r} registered by plugin {_plugin!r} has no name")
                    existing = registry[_kind].get(name)
                    if existing is not None and existing.cls is not cls:
                        raise UsageError(
                            f"two plugins register a {_kind} named {name!r}: "
                            f"{existing.plugin} ({existing.distribution}) and {_plugin} ({_dist}); "
                            "uninstall one, or set FORGE_LOAD_PLUGINS"
                        )
                    registry[_kind][name] = Registration(_kind, name, cls, _plugin, _dist, _version)

                impl.function(register=register)
        return registry

    @property
    def registry(self) -> dict[str, dict[str, Registration]]:
        if self._registry is None:
            self._registry = self._build()
        return self._registry

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry[kind])

    def get(self, kind: str, name: str) -> type:
        try:
            return self.registry[kind][name].cls
        except KeyError:
            installed = ", ".join(self.names(kind)) or "none"
            raise UsageError(f"unknown {kind} {name!r}; installed {kind}s: {installed}") from None

    def all(self) -> list[Registration]:
        return [reg for kind in ("source", "transform", "sink")
                for _, reg in sorted(self.registry[kind].items())]

    def add_commands(self, cli: Any) -> None:
        self.pm.hook.forge_register_commands(cli=cli)
