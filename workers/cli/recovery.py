"""``hookfleet replay`` and ``sweep``: run again what did not take effect (finding events:
:mod:`workers.cli.events`)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click
import redis
from sqlalchemy.exc import SQLAlchemyError

from models.settings import Settings
from workers.cli.events import build_selection, selection_options
from workers.cli.events import sessions as events_sessions
from workers.cli.params import Age, Rate, invocation_settings
from workers.recovery.deadletters import REPLAY_QUEUE
from workers.recovery.selection import Selection

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from models.replays import ReplayRun
    from workers.recovery.replay_runs import Attempt


@click.group(invoke_without_command=True)
@click.option("--event-id", "event_ids", multiple=True, help="Replay this event (repeatable).")
@selection_options("dead")
@click.option("--all-dead", is_flag=True, help="Replay every dead letter.")
@click.option("--dry-run", is_flag=True, help="Only print the estimate.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replaying.")
@click.option(
    "--rate",
    type=Rate(),
    default=None,
    help="Events per second at most (0: no cap) "
    f"[default: HOOKFLEET_REPLAY_RATE, {Settings.replay_rate_per_s:g}].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Events per read.",
)
@click.option(
    "--resume",
    "resume_id",
    type=click.IntRange(min=1),
    metavar="RUN_ID",
    help="Continue this run.",
)
@click.pass_context
def replay(
    ctx: click.Context,
    event_ids: tuple[str, ...],
    all_dead: bool,
    dry_run: bool,
    yes: bool,
    rate: float | None,
    batch_size: int,
    resume_id: int | None,
    **filters: Any,
) -> None:
    """Run events again, on hookfleet.low, past the receiver's dedup, each once.

    Choose by --event-id (any status), by the filters of `hookfleet events list`
    (--status defaults to dead here), or --all-dead. Prints the estimate first (all
    that --dry-run does), asks on a terminal (--yes skips), then replays at --rate with
    a progress bar. Ctrl-C or SIGTERM stops it after the chunk in hand; --resume RUN_ID
    continues without enqueuing any event twice (`hookfleet replay runs` lists runs).
    Effects are idempotent: a replayed event that had already taken effect leaves the
    same rows.
    """
    if ctx.invoked_subcommand is not None:
        return
    from workers.tracing import start_cli

    start_cli()  # OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set (README Tracing)
    if resume_id is not None:
        if event_ids or all_dead or _chosen(filters) or filters["statuses"] or dry_run:
            raise click.UsageError("--resume continues a run as it was: give no filters")
        _resume(resume_id, rate, batch_size)
        return
    if not (event_ids or all_dead or _chosen(filters) or filters["statuses"]):
        raise click.UsageError(
            "say what to replay: --event-id, --all-dead, or filters (--provider, --type, "
            "--status, --since/--until, --correlation-id, --where)"
        )
    from workers.recovery import replay_runs

    sessions = events_sessions()
    selection = build_selection(filters, default_status="dead", event_ids=event_ids)
    found = replay_runs.make_estimate(sessions, selection)
    by_provider = _per_provider(_provider_totals(found.counts))
    if dry_run:
        click.echo(f"dry run: {found.total} event(s) would be replayed ({by_provider}).")
        _echo_kinds(found.counts)
        return
    click.echo(f"{found.total} event(s) match ({by_provider}).")
    _echo_kinds(found.counts)
    if not found.total:
        return
    chosen_rate = invocation_settings().replay_rate_per_s if rate is None else rate
    if sys.stdin.isatty() and not yes:
        pace = f"{chosen_rate:g}/s" if chosen_rate > 0 else "no rate cap"
        click.confirm(f"replay {found.total} event(s) on {REPLAY_QUEUE} ({pace})?", abort=True)
    run = replay_runs.create_run(sessions, selection, found, chosen_rate)
    _execute(sessions, run, chosen_rate, batch_size)


def _chosen(filters: dict[str, Any]) -> bool:
    """Whether a filter other than --status was given."""
    return any(value for name, value in filters.items() if name != "statuses")


def _resume(run_id: int, rate: float | None, batch_size: int) -> None:
    from workers.recovery import replay_runs

    sessions = events_sessions()
    try:
        run = replay_runs.load_run(sessions, run_id)
    except replay_runs.RunNotResumable as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"resuming replay run {run.id}: {run.replayed} of {run.estimated} replayed so far "
        f"({Selection.from_json(run.selection).described()})."
    )
    _execute(sessions, run, run.rate_per_s if rate is None else rate, batch_size)


def _execute(sessions: sessionmaker[Session], run: ReplayRun, rate: float, batch_size: int) -> None:
    """Run ``run`` with a progress bar (on stderr); Ctrl-C / SIGTERM stop it after the
    chunk in hand, with exit status 128 + the signal. Prints what it did."""
    from models.broker.redis_links import redis_client
    from workers.broker.replay_push import ReplayPush
    from workers.recovery import replay_runs

    settings = invocation_settings()
    pusher = ReplayPush(
        redis_client(settings.broker_url, timeout_s=10),
        run.token,
        min_replicas=settings.redis_min_replicas,
        wait_ms=settings.redis_replica_wait_ms,
    )
    stop, caught = threading.Event(), []

    def on_signal(signum: int, _frame: Any) -> None:
        caught.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _progress_bar(run) as advance:
            attempt = replay_runs.run(
                sessions,
                run.id,
                pusher,
                batch_size=batch_size,
                rate_per_s=rate,
                stop=stop,
                progress=advance,
            )
    except replay_runs.RunTakenOver as error:
        raise click.ClickException(f"{error}. Nothing was enqueued twice.") from None
    except (redis.RedisError, SQLAlchemyError) as error:
        raise click.ClickException(
            f"replay run {run.id} stopped: {error}. Nothing was enqueued twice; "
            f"resume with: hookfleet replay --resume {run.id}"
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _report(replay_runs.load_run(sessions, run.id, finished_too=True), attempt)
    if not attempt.finished:
        click.get_current_context().exit(128 + (caught[0] if caught else signal.SIGINT))


@contextmanager
def _progress_bar(run: ReplayRun) -> Iterator[Callable[[int], None] | None]:
    """click's progress bar on stderr when it is a terminal (click is already the
    command's library; a log or a pipe gets only the final report)."""
    if not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(
        length=max(run.estimated, 1), label=f"replay run {run.id}", file=sys.stderr
    ) as bar:
        bar.update(run.replayed)
        yield bar.update


