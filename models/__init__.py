"""Hookfleet's record: SQLAlchemy 2.0 typed models, the engine factory and migrations.

Imports neither ``ingest`` nor ``workers``; both may import it.
"""

from models.base import Base
from models.business import Branch, Company
from models.events import EventStatus, WebhookEvent

__all__ = ["Base", "Branch", "Company", "EventStatus", "WebhookEvent"]
