"""A delivery served on the receiver's event loop (ingest/aio_worker.py).

The same rules as the WSGI path (ingest/fastpath.py, ingest/views.py ``take_delivery``),
split where it waits: :func:`~ingest.views.check_delivery` (signature, payload, job)
runs in the loop, the claim is awaited on the pipelined client (ingest/claims.py), and
the answer is built and counted by ``ingest.fastpath.finish_answer``. What blocks
runs in the worker's threads: keeping a refused delivery in the quarantine, Retell's
inline answer (its DB lookup, then its record: ingest/inbound_record.py). A gate that
cannot pipeline (``PipelinedClaims.for_gate`` is None: separate dedup and broker
servers, replicas to wait for) leaves its deliveries to the WSGI app in threads.

Imported by the worker after the fork (never by gunicorn's master): the app's modules
open the Prometheus multiprocess files, which the master makes a place for first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis

from ingest.call_deadline import CallDeadline, arrived_at
from ingest.claims import PipelinedClaims
from ingest.dedup import NotReplicated
from ingest.fastpath import _PREFIX, finish_answer, refused_answer
from ingest.inbound_record import answer_bound_s
from ingest.listeners import LISTENER_PORT, ops_only_port
from ingest.providers import REGISTRY
from ingest.providers.base import Provider
from ingest.views import (
    RefusedDelivery,
    admission_answer,
    admission_refusal,
    answer_inline,
    check_delivery,
    claim_arguments,
    correlation_id_for,
    keep_refused,
)
from models import tracing
from models.logs import log_context

# (status line, headers, body, what to run in a thread once the answer is written)
Served = tuple[str, list[tuple[str, str]], bytes, Callable[[], None] | None]
# The body of /healthz's answer: ``jsonify(status="ok")``'s bytes.
_HEALTHY = b'{"status":"ok"}\n'


class LoopDeliveries:
    """Deliveries to ``app`` (the receiver's Flask app) served on ``loop``."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.settings = app.config["HOOKFLEET_SETTINGS"]
        # None when the gate's set-up cannot pipeline: its deliveries then go through
        # the WSGI app in threads, with the blocking claim.
        self.claims = PipelinedClaims.for_gate(app.extensions["hookfleet_gate"])
        self.enabled = self.claims is not None and getattr(app, "fast_path", False)
        # A webhook on the ops listener goes to the WSGI app, which answers it 404.
        self.ops_only_port = ops_only_port(self.settings)

    @classmethod
    def for_app(cls, app: Any, loop: asyncio.AbstractEventLoop) -> LoopDeliveries | None:
        """None for an app that is not Hookfleet's receiver (the benchmark's)."""
        extensions = getattr(app, "extensions", None)
        if not isinstance(extensions, dict) or "hookfleet_gate" not in extensions:
            return None
        return cls(app, loop)

    def provider_for(self, environ: dict[str, Any]) -> Provider | None:
        """The provider of a delivery served here, or None (the WSGI app's)."""
        if not self.enabled or environ["REQUEST_METHOD"] != "POST" or tracing.on():
            return None
        if environ.get(LISTENER_PORT) == self.ops_only_port:
            return None
        path: str = environ["PATH_INFO"]
        if not path.startswith(_PREFIX):
            return None
        return REGISTRY.get(path[len(_PREFIX) :])

    def health(self, environ: dict[str, Any]) -> Served | None:
        """``GET``/``HEAD /healthz`` answered in the loop as the Flask route answers it
        (ingest/views.py ``healthz``), None for any other request. Its answer proves
        the event loop lives; it waits for no thread, as every thread may be waiting
        on Redis or the database (a frozen Redis held them all, and the liveness probe
        queued behind them until the pods were restarted)."""
        method = environ["REQUEST_METHOD"]
        if environ["PATH_INFO"] != "/healthz" or method not in ("GET", "HEAD"):
            return None
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(_HEALTHY))),
            ("X-Request-ID", correlation_id_for(environ.get("HTTP_X_REQUEST_ID", ""))),
        ]
        return "200 OK", headers, b"" if method == "HEAD" else _HEALTHY, None

    async def deliver(self, environ: dict[str, Any], provider: Provider) -> Served:
        """Answer one delivery as ingest/fastpath.py's ``_deliver`` would."""
        started = time.perf_counter()
        correlation_id = correlation_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        log_context.set({"correlation_id": correlation_id})
        headers: list[tuple[str, str]] = []
        refused: str | None = None
        try:
            answer = await self._take(environ, provider, correlation_id, started)
        except Exception as error:  # noqa: BLE001 (answered as the Flask route would)
            answer, headers, refused = refused_answer(error, correlation_id)
        status, header_list = finish_answer(
            provider.name, answer, headers, correlation_id, started, None, refused
        )
        return status, header_list, answer.body, answer.after

    async def _take(
        self, environ: dict[str, Any], provider: Provider, correlation_id: str, started: float
    ) -> Any:
        app, settings = self.app, self.settings
        try:
            checked = check_delivery(app, environ, provider, correlation_id)
        except RefusedDelivery as refusal:
            await self.loop.run_in_executor(
                None, keep_refused, app, provider, refusal.delivery, refusal.refusal, correlation_id
            )
            raise refusal.refusal from None
        job = checked.job
        # Other deliveries run while this one waits: its log context is put back after.
        context = log_context.get()
        if checked.identity.inline:
            # Counted from the arrival, not from when a thread is free to take the call.
            deadline = CallDeadline(arrived_at(environ) + answer_bound_s(settings))
            arguments = (app, provider, checked.payload, checked.identity, job)
            answer = await self.loop.run_in_executor(
                None,
                lambda: _in_context(
                    context, answer_inline, *arguments, correlation_id, started, deadline
                ),
            )
            log_context.set(context)
            return answer
        assert self.claims is not None  # provider_for serves nothing without it
        try:
            admission = await self.claims.admit(**claim_arguments(job, correlation_id, settings))
        except (redis.RedisError, NotReplicated) as error:
            log_context.set(context)
            raise admission_refusal(error, started, settings) from None
        log_context.set(context)
        return admission_answer(job, admission, correlation_id, started, settings)


def _in_context(context: Any, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` under the log context ``context`` (a thread has its own)."""
    log_context.set(context)
    return function(*args)
