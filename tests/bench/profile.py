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

**CPU per request, A/B.** ``--no-spy --rounds N`` reads only the CPU (py-spy stops the
worker it samples ~250 times a second, which costs CPU of its own), each round on a
fresh receiver and Redis; ``--against DIR`` alternates the rounds with the same receiver
run from another checkout (``git worktree add /tmp/base main``: that commit's code,
this tree's bench). CPU-seconds per request are what a shared machine distorts least,
but at full speed they follow the rate the machine allows (a worker serving more
requests per pass of its loop spends less on each: 230-300 µs at 4,600 req/s, 300-350
at 1,700 in one run); ``--rate R`` paces the load instead (the benchmark's generator,
tests.bench.load), so every round does the same work at the same rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from tests.bench import deliveries, load
from tests.bench.fleet import Proc, children, receiver_env, web_command
from tests.processes import ROOT

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


def measure(
    app: str,
    tree: Path,
    work: Path,
    seconds: float,
    connections: int,
    spy: str | None,
    rate: float = 0,
) -> tuple[dict[str, Any], dict[str, tuple[float, float]], Path | None]:
    """One fresh receiver serving ``app`` from the checkout ``tree`` (a private Redis),
    wrk at full speed for ``seconds`` (or, with ``rate``, the benchmark's paced
    generator at that many requests a second): the load's result, the CPU (user,
    system) µs per request served by kind of process, and py-spy's raw samples of one
    worker (when ``spy``, its path, is given)."""
    wrk = load.ensure_wrk()
    assert wrk, "needs wrk"
    redis_server, env = receiver_env(work)
    requests = work / "requests"
    count = int(6500 * (seconds + 3))
    deliveries.write_requests(requests, deliveries.requests("standard", count, 0.0))
    web = Proc("web", web_command(app), env, work / "logs", tree=tree)
    raw = work / "pyspy.txt" if spy else None
    try:
        web.start().wait_for_web()
        workers = children(web.proc.pid)  # type: ignore[union-attr]
        watched = {"gunicorn workers": workers, "redis": [redis_server.proc.pid]}  # type: ignore[union-attr]
        before = {k: [cpu_seconds(p) for p in pids] for k, pids in watched.items()}
        recorder = None
        if spy and raw:
            recorder = subprocess.Popen(
                [
                    *(spy, "record", "--pid", str(workers[0]), "--duration", str(int(seconds))),
                    *("--rate", "250", "--format", "raw", "--gil", "--output", str(raw)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        if rate:
            result = load.run_python(
                web.url, requests, seconds=seconds, rate=rate, connections=connections
            )
        else:
            result = load.run_wrk(wrk, web.url, requests, seconds, connections, threads=2)
        after = {k: [cpu_seconds(p) for p in pids] for k, pids in watched.items()}
        if recorder is not None:
            recorder.wait(timeout=60)
    finally:
        web.stop()
        redis_server.stop()
    served = result["requests"]
    cpu = {}
    for kind in watched:
        user = sum(a[0] - b[0] for a, b in zip(after[kind], before[kind], strict=True))
        system = sum(a[1] - b[1] for a, b in zip(after[kind], before[kind], strict=True))
        cpu[kind] = (user / served * 1e6, system / served * 1e6)
    return result, cpu, raw


def cpu_lines(result: dict[str, Any], cpu: dict[str, tuple[float, float]]) -> list[str]:
    """The CPU per request by kind of process, as text."""
    lines = [f"  {result['rate']:.0f} req/s, {result['errors']} errors; CPU per request (µs):"]
    for kind, (user, system) in cpu.items():
        lines.append(
            f"    {kind:18s} user {user:6.0f}  system {system:6.0f}  total {user + system:6.0f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="ingest:create_app()")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--rate", type=float, default=0, help="paced at this many requests/s (default: wrk)"
    )
    parser.add_argument("--no-spy", action="store_true", help="the CPU only (no py-spy)")
    parser.add_argument(
        "--against", type=Path, help="alternate rounds with the receiver of this checkout"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "profile.txt")
    args = parser.parse_args(argv)

    spy = None
    if not args.no_spy:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            print("needs py-spy (pip install -e '.[bench]'), or --no-spy", file=sys.stderr)
            return 2
    if not load.ensure_wrk():
        print("needs wrk", file=sys.stderr)
        return 2
    trees = [ROOT] + ([args.against.resolve()] if args.against else [])
    lines = [
        f"python -m tests.bench.profile --app '{args.app}' (wrk, {args.connections} "
        f"connections, {args.seconds:g} s, {args.rounds} round(s))",
    ]
    totals: dict[Path, list[float]] = {tree: [] for tree in trees}
    raw = None
    for n in range(args.rounds):
        for tree in trees:
            work = Path(tempfile.mkdtemp(prefix="hookfleet-profile-"))
            result, cpu, raw = measure(
                args.app, tree, work, args.seconds, args.connections, spy, args.rate
            )
            totals[tree].append(sum(cpu["gunicorn workers"]))
            load_average = " ".join(f"{x:.1f}" for x in os.getloadavg())
            round_lines = [f"round {n + 1}, {tree} (load average {load_average}):"]
            round_lines += cpu_lines(result, cpu)
            print("\n".join(round_lines), flush=True)
            lines += round_lines
    if len(trees) > 1 or args.rounds > 1:
        lines.append("gunicorn workers' CPU per request (µs), by round, and the median:")
        for tree, values in totals.items():
            rounds = " / ".join(f"{v:.0f}" for v in values)
            lines.append(f"  {tree}: {rounds}; median {statistics.median(values):.0f}")
    if raw is not None:
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