def _report(run: ReplayRun, attempt: Attempt) -> None:
    kinds = {_kind(k): n for k, n in run.counts.items()}
    if attempt.already_queued:
        click.echo(
            f"{attempt.already_queued} event(s) were already on the queue from the attempt "
            "that was cut off: not enqueued again."
        )
    if not attempt.finished:
        click.echo(
            f"interrupted: replay run {run.id} replayed {run.replayed} of {run.estimated} "
            f"({attempt.pushed} this time); resume with: hookfleet replay --resume {run.id}"
        )
        return
    by_provider = _per_provider(_provider_totals(kinds))
    click.echo(f"replayed {run.replayed} event(s) on {REPLAY_QUEUE} ({by_provider}).")
    _echo_kinds(kinds)
    skipped = max(0, run.estimated - run.replayed)
    if skipped:
        click.echo(
            f"skipped {skipped}: counted at the start, but deleted or no longer matching "
            "(their status changed) when their turn came."
        )
    click.echo(f"replay run {run.id} finished.")


def _kind(key: str) -> tuple[str, str]:
    provider, _, event_type = key.partition("/")
    return provider, event_type


def _provider_totals(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for (provider, _), n in counts.items():
        totals[provider] = totals.get(provider, 0) + n
    return totals


def _echo_kinds(counts: dict[tuple[str, str], int]) -> None:
    for (provider, event_type), n in sorted(counts.items()):
        click.echo(f"  {n:>9}  {provider}/{event_type or '-'}")


@replay.command("runs")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def replay_runs_command(limit: int, as_json: bool) -> None:
    """Replay runs, newest first: status, progress, what each selects."""
    from workers.recovery.replay_runs import list_runs

    runs = list_runs(events_sessions(), limit)
    if as_json:
        for run in runs:
            click.echo(json.dumps(_run_json(run)))
        return
    if not runs:
        click.echo("no replay runs yet.")
        return
    click.echo(f"{'RUN':>5}  {'STATUS':<11} {'STARTED (UTC)':<19}  {'REPLAYED':>17}  SELECTION")
    for run in runs:
        progress = f"{run.replayed}/{run.estimated}"
        click.echo(
            f"{run.id:>5}  {run.status.value:<11} {run.started_at:%Y-%m-%d %H:%M:%S}  "
            f"{progress:>17}  {Selection.from_json(run.selection).described()}"
        )


def _run_json(run: ReplayRun) -> dict[str, Any]:
    """``replay runs --json``: one run as a JSON object (times ISO 8601, UTC)."""

    def when(moment: Any) -> str | None:
        return moment.isoformat() if moment is not None else None

    return {
        "id": run.id,
        "status": run.status.value,
        "estimated": run.estimated,
        "replayed": run.replayed,
        "rate_per_s": run.rate_per_s,
        "selection": run.selection,
        "described": Selection.from_json(run.selection).described(),
        "counts": run.counts,
        "started_at": when(run.started_at),
        "updated_at": when(run.updated_at),
        "interrupted_at": when(run.interrupted_at),
        "finished_at": when(run.finished_at),
    }


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
    report = run_sweep(events_sessions(), None if dry_run else send_to_workers, age, limit=limit)
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
