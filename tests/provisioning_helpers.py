"""Seeded branches and settings that point the clients at the stand-in server."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from models.business import Branch, Company, Service
from models.settings import OutboundSettings, Settings
from tests.standin import StandIn

BRANCH_PHONE = "+4930901820"
EVENT_TYPE = 1001
HOURS = {
    "mon": [["09:00", "13:00"], ["14:00", "18:00"]],
    "tue": [["09:00", "18:00"]],
    "wed": [["09:00", "18:00"]],
    "thu": [["09:00", "20:00"]],
    "fri": [["09:00", "18:00"]],
    "sat": [["10:00", "14:00"]],
}
SERVICES = (("Haircut", 30), ("Colouring", 90), ("Blow-dry & styling", 30))


def outbound(standin: StandIn, **overrides: Any) -> OutboundSettings:
    values: dict[str, Any] = {
        "retell_api_url": standin.url,
        "retell_api_key": standin.api_key,
        "calcom_api_url": standin.url,
        "calcom_api_key": standin.calcom_key,
        "retell_webhook_url": "https://hooks.example/webhooks/retell",
        "timeout_s": 1.0,
        "retries": 3,
        "backoff_s": 0.01,
        "breaker_fail_max": 50,
        "breaker_reset_s": 60,
    }
    return OutboundSettings(**(values | overrides))


def settings_for(database_url: str, redis_url: str, standin: StandIn, **out: Any) -> Settings:
    return Settings(
        database_url=database_url, redis_url=redis_url, outbound=outbound(standin, **out)
    )


def env_for(database_url: str, redis_url: str, standin: StandIn, **extra: str) -> dict[str, str]:
    """The same configuration as HOOKFLEET_* variables, for real subprocesses."""
    return {
        "HOOKFLEET_DATABASE_URL": database_url,
        "HOOKFLEET_REDIS_URL": redis_url,
        "HOOKFLEET_RETELL_API_URL": standin.url,
        "HOOKFLEET_RETELL_API_KEY": standin.api_key,
        "HOOKFLEET_CALCOM_API_URL": standin.url,
        "HOOKFLEET_CALCOM_API_KEY": standin.calcom_key,
        "HOOKFLEET_RETELL_WEBHOOK_URL": "https://hooks.example/webhooks/retell",
        "HOOKFLEET_OUTBOUND_TIMEOUT_S": "1",
        "HOOKFLEET_OUTBOUND_BACKOFF_S": "0.01",
        **extra,
    }


def seed_branch(sessions: sessionmaker[Session], **branch: Any) -> int:
    """A hair salon with one fully configured branch; ``branch`` overrides its fields."""
    with sessions() as session, session.begin():
        company = Company(name="Salon Ada", industry="hair_salon")
        row = Branch(
            company=company,
            name="Mitte",
            phone=BRANCH_PHONE,
            timezone="Europe/Berlin",
            working_hours=HOURS,
            calcom_event_type_id=EVENT_TYPE,
        )
        for key, value in branch.items():
            setattr(row, key, value)
        session.add_all([company, row])
        session.flush()
        session.add_all(
            Service(company_id=company.id, branch_id=row.id, name=name, duration_minutes=minutes)
            for name, minutes in SERVICES
        )
        return row.id


def ready_standin(standin: StandIn) -> StandIn:
    standin.add_phone_number(BRANCH_PHONE)
    standin.add_event_type(EVENT_TYPE)
    return standin
