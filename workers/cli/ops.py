"""``hookfleet stats`` and ``hookfleet prune``: the operator's terminal commands."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from models.contract import QUEUES
from models.settings import Settings
from workers.cli.params import Age, invocation_settings, open_database

# The command must answer even when a server does not: short timeouts everywhere.
TIMEOUT_S = 3


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the same JSON as GET /stats.")
def stats(as_json: bool) -> None:
    """Queue depths, unacked messages, oldest age, recent rates and dead letters."""
    from models.broker.backlog import read_backlog
    from models.broker.redis_links import redis_client

    settings = invocation_settings()
    engine = open_database(io_timeout_s=TIMEOUT_S)
    client = redis_client(settings.broker_url, timeout_s=TIMEOUT_S)
    try:
        reading = read_backlog(client, engine, QUEUES)
    finally:
        client.close()
        engine.dispose()
    if as_json:
        click.echo(json.dumps(reading.as_dict(), indent=2))
    else:
        click.echo(f"{'queue':<22}{'waiting':>9}{'unacked':>9}{'oldest':>10}")
        for queue in reading.queues:
            age = "-" if queue.oldest_age_s is None else f"{queue.oldest_age_s:.1f}s"
            click.echo(f"{queue.queue:<22}{queue.waiting:>9}{queue.unacked:>9}{age:>10}")
        for label, counts in (
            ("last minute", reading.recorded_last_minute),
            ("last 5 minutes", reading.recorded_last_5_minutes),
        ):
            if counts is not None:
                parts = ", ".join(f"{status} {n}" for status, n in counts.items())
                click.echo(f"events recorded, {label}: {parts}")
        if reading.dead_letters is not None:
            click.echo(f"dead letters: {reading.dead_letters}")
        for part, error in reading.errors.items():
            variable = f"HOOKFLEET_{'REDIS' if part == 'redis' else 'DATABASE'}_URL"
            click.echo(
                f"{part} unreachable: {error}; is `hookfleet up` running? or set {variable}",
                err=True,
            )
    if reading.errors:
        raise SystemExit(1)


@click.command()
@click.option(
    "--older-than",
    type=Age(),
    default=None,
    help=f"Age like 30d, 12h, 90m [default: HOOKFLEET_RETENTION_DAYS, {Settings.retention_days}d].",
)
@click.option("--include-dead", is_flag=True, help="Also delete failed and dead rows.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows per transaction.",
)
def prune(older_than: timedelta | None, include_dead: bool, dry_run: bool, batch_size: int) -> None:
    """Delete processed webhook_events older than AGE, in batches."""
    from models.engine import make_sessionmaker
    from workers.recovery.retention import prune_events

    settings = invocation_settings()
    age = older_than or timedelta(days=settings.retention_days)
    if age.total_seconds() <= 0:
        raise click.BadParameter(
            "must be more than 0 (HOOKFLEET_RETENTION_DAYS is 0: say --older-than)",
            param_hint="--older-than",
        )
    engine = open_database()
    try:
        result = prune_events(
            make_sessionmaker(engine),
            age,
            include_dead=include_dead,
            dry_run=dry_run,
            batch_size=batch_size,
        )
    finally:
        engine.dispose()
    verb = "would delete" if result.dry_run else "deleted"
    click.echo(
        f"{verb} {result.deleted} webhook_events ({', '.join(result.statuses)}) "
        f"created before {result.cutoff.isoformat()}"
    )
