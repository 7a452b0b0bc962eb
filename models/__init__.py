"""Typed SQLAlchemy models, the engine factory, migrations, settings and logging.

Imports neither ``ingest`` nor ``workers``; both may import it.

The tables load on first use, not with the package: importing ``models.settings`` (as
every ``hookfleet`` command and the receiver do) no longer costs SQLAlchemy's ORM and
every table. All tables still load together, so ``Base.metadata`` and the mappers see
every one: on first access to a name below (``from models import Base``), or when
SQLAlchemy first configures the mappers (a query, a new row: ``models.base`` hooks
``before_configured``), whichever a module importing one table module reaches first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.appointments import Appointment, AppointmentAttendee, AppointmentStatus
    from models.base import Base
    from models.business import Agent, Branch, Company, Service, Staff
    from models.calls import Call
    from models.customers import Customer, CustomerDetail
    from models.events import EventStatus, WebhookEvent
    from models.replays import ReplayRun, RunStatus

# Each name below: the module that defines it (the modules are every table there is).
_HOME = {
    "Appointment": "models.appointments",
    "AppointmentAttendee": "models.appointments",
    "AppointmentStatus": "models.appointments",
    "Base": "models.base",
    "Agent": "models.business",
    "Branch": "models.business",
    "Company": "models.business",
    "Service": "models.business",
    "Staff": "models.business",
    "Call": "models.calls",
    "Customer": "models.customers",
    "CustomerDetail": "models.customers",
    "EventStatus": "models.events",
    "WebhookEvent": "models.events",
    "ReplayRun": "models.replays",
    "RunStatus": "models.replays",
}

__all__ = [
    "Agent",
    "Appointment",
    "AppointmentAttendee",
    "AppointmentStatus",
    "Base",
    "Branch",
    "Call",
    "Company",
    "Customer",
    "CustomerDetail",
    "EventStatus",
    "ReplayRun",
    "RunStatus",
    "Service",
    "Staff",
    "WebhookEvent",
]


def load_tables() -> None:
    """Import every table module, so ``Base.metadata`` holds every table (idempotent)."""
    for module in sorted(set(_HOME.values())):
        importlib.import_module(module)


def __getattr__(name: str) -> Any:
    """``models.Call`` and the like (PEP 562): every table loaded, then the name."""
    if name not in _HOME:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    load_tables()
    return getattr(importlib.import_module(_HOME[name]), name)
