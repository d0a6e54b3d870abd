"""Options a source, sink or transform accepts, declared once for the CLI and the Python API.

The core resolves and validates every option, whoever builds the plugin (``forge run``,
``Pipeline("okx", ...)``, ``sf.BybitBackfilling(...)`` or ``BybitSource(...)``): each base
class's ``__init__`` calls :func:`settings`, so a plugin only reads ``self.settings``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

MASK = "***"
TRUE_WORDS = ("1", "true", "yes", "on", "y")
FALSE_WORDS = ("0", "false", "no", "off", "n", "")


@dataclass(frozen=True)
class Option:
    """One keyword argument of a plugin class, shown as ``--name-with-dashes`` on the CLI.

    A value is resolved by the core, the same way from the CLI, the Python API and the
    streamforge layer, in this order: the value given (not ``None``) > the environment
    variable ``envvar`` (read by the core; a plugin never reads it itself; an empty value
    counts as unset) > ``default``. Then:

    * ``type`` (``str``, ``int``, ``float``, ``bool`` or any ``fn(str) -> value``) converts a
      text value (from the command line or the environment); a value that does not convert is
      a :class:`~forge_core.UsageError` naming the option, the value and where it came from.
      ``None`` (the default) passes the value through unchanged.
    * ``choices``: the value (each value, with ``multiple``) must be one of them.
    * ``required``: no value from any of the three places is a usage error.
    * ``secret``: the value is shown as ``***`` in ``repr(plugin.settings)``, in logs and in
      every error message (set it for passwords and URLs that may hold one).

    ``envvar`` may depend on another option's resolved value: give a mapping from that
    option's values to variable names and name the option in ``envvar_by``, e.g. Binance's
    base URL, ``envvar={"spot": "FORGE_BINANCE_URL", "usdm": "FORGE_BINANCE_FUTURES_URL"}``
    with ``envvar_by="market"``. Options with ``envvar_by`` resolve after the others.

    Options belong to their plugin: two plugins may declare the same name with different
    choices. ``forge run`` shows the options of the plugins chosen on its command line; when
    two chosen plugins declare the same name, the one value given on the command line goes to
    both and each validates it.
    """

    name: str
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    envvar: str | Mapping[str, str] | None = None
    multiple: bool = False
    is_flag: bool = False
    secret: bool = False
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    required: bool = False
    envvar_by: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def envvars(self) -> list[str]:
        """Every environment variable this option may read, for help texts."""
        if self.envvar is None:
            return []
        return [self.envvar] if isinstance(self.envvar, str) else list(self.envvar.values())

    def env_help(self) -> str:
        """``FORGE_X`` or ``FORGE_A (market spot), FORGE_B (market usdm)``."""
        if self.envvar is None:
            return ""
        if isinstance(self.envvar, str):
            return self.envvar
        return ", ".join(f"{var} ({self.envvar_by} {key})" for key, var in self.envvar.items())

    def show(self, value: Any) -> str:
        """``repr`` of a value as it may appear in a message: masked when secret."""
        return repr(MASK) if self.secret and value not in (None, "") else repr(value)


class Settings(dict):  # type: ignore[type-arg]
    """A plugin's resolved option values; ``repr`` masks the secret ones.

    ``origin(name)`` says where a value came from: ``"given"``, ``"env FORGE_X"`` or
    ``"default"``.
    """

    def __init__(self, values: dict[str, Any], secret: set[str], origins: dict[str, str]) -> None:
        super().__init__(values)
        self._secret = frozenset(secret)
        self._origins = origins

    def origin(self, name: str) -> str:
        return self._origins.get(name, "default")

    def masked(self) -> dict[str, Any]:
        """The values with secrets replaced by ``***``: what logs may show."""
        return {k: (MASK if k in self._secret and v not in (None, "") else v) for k, v in self.items()}

    def __repr__(self) -> str:
        return repr(self.masked())

    __str__ = __repr__


def settings(kind: str, name: str, declared: tuple[Option, ...], given: dict[str, Any],
             environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve and validate the declared options: given > environment > default.

    An undeclared option, a bad value or a missing required one is a :class:`UsageError` of
    one line naming the plugin, the option, the value and what is accepted."""
    env = os.environ if environ is None else environ
    by_name = {o.name: o for o in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        accepted = ", ".join(o.name for o in declared) or "none"
        raise UsageError(f"{kind} {name!r} has no option {unknown[0]!r}; accepted: {accepted}")
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    ordered = [o for o in declared if o.envvar_by is None] + [o for o in declared if o.envvar_by is not None]
    for opt in ordered:
        where = f"{kind} {name!r} option {opt.name} ({opt.flag})"
        value, origin = given.get(opt.name), "given"
        if value is None or (opt.multiple and value == ()):
            var = _envvar(opt, values, by_name, kind, name)
            if var is not None and env.get(var, "") != "":
                value, origin = env[var], f"env {var}"
            else:
                value, origin = opt.default, "default"
        if value is not None:
            value = _convert(opt, value, where, origin)
            _check_choices(opt, value, where, origin)
        if opt.required and value in (None, "", ()):
            env_hint = f" or set {opt.env_help()}" if opt.envvar else ""
            raise UsageError(f"{kind} {name!r} needs option {opt.name} ({opt.flag}){env_hint}: {opt.help}")
        values[opt.name] = value
        origins[opt.name] = origin
    ordered_values = {o.name: values[o.name] for o in declared}
    return Settings(ordered_values, {o.name for o in declared if o.secret}, origins)


def _envvar(opt: Option, values: dict[str, Any], by_name: dict[str, Option], kind: str, name: str) -> str | None:
    if opt.envvar is None or isinstance(opt.envvar, str):
        return opt.envvar
    if opt.envvar_by is None or opt.envvar_by not in by_name:
        raise TypeError(f"{kind} {name!r} option {opt.name}: envvar is a mapping, so envvar_by must name "
                        f"another option of the plugin (got {opt.envvar_by!r})")
    return opt.envvar.get(str(values.get(opt.envvar_by)))


def _from(origin: str) -> str:
    return f" (from {origin[4:]})" if origin.startswith("env ") else ""


def _convert(opt: Option, value: Any, where: str, origin: str) -> Any:
    if opt.multiple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_convert_one(opt, item.strip() if isinstance(item, str) else item, where, origin)
                     for item in items if not (isinstance(item, str) and not item.strip()))
    return _convert_one(opt, value, where, origin)


