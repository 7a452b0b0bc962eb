"""Typed SQLAlchemy models, the engine factory, migrations, settings and logging.

Imports neither ``ingest`` nor ``workers``; both may import it.
"""

from models.appointments import Appointment, AppointmentAttendee, AppointmentStatus
from models.base import Base
from models.business import Agent, Branch, Company, Service, Staff
from models.calls import Call
from models.customers import Customer, CustomerDetail
from models.events import EventStatus, WebhookEvent
from models.replays import ReplayRun, RunStatus

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
