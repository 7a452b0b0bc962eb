"""What we send Retell for a branch: the LLM (what the agent knows) and the agent.

Deterministic for the same branch facts, so its digest tells whether anything changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from models.phones import normalize_phone
from models.settings import Settings
from workers.provisioning.hours import WEEKDAYS
from workers.provisioning.validator import BranchFacts

LANGUAGE = "de-DE"
_DAY_NAMES = {
    "mon": "Montag",
    "tue": "Dienstag",
    "wed": "Mittwoch",
    "thu": "Donnerstag",
    "fri": "Freitag",
    "sat": "Samstag",
    "sun": "Sonntag",
}


def agent_name(branch_id: int) -> str:
    """The name our agent has in Retell: how a rerun finds an agent whose id we never
    stored (the run died between Retell creating it and our commit)."""
    return f"hookfleet-branch-{branch_id}"


def desired_config(facts: BranchFacts, settings: Settings) -> dict[str, Any]:
    """``{"llm": ..., "agent": ..., "phone_number": ...}``; the agent's
    ``response_engine.llm_id`` is filled in when the LLM exists."""
    agent: dict[str, Any] = {
        "agent_name": agent_name(facts.branch_id),
        "voice_id": settings.outbound.retell_voice_id,
        "language": LANGUAGE,
    }
    if settings.outbound.retell_webhook_url:
        agent["webhook_url"] = settings.outbound.retell_webhook_url
    return {
        "llm": {
            "general_prompt": _prompt(facts),
            "begin_message": f"{facts.company_name}, {facts.branch_name}, guten Tag! "
            "Wie kann ich Ihnen helfen?",
        },
        "agent": agent,
        "phone_number": normalize_phone(facts.phone, settings.phone_regions).value
        if facts.phone
        else None,
    }


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _prompt(facts: BranchFacts) -> str:
    hours = facts.working_hours if isinstance(facts.working_hours, dict) else {}
    lines = [
        f"Du bist die Telefonassistenz von {facts.company_name}, Filiale {facts.branch_name}.",
        f"Zeitzone: {facts.timezone}.",
        "Öffnungszeiten:",
    ]
    for day in WEEKDAYS:
        ranges = hours.get(day) or []
        spans = ", ".join(f"{a}-{b}" for a, b in ranges) if ranges else "geschlossen"
        lines.append(f"- {_DAY_NAMES[day]}: {spans}")
    lines.append("Leistungen:")
    lines += [f"- {s.name} ({s.duration_minutes} Min.)" for s in facts.services]
    lines.append(
        "Vereinbare Termine nur innerhalb der Öffnungszeiten und nur für diese Leistungen."
    )
    return "\n".join(lines)
