"""Is a branch ready for a voice agent? Findings an operator can act on.

:func:`validate` is pure: it looks at :class:`BranchFacts` (read from the database by
:func:`load_facts`) and the settings, and returns findings. :func:`check_connectivity`
is the only part that calls out, and only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models.business import Branch, Company, Service
from models.phones import normalize_phone
from models.settings import Settings
from workers.outbound.calcom import CalcomApi
from workers.outbound.errors import ApiRateLimited, ApiRejected, CircuitOpen, OutboundError
from workers.outbound.retell import RetellApi
from workers.provisioning.findings import Finding, error, warning
from workers.provisioning.hours import check_working_hours
from workers.provisioning.industries import check_industry


@dataclass(frozen=True)
class ServiceFacts:
    id: int
    name: str
    duration_minutes: int | None


@dataclass(frozen=True)
class BranchFacts:
    """Everything the validator and the agent's configuration need, as plain data."""

    branch_id: int
    company_id: int
    company_name: str
    industry: str | None
    branch_name: str
    phone: str | None
    timezone: str
    working_hours: Any
    is_active: bool
    calcom_event_type_id: int | None
    services: tuple[ServiceFacts, ...]


class BranchNotFound(LookupError):
    pass


def load_facts(session: Session, branch_id: int) -> BranchFacts:
    """Read the branch, its company and its active services (the company's services
    without a branch count for every branch)."""
    branch = session.get(Branch, branch_id)
    if branch is None:
        raise BranchNotFound(f"no branch with id {branch_id}")
    company = session.get(Company, branch.company_id)
    assert company is not None  # foreign key
    services = session.scalars(
        select(Service)
        .where(
            Service.company_id == company.id,
            Service.is_active.is_(True),
            or_(Service.branch_id == branch.id, Service.branch_id.is_(None)),
        )
        .order_by(Service.id)
    ).all()
    return BranchFacts(
        branch_id=branch.id,
        company_id=company.id,
        company_name=company.name,
        industry=company.industry,
        branch_name=branch.name,
        phone=branch.phone,
        timezone=branch.timezone,
        working_hours=branch.working_hours,
        is_active=branch.is_active,
        calcom_event_type_id=branch.calcom_event_type_id,
        services=tuple(ServiceFacts(s.id, s.name, s.duration_minutes) for s in services),
    )


def validate(facts: BranchFacts, settings: Settings) -> list[Finding]:
    """Every finding for ``facts``; no I/O. Any error means: do not provision."""
    return [
        *_company_and_branch(facts, settings),
        *_timezone(facts),
        *check_working_hours(facts.working_hours),
        *_services(facts),
        *_integrations(facts, settings),
        *check_industry(facts.company_name, facts.industry, [s.name for s in facts.services]),
    ]


def _company_and_branch(facts: BranchFacts, settings: Settings) -> list[Finding]:
    found = []
    if not facts.company_name.strip():
        found.append(
            error(
                "COMPANY_NAME_MISSING",
                f"Company {facts.company_id} has no name; the agent greets callers with it",
                "Enter the company name as callers know it, e.g. 'Salon Ada'",
            )
        )
    if not facts.branch_name.strip():
        found.append(
            error(
                "BRANCH_NAME_MISSING",
                f"Branch {facts.branch_id} has no name",
                "Enter the branch name, e.g. the district or street ('Mitte')",
            )
        )
    if not facts.is_active:
        found.append(
            error(
                "BRANCH_INACTIVE",
                f"Branch '{facts.branch_name}' is marked inactive",
                "Activate the branch first, or do not provision an agent for it",
            )
        )
    if not facts.phone:
        found.append(
            error(
                "BRANCH_PHONE_MISSING",
                f"Branch '{facts.branch_name}' has no phone number for the agent to answer",
                "Enter the branch's number in full international form, e.g. +49 30 1234567",
            )
        )
    elif not normalize_phone(facts.phone, settings.phone_regions).valid:
        regions = ", ".join(settings.phone_regions)
        found.append(
            error(
                "BRANCH_PHONE_INVALID",
                f"Branch phone '{facts.phone}' is not a valid number in {regions}",
                "Enter the full number with area code, e.g. +49 30 1234567",
            )
        )
    return found


