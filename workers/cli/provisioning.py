"""``hookfleet provision`` and ``hookfleet breaker``: provisioning from a terminal."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from workers.cli.params import invocation_settings, open_database

if TYPE_CHECKING:  # `hookfleet breaker` needs no SQLAlchemy
    from sqlalchemy.orm import Session, sessionmaker


@click.command()
@click.argument("branch_id", type=click.IntRange(min=1))
@click.option("--dry-run", is_flag=True, help="Validate and show what would be sent; send nothing.")
@click.option(
    "--check-connectivity",
    is_flag=True,
    help="Also ask Retell and Cal.com whether the key, number and event type work.",
)
@click.option(
    "--queue",
    "use_queue",
    is_flag=True,
    help="Run on the hookfleet.provisioning worker instead of here, and wait for it.",
)
@click.option(
    "--wait",
    type=click.IntRange(min=1),
    default=120,
    show_default=True,
    help="Seconds --queue waits.",
)
def provision(
    branch_id: int, dry_run: bool, check_connectivity: bool, use_queue: bool, wait: int
) -> None:
    """Validate branch BRANCH_ID and create or update its Retell agent.

    Refuses, printing what to fix, when the validator finds an error. Safe to repeat:
    a branch never gets a second agent. Exit status: 0 provisioned (or dry run clean),
    1 refused or failed.
    """
    from models.engine import make_sessionmaker
    from workers.outbound.errors import OutboundError
    from workers.provisioning.findings import findings_table, has_errors
    from workers.provisioning.provisioner import (
        ProvisioningAction,
        ProvisioningBusy,
        provision_branch,
    )
    from workers.provisioning.validator import BranchNotFound

    settings = invocation_settings()
    engine = open_database()
    sessions = make_sessionmaker(engine)
    try:
        if use_queue:
            _provision_on_worker(sessions, branch_id, check_connectivity, wait)
            return
        try:
            outcome = provision_branch(
                sessions,
                branch_id,
                settings,
                dry_run=dry_run,
                check_connectivity=check_connectivity,
            )
        except BranchNotFound as missing:
            raise click.ClickException(str(missing)) from None
        except (OutboundError, ProvisioningBusy) as failed:
            raise click.ClickException(f"provisioning failed: {failed}") from None
    finally:
        engine.dispose()
    click.echo(f"Branch {branch_id}: {len(outcome.findings)} finding(s)\n")
    click.echo(findings_table(outcome.findings))
    if outcome.action == ProvisioningAction.REFUSED:
        raise click.ClickException("refused: fix the errors above, then run this again")
    click.echo("")
    if dry_run:
        click.echo("Dry run: nothing was sent. Would send:")
        click.echo(json.dumps(outcome.config, indent=2, ensure_ascii=False))
        click.echo("Steps:\n" + "\n".join(f"  - {step}" for step in outcome.steps))
        if has_errors(outcome.findings):
            raise SystemExit(1)
        return
    for step in outcome.steps:
        click.echo(f"  - {step}")
    click.echo(f"{outcome.action}: branch {branch_id} is answered by agent {outcome.agent_id}")


def _provision_on_worker(
    sessions: sessionmaker[Session], branch_id: int, check_connectivity: bool, wait: int
) -> None:
    """Queue the task, then watch the Agent row: the fleet keeps no task results. A
    ``retrying`` row (a transient failure, the task tries again later) is shown and
    waited past; ``failed`` is final."""
    from sqlalchemy import select

    from models.business import Agent
    from workers.provisioning.provisioner import AgentStatus
    from workers.provisioning.tasks import enqueue_provisioning

    asked = datetime.now(UTC)
    task_id = enqueue_provisioning(branch_id, check_connectivity)
    click.echo(f"queued on hookfleet.provisioning as task {task_id}; waiting up to {wait} s")
    deadline = time.monotonic() + wait
    reported: str | None = None
    while time.monotonic() < deadline:
        with sessions() as session:
            row = session.scalar(select(Agent).where(Agent.branch_id == branch_id))
        if row is not None and row.updated_at >= asked:
            if row.status == AgentStatus.RETRYING:
                if row.last_error != reported:
                    reported = row.last_error
                    click.echo(f"retrying — {row.last_error}")
            elif row.status != AgentStatus.PROVISIONING:
                detail = f" — {row.last_error}" if row.last_error else ""
                click.echo(f"{row.status}: agent {row.retell_agent_id}{detail}")
                if row.last_error:
                    raise SystemExit(1)
                return
        time.sleep(0.5)
    raise click.ClickException(
        f"no outcome within {wait} s: is a worker running on hookfleet.provisioning?"
    )


@click.group()
def breaker() -> None:
    """Circuit breakers for Retell and Cal.com (shared by all workers through Redis)."""


def _known_breaker(name: str) -> None:
    """Exit 1 with one line (``status`` and ``reset`` alike) unless ``name`` is a breaker."""
    from workers.outbound.breaker import BREAKER_NAMES

    if name not in BREAKER_NAMES:
        shown = name.encode("unicode_escape").decode("ascii")
        raise click.ClickException(f"no breaker {shown!r}: one of {', '.join(BREAKER_NAMES)}")


@breaker.command("status")
@click.argument("name", required=False)
def breaker_status_command(name: str | None) -> None:
    """Show each breaker's state, failure count and when it opened; NAME (retell or
    calcom) shows that one only."""
    from workers.outbound.breaker import BREAKER_NAMES, breaker_status

    if name is not None:
        _known_breaker(name)
    settings = invocation_settings()
    click.echo(f"{'NAME':<8}{'STATE':<11}{'FAILURES':<10}OPENED AT (retry after)")
    for shown_name in [name] if name else BREAKER_NAMES:
        status = breaker_status(shown_name, settings)
        opened = (
            f"{status.opened_at:%Y-%m-%d %H:%M:%S} UTC ({status.reset_after_s} s)"
            if status.opened_at
            else "-"
        )
        click.echo(f"{shown_name:<8}{status.state:<11}{status.failures:<10}{opened}")


@breaker.command("reset")
@click.argument("name")
def breaker_reset_command(name: str) -> None:
    """Close breaker NAME (retell or calcom) for every process, now."""
    from workers.outbound.breaker import reset_breaker

    _known_breaker(name)
    reset_breaker(name, invocation_settings())
    click.echo(f"{name}: closed")
