"""Search stored payloads in SQL: "the value at this JSON path equals this value".

``--where PATH=VALUE`` (``hookfleet events list``, ``hookfleet replay``) becomes
:class:`PayloadEquals`, a condition the database evaluates, so listing never loads a
payload into Python.

**PATH.** ``$.a.b``, or ``a.b`` (the ``$.`` is implied): object keys separated by dots,
array positions in brackets (``data.items[0].id``, ``$[0]`` for a payload that is an
array). A key holding a dot, a bracket, ``=`` or a space is quoted: ``a."b.c"``. Keys
are case-sensitive; positions count from 0. A double quote or backslash inside a key
cannot be searched for.

Spaces before PATH and between PATH and ``=`` are ignored.

**VALUE** (all of it, after the first ``=`` that follows the path, spaces included):

- matches a JSON **string** equal to it byte for byte (case, accents and trailing
  spaces count: MariaDB compares in ``utf8mb4_nopad_bin``);
- when VALUE is itself a JSON number, ``true``, ``false`` or ``null`` (with no space
  around it), it also matches that JSON value: ``amount=100`` matches ``100``,
  ``100.0``, ``1e2`` and ``"100"``; ``livemode=true`` matches ``true`` and ``"true"``;
  ``x=null`` matches a JSON ``null`` (never a missing key). Numbers compare by decimal
  value, never as doubles (``0.1`` is not ``0.10000000000000001``): MariaDB casts to
  ``DECIMAL(65, 30)``, SQLite calls :func:`number_equals` on the token's text, which
  rounds the same way; a VALUE that DECIMAL(65, 30) cannot hold is refused;
- a VALUE in double quotes is a JSON string and matches only a string:
  ``id="100"`` matches ``"100"``, not ``100``.

A missing key, a path through something that is not an object or array, a payload that
is not JSON or not an object: no match, never an error.

SQL: SQLite's JSON1 (``json_valid``, ``json_type``, ``json_extract``: sqlite.org/json1.html)
and MariaDB's JSON functions (``JSON_EXTRACT``, ``JSON_TYPE``, ``JSON_UNQUOTE``:
mariadb.com/kb/en/json-functions); the path is a bound parameter with every key quoted
(``$."data"."object"[0]``), a form both accept.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, ROUND_HALF_UP, Context, Decimal
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, case, cast, false, func, literal, or_
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.compiler import SQLCompiler

from models.base import EXACT_COLLATION

_SEGMENT = re.compile(r'\.([^."\[\]=\s]+)|\."([^"\\]*)"|\[(\d+)\]')
Step = str | int


class BadPath(ValueError):
    """``--where`` text that is not ``PATH=VALUE`` in the syntax above."""


@dataclass(frozen=True)
class PayloadCondition:
    """One parsed ``PATH=VALUE``: ``steps`` are keys (str) and positions (int); ``text``
    is the string it matches; ``literal`` the JSON value VALUE spells (a Decimal, bool
    or None) when ``has_literal``; ``source`` the text as given."""

    steps: tuple[Step, ...]
    text: str
    literal: Any = None
    has_literal: bool = False
    source: str = ""

    @property
    def json_path(self) -> str:
        """``$."a"."b"[0]``: the path as both SQLite and MariaDB read it."""
        return "$" + "".join(f"[{s}]" if isinstance(s, int) else f'."{s}"' for s in self.steps)


def parse_condition(text: str) -> PayloadCondition:
    """Parse ``PATH=VALUE``; raises :class:`BadPath` saying what is wrong. Spaces before
    PATH and between PATH and ``=`` are ignored; VALUE is kept as typed, spaces too."""
    rest = text.lstrip()
    if rest.startswith("="):
        raise BadPath(f"{text!r}: the path is empty (say which field: data.object.id=...)")
    if rest.startswith("$"):
        rest = rest[1:]
    elif rest and rest[0] not in ".[":
        rest = "." + rest
    steps: list[Step] = []
    while rest and not rest.lstrip().startswith("="):
        match = _SEGMENT.match(rest)
        if match is None:
            raise BadPath(
                f"{text!r}: expected PATH=VALUE with PATH like data.object.id, $.call.call_id "
                f'or items[0].id (quote odd keys: a."b.c"), at {rest!r}'
            )
        key, quoted_key, position = match.groups()
        steps.append(int(position) if position is not None else (key or quoted_key or ""))
        rest = rest[match.end() :]
    rest = rest.lstrip()
    if not rest.startswith("="):
        raise BadPath(f"{text!r}: no '=VALUE' after the path")
    if not steps:
        raise BadPath(f"{text!r}: the path is empty (say which field: data.object.id=...)")
    return _with_value(tuple(steps), rest[1:], source=text)


def _with_value(steps: tuple[Step, ...], value: str, *, source: str) -> PayloadCondition:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        if isinstance(decoded, str):
            return PayloadCondition(steps, text=decoded, source=source)
    is_literal, parsed = _json_literal(value)
    if is_literal:
        if isinstance(parsed, Decimal) and not _comparable(parsed):
            raise BadPath(
                f"{source!r}: numbers are compared up to {NUMBER_INTEGER_DIGITS} digits before "
                f"the point and {NUMBER_PLACES} after; quote it to search for the text"
            )
        return PayloadCondition(steps, value, literal=parsed, has_literal=True, source=source)
    return PayloadCondition(steps, text=value, source=source)


def _json_literal(value: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``value`` is a JSON number, true, false or null, spelled
    without surrounding spaces (`` 100`` is the text " 100", not a number)."""
    if value != value.strip():
        return False, None
    try:
        parsed = json.loads(value, parse_float=Decimal, parse_int=Decimal)
    except ValueError:
        return False, None
    if isinstance(parsed, Decimal):
        # Positional (1E+2 is 100): the database reads the literal as a DECIMAL then.
        return True, Decimal(format(parsed, "f"))
    if parsed is None or isinstance(parsed, bool):
        return True, parsed
    return False, None