def _timezone(facts: BranchFacts) -> list[Finding]:
    try:
        ZoneInfo(facts.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return [
            error(
                "BRANCH_TIMEZONE_UNKNOWN",
                f"Timezone '{facts.timezone}' is not a known IANA timezone",
                "Use a name like 'Europe/Berlin', 'Europe/Vienna' or 'Europe/Zurich'",
            )
        ]
    return []


def _services(facts: BranchFacts) -> list[Finding]:
    if not facts.services:
        return [
            error(
                "SERVICES_NONE_ACTIVE",
                f"Branch '{facts.branch_name}' has no active service the agent could book",
                "Add at least one service with its duration (or re-activate one)",
            )
        ]
    return [
        error(
            "SERVICE_DURATION_MISSING",
            f"Service '{s.name}' (id {s.id}) has no duration "
            f"(got {s.duration_minutes!r}), so no slot can be offered",
            f"Set a duration in minutes for '{s.name}', e.g. 30",
        )
        for s in facts.services
        if not s.duration_minutes or s.duration_minutes <= 0
    ]


def _integrations(facts: BranchFacts, settings: Settings) -> list[Finding]:
    outbound = settings.outbound
    found = []
    if facts.calcom_event_type_id is None:
        found.append(
            error(
                "CALCOM_EVENT_TYPE_MISSING",
                f"Branch '{facts.branch_name}' has no Cal.com event type, so the agent "
                "cannot book appointments",
                "Create the event type in Cal.com and enter its numeric id on the branch",
            )
        )
    if not outbound.calcom_api_key:
        found.append(
            error(
                "CALCOM_API_KEY_MISSING",
                "No Cal.com API key is configured",
                "Set HOOKFLEET_CALCOM_API_KEY (Cal.com → Settings → Developer → API keys)",
            )
        )
    if not outbound.retell_api_key:
        found.append(
            error(
                "RETELL_API_KEY_MISSING",
                "No Retell API key is configured",
                "Set HOOKFLEET_RETELL_API_KEY (or HOOKFLEET_RETELL_SECRETS) to the key "
                "from Retell's dashboard → API Keys",
            )
        )
    if not outbound.retell_webhook_url:
        found.append(
            warning(
                "RETELL_WEBHOOK_URL_MISSING",
                "No webhook URL is set for the agent: its calls reach Hookfleet only if "
                "Retell's account-wide webhook points here",
                "Set HOOKFLEET_RETELL_WEBHOOK_URL to https://<your host>/webhooks/retell",
            )
        )
    return found


def check_connectivity(
    facts: BranchFacts, retell: RetellApi, calcom: CalcomApi, settings: Settings
) -> list[Finding]:
    """Ask Retell and Cal.com whether the configuration works (real calls)."""
    found: list[Finding] = []
    outbound = settings.outbound
    if outbound.retell_api_key:
        problem = _reach("Retell", outbound.retell_api_url, retell.ping)
        phone = normalize_phone(facts.phone, settings.phone_regions) if facts.phone else None
        if problem is None and phone is not None and phone.valid:
            number = phone.value
            problem = _reach(
                "Retell",
                outbound.retell_api_url,
                lambda: retell.get_phone_number(number),
                not_found=error(
                    "RETELL_PHONE_NOT_FOUND",
                    f"Retell does not know the number {number}",
                    "Buy or import the number in Retell (Phone Numbers) before provisioning",
                ),
            )
        found += [problem] if problem else []
    if outbound.calcom_api_key and facts.calcom_event_type_id is not None:
        event_type = facts.calcom_event_type_id
        problem = _reach(
            "Cal.com",
            outbound.calcom_api_url,
            lambda: calcom.get_event_type(event_type),
            not_found=error(
                "CALCOM_EVENT_TYPE_NOT_FOUND",
                f"Cal.com has no event type {event_type} for this API key",
                "Check the event type id on the branch (Cal.com → Event Types → the id in "
                "the URL) and that the API key belongs to its owner",
            ),
        )
        found += [problem] if problem else []
    return found


def _reach(label: str, url: str, call: Any, not_found: Finding | None = None) -> Finding | None:
    """A finding when ``call`` shows a problem to fix. Raises ApiRateLimited: being
    rate-limited says nothing about the branch, so it must not refuse the run — the
    caller (the task) tries again after the service's Retry-After."""
    code = label.upper().replace(".", "")
    try:
        call()
    except ApiRateLimited:
        raise
    except ApiRejected as rejected:
        if rejected.status == 404 and not_found is not None:
            return not_found
        if rejected.status in (401, 403):
            return error(
                f"{code}_API_KEY_REJECTED",
                f"{label} refused the API key ({rejected.status})",
                f"Check HOOKFLEET_{code}_API_KEY: copy a current key from {label}'s dashboard",
            )
        return error(
            f"{code}_API_ERROR",
            f"{label} refused the request: {rejected}",
            f"Check the configuration {label} names in its answer, then run this again",
        )
    except CircuitOpen:
        return error(
            f"{code}_CIRCUIT_OPEN",
            f"Calls to {label} are paused: it failed repeatedly just now",
            f"Wait for the breaker to retry, or after checking {label} is up, run "
            f"`hookfleet breaker reset {code.lower()}`",
        )
    except OutboundError as failed:
        return error(
            f"{code}_UNREACHABLE",
            f"{label} at {url} did not answer: {failed}",
            f"Check the network and {label}'s status page, then run this again",
        )
    return None
