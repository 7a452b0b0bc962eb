"""Retell's HTTP API, the calls provisioning needs (https://docs.retellai.com/api-references).

Bearer auth with the API key. Paths as Retell documents them: ``POST /create-retell-llm``,
``PATCH /update-retell-llm/{llm_id}``, ``POST /create-agent``, ``PATCH
/update-agent/{agent_id}``, ``GET /get-agent/{agent_id}``, ``POST /v2/list-agents``
(the paginated successor of the retired ``GET /list-agents``), ``GET
/get-phone-number/{number}``, ``PATCH /update-phone-number/{number}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from models.settings import Settings
from workers.outbound.jsonapi import JsonApi, path_part
from workers.outbound.policy import IDEMPOTENT_METHODS, RetryPolicy

if TYPE_CHECKING:
    import httpx  # annotations only (workers/outbound/jsonapi.py imports it on first call)

LIST_PAGE_SIZE = 1000  # Retell's maximum
# What Retell lets us send twice besides the idempotent methods: its update-* PATCHes
# set the fields given to the values given (full state, no increments), and
# list-agents is a read sent as a POST. The creates are not here: a create that timed
# out may have happened, so provisioning looks before it creates again.
SAFE_PATCHES = frozenset({"PATCH"})
READ_ONLY_POSTS = frozenset({("POST", "/v2/list-agents")})


class RetellApi:
    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        """``transport``: an ``httpx.MockTransport`` in unit tests; None calls Retell."""
        outbound = settings.outbound
        self.api = JsonApi(
            service="retell",
            base_url=outbound.retell_api_url,
            settings=settings,
            headers={"Authorization": f"Bearer {outbound.retell_api_key}"},
            policy=RetryPolicy.for_outbound(
                outbound,
                allowed_methods=IDEMPOTENT_METHODS | SAFE_PATCHES,
                also_safe=READ_ONLY_POSTS,
            ),
            transport=transport,
        )

    def ping(self) -> None:
        """The cheapest authenticated call: one page of one agent."""
        self._list_page(limit=1, pagination_key=None)

    def iter_agents(self) -> Iterator[dict[str, Any]]:
        """Every voice agent on the account (``agent_id``, ``agent_name``, ...)."""
        key: str | None = None
        while True:
            page = self._list_page(limit=LIST_PAGE_SIZE, pagination_key=key)
            yield from page.get("items") or []
            key = page.get("pagination_key")
            if not page.get("has_more") or not key:
                return

    def find_agent_by_name(self, name: str) -> dict[str, Any] | None:
        return next((a for a in self.iter_agents() if a.get("agent_name") == name), None)

    def get_agent(self, agent_id: str) -> dict[str, Any]:
        return dict(self.api.call("GET", f"/get-agent/{path_part(agent_id)}"))

    def create_agent(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Not retried here (policy): a create that timed out may have happened (look first)."""
        return dict(self.api.call("POST", "/create-agent", payload))

    def update_agent(self, agent_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        return dict(self.api.call("PATCH", f"/update-agent/{path_part(agent_id)}", payload))

    def create_llm(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Not retried here, like create_agent."""
        return dict(self.api.call("POST", "/create-retell-llm", payload))

    def update_llm(self, llm_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        return dict(self.api.call("PATCH", f"/update-retell-llm/{path_part(llm_id)}", payload))

    def get_phone_number(self, number: str) -> dict[str, Any]:
        return dict(self.api.call("GET", f"/get-phone-number/{path_part(number)}"))

    def bind_phone_number(self, number: str, agent_id: str) -> dict[str, Any]:
        """Make ``agent_id`` answer inbound calls to ``number`` (E.164)."""
        return dict(
            self.api.call(
                "PATCH",
                f"/update-phone-number/{path_part(number)}",
                {"inbound_agent_id": agent_id},
            )
        )

    def _list_page(self, limit: int, pagination_key: str | None) -> dict[str, Any]:
        query: dict[str, str | int] = {"limit": limit}
        if pagination_key:
            query["pagination_key"] = pagination_key
        body = {"filter_criteria": {"channel": {"op": "eq", "value": "voice"}}}
        # A read, though it is a POST: READ_ONLY_POSTS lets the policy retry it.
        return dict(self.api.call("POST", "/v2/list-agents", body, query=query))