# Numbers compare as DECIMAL(65, 30) on MariaDB (its widest exact type): a payload
# number is rounded to 30 places; SQLite's comparison (``number_equals``) does the same.
NUMBER_PLACES = 30
NUMBER_INTEGER_DIGITS = 65 - NUMBER_PLACES
_QUANTUM = Decimal(1).scaleb(-NUMBER_PLACES)
_NUMBER_EQUALS = "hookfleet_number_equals"


def _comparable(number: Decimal) -> bool:
    """Whether ``number`` survives DECIMAL(65, 30) unchanged."""
    if not number.is_finite():
        return False
    return number == 0 or (number.adjusted() < NUMBER_INTEGER_DIGITS and number == _rounded(number))


def _rounded(number: Decimal) -> Decimal:
    return number.quantize(_QUANTUM, rounding=ROUND_HALF_UP, context=_WIDE)


_WIDE = Context(prec=1000, Emax=MAX_EMAX, Emin=MIN_EMIN)


def number_equals(stored: Any, wanted: Any) -> int:
    """SQLite function ``hookfleet_number_equals(token, literal)``: 1 when the JSON number
    token ``stored`` (its text, as ``->`` gives it) rounded to 30 places equals the
    literal ``wanted``, as MariaDB's ``CAST(... AS DECIMAL(65, 30))`` compares; else 0.
    Registered on every SQLite connection (``models.engine``)."""
    try:
        number = Decimal(str(stored))
        if not number.is_finite() or number.adjusted() >= NUMBER_INTEGER_DIGITS:
            return 0
        return int(_rounded(number) == Decimal(str(wanted)))
    except (ArithmeticError, ValueError):
        return 0


def register_sqlite_functions(dbapi_connection: Any) -> None:
    """Add :func:`number_equals` to a ``sqlite3`` connection."""
    dbapi_connection.create_function(_NUMBER_EQUALS, 2, number_equals, deterministic=True)


class PayloadEquals(ColumnElement[bool]):
    """SQL: ``column`` (text holding JSON) has ``condition``'s value at its path.
    Compiled for SQLite and MariaDB/MySQL; other dialects raise ``CompileError``."""

    type = Boolean()
    inherit_cache = False  # holds plain Python values, not SQL elements: not cacheable

    def __init__(
        self, column: ColumnElement[str] | QueryableAttribute[str], condition: PayloadCondition
    ) -> None:
        self.column = column
        self.condition = condition


