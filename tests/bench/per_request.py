"""The receiver's own CPU per delivery, without an HTTP server or a load generator:
``python -m tests.bench.per_request``.

Calls the WSGI app in-process for ``--count`` signed Standard Webhooks deliveries
(each a new event, so each is claimed and queued on a private Redis) and prints the
mean microseconds per delivery; ``--profile`` prints cProfile's top functions too.
On a shared machine this is steadier than a load test: what it measures is the app's
Python alone, the part that a faster HTTP server cannot remove.

``--loop`` measures the shipped worker's road instead (ingest/aio_worker.py): each
delivery's raw bytes as wrk sends them, parsed by ``plain_head``, its environ built by
``AioWorker.environ_for``, served by ``LoopDeliveries.deliver`` on a uvloop loop (the
claim pipelined to Redis, ``--concurrency`` deliveries at a time as a worker's
connections would), its log line batched by ``TickLines`` (to /dev/null) and its
answer head built by ``response_head``: everything the worker does per delivery but
the socket reads and writes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench import deliveries
from tests.servers import RedisServer, sqlite_url


def environ_for(request: deliveries.Request) -> dict[str, Any]:
    """The WSGI environ gunicorn would build for ``request`` (the parts apps read)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path,
        "RAW_URI": request.path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",  # required in HTTP/1.1 (ingest/host_header.py)
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        # gunicorn's promise that the input ends with the body (http/wsgi.py), so
        # werkzeug reads it as it is instead of through a LimitedStream.
        "wsgi.input_terminated": True,
        "CONTENT_LENGTH": str(len(request.body)),
    }
    for name, value in request.headers.items():
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ[f"HTTP_{key}"] = value
    return environ


def drive(app: Callable[..., Any], requests: list[deliveries.Request]) -> dict[str, int]:
    """Serve every request; the count of each status line."""
    statuses: dict[str, int] = {}

    def start_response(status: str, _headers: list[tuple[str, str]], *_: Any) -> None:
        statuses[status] = statuses.get(status, 0) + 1

    for request in requests:
        body = app(environ_for(request), start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return statuses


def raw_request(request: deliveries.Request) -> bytes:
    """``request`` as wrk sends it (``wrk.format``: the request line, Host, the headers,
    Content-Length)."""
    head = [f"POST {request.path} HTTP/1.1", "Host: 127.0.0.1:8000"]
    head += [f"{name}: {value}" for name, value in request.headers.items()]
    head.append(f"Content-Length: {len(request.body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + request.body


def drive_loop(app: Any, raws: list[bytes], concurrency: int) -> dict[str, int]:
    """Serve every raw request as the shipped worker's loop does (the module's
    docstring), ``concurrency`` at a time on a new uvloop loop; the count of each
    status line."""
    import uvloop

    from ingest.aio_worker import AioWorker, plain_head, response_head
    from ingest.loop_delivery import LoopDeliveries
    from models.logs import TickLines

    worker = AioWorker.__new__(AioWorker)  # only environ_for's state, no gunicorn arbiter
    worker.secure_scheme_headers = {}
    limits = (4094, 100, 8190)  # gunicorn's defaults, as the Procfile's web runs
    connection: dict[str, Any] = {
        **environ_for(deliveries.Request("/", {}, b"")),
        "REMOTE_PORT": "40000",
    }
    statuses: dict[str, int] = {}
    sent: list[bytes] = []

    async def serve(raw: bytes) -> None:
        end = raw.index(b"\r\n\r\n")
        found = plain_head(raw, end, limits)
        assert found is not None, "not a plain request"
        plain, body_end = found
        plain.body = raw[end + 4 : body_end]
        environ = worker.environ_for(plain, connection, False)
        assert environ is not None
        provider = served.provider_for(environ)
        assert provider is not None, "not a delivery the loop serves"
        status, headers, payload, _ = await served.deliver(environ, provider)
        sent.append(response_head(plain.version, status, headers, True) + payload)
        statuses[status] = statuses.get(status, 0) + 1

    async def serve_all() -> None:
        queue = iter(raws)

        async def one_connection() -> None:
            for raw in queue:
                await serve(raw)

        await asyncio.gather(*(one_connection() for _ in range(concurrency)))

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    served = LoopDeliveries(app, loop)
    assert served.enabled, "the gate cannot pipeline"
    lines = TickLines.install(loop)
    try:
        loop.run_until_complete(serve_all())
    finally:
        if lines is not None:
            lines.uninstall()
        loop.run_until_complete(served.claims.aclose())  # type: ignore[union-attr]
        loop.close()
    return statuses


def _raws(requests: list[deliveries.Request]) -> list[bytes]:
    return [raw_request(request) for request in requests]


def _quiet_logs() -> None:
    """The receiver's log lines to /dev/null (written all the same)."""
    import logging

    for handler in logging.getLogger("hookfleet").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(os.devnull, "w"))  # lives as long as the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="cProfile's order: tottime, cumtime")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--flask-route", action="store_true", help="deliveries through Flask's route"
    )
    parser.add_argument("--loop", action="store_true", help="the shipped worker's loop road")
    parser.add_argument("--concurrency", type=int, default=8, help="--loop: at a time")
    parser.add_argument("--rounds", type=int, default=1, help="measured runs, after one warm-up")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="hookfleet-per-request-"))
    redis_server = RedisServer(work / "redis").start()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(work / "metrics"))
    (work / "metrics").mkdir(exist_ok=True)
    try:
        from ingest import create_app
        from ingest.fastpath import ReceiverApp

        app = create_app(
            {
                "HOOKFLEET_REDIS_URL": redis_server.url,
                "HOOKFLEET_DATABASE_URL": sqlite_url(work),
                **deliveries.SECRET_ENV,
            }
        )
        if args.flask_route:
            assert isinstance(app, ReceiverApp)
            app.fast_path = False
        if args.loop:
            _quiet_logs()
        warm = list(deliveries.requests("standard", 300, 0.0, start=0))
        if args.loop:
            drive_loop(app, _raws(warm), args.concurrency)
        else:
            drive(app, warm)
        for _ in range(args.rounds):
            measured = list(deliveries.requests("standard", args.count, 0.0))
            raws = _raws(measured)
            # Timed in CPU seconds: on a shared machine, wall time charges a function
            # for the time the kernel ran others (a socket write waking Redis).
            profiler = cProfile.Profile(time.process_time) if args.profile else None
            cpu, wall = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            if args.loop:
                statuses = drive_loop(app, raws, args.concurrency)
            else:
                statuses = drive(app, measured)
            if profiler:
                profiler.disable()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"{args.count} deliveries: {cpu / args.count * 1e6:.0f} µs CPU, "
                f"{wall / args.count * 1e6:.0f} µs wall each; answers {statuses}",
                flush=True,
            )
            if profiler:
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out).sort_stats(args.sort)
                stats.print_stats(args.top)
                print(out.getvalue())
    finally:
        redis_server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
