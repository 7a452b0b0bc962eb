"""The receiver's own CPU per delivery, without an HTTP server or a load generator:
``python -m tests.bench.per_request``.

Calls the WSGI app in-process for ``--count`` signed Standard Webhooks deliveries
(each a new event, so each is claimed and queued on a private Redis) and prints the
mean microseconds per delivery; ``--profile`` prints cProfile's top functions too.
On a shared machine this is steadier than a load test: what it measures is the app's
Python alone, the part that a faster HTTP server cannot remove.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="cProfile's order: tottime, cumtime")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--flask-route", action="store_true", help="deliveries through Flask's route"
    )
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
        warm = list(deliveries.requests("standard", 300, 0.0, start=0))
        measured = list(deliveries.requests("standard", args.count, 0.0, start=300))
        drive(app, warm)
        profiler = cProfile.Profile() if args.profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        statuses = drive(app, measured)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        redis_server.stop()
    print(
        f"{args.count} deliveries: {cpu / args.count * 1e6:.0f} µs CPU, "
        f"{wall / args.count * 1e6:.0f} µs wall each; answers {statuses}"
    )
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats(args.sort)
        stats.print_stats(args.top)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