@compiles(PayloadEquals, "sqlite")
def _sqlite(element: PayloadEquals, compiler: SQLCompiler, **kw: Any) -> str:
    column, condition = element.column, element.condition
    path = literal(condition.json_path)
    kind = func.json_type(column, path)
    value = func.json_extract(column, path)
    matches = [and_(kind == "text", value == literal(condition.text))]
    if condition.has_literal:
        matches.append(_sqlite_literal(column, path, kind, value, condition.literal))
    # json_extract raises on text that is not JSON; CASE keeps it from seeing such rows.
    expression = case((func.json_valid(column) == 1, or_(*matches)), else_=false())
    return f"({compiler.process(expression, **kw)})"


def _sqlite_literal(
    column: Any, path: Any, kind: Any, value: Any, literal_value: Any
) -> ColumnElement[bool]:
    if literal_value is None:
        return kind == "null"
    if isinstance(literal_value, bool):
        return kind == ("true" if literal_value else "false")
    # json_extract turns an integer past 64 bits (and any real) into a double, which
    # would equate 0.1 with 0.10000000000000001: compare the token's text as a decimal.
    token = column.op("->")(path)
    return and_(
        kind.in_(["integer", "real"]),
        getattr(func, _NUMBER_EQUALS)(token, literal(str(literal_value))) == 1,
    )


@compiles(PayloadEquals, "mysql")
@compiles(PayloadEquals, "mariadb")
def _mariadb(element: PayloadEquals, compiler: SQLCompiler, **kw: Any) -> str:
    column, condition = element.column, element.condition
    # JSON_EXTRACT gives NULL (and a warning) for text that is not JSON, and for a
    # missing path: no match either way.
    extracted = func.json_extract(column, literal(condition.json_path))
    kind = func.json_type(extracted)
    # The payload column's collation folds case and accents, and any PAD SPACE
    # collation (utf8mb4_bin too) ignores trailing spaces; a searched id must not.
    unquoted = func.json_unquote(extracted).collate(EXACT_COLLATION)
    matches = [and_(kind == "STRING", unquoted == literal(condition.text))]
    if condition.has_literal:
        matches.append(_mariadb_literal(kind, extracted, condition.literal))
    # Parenthesized: the caller may compare it (``= 1``) or AND it with more.
    return f"({compiler.process(or_(*matches), **kw)})"


def _mariadb_literal(kind: Any, extracted: Any, literal_value: Any) -> ColumnElement[bool]:
    if literal_value is None:
        return kind == "NULL"
    if isinstance(literal_value, bool):
        return and_(kind == "BOOLEAN", extracted == ("true" if literal_value else "false"))
    # DECIMAL(65, 30): the token's text, not a double (0.10000000000000001 is not 0.1).
    decimal = mysql.DECIMAL(65, NUMBER_PLACES)
    as_decimal = cast(func.json_unquote(extracted), decimal)
    return and_(
        kind.in_(["INTEGER", "DOUBLE", "DECIMAL"]),
        as_decimal == literal(literal_value, decimal),
    )


class TextEquals(ColumnElement[bool]):
    """SQL: text ``column`` equals ``value`` byte for byte on every backend. SQLite's
    default collation (BINARY) does already; on MariaDB a column in the default
    ``utf8mb4_general_ci`` folds case and accents and pads trailing spaces, so the
    comparison adds ``COLLATE utf8mb4_nopad_bin`` (next to the plain one, which an index
    on the column can still serve)."""

    type = Boolean()
    inherit_cache = False  # holds a plain Python value: not cacheable

    def __init__(self, column: ColumnElement[str] | QueryableAttribute[str], value: str) -> None:
        self.column = column
        self.value = value


@compiles(TextEquals)
def _text_equals(element: TextEquals, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.column == literal(element.value), **kw)})"


@compiles(TextEquals, "mysql")
@compiles(TextEquals, "mariadb")
def _text_equals_mariadb(element: TextEquals, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = element.column, literal(element.value)
    expression = and_(column == value, column.collate(EXACT_COLLATION) == value)
    return f"({compiler.process(expression, **kw)})"
