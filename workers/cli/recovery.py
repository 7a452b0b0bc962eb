"""``hookfleet dlq``, ``replay`` and ``sweep``: see what did not take effect, run it again."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from models.events import EventStatus
from models.settings import Settings
from workers.cli.params import Age, When, invocation_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


STATUS = click.Choice([s.value for s in EventStatus])


def _sessions() -> sessionmaker[Session]:
    from models.engine import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(invocation_settings()))


def _selection(
    event_ids: tuple[str, ...],
    provider: str | None,
    event_type: str | None,
    since: datetime | None,
    until: datetime | None,
    statuses: tuple[str, ...],
) -> Any:
    from workers.recovery.deadletters import Selection

    return Selection(
        event_ids=event_ids,
        provider=provider,
        event_type=event_type,
        since=since,
        until=until,
        statuses=tuple(EventStatus(s) for s in statuses) or (EventStatus.DEAD,),
    )


def _filters(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--provider", help="Only this provider (retell, calcom, ...)."),
            click.option("--type", "event_type", help="Only this event type."),
            click.option("--since", type=When(), help="Created at or after (ISO or 24h)."),
            click.option("--until", type=When(), help="Created before (ISO or 24h)."),
            click.option(
                "--status",
                "statuses",
                type=STATUS,
                multiple=True,
                help="Statuses to select (repeatable). Default: dead.",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group()
def dlq() -> None:
    """Dead letters: events whose retry budget is spent (and, with --status, others)."""


@dlq.command("list")
@_filters
@click.option("--after", "after_id", default=0, help="Page on: show ids after this one.")
@click.option("--limit", default=50, show_default=True)
def list_command(
    provider: str | None,
    event_type: str | None,
    since: datetime | None,
    until: datetime | None,
    statuses: tuple[str, ...],
    after_id: int,
    limit: int,
) -> None:
    """List events, oldest first, without loading their payloads."""
    from workers.recovery.deadletters import list_letters

    selection = _selection((), provider, event_type, since, until, statuses)
    with _sessions()() as session:
        letters = list_letters(session, selection, after_id=after_id, limit=limit)
    if not letters:
        click.echo("no events match.")
        return
    click.echo(f"{'ID':>8}  {'PROVIDER':<9} {'TYPE':<22} {'STATUS':<9} {'TRIES':>5}  EVENT / ERROR")
    for letter in letters:
        click.echo(
            f"{letter.id:>8}  {letter.provider:<9} {letter.event_type[:22]:<22} "
            f"{letter.status:<9} {letter.attempts:>5}  {letter.event_id}"
        )
        if letter.error:
            click.echo(f"{'':>8}  └ {letter.error}")
    if len(letters) == limit:
        click.echo(f"more: hookfleet dlq list --after {letters[-1].id} ...")


@dlq.command("show")
@click.argument("event_pk", type=int)
def show_command(event_pk: int) -> None:
    """Everything about one event (by its ``ID`` from ``dlq list``), payload included."""
    from workers.recovery.deadletters import show_letter

    with _sessions()() as session:
        row = show_letter(session, event_pk)
        if row is None:
            raise click.ClickException(f"no event with id {event_pk}")
        click.echo(f"id:             {row.id}")
        click.echo(f"provider:       {row.provider}")
        click.echo(f"event_id:       {row.event_id}")
        click.echo(f"event_type:     {row.event_type}")
        click.echo(f"status:         {row.status.value} after {row.attempts} attempt(s)")
        click.echo(f"queue:          {row.queue}")
        click.echo(f"correlation_id: {row.correlation_id}")
        click.echo(f"received_at:    {row.received_at.isoformat()}")
        click.echo(f"updated_at:     {row.updated_at.isoformat()}")
        click.echo(f"headers:        {json.dumps(row.headers)}")
        click.echo(f"last_error:     {row.last_error or '-'}")
        if row.last_traceback:
            click.echo("traceback:")
            click.echo(row.last_traceback.rstrip())
        click.echo("payload:")
        click.echo(row.payload)


@click.command()
@click.option("--event-id", "event_ids", multiple=True, help="Replay this event (repeatable).")
@_filters
@click.option("--all-dead", is_flag=True, help="Replay every dead letter.")
@click.option("--dry-run", is_flag=True, help="Only count what would be replayed.")
@click.option("--batch-size", default=500, show_default=True)
def replay(
    event_ids: tuple[str, ...],
    provider: str | None,
    event_type: str | None,
    since: datetime | None,
    until: datetime | None,
    statuses: tuple[str, ...],
    all_dead: bool,
    dry_run: bool,
    batch_size: int,
) -> None:
    """Run events again, on hookfleet.low, past the receiver's dedup.

    Choose by --event-id, by --provider with --since/--until (and --status, default
    dead), or --all-dead. Effects are idempotent: a replayed event that had already
    taken effect leaves the same rows.
    """
    from workers.recovery.deadletters import REPLAY_QUEUE, ReplayReport, send_to_workers
    from workers.recovery.deadletters import replay as run_replay
    from workers.tracing import start_cli

    start_cli()  # OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set (README Tracing)

    if not (event_ids or provider or since or until or all_dead):
        raise click.UsageError(
            "say what to replay: --event-id, --provider/--since/--until or --all-dead"
        )
    selection = _selection(event_ids, provider, event_type, since, until, statuses)

    def progress(report: ReplayReport) -> None:
        verb = "would replay" if dry_run else "replayed"
        click.echo(f"... {verb} {report.selected}", err=True)

    report = run_replay(
        _sessions(),
        selection,
        None if dry_run else send_to_workers,
        batch_size=batch_size,
        progress=progress,
    )
    by_provider = _per_provider(report.by_provider)
    if dry_run:
        click.echo(f"dry run: {report.selected} event(s) would be replayed ({by_provider}).")
    else:
        click.echo(f"replayed {report.published} event(s) on {REPLAY_QUEUE} ({by_provider}).")


@click.command()
@click.option(
    "--older-than",
    type=Age(),
    default=None,
    help="Untouched this long, like 30m or 2h "
    f"[default: HOOKFLEET_STUCK_AFTER_S, {Settings.stuck_after_s // 60}m].",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be requeued.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Requeue at most N, oldest first."
)
def sweep(older_than: timedelta | None, dry_run: bool, limit: int | None) -> None:
    """Requeue events a worker recorded but never finished (their message was lost).

    Each goes back on its own queue as a plain redelivery: one that finishes meanwhile
    is not applied twice. Beat does this every minute (HOOKFLEET_STUCK_AFTER_S).
    """
    from workers.recovery.deadletters import send_to_workers
    from workers.recovery.sweeper import sweep as run_sweep
    from workers.tracing import start_cli

    start_cli()  # OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set (README Tracing)

    settings = invocation_settings()
    if older_than:
        age = older_than
    elif settings.stuck_after_s:
        age = timedelta(seconds=settings.stuck_after_s)
    else:
        raise click.UsageError("HOOKFLEET_STUCK_AFTER_S is 0 (sweeping off): say --older-than")
    held_at_most_s = settings.task_time_limit_s + settings.lease_s
    if age.total_seconds() <= held_at_most_s:
        click.echo(
            f"warning: {_span(age)} is within HOOKFLEET_TASK_TIME_LIMIT_S + HOOKFLEET_LEASE_S "
            f"({held_at_most_s:g} s): events whose message a worker still holds "
            "are requeued too (they take effect once; the extra message does nothing)",
            err=True,
        )
    report = run_sweep(_sessions(), None if dry_run else send_to_workers, age, limit=limit)
    by_provider = _per_provider(report.by_provider)
    if dry_run:
        click.echo(f"dry run: {report.selected} stuck event(s) would be requeued ({by_provider}).")
    else:
        click.echo(f"requeued {report.requeued} stuck event(s) ({by_provider}) on their queues.")
    if report.oldest_age is not None:
        click.echo(
            f"{report.stuck} event(s) recorded over {_span(age)} ago are unfinished, "
            f"the oldest for {_span(report.oldest_age)}."
        )
    if limit is not None and report.selected == limit:
        click.echo("limit reached: more may be due; run it again.")


def _per_provider(counts: dict[str, int]) -> str:
    return ", ".join(f"{p}: {n}" for p, n in sorted(counts.items())) or "none"


def _span(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"
