"""What every ``hookfleet`` command shares: its settings, and how it reads ages and times.

Importing this reads no environment: :func:`invocation_settings` builds the settings on
first use in an invocation and keeps them on the root click context (``ctx.obj``), so
each command line reads ``HOOKFLEET_*`` once, however many parts of it ask.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from models.settings import ConfigError, Settings

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def invocation_settings() -> Settings:
    """This command line's settings, from ``HOOKFLEET_*``, built once per invocation.
    A variable that cannot be used ends the command with its message (exit status 1)."""
    root = click.get_current_context().find_root()
    if not isinstance(root.obj, Settings):
        try:
            root.obj = Settings.from_env(os.environ)
        except ConfigError as error:
            raise click.ClickException(str(error)) from None
    return root.obj


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` or ``45s``; raises ValueError otherwise."""
    match = _AGE.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not an age like 30d, 12h, 90m")
    return timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


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
