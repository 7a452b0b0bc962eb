"""``hookfleet events list|show`` (every recorded event) and ``hookfleet dlq list|show``
(the same, dead letters by default), with the filters ``hookfleet replay`` shares."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from models.events import EventStatus
from models.payload_search import BadPath, PayloadCondition, parse_condition
from workers.cli.params import When, open_database

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from models.events import WebhookEvent
    from workers.recovery.selection import EventLine, Selection

ANY = "any"
STATUS = click.Choice([s.value for s in EventStatus] + [ANY])
WHERE_HELP = (
    "PATH=VALUE: the payload's value at a JSON path (data.object.customer, $.call.call_id, "
    "items[0].id) equals VALUE, as a string, or as a number/true/false/null when VALUE is "
    'one ("VALUE" in quotes: a string only). Repeatable: all must hold.'
)


class Where(click.ParamType):
    """``PATH=VALUE`` (see :mod:`models.payload_search`): a PayloadCondition."""

    name = "path=value"

    def convert(self, value: Any, param: Any, ctx: Any) -> PayloadCondition:
        if isinstance(value, PayloadCondition):
            return value
        try:
            return parse_condition(str(value))
        except BadPath as error:
            self.fail(str(error), param, ctx)


def sessions() -> sessionmaker[Session]:
    from models.engine import make_sessionmaker

    return make_sessionmaker(open_database())


def selection_options(default_status: str) -> Callable[[Any], Any]:
    """The filters every finding command takes; ``--status`` defaults to
    ``default_status`` (``any``: every status)."""
    options = [
        click.option("--provider", help="Only this provider (retell, calcom, stripe, standard)."),
        click.option("--type", "event_type", help="Only this event type."),
        click.option(
            "--status",
            "statuses",
            type=STATUS,
            multiple=True,
            help=f"Statuses to select (repeatable; 'any': all). Default: {default_status}.",
        ),
        click.option("--since", type=When(), help="Created at or after (ISO time, or 24h ago)."),
        click.option("--until", type=When(), help="Created before (ISO time, or 2h ago)."),
        click.option("--correlation-id", help="The event with this correlation id (log lines)."),
        click.option("--where", "where", type=Where(), multiple=True, help=WHERE_HELP),
    ]

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def build_selection(
    filters: dict[str, Any], *, default_status: str, event_ids: tuple[str, ...] = ()
) -> Selection:
    """A Selection from the options of :func:`selection_options`."""
    from workers.recovery.selection import Selection

    named = filters["statuses"] or (default_status,)
    statuses = () if ANY in named else tuple(EventStatus(s) for s in named)
    return Selection(
        event_ids=event_ids,
        provider=filters["provider"],
        event_type=filters["event_type"],
        since=filters["since"],
        until=filters["until"],
        statuses=statuses,
        correlation_id=filters["correlation_id"],
        where=tuple(filters["where"]),
    )


def _list(command_name: str, default_status: str) -> click.Command:
    @click.command("list")
    @selection_options(default_status)
    @click.option("--event-id", "event_ids", multiple=True, help="This provider event id.")
    @click.option(
        "--after", "after_id", type=click.IntRange(min=0), default=0, help="Ids after this one."
    )
    @click.option(
        "--limit",
        type=click.IntRange(min=0),
        default=50,
        show_default=True,
        help="At most this many (0: all).",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def list_command(
        event_ids: tuple[str, ...], after_id: int, limit: int, as_json: bool, **filters: Any
    ) -> None:
        """Events oldest first, by id, without loading their payloads (the --where
        search runs in the database)."""
        from workers.recovery.selection import list_events

        selection = build_selection(filters, default_status=default_status, event_ids=event_ids)
        shown, last = 0, None
        for line in list_events(sessions(), selection, after_id=after_id, limit=limit):
            if as_json:
                click.echo(json.dumps(line.to_json(), ensure_ascii=False))
            else:
                _echo_line(line, header=shown == 0)
            shown, last = shown + 1, line
        if shown == 0 and not as_json:
            click.echo("no events match.")
        if last is not None and shown == limit:
            click.echo(f"more: hookfleet {command_name} list --after {last.id} ...", err=True)

    return list_command


def _echo_line(line: EventLine, *, header: bool) -> None:
    if header:
        click.echo(
            f"{'ID':>8}  {'PROVIDER':<9} {'TYPE':<22} {'STATUS':<9} {'TRIES':>5}  "
            f"{'CREATED (UTC)':<19}  EVENT / ERROR"
        )
    click.echo(
        f"{line.id:>8}  {line.provider:<9} {line.event_type[:22]:<22} "
        f"{line.status:<9} {line.attempts:>5}  {line.created_at:%Y-%m-%d %H:%M:%S}  "
        f"{line.event_id}"
    )
    if line.error:
        click.echo(f"{'':>8}  └ {line.error}")


def _show() -> click.Command:
    @click.command("show")
    @click.argument("ref", nargs=-1, required=True)
    @click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
    def show_command(ref: tuple[str, ...], as_json: bool) -> None:
        """One event, payload included: by ID (from list), or by PROVIDER EVENT_ID."""
        from workers.recovery.selection import find_event

        with sessions()() as session:
            if len(ref) == 1 and ref[0].isdigit():
                row = find_event(session, pk=int(ref[0]))
            elif len(ref) == 2:
                row = find_event(session, provider=ref[0], event_id=ref[1])
            else:
                raise click.UsageError("say ID, or PROVIDER EVENT_ID")
            if row is None:
                raise click.ClickException(f"no event {' '.join(ref)}")
            if as_json:
                click.echo(json.dumps(_event_json(row), ensure_ascii=False))
            else:
                _echo_event(row)

    return show_command


def _event_json(row: WebhookEvent) -> dict[str, Any]:
    try:
        payload: Any = json.loads(row.payload)
    except ValueError:
        payload = row.payload
    return {
        "id": row.id,
        "provider": row.provider,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "status": row.status.value,
        "attempts": row.attempts,
        "queue": row.queue,
        "correlation_id": row.correlation_id,
        "received_at": row.received_at.isoformat(),
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
        "headers": row.headers,
        "last_error": row.last_error,
        "last_traceback": row.last_traceback,
        "payload": payload,
    }


def _echo_event(row: WebhookEvent) -> None:
    click.echo(f"id:             {row.id}")
    click.echo(f"provider:       {row.provider}")
    click.echo(f"event_id:       {row.event_id}")
    click.echo(f"event_type:     {row.event_type}")
    click.echo(f"status:         {row.status.value} after {row.attempts} attempt(s)")
    click.echo(f"queue:          {row.queue}")
    click.echo(f"correlation_id: {row.correlation_id}")
    click.echo(f"received_at:    {row.received_at.isoformat()}")
    click.echo(f"updated_at:     {row.updated_at.isoformat()}")
    click.echo(f"headers:        {json.dumps(row.headers, ensure_ascii=False)}")
    click.echo(f"last_error:     {row.last_error or '-'}")
    if row.last_traceback:
        click.echo("traceback:")
        click.echo(row.last_traceback.rstrip())
    click.echo("payload:")
    click.echo(row.payload)


@click.group()
def events() -> None:
    """Every recorded event, whatever became of it: find, page through, inspect."""


@click.group()
def dlq() -> None:
    """Dead letters: events whose retry budget is spent (``events`` with --status dead)."""


events.add_command(_list("events", ANY))
events.add_command(_show())
dlq.add_command(_list("dlq", EventStatus.DEAD.value))
dlq.add_command(_show())
