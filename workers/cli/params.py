"""What every ``hookfleet`` command shares: its settings, and how it reads ages and times.

Importing this reads no environment: :func:`invocation_settings` builds the settings on
first use in an invocation and keeps them on the root click context (``ctx.obj``), so
each command line reads ``HOOKFLEET_*`` once, however many parts of it ask. What the
environment does not set comes from the fleet ``hookfleet up`` runs, when one runs
(``workers.cli.discovery``).
"""

from __future__ import annotations

import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from workers.cli.discovery import RunningFleet, StaleFleet, fill_from_fleet, find_fleet

# SQLAlchemy and the settings (whose package loads every table) are imported where
# used, so `hookfleet --help` and the group's start import neither (README "The
# `hookfleet` command").
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from models.settings import Settings

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


_FLEET = "hookfleet.fleet"


def invocation_settings() -> Settings:
    """This command line's settings, from ``HOOKFLEET_*``, built once per invocation;
    a variable the environment leaves unset comes from the running fleet
    (:func:`invocation_fleet`). A variable that cannot be used ends the command with its
    message (exit status 1)."""
    from models.settings import ConfigError, Settings

    root = click.get_current_context().find_root()
    if not isinstance(root.obj, Settings):
        fleet = invocation_fleet()
        environ = fill_from_fleet(os.environ, fleet) if fleet else os.environ
        try:
            root.obj = Settings.from_env(environ)
        except ConfigError as error:
            raise click.ClickException(str(error)) from None
    return root.obj


def invocation_fleet() -> RunningFleet | None:
    """The fleet a running ``hookfleet up`` recorded, looked up once per invocation;
    None when there is none. A stale record is ignored with one line on stderr."""
    root = click.get_current_context().find_root()
    if _FLEET not in root.meta:
        try:
            root.meta[_FLEET] = find_fleet(os.environ)
        except StaleFleet as stale:
            click.echo(f"note: {stale}", err=True)
            root.meta[_FLEET] = None
    fleet: RunningFleet | None = root.meta[_FLEET]
    return fleet


MAX_AGE_S = 1000 * 365 * 86400  # a thousand years: any age a command needs


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` or ``45s``; raises ValueError otherwise."""
    match = _AGE.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not an age like 30d, 12h, 90m")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds > MAX_AGE_S:
        # Past this, datetime arithmetic overflows (a traceback, not an answer).
        raise ValueError(f"{text!r} is more than {MAX_AGE_S // 86400}d")
    return timedelta(seconds=seconds)


class Age(click.ParamType):
    """A span like ``30d``, ``12h``, ``90m``, ``2w`` or ``45s``, more than 0: a
    :class:`~datetime.timedelta`."""

    name = "age"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            age = parse_age(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)
        if age.total_seconds() <= 0:
            self.fail("must be more than 0", param, ctx)
        return age


class When(click.ParamType):
    """An ISO date or time (UTC unless it says otherwise), or an age like ``24h`` (that
    long ago): an aware :class:`~datetime.datetime`."""

    name = "when"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            return datetime.now(UTC) - parse_age(text)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"{text!r} is neither a date/time (2026-11-23T08:00) nor an age (24h)", param, ctx
            )
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Rate(click.ParamType):
    """Events per second: ``0`` (no cap), or a finite number of at least
    :data:`models.knobs.MIN_RATE_PER_S`, as the rate settings take
    (:func:`models.knobs.rate`): a float."""

    name = "rate"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        from models.knobs import rate
        from models.settings import ConfigError

        if isinstance(value, float):
            return value
        try:
            return rate("the rate", str(value).strip())
        except ConfigError as error:
            self.fail(str(error), param, ctx)


HINT = "is `hookfleet up` running? or set HOOKFLEET_DATABASE_URL"


def open_database(**options: Any) -> Engine:
    """The engine of this invocation's database (``options`` go to ``make_engine``),
    for a command that uses what is there: an SQLite URL naming a file that does not
    exist ends the command (exit 1) instead of creating an empty database there —
    only ``hookfleet migrate`` and ``hookfleet up`` create one."""
    from sqlalchemy import make_url

    from models.engine import make_engine

    settings = invocation_settings()
    url = make_url(settings.database_url)
    path = url.database or ""
    if url.get_backend_name() == "sqlite" and path not in ("", ":memory:"):
        if not path.startswith("file:") and not Path(path).exists():
            raise click.ClickException(f"no Hookfleet database at {path}: {HINT}")
    return make_engine(settings, **options)


class CommandGroup(click.Group):
    """The ``hookfleet`` group: a command that cannot reach the database or Redis ends
    with one line saying which and where (exit status 1), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            answer = _unreachable(ctx, error)
            if answer is None:
                raise  # a bug, not an absent database or Redis: its traceback is the report
            raise answer from None


def _unreachable(ctx: click.Context, error: Exception) -> click.ClickException | None:
    """The one line for a database or Redis ``error`` says is unreachable or empty; None
    for any other error. Only the libraries already imported are asked: an error of one
    never imported cannot have been raised, and importing redis or SQLAlchemy here would
    cost every command (``hookfleet send``) their start-up."""
    database_errors = sys.modules.get("sqlalchemy.exc")
    if database_errors is not None:
        if isinstance(error, database_errors.OperationalError | database_errors.InterfaceError):
            # Connection refused, access denied, no such table (SQLite), lost link.
            return click.ClickException(_database_problem(ctx, error))
        if isinstance(error, database_errors.ProgrammingError) and _no_schema(error):
            return click.ClickException(_database_problem(ctx, error))
    redis_errors = sys.modules.get("redis.exceptions")
    if redis_errors is not None and isinstance(
        error, redis_errors.ConnectionError | redis_errors.TimeoutError
    ):
        return redis_unreachable(error)
    return None


def redis_unreachable(error: BaseException) -> click.ClickException:
    """The one line for a Redis this invocation cannot reach: where, why, what to do."""
    where = _setting(click.get_current_context(), "broker_url")
    # redis-py's MasterNotFoundError appends the repr of every Sentinel client it asked
    # ("No master found for 'svc' : <redis.client.Redis(<...>)> - ..."): the URL says where.
    reason = _first_line(error).split(" : <redis.", 1)[0]
    return click.ClickException(
        f"cannot reach Redis at {where}: {reason}; "
        "is `hookfleet up` running? or set HOOKFLEET_REDIS_URL"
    )


def _database_problem(ctx: click.Context, error: Exception) -> str:
    where = _setting(ctx, "database_url")
    reason = _first_line(getattr(error, "orig", None) or error)
    if _no_schema(error):
        return (
            f"the database at {where} has no Hookfleet tables ({reason}): "
            f"run `hookfleet migrate`, or {HINT}"
        )
    return f"cannot reach the database at {where}: {reason}; {HINT}"


def _no_schema(error: Exception) -> bool:
    """SQLite's "no such table", MariaDB's 1146 "Table ... doesn't exist"."""
    reason = str(getattr(error, "orig", None) or error)
    return "no such table" in reason or "1146" in reason


def _setting(ctx: click.Context, name: str) -> str:
    """``name`` of this invocation's settings, password hidden; ``?`` when unknown."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    from models.settings import Settings
    from models.url_knobs import masked

    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):
        return "?"
    value = str(getattr(settings, name))
    if name != "database_url":
        # A Redis URL is no SQLAlchemy URL: a multi-host Sentinel netloc is no port.
        return masked(value)
    try:
        return make_url(value).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return masked(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")
