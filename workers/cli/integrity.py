"""``hookfleet integrity check|fix``: the command-line face of :mod:`workers.integrity.check`.

Kept apart from it so ``hookfleet`` starts without importing SQLAlchemy for other
commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from workers.integrity.check import Report

batch_size_option = click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows read per query; memory stays bounded by it.",
)
limit_option = click.option(
    "--limit",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Entries listed per kind (the rest is counted as '… and N more').",
)
all_option = click.option(
    "--all", "list_all", is_flag=True, help="List every entry of every kind (no --limit)."
)


def _examples(limit: int, list_all: bool) -> int:
    return 2**31 if list_all else limit


@click.group()
def integrity() -> None:
    """Find and repair orphans, duplicate customers and phones stored before E.164;
    list customers who may be one person (merge candidates) for you to decide."""


@integrity.command()
@batch_size_option
@limit_option
@all_option
def check(batch_size: int, limit: int, list_all: bool) -> None:
    """Report problems; change nothing. Exits 1 when something needs `fix`, else 0."""
    from workers.integrity import check as run

    examples = _examples(limit, list_all)
    report = run.check(_engine(), batch_size=batch_size, examples=examples)
    _print(report, "found")
    if report.problems:
        click.echo(f"{report.problems} to repair: `hookfleet integrity fix --dry-run` shows how.")
        raise SystemExit(1)
    click.echo("nothing to repair.")


@integrity.command()
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@batch_size_option
@limit_option
@all_option
def fix(dry_run: bool, batch_size: int, limit: int, list_all: bool) -> None:
    """Set orphan links to NULL, merge customers certain to be one person (same e-mail or
    phone, nothing differing), normalize phones. Merge candidates are only listed."""
    from workers.integrity import check as run

    examples = _examples(limit, list_all)
    report = run.fix(_engine(), dry_run=dry_run, batch_size=batch_size, examples=examples)
    _print(report, "would fix" if dry_run else "fixed")
    done = "would be repaired (dry run, nothing changed)" if dry_run else "repaired"
    click.echo(f"{report.problems} {done}.")


def _engine() -> Engine:
    from workers.cli.params import open_database

    return open_database()


def _print(report: Report, verb: str) -> None:
    """One line per kind with something in it, then its first examples indented."""
    found = [f for f in report.findings.values() if f.count]
    width = max((len(f.label) for f in found), default=0)
    for heading, repairable in ((verb, True), ("to review (fix leaves these)", False)):
        kinds = [f for f in found if f.repairable is repairable]
        if not kinds:
            continue
        click.echo(f"{heading}:")
        for finding in kinds:
            click.echo(f"  {finding.label:<{width}}  {finding.count:>7}")
            for example in finding.examples:
                click.echo(f"      {example}")
            if finding.count > len(finding.examples):
                click.echo(f"      … and {finding.count - len(finding.examples)} more")
