"""A real HTTP server standing in for Retell's and Cal.com's APIs, on a loopback port.

It keeps what Retell would keep (agents, LLMs, phone-number bindings, with ids shaped like
Retell's) so tests assert on the server's state — "exactly one agent" — not on what our
client believes. Every request is recorded. Scripted replies (:meth:`StandIn.script`)
answer matching requests first, in order: a status with a body, slowly, or not at all
(the connection is closed, or the answer is delayed past the client's timeout while the
real work still happens — Retell created the agent, we never heard). ``connections``
counts the TCP connections accepted, so tests see whether the client reuses them.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``status=None`` lets the normal handler answer (after
    ``delay_s``); ``close=True`` drops the connection without answering; ``headers``
    go with a scripted status (e.g. ``Retry-After``)."""

    status: int | None = None
    body: Any = None
    delay_s: float = 0.0
    close: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


@dataclass
class StandIn:
    api_key: str = "key_standin"
    calcom_key: str = "cal_live_standin"
    requests: list[Received] = field(default_factory=list)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    llms: dict[str, dict[str, Any]] = field(default_factory=dict)
    phone_numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    event_types: dict[int, dict[str, Any]] = field(default_factory=dict)
    connections: int = 0
    _scripts: list[tuple[str, str, deque[Reply]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # --- running ----------------------------------------------------------------------

    def start(self) -> StandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; on a kept-alive connection Nagle
            # would hold the body for the client's delayed ACK (~40 ms a call). Real
            # servers set TCP_NODELAY on keep-alive connections too (nginx tcp_nodelay).
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with standin._lock:
                    standin.connections += 1

            def do_GET(self) -> None:
                standin._handle(self)

            do_POST = do_PATCH = do_DELETE = do_GET

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- programming it -------------------------------------------------------------

    def script(self, method: str, path_prefix: str, *replies: Reply) -> None:
        """Answer the next requests to ``method path_prefix...`` with ``replies``, in
        order; after them, normal service."""
        with self._lock:
            self._scripts.append((method, path_prefix, deque(replies)))

    def add_phone_number(self, number: str) -> None:
        self.phone_numbers[number] = {"phone_number": number, "inbound_agent_id": None}

    def add_event_type(self, event_type_id: int, length: int = 30) -> None:
        self.event_types[event_type_id] = {
            "id": event_type_id,
            "lengthInMinutes": length,
            "title": f"Event {event_type_id}",
            "slug": f"event-{event_type_id}",
        }

    def calls(self, method: str, path_prefix: str = "") -> list[Received]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    # --- serving --------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = unquote(parts.path)
        received = Received(
            handler.command,
            path,
            parse_qs(parts.query),
            {k.lower(): v for k, v in handler.headers.items()},
            body,
        )
        with self._lock:
            self.requests.append(received)
            reply = self._next_scripted(handler.command, path)
        if reply is not None and reply.delay_s:
            time.sleep(reply.delay_s)
        if reply is not None and reply.close:
            handler.close_connection = True
            return
        if reply is not None and reply.status is not None:
            self._answer(handler, reply.status, reply.body, reply.headers)
            return
        status, answer = self._serve(received)
        try:
            self._answer(handler, status, answer)
        except OSError:
            pass  # the client gave up waiting (its timeout): the work is done anyway

    def _next_scripted(self, method: str, path: str) -> Reply | None:
        for script_method, prefix, replies in self._scripts:
            if script_method == method and path.startswith(prefix) and replies:
                return replies.popleft()
        return None

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    def _serve(self, r: Received) -> tuple[int, Any]:
        if r.path.startswith("/v2/event-types/"):
            return self._calcom(r)
        if r.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"status": "error", "message": "Invalid API key"}
        with self._lock:
            return self._retell(r)

    def _calcom(self, r: Received) -> tuple[int, Any]:
        if r.headers.get("authorization") != f"Bearer {self.calcom_key}":
            return 401, {"status": "error", "error": {"code": "UNAUTHORIZED"}}
        found = self.event_types.get(int(r.path.rsplit("/", 1)[1]))
        if found is None:
            return 404, {"status": "error", "error": {"code": "NOT_FOUND"}}
        return 200, {"status": "success", "data": found}

    def _retell(self, r: Received) -> tuple[int, Any]:
        now = int(time.time() * 1000)
        if r.method == "POST" and r.path == "/create-retell-llm":
            llm_id = "llm_" + uuid.uuid4().hex[:26]
            self.llms[llm_id] = {**(r.body or {}), "llm_id": llm_id, "version": 0}
            return 201, self.llms[llm_id]
        if match := re.fullmatch(r"/update-retell-llm/(.+)", r.path):
            if match.group(1) not in self.llms:
                return 404, {"message": "llm not found"}
            self.llms[match.group(1)].update(r.body or {})
            return 200, self.llms[match.group(1)]
        if r.method == "POST" and r.path == "/create-agent":
            if not (r.body or {}).get("voice_id") or not (r.body or {}).get("response_engine"):
                return 400, {"message": "voice_id and response_engine are required"}
            agent_id = "agent_" + uuid.uuid4().hex[:26]
            self.agents[agent_id] = {
                **r.body,
                "agent_id": agent_id,
                "version": 0,
                "last_modification_timestamp": now,
            }
            return 201, self.agents[agent_id]
        if match := re.fullmatch(r"/(get|update)-agent/(.+)", r.path):
            agent = self.agents.get(match.group(2))
            if agent is None:
                return 404, {"message": "agent not found"}
            if match.group(1) == "update":
                agent.update(r.body or {}, last_modification_timestamp=now)
            return 200, agent
        if r.method == "POST" and r.path == "/v2/list-agents":
            return 200, self._list_agents(r)
        if match := re.fullmatch(r"/(get|update)-phone-number/(.+)", r.path):
            number = self.phone_numbers.get(match.group(2))
            if number is None:
                return 404, {"message": "phone number not found"}
            if match.group(1) == "update":
                number.update(r.body or {})
            return 200, number
        return 404, {"message": f"no route {r.method} {r.path}"}

    def _list_agents(self, r: Received) -> dict[str, Any]:
        limit = int(r.query.get("limit", ["50"])[0])
        ids = sorted(self.agents)
        start = ids.index(r.query["pagination_key"][0]) + 1 if "pagination_key" in r.query else 0
        page = ids[start : start + limit]
        items = [
            {
                "agent_id": a,
                "agent_name": self.agents[a].get("agent_name"),
                "channel": "voice",
                "user_modified_timestamp": self.agents[a]["last_modification_timestamp"],
                "tags": {},
            }
            for a in page
        ]
        has_more = start + limit < len(ids)
        return {"items": items, "has_more": has_more, "pagination_key": page[-1] if page else None}
