"""Cal.com's API v2, the one call the validator needs.

``GET /v2/event-types/{id}`` with ``Authorization: Bearer <API key>`` and the
``cal-api-version`` header that this endpoint's v2 shape is pinned to. Answer:
``{"status": "success", "data": {"id", "lengthInMinutes", "title", ...}}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.settings import Settings
from workers.outbound.jsonapi import JsonApi, path_part

if TYPE_CHECKING:
    import httpx  # annotations only (workers/outbound/jsonapi.py imports it on first call)

EVENT_TYPES_API_VERSION = "2024-06-14"


class CalcomApi:
    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        """``transport``: an ``httpx.MockTransport`` in unit tests; None calls Cal.com."""
        outbound = settings.outbound
        self.api = JsonApi(
            service="calcom",
            base_url=outbound.calcom_api_url,
            settings=settings,
            headers={
                "Authorization": f"Bearer {outbound.calcom_api_key}",
                "cal-api-version": EVENT_TYPES_API_VERSION,
            },
            transport=transport,
        )

    def get_event_type(self, event_type_id: int) -> dict[str, Any]:
        answer = self.api.call("GET", f"/v2/event-types/{path_part(event_type_id)}")
        return dict((answer or {}).get("data") or {})
