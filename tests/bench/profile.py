"""Where a receiver's time goes under load: ``python -m tests.bench.profile``.

Starts a private Redis and one receiver on the Procfile's gunicorn settings, drives it
with wrk (pre-signed Standard Webhooks deliveries, as the benchmark does), and measures
two things in the same load:

- **CPU per request by process** (``/proc/<pid>/stat``): the gunicorn workers (user and
  system time) and Redis, divided by the requests served;
- **where a gunicorn worker's Python time goes**: ``py-spy record --gil`` on one worker
  (samples only while a thread holds the GIL, i.e. runs Python), summed into the share
  of samples inside each part of a request.

``--app`` profiles another receiver (``tests.bench.apps:ceiling_app()`` for the bare
Flask ceiling). Needs wrk (installed like the benchmark does) and py-spy (the ``bench``
extra), and root or ptrace rights for py-spy. Writes the text to ``--output`` too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tests.bench import deliveries, load
from tests.bench.fleet import Proc, children, web_command
from tests.servers import RedisServer, clean_env, sqlite_url

RESULTS = Path(__file__).with_name("results")

# (label, frames) pairs: a sample counts for a label when one of its frames ("|"
# between them) is on its stack. Frames are py-spy's "function (file)" with the file's
# last path part. A delivery runs in the worker's loop (LoopDeliveries) or, in a
# thread, in the fast path (ReceiverApp.wsgi_app, take_delivery); other requests, and
# deliveries with ``fast_path`` off, in Flask's.
PARTS: tuple[tuple[str, str], ...] = (
    (
        "the whole WSGI app (Flask and ours)",
        "Flask.wsgi_app (app.py|ReceiverApp.wsgi_app (fastpath.py"
        "|LoopDeliveries.deliver (loop_delivery.py",
    ),
    (
        "  our webhook view",
        "receive (views.py|take_delivery (views.py|LoopDeliveries._take (loop_delivery.py",
    ),
    ("    read the body and headers", "read_delivery (request.py"),
    ("    verify the signature", "_verify (views.py"),
    ("    parse the JSON", "_parse (views.py"),
    (
        "    build the Celery message",
        "build_task_message (envelope.py|build_event_message (envelope.py",
    ),
    ("    the Redis claim (client side)", "_admit (views.py|PipelinedClaims.admit (claims.py"),
    ("    the delivery's log line", "Logger.info (__init__.py|info_line (logs.py"),
    ("  correlation id (before the view)", "_correlate (views.py|correlation_id_for (views.py"),
    ("  metrics (after the view)", "_count (metrics.py|count_answer (metrics.py"),
)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far; zeros once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def shares(raw: Path) -> tuple[int, list[tuple[str, float]]]:
    """Samples in py-spy's raw output, and the share of them inside each of PARTS."""
    total = 0
    inside: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = {_frame(f) for f in stack.split(";")}
        for label, alternatives in PARTS:
            if not frames.isdisjoint(alternatives.split("|")):
                inside[label] += n
    return total, [(label, inside[label] / total if total else 0.0) for label, _ in PARTS]


def _frame(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':', 1)[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="ingest:create_app()")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS / "profile.txt")
    args = parser.parse_args(argv)

    wrk = load.ensure_wrk()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not wrk or not Path(spy).exists():
        print("needs wrk and py-spy (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hookfleet-profile-"))
    redis_server = RedisServer(work / "redis").start()
    env = clean_env(
        HOOKFLEET_REDIS_URL=redis_server.url,
        HOOKFLEET_DATABASE_URL=sqlite_url(work),
        HOOKFLEET_VAR_DIR=str(work),
        **deliveries.SECRET_ENV,
    )
    requests = work / "requests"
    count = int(6500 * (args.seconds + 3))
    deliveries.write_requests(requests, deliveries.requests("standard", count, 0.0, start=0))
    web = Proc("web", web_command(args.app), env, work / "logs")
    try:
        web.start().wait_for_web()
        workers = children(web.proc.pid)  # type: ignore[union-attr]
        watched = {"gunicorn workers": workers, "redis": [redis_server.proc.pid]}  # type: ignore[union-attr]
        before = {k: [cpu_seconds(p) for p in pids] for k, pids in watched.items()}
        raw = work / "pyspy.txt"
        recorder = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(workers[0]),
                "--duration",
                str(int(args.seconds)),
                "--rate",
                "250",
                "--format",
                "raw",
                "--gil",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result = load.run_wrk(wrk, web.url, requests, args.seconds, args.connections, threads=2)
        after = {k: [cpu_seconds(p) for p in pids] for k, pids in watched.items()}
        recorder.wait(timeout=60)
    finally:
        web.stop()
        redis_server.stop()

    served = result["rate"] * result["seconds"]
    lines = [
        f"python -m tests.bench.profile --app '{args.app}' (wrk, {args.connections} "
        f"connections, {args.seconds:g} s): {result['rate']:.0f} req/s, "
        f"{result['errors']} errors",
        "",
        "CPU per request (µs), from /proc:",
    ]
    for kind in watched:
        user = sum(a[0] - b[0] for a, b in zip(after[kind], before[kind], strict=True))
        system = sum(a[1] - b[1] for a, b in zip(after[kind], before[kind], strict=True))
        lines.append(
            f"  {kind:18s} user {user / served * 1e6:6.0f}  system {system / served * 1e6:6.0f}"
        )
    total, parts = shares(raw)
    lines += ["", f"One gunicorn worker's Python time (py-spy --gil, {total} samples):"]
    lines += [f"  {share * 100:5.1f} %  {label}" for label, share in parts]
    lines.append(
        f"  {(1 - parts[0][1]) * 100:5.1f} %  gunicorn outside the app (HTTP parsing, threads)"
    )
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