def _convert_one(opt: Option, value: Any, where: str, origin: str) -> Any:
    kind = bool if opt.is_flag and opt.type is None else opt.type
    if kind is None:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE_WORDS or text in FALSE_WORDS:
            return text in TRUE_WORDS
        raise UsageError(f"{where}: {opt.show(value)}{_from(origin)} is not a yes/no value; use true or false")
    if kind in (int, float) and isinstance(value, bool):
        raise UsageError(f"{where}: {opt.show(value)}{_from(origin)} is not a number")
    if kind is int and isinstance(value, int):
        return value
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is str and not isinstance(value, str):
        return str(value)
    try:
        return kind(value.strip() if isinstance(value, str) and kind in (int, float) else value)
    except (TypeError, ValueError) as exc:
        what = {int: "an integer", float: "a number"}.get(kind)  # type: ignore[call-overload]
        reason = f"is not {what}" if what else f"is not accepted: {exc}"
        if opt.secret:
            reason = f"is not {what}" if what else "is not accepted"
        raise UsageError(f"{where}: {opt.show(value)}{_from(origin)} {reason}") from None


def _check_choices(opt: Option, value: Any, where: str, origin: str) -> None:
    if not opt.choices:
        return
    for item in value if opt.multiple else (value,):
        if item not in opt.choices:
            allowed = ", ".join(repr(c) for c in opt.choices)
            raise UsageError(f"{where}: {opt.show(item)}{_from(origin)} is not one of {allowed}")
