"""The ``hookfleet`` command."""

from __future__ import annotations

import os
from pathlib import Path

import click

from models.settings import MAX_WORKER_CONCURRENCY
from workers.cli.lazy import Lazy, LazyCommandGroup
from workers.cli.params import invocation_settings

# Imported only when invoked (workers.cli.lazy): each summary is the first paragraph of
# the command's help, as `hookfleet --help` lists it (tests/unit/test_cli_lazy.py).
SUBCOMMANDS = {
    "breaker": Lazy(
        "workers.cli.provisioning:breaker",
        "Circuit breakers for Retell and Cal.com (shared by all workers through Redis).",
    ),
    "dlq": Lazy(
        "workers.cli.events:dlq",
        "Dead letters: events whose retry budget is spent (``events`` with --status dead).",
    ),
    "events": Lazy(
        "workers.cli.events:events",
        "Every recorded event, whatever became of it: find, page through, inspect.",
    ),
    "integrity": Lazy(
        "workers.cli.integrity:integrity",
        "Find and repair orphans, duplicate customers and phones stored before E.164; list "
        "customers who may be one person (merge candidates) for you to decide.",
    ),
    "provision": Lazy(
        "workers.cli.provisioning:provision",
        "Validate branch BRANCH_ID and create or update its Retell agent.",
    ),
    "prune": Lazy(
        "workers.cli.ops:prune", "Delete processed webhook_events older than AGE, in batches."
    ),
    "quarantine": Lazy(
        "workers.cli.quarantine:quarantine",
        "Deliveries refused for their signature or an unconfigured provider, kept so they "
        "can be let in once the secret is fixed.",
    ),
    "replay": Lazy(
        "workers.cli.recovery:replay",
        "Run events again, on hookfleet.low, past the receiver's dedup, each once.",
    ),
    "send": Lazy(
        "workers.cli.send:send",
        "Sign a sample PROVIDER delivery with the configured secret and post it to the "
        "receiver; print the answer. FIXTURE is one of `--list` (default: a common event), "
        "FILE a JSON body of your own. Each send is a new event (new ids, the time now).",
    ),
    "spool": Lazy(
        "workers.cli.spool:spool",
        "Answered calls' records a receiver left on this host's disk: count them, or move "
        "them to the database.",
    ),
    "stats": Lazy(
        "workers.cli.ops:stats",
        "Queue depths, unacked messages, oldest age, recent rates and dead letters.",
    ),
    "sweep": Lazy(
        "workers.cli.recovery:sweep",
        "Requeue events a worker recorded but never finished (their message was lost).",
    ),
}


@click.group(cls=LazyCommandGroup, lazy=SUBCOMMANDS)
@click.pass_context
def main(context: click.Context) -> None:
    """Hookfleet: webhook ingestion that never loses an event and never applies one twice."""
    from models.tracing import wanted

    if wanted(os.environ):  # one trace per command (README Tracing); else nothing imported
        from workers.tracing import command_span

        context.with_resource(command_span(context.invoked_subcommand))


@main.command()
def migrate() -> None:
    """Create or upgrade the schema at HOOKFLEET_DATABASE_URL."""
    from models.migrate import current, upgrade

    settings = invocation_settings()
    upgrade(settings)
    click.echo(f"schema at revision {current(settings)}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Receiver address.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Receiver port."
)
@click.option(
    "--var-dir",
    default="var",
    show_default=True,
    type=click.Path(),
    help="Where the embedded SQLite database and Redis data live.",
)
@click.option(
    "--concurrency",
    # At most MAX_WORKER_CONCURRENCY: each process holds its own connections and files,
    # and 100000 only ended in workers dying of EMFILE.
    type=click.IntRange(1, MAX_WORKER_CONCURRENCY),
    default=2,
    show_default=True,
    help="Processes per Celery worker (HOOKFLEET_WORKER_CONCURRENCY of the Procfile), "
    f"1-{MAX_WORKER_CONCURRENCY}.",
)
@click.option(
    "--ops-bind",
    default="",
    help="host:port of /metrics, /readyz and /stats [default: $HOOKFLEET_OPS_BIND, "
    "else 127.0.0.1:9807].",
)
def up(host: str, port: int, var_dir: str, concurrency: int, ops_bind: str) -> None:
    """Run the whole fleet as the Procfile says: Redis (unless given), receiver,
    workers, beat."""
    from workers.cli.up import Fleet

    fleet = Fleet(
        host=host,
        port=port,
        var_dir=Path(var_dir).resolve(),
        concurrency=concurrency,
        ops_bind=ops_bind,
    )
    try:
        fleet.start(os.environ)
        click.echo(
            f"hookfleet is up: POST webhooks to http://{host}:{port}/webhooks/<provider>"
            f"  (e.g. http://{host}:{port}/webhooks/standard); operator endpoints on "
            f"http://{fleet.env['HOOKFLEET_OPS_BIND']} (/metrics, /readyz, /stats); "
            "Ctrl-C stops it."
        )
        fleet.wait()
    finally:
        # Nothing said about stopping a fleet that a bad setting or a taken port kept
        # from starting: its one line is the whole answer.
        if fleet.started:
            click.echo("stopping hookfleet...")
        fleet.stop()
        if fleet.started:
            click.echo("hookfleet stopped.")


@main.command(name="run")
@click.argument("name")
def run_process(name: str) -> None:
    """Become the Procfile's process NAME (web, worker_high, ..., beat): systemd units
    and containers start it this way, so its command line is written once, in the
    Procfile. Its environment variables (PORT, HOOKFLEET_WORKER_CONCURRENCY ...) apply."""
    from workers.cli.up import exec_procfile_entry

    exec_procfile_entry(name, os.environ)
