"""Provision a branch's Retell agent: validate, then create or update it, idempotently.

The Agent row (UNIQUE branch_id) is the anchor. It is created, in its own committed
transaction, before anything is sent to Retell, and every id Retell hands back is
committed the moment we have it. A run that dies between Retell creating the agent and
our commit is covered by the agent's deterministic name (config.agent_name): a rerun
whose row has no agent id looks for that name first and adopts what it finds. So any
number of runs, retries and crashes leave one agent per branch in Retell.

A run claims the row (status ``provisioning``) with a conditional UPDATE, so two runs for
one branch never interleave; a claim older than the task time limit is considered dead
and taken over.

A run that fails leaves the row ``failed`` with the reason, unless the failure is
transient and the caller will try again (``will_retry``, the provisioning task while it
has retries left): then the row says ``retrying``, with the reason, so nobody reads a
rate-limited run as the final word.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models.business import Agent, AgentStatus, Branch
from models.contract import Queue
from models.settings import Settings
from workers.outbound.calcom import CalcomApi
from workers.outbound.errors import ApiUnavailable, CircuitOpen
from workers.outbound.policy import RetryPolicy
from workers.outbound.retell import RetellApi
from workers.provisioning import validator
from workers.provisioning.config import agent_name, config_digest, desired_config
from workers.provisioning.findings import Finding, has_errors

PROVISIONING_QUEUE = Queue.PROVISIONING


class ProvisioningAction(enum.StrEnum):
    """What a run did (``Outcome.action``; the task's result and the CLI's last line)."""

    REFUSED = "refused"
    DRY_RUN = "dry-run"
    UNCHANGED = "unchanged"
    CREATED = "created"
    ADOPTED = "adopted"  # found by name after a lost answer
    UPDATED = "updated"


class ProvisioningBusy(Exception):
    """Another run holds this branch's claim right now."""


@dataclass
class Outcome:
    """What a run found and did: ``action`` is a :class:`ProvisioningAction`."""

    branch_id: int
    action: ProvisioningAction
    findings: list[Finding]
    config: dict[str, Any]
    agent_id: str | None = None
    steps: list[str] = field(default_factory=list)


def provision_branch(
    sessions: sessionmaker[Session],
    branch_id: int,
    settings: Settings,
    *,
    dry_run: bool = False,
    check_connectivity: bool = False,
    will_retry: bool = False,
) -> Outcome:
    """Validate the branch and, unless an error was found or ``dry_run``, make Retell's
    agent match it. Idempotent. Raises OutboundError subclasses (the row is then marked
    ``failed`` with the reason; ``retrying`` instead for a transient one when
    ``will_retry``), ProvisioningBusy, validator.BranchNotFound."""
    retell = RetellApi(settings)
    with sessions() as session:
        facts = validator.load_facts(session, branch_id)
        row = session.scalar(select(Agent).where(Agent.branch_id == branch_id))
    findings = validator.validate(facts, settings)
    if check_connectivity:
        findings += validator.check_connectivity(facts, retell, CalcomApi(settings), settings)
    config = desired_config(facts, settings)
    outcome = Outcome(
        branch_id,
        ProvisioningAction.DRY_RUN,
        findings,
        config,
        row.retell_agent_id if row else None,
    )
    if has_errors(findings):
        outcome.action = ProvisioningAction.REFUSED
        if not dry_run:
            _record_refusal(sessions, facts, findings)
        return outcome
    if dry_run:
        outcome.steps = _plan(row)
        return outcome
    digest = config_digest(config)
    row_id = _claim(sessions, facts, settings)
    try:
        return _apply(sessions, row_id, retell, settings, outcome, digest)
    except BaseException as failure:
        transient = isinstance(failure, ApiUnavailable | CircuitOpen)
        status = AgentStatus.RETRYING if will_retry and transient else AgentStatus.FAILED
        _store(sessions, row_id, status=status, last_error=_reason(failure))
        raise


def _apply(
    sessions: sessionmaker[Session],
    row_id: int,
    retell: RetellApi,
    settings: Settings,
    outcome: Outcome,
    digest: str,
) -> Outcome:
    with sessions() as session:
        row = session.get_one(Agent, row_id)
        agent_id, llm_id = row.retell_agent_id, row.retell_llm_id
        unchanged = agent_id and row.config_digest == digest and row.provisioned_at
    if unchanged:
        outcome.action, outcome.agent_id = ProvisioningAction.UNCHANGED, agent_id
        _store(sessions, row_id, status=AgentStatus.ACTIVE, last_error=None)
        return outcome
    config, steps = outcome.config, outcome.steps
    name = config["agent"]["agent_name"]
    created = adopted = False
    if agent_id is None:
        # The crash window: Retell may have created our agent while we never stored it.
        found = retell.find_agent_by_name(name)
        if found is not None:
            agent_id, adopted = str(found["agent_id"]), True
            llm_id = llm_id or _llm_of(retell.get_agent(agent_id))
            _store(sessions, row_id, retell_agent_id=agent_id, retell_llm_id=llm_id)
            steps.append(f"found agent {agent_id} by its name {name}")
    if llm_id is None:
        llm_id = str(retell.create_llm(config["llm"])["llm_id"])
        _store(sessions, row_id, retell_llm_id=llm_id)
        steps.append(f"created LLM {llm_id}")
    else:
        retell.update_llm(llm_id, config["llm"])
        steps.append(f"updated LLM {llm_id}")
    agent_payload = {**config["agent"], "response_engine": {"type": "retell-llm", "llm_id": llm_id}}
    if agent_id is None:
        agent_id, adopted = _find_or_create(retell, name, agent_payload, settings)
        created = not adopted
        _store(sessions, row_id, retell_agent_id=agent_id)
        steps.append(f"{'found' if adopted else 'created'} agent {agent_id}")
    if not created:
        retell.update_agent(agent_id, agent_payload)
        steps.append(f"updated agent {agent_id}")
    outcome.action = (
        ProvisioningAction.CREATED
        if created
        else ProvisioningAction.ADOPTED
        if adopted
        else ProvisioningAction.UPDATED
    )
    retell.bind_phone_number(config["phone_number"], agent_id)
    steps.append(f"bound {config['phone_number']} to agent {agent_id}")
    _store(
        sessions,
        row_id,
        status=AgentStatus.ACTIVE,
        config_digest=digest,
        phone_number=config["phone_number"],
        provisioned_at=datetime.now(UTC),
        last_error=None,
    )
    outcome.agent_id = agent_id
    return outcome


