"""How a setting is declared once: its variable, default, parser and doc, in one place.

A field of a settings dataclass is declared with :func:`knob`; the field's metadata
holds a :class:`Knob`. :func:`read_fields` builds the dataclass's values from an
environment mapping by walking those declarations, and :func:`table_rows` renders them
as the README's configuration table, so parsing and documentation cannot drift from
the fields (celery's ``celery/app/defaults.py`` keeps its options the same way).

Reading rules, for every knob alike: an unset or blank variable means the default; a
value that cannot be parsed raises :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# (variable name, raw text) -> value; raises ConfigError.
Parser = Callable[[str, str], Any]

_FALSY = {"0", "off", "false", "no"}
_TRUTHY = {"1", "on", "true", "yes"}


class ConfigError(ValueError):
    """A ``HOOKFLEET_*`` variable holds a value that cannot be used."""


@dataclass(frozen=True)
class Knob:
    """One setting's declaration (in a dataclass field's metadata under ``"knob"``).

    ``env`` may hold ``{provider}`` (``HOOKFLEET_{provider}_SECRETS``): such knobs are
    read per provider (:func:`provider_values`). ``fallback`` gives the default from
    other variables (``HOOKFLEET_BROKER_URL`` defaults to ``HOOKFLEET_REDIS_URL``), or
    None to use the field's default. ``shown`` is the README's default column when
    the field's default alone would not tell a reader (``= HOOKFLEET_REDIS_URL``).
    ``at_least`` raises a smaller parsed value to it (what was always done, silently).
    ``at_most`` refuses a larger one (ConfigError at startup): a TTL or size Redis would
    overflow on must not be accepted only to fail at every use.
    """

    env: str
    doc: str
    parse: Parser
    shown: str | None = None
    fallback: Callable[[Mapping[str, str]], Any] | None = None
    at_least: int | None = None
    at_most: int | None = None


def knob(
    default: Any,
    env: str,
    doc: str,
    *,
    parse: Parser | None = None,
    shown: str | None = None,
    fallback: Callable[[Mapping[str, str]], Any] | None = None,
    at_least: int | None = None,
    repr: bool = True,
    at_most: int | None = None,
) -> Any:
    """A dataclass field declared as a setting. The parser defaults to the one for the
    default's type (bool, int, float, str). Typed ``Any`` so ``x: int = knob(...)``
    type-checks, as with :func:`dataclasses.field`."""
    declared = Knob(env, doc, parse or _parser_for(default), shown, fallback, at_least, at_most)
    if isinstance(default, Mapping):  # read-only, but unhashable: dataclasses want a factory
        return field(default_factory=lambda: default, repr=repr, metadata={"knob": declared})
    return field(default=default, repr=repr, metadata={"knob": declared})


def knobs(cls: type) -> list[tuple[str, Knob]]:
    """``(field name, Knob)`` for each declared field of dataclass ``cls``, in order."""
    return [(f.name, f.metadata["knob"]) for f in dataclasses.fields(cls) if "knob" in f.metadata]


def read_fields(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """Values of ``cls``'s declared fields from ``env``; unset ones are left out (the
    dataclass's default applies) unless their knob has a fallback. Raises ConfigError."""
    values: dict[str, Any] = {}
    for name, declared in knobs(cls):
        value = read(declared, declared.env, env)
        if value is None and declared.fallback is not None:
            value = declared.fallback(env)
        if value is not None:
            values[name] = value
    return values


def read(declared: Knob, var: str, env: Mapping[str, str]) -> Any:
    """``declared`` parsed from variable ``var`` of ``env``; None when unset or blank."""
    raw = env.get(var, "").strip()
    if not raw:
        return None
    value = declared.parse(var, raw)
    if declared.at_least is not None and value is not None:
        value = max(declared.at_least, value)
    if declared.at_most is not None and value is not None and value > declared.at_most:
        raise ConfigError(f"{var} must be at most {declared.at_most}, got {value}")
    return value


def shown_default(cls: type, name: str) -> str:
    """The README's default column for field ``name`` of ``cls``."""
    declared = next(k for n, k in knobs(cls) if n == name)
    if declared.shown is not None:
        return declared.shown
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = found.default
    if default is dataclasses.MISSING and found.default_factory is not dataclasses.MISSING:
        default = found.default_factory()
    return f"`{_spelled(default)}`" if default not in ("", None, (), {}) else "—"


def table_rows(cls: type) -> list[tuple[str, str, str]]:
    """``(variable, default, meaning)`` per declared field of ``cls``, for the README."""
    rows = []
    for name, declared in knobs(cls):
        variable = declared.env.replace("{provider}", "<PROVIDER>")
        rows.append((f"`{variable}`", shown_default(cls, name), declared.doc))
    return rows


def _spelled(value: object) -> str:
    """A default as an operator would write it in the variable."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


# --- parsers: (variable name, raw text, never blank) -> value --------------------------


def whole(name: str, raw: str) -> int:
    """A whole number, not negative."""
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def positive(name: str, raw: str) -> int:
    """A whole number of at least 1."""
    value = whole(name, raw)
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


def number(name: str, raw: str) -> float:
    """A finite number, not negative: every float knob is a duration or a rate, and a
    negative, ``inf`` or ``nan`` one would only fail at its first use."""
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a number of at least 0, got {raw!r}")
    return value


def switch(name: str, raw: str) -> bool:
    """``on``/``off`` (also 1/0, true/false, yes/no)."""
    lowered = raw.lower()
    if lowered in _TRUTHY:
        return True
    if lowered in _FALSY:
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")


def text(_name: str, raw: str) -> str:
    return raw


def upper(_name: str, raw: str) -> str:
    return raw.upper()


def base_url(_name: str, raw: str) -> str:
    """A URL that paths are appended to: without its trailing slash."""
    return raw.rstrip("/")


def items(_name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated, blanks dropped: ``a, b,,`` -> ``("a", "b")``."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def upper_items(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.upper() for item in items(name, raw))


def _parser_for(default: Any) -> Parser:
    if isinstance(default, bool):
        return switch
    if isinstance(default, int):
        return whole
    if isinstance(default, float):
        return number
    if isinstance(default, str):
        return text
    if default is None:
        return positive
    raise TypeError(f"say how to parse a default of {type(default).__name__}")


MIN_RATE_PER_S = 0.001
"""The slowest rate a limit may have (one a quarter hour and more): below it the token
bucket's arithmetic in Redis overflows (1e-16 answered 503 for good)."""


def rate(name: str, raw: str) -> float:
    """A finite number, not negative (a rate per second; 0 means off); a positive one
    at least :data:`MIN_RATE_PER_S`."""
    value = number(name, raw)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a number of at least 0, got {raw!r}")
    if 0 < value < MIN_RATE_PER_S:
        raise ConfigError(
            f"{name} must be 0 (off) or at least {MIN_RATE_PER_S:g} per second, got {raw!r}"
        )
    return value
