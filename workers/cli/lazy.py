"""A ``hookfleet`` group whose subcommands are imported when invoked, not at start.

Each subcommand module imports what its work needs (SQLAlchemy and every table, Redis,
Celery, httpx ...): importing all of them cost every invocation about a second of CPU,
``hookfleet --help`` included. This is click's documented lazy-loading pattern
(https://click.palletsprojects.com/en/stable/complex/#lazily-loading-subcommands),
with one addition: ``--help`` lists a subcommand that is not loaded by the summary
declared beside it (:class:`Lazy`), so listing imports nothing. A unit test
(tests/unit/test_cli_lazy.py) holds each summary equal to the first paragraph of the
command's own help, so the listing reads exactly as if every command were loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

from workers.cli.params import CommandGroup


@dataclass(frozen=True)
class Lazy:
    """Where a subcommand lives (``"package.module:attribute"``) and the first paragraph
    of its help, for the group's listing."""

    target: str
    summary: str

    def load(self) -> click.Command:
        """Import the module and return its command; TypeError when it is not one."""
        module_name, attribute = self.target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class LazyCommandGroup(CommandGroup):
    """A :class:`~workers.cli.params.CommandGroup` with subcommands imported on first use
    (``lazy``: name -> :class:`Lazy`) beside the ones added the usual way."""

    def __init__(self, *args: Any, lazy: Mapping[str, Lazy], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)
        self._listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        declared = self.lazy.get(cmd_name)
        if declared is not None and cmd_name not in self.commands:
            if self._listing:
                # Only its short help is read: the summary stands in for the command.
                return click.Command(cmd_name, help=declared.summary)
            self.add_command(declared.load(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False