def _find_or_create(
    retell: RetellApi, name: str, payload: dict[str, Any], settings: Settings
) -> tuple[str, bool]:
    """Create the agent; after a lost answer, look for it by name before creating again.
    Returns (agent id, whether it was found rather than created)."""
    outbound = settings.outbound
    # The outbound policy's waits (Retry-After included); repeatable because every try
    # after the first looks before it creates.
    for attempt in RetryPolicy.for_outbound(outbound).retrying():
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                # A create that timed out may still be landing at Retell: give it as long
                # again before looking, or the lookup misses it and we create a second.
                time.sleep(outbound.timeout_s)
                found = retell.find_agent_by_name(name)
                if found is not None:
                    return str(found["agent_id"]), True
            return str(retell.create_agent(payload)["agent_id"]), False
    raise AssertionError("tenacity returns or raises")


def _new_agent(facts: validator.BranchFacts, status: AgentStatus) -> Agent:
    """The Agent row a branch gets on its first provisioning run (one per branch)."""
    return Agent(
        company_id=facts.company_id,
        branch_id=facts.branch_id,
        name=agent_name(facts.branch_id),
        status=status,
    )


def _claim(
    sessions: sessionmaker[Session], facts: validator.BranchFacts, settings: Settings
) -> int:
    """The branch's Agent row id, claimed for this run (created if missing)."""
    with sessions() as session, session.begin():
        row_id = session.scalar(select(Agent.id).where(Agent.branch_id == facts.branch_id))
    if row_id is None:
        try:
            with sessions() as session, session.begin():
                row = _new_agent(facts, AgentStatus.DRAFT)
                session.add(row)
                session.flush()
                row_id = row.id
        except IntegrityError:
            # Another run created it first: the unique branch_id decided; use theirs.
            with sessions() as session:
                row_id = session.scalar(select(Agent.id).where(Agent.branch_id == facts.branch_id))
    assert row_id is not None
    stale = datetime.now(UTC) - timedelta(seconds=settings.task_time_limit_s)
    with sessions() as session, session.begin():
        claimed = session.execute(
            update(Agent)
            .where(
                Agent.id == row_id,
                or_(Agent.status != AgentStatus.PROVISIONING, Agent.updated_at < stale),
            )
            .values(status=AgentStatus.PROVISIONING, updated_at=datetime.now(UTC))
        ).rowcount  # type: ignore[attr-defined]
    if not claimed:
        raise ProvisioningBusy(f"branch {facts.branch_id} is being provisioned by another run")
    return row_id


def _store(sessions: sessionmaker[Session], row_id: int, **values: Any) -> None:
    """Commit ``values`` on the Agent row now (and the agent id on the branch too)."""
    with sessions() as session, session.begin():
        row = session.get_one(Agent, row_id)
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = datetime.now(UTC)
        if values.get("retell_agent_id"):
            session.get_one(Branch, row.branch_id).retell_agent_id = values["retell_agent_id"]


def _record_refusal(
    sessions: sessionmaker[Session], facts: validator.BranchFacts, findings: list[Finding]
) -> None:
    codes = ", ".join(f.code for f in findings if f.severity == "error")
    with sessions() as session, session.begin():
        row = session.scalar(select(Agent).where(Agent.branch_id == facts.branch_id))
        if row is None:
            row = _new_agent(facts, AgentStatus.INVALID)
            session.add(row)
        note = " (the live agent keeps its last configuration)" if row.retell_agent_id else ""
        row.last_error = f"provisioning refused: {codes}{note}"
        row.updated_at = datetime.now(UTC)
    # Losing an insert race here is harmless: the other run recorded its own outcome.


def _plan(row: Agent | None) -> list[str]:
    if row is None or row.retell_agent_id is None:
        return [
            "look for an agent named by the branch (a lost earlier answer)",
            "POST /create-retell-llm"
            if row is None or row.retell_llm_id is None
            else f"PATCH /update-retell-llm/{row.retell_llm_id}",
            "POST /create-agent",
            "PATCH /update-phone-number/<branch phone> (inbound_agent_id)",
        ]
    return [
        f"PATCH /update-retell-llm/{row.retell_llm_id} (unless unchanged)",
        f"PATCH /update-agent/{row.retell_agent_id} (unless unchanged)",
        "PATCH /update-phone-number/<branch phone> (inbound_agent_id)",
    ]


def _llm_of(agent: dict[str, Any]) -> str | None:
    engine = agent.get("response_engine") or {}
    return engine.get("llm_id") if engine.get("type") == "retell-llm" else None


def _reason(failure: BaseException) -> str:
    return f"{type(failure).__name__}: {failure}"[:2000]
