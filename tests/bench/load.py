"""Load generators, each run as its own process so it never shares the server's GIL.

- ``wrk`` (preferred): C, event loop, a Lua script that cycles through pre-signed
  requests. Installed by :func:`ensure_wrk` when missing and we may (root + apt-get).
  At a *fixed rate* too (:func:`run_wrk_paced`): wrk 4 has no rate option and wrk2 is
  not packaged here, so ``wrk_paced.lua`` paces it from its ``delay()`` hook.
- This module as a script (``python -m tests.bench.load``): the fallback when wrk is
  missing, and the only generator with a fixed request *count* (used to fill queues).
  It is slower than wrk, so the report always says which generator measured a figure.

Both report the same fields: requests, seconds, rate, errors (non-2xx and socket
errors), p50/p90/p99/max latency in milliseconds, and how far they ran past the end of
the prepared requests: ``repeated`` (sends of a request already sent once: a unique
delivery sent again is a duplicate, answered 200, not queued) and ``wrapped`` (the
times the generator started over, a partial pass counted: 1 as soon as one repeats).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench.deliveries import Request, read_requests

WRK_LUA = Path(__file__).with_name("wrk.lua")
WRK_PACED_LUA = Path(__file__).with_name("wrk_paced.lua")
# A paced run that answered less than this share of the rate asked for fell short of it
# (see reached).
REACHED_SHARE = 0.95


def ensure_wrk() -> str | None:
    """The wrk binary, installing Debian's package when missing and we are root."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    for argv in (install, ["apt-get", "update", "-qq"], install):
        subprocess.run(argv, env=env, capture_output=True, check=False)
    return shutil.which("wrk")


def run_wrk(
    wrk: str,
    url: str,
    request_file: Path,
    seconds: float,
    connections: int,
    threads: int,
    rate: float | None = None,
) -> dict[str, Any]:
    """A closed-loop run of ``seconds`` at full speed; wrk's own latency histogram.

    ``rate``: paced to that many requests a second in all instead
    (tests/bench/wrk_paced.lua): the result then also has the pacing's lag (how late
    requests went out, waiting for a free connection), and :func:`run_wrk_paced` adds
    the share of ``rate`` reached."""
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_LUA if rate is None else WRK_PACED_LUA),
        url,
        "--",
        str(request_file),
        str(threads),
        *([] if rate is None else [str(rate)]),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    line = next((raw for raw in done.stdout.splitlines() if raw.startswith('{"requests"')), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line)
    secs = raw["duration_us"] / 1e6
    wrk_rate = round(raw["requests"] / secs, 1)
    together = _wrk_together_rate(done)
    return {
        "generator": "wrk",
        "connections": connections,
        "requests": raw["requests"],
        "seconds": round(secs, 3),
        # The rate while every thread was sending (wrk.lua together_rate): wrk's own
        # requests/s also counts the head start of the thread that read its requests
        # first (1.1-1.35 s of a 5 s run for 30,000 requests on a loaded machine, +11 %).
        "rate": round(together, 1) if together else wrk_rate,
        "wrk_rate": wrk_rate,
        "errors": sum(raw["errors"].values()),
        "error_detail": raw["errors"],
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "repeated": raw["repeated"],
        "wrapped": raw["wrapped"],
        "together_rate": together,
        **({} if rate is None else _wrk_pacing(done)),
    }


def _wrk_together_rate(done: subprocess.CompletedProcess[str]) -> float | None:
    """wrk.lua's rate while every thread sent: wrk's own requests/s also counts the
    head start of the thread that read its requests first."""
    for line in done.stdout.splitlines():
        if line.startswith('{"together_rate"'):
            return float(json.loads(line)["together_rate"])
    return None


def _wrk_pacing(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """wrk_paced.lua's second line: how late its requests went out."""
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"paced"')]
    if not lines:
        raise RuntimeError(f"wrk_paced.lua printed no pacing:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(lines[0])
    return {
        "generator": "wrk-paced",
        # The rate it sent over its schedule, not wrk's requests/s (see wrk_paced.lua).
        "rate": raw["rate"],
        "lag_p50_ms": raw["lag_p50_us"] / 1000,
        "lag_p99_ms": raw["lag_p99_us"] / 1000,
        "lag_max_ms": raw["lag_max_us"] / 1000,
    }


def run_wrk_paced(
    wrk: str,
    url: str,
    request_file: Path,
    seconds: float,
    rate: float,
    connections: int,
    threads: int,
) -> dict[str, Any]:
    """wrk at ``rate`` requests a second over ``connections`` (tests/bench/wrk_paced.lua),
    its latency from each send, with the rate it reached against ``rate``
    (:func:`reached`) and its lag."""
    result = run_wrk(wrk, url, request_file, seconds, connections, threads, rate=rate)
    return reached(result, rate)


def reached(result: dict[str, Any], target_rate: float) -> dict[str, Any]:
    """``result`` of a paced run with the rate it was asked for, the share of it that
    was answered, and ``short_of_target`` when that share is under
    :data:`REACHED_SHARE`: its latencies then describe a lighter load than the target
    (a paced generator that cannot keep up sends less, and a wrk connection waits for
    each answer, so a slow server lowers its rate rather than its latency)."""
    share = result["rate"] / target_rate if target_rate else 0.0
    return {
        **result,
        "target_rate": round(target_rate, 1),
        "reached_share": round(share, 3),
        "short_of_target": share < REACHED_SHARE,
    }


def run_python(
    url: str,
    request_file: Path,
    *,
    seconds: float = 0,
    rate: float = 0,
    count: int = 0,
    connections: int = 8,
    probe: bool = False,
) -> dict[str, Any]:
    """Run this module's generator in a separate process (see :func:`generate`;
    ``probe``: :func:`generate_paced`'s own loop stalls, at some CPU of its own)."""
    argv = [
        sys.executable,
        "-m",
        "tests.bench.load",
        url,
        str(request_file),
        f"--seconds={seconds}",
        f"--rate={rate}",
        f"--count={count}",
        f"--connections={connections}",
        *(["--probe"] if probe else []),
    ]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=root)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def generate(
    url: str, reqs: list[Request], seconds: float, rate: float, count: int, connections: int
) -> dict[str, Any]:
    """Send ``reqs`` in order over ``connections`` keep-alive connections.

    Stops after ``seconds`` (0: no limit) or ``count`` requests (0: the whole list,
    cycled while ``seconds`` lasts). ``rate`` > 0 paces sends to that many per second
    overall (request i is due at start + i / rate); latency is measured from the due
    time, so a server that falls behind is charged for the wait it causes.
    """
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    total = count or (len(reqs) if not seconds else 0)
    lock = threading.Lock()
    latencies: list[float] = []
    state = {"next": 0, "errors": 0, "statuses": {}, "repeated": 0}
    started = time.perf_counter()
    deadline = started + seconds if seconds else float("inf")

    def take() -> int | None:
        with lock:
            i = state["next"]
            if total and i >= total:
                return None
            state["next"] = i + 1
            return int(i)

    def worker() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        while True:
            i = take()
            if i is None:
                break
            due = started + i / rate if rate else time.perf_counter()
            now = time.perf_counter()
            if due > deadline or now > deadline:
                break
            if due > now:
                time.sleep(due - now)
            request = reqs[i % len(reqs)]
            sent = due if rate else time.perf_counter()
            try:
                connection.request("POST", request.path, request.body, request.headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=10)
                status = 0
            elapsed = time.perf_counter() - sent
            with lock:
                latencies.append(elapsed)
                statuses: dict[int, int] = state["statuses"]  # type: ignore[assignment]
                statuses[status] = statuses.get(status, 0) + 1
                if not 200 <= status < 300:
                    state["errors"] = int(state["errors"]) + 1
                if i >= len(reqs):
                    state["repeated"] = int(state["repeated"]) + 1
        connection.close()

    workers = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    secs = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "generator": "python-paced" if rate else "python",
        "connections": connections,
        "target_rate": rate or None,
        "requests": len(ordered),
        "seconds": round(secs, 3),
        "rate": round(len(ordered) / secs, 1) if secs else 0.0,
        "errors": state["errors"],
        "statuses": {str(k): v for k, v in sorted(state["statuses"].items())},  # type: ignore[attr-defined]
        "p50_ms": round(_percentile(ordered, 50) * 1000, 3),
        "p90_ms": round(_percentile(ordered, 90) * 1000, 3),
        "p99_ms": round(_percentile(ordered, 99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3) if ordered else 0.0,
        **_repeats(int(state["repeated"]), len(reqs)),
    }


def _repeats(repeated: int, prepared: int) -> dict[str, int]:
    """``repeated`` and ``wrapped`` (see the module's docstring) of a run that sent
    ``repeated`` requests again out of ``prepared`` ones: a partial pass counts."""
    return {"repeated": repeated, "wrapped": -(-repeated // max(1, prepared))}


def generate_paced(
    url: str,
    reqs: list[Request],
    seconds: float,
    rate: float,
    connections: int,
    probe: bool = False,
) -> dict[str, Any]:
    """:func:`generate` at a fixed ``rate``, from one asyncio event loop instead of one
    thread per connection: request i is due at start + i / rate and goes out on the next
    free connection; latency is measured from its due time (a server that falls behind
    is charged for the wait it causes). The threaded generator could not keep its own
    schedule above ~1,500/s on this machine: 16 threads taking turns at one interpreter
    lock sent late, and it charged the server for it (bare Flask paced at 2,800/s read
    p50 11 ms, p99 86 ms; at 1,400/s 1.7 / 31 ms).

    Besides the latency from the due time it reports its split: ``lag`` (sent minus
    due: the generator late, or all its connections busy) and ``after_send`` (send to
    answer read), and its own CPU per request; ``probe`` also times a 2 ms sleep over
    and over (``generator_stalls_over_2ms``: its loop held), which costs it CPU, so the
    benchmark leaves it off (tests/bench/tail.py turns it on)."""
    return asyncio.run(_paced(url, reqs, seconds, rate, connections, probe))


async def _paced(
    url: str, reqs: list[Request], seconds: float, rate: float, connections: int, probe: bool
) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    raw = [_raw_request(host, request) for request in reqs]
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    # The split of each latency: how late the generator sent (its own lag) and the
    # time from its send to the whole answer read (the server's, plus the generator's
    # delay in reading it).
    lags: list[float] = []
    after_send: list[float] = []
    statuses: dict[int, int] = {}
    next_i = repeated = 0
    cpu_started = time.process_time()
    started = loop.time()
    deadline = started + seconds

    async def connection() -> None:
        nonlocal next_i, repeated
        reader, writer = await asyncio.open_connection(host, int(port))
        while True:
            i, next_i = next_i, next_i + 1
            due = started + i / rate
            if due > deadline:
                break
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            sent = loop.time()
            try:
                writer.write(raw[i % len(raw)])
                status = await _response_status(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
                status = 0
            answered = loop.time()
            latencies.append(answered - due)
            lags.append(sent - due)
            after_send.append(answered - sent)
            statuses[status] = statuses.get(status, 0) + 1
            repeated += i >= len(raw)
        writer.close()

    stalls: list[float] = []

    async def watch() -> None:
        # The generator's own loop held (GC, its CPU share): a sleep that woke late.
        while loop.time() < deadline:
            due = loop.time() + _PROBE_S
            await asyncio.sleep(_PROBE_S)
            if loop.time() - due > _PROBE_S:
                stalls.append(loop.time() - due)

    watching = asyncio.ensure_future(watch()) if probe else None
    await asyncio.gather(*(connection() for _ in range(connections)))
    if watching is not None:
        watching.cancel()
    secs = loop.time() - started
    ordered = sorted(latencies)
    errors = sum(n for status, n in statuses.items() if not 200 <= status < 300)
    return {
        "generator": "python-paced-asyncio",
        "connections": connections,
        "target_rate": rate,
        "requests": len(ordered),
        "seconds": round(secs, 3),
        "rate": round(len(ordered) / secs, 1) if secs else 0.0,
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": round(_percentile(ordered, 50) * 1000, 3),
        "p90_ms": round(_percentile(ordered, 90) * 1000, 3),
        "p99_ms": round(_percentile(ordered, 99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3) if ordered else 0.0,
        **_repeats(repeated, len(raw)),
        "lag_p50_ms": round(_percentile(sorted(lags), 50) * 1000, 3),
        "lag_p99_ms": round(_percentile(sorted(lags), 99) * 1000, 3),
        "after_send_p50_ms": round(_percentile(sorted(after_send), 50) * 1000, 3),
        "after_send_p99_ms": round(_percentile(sorted(after_send), 99) * 1000, 3),
        "generator_cpu_us_per_request": round(
            (time.process_time() - cpu_started) / max(1, len(ordered)) * 1e6, 1
        ),
        **(
            {
                "generator_stalls_over_2ms": len(stalls),
                "generator_stall_max_ms": round(max(stalls, default=0.0) * 1000, 3),
            }
            if probe
            else {}
        ),
    }


_PROBE_S = 0.002


def _raw_request(host: str, request: Request) -> bytes:
    """``request`` as HTTP/1.1 bytes on a kept-alive connection (RFC 9112 section 3)."""
    headers = {"Host": host, **request.headers, "Content-Length": str(len(request.body))}
    head = f"POST {request.path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return (head + "\r\n").encode("latin-1") + request.body


async def _response_status(reader: asyncio.StreamReader) -> int:
    """Read one response (a ``Content-Length`` body, as the receiver answers) and
    return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("request_file", type=Path)
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args()
    reqs = read_requests(args.request_file)
    if args.rate and args.seconds and not args.count:
        result = generate_paced(
            args.url, reqs, args.seconds, args.rate, args.connections, args.probe
        )
    else:
        result = generate(args.url, reqs, args.seconds, args.rate, args.count, args.connections)
    print(json.dumps(result))


if __name__ == "__main__":
    main()


class SlowClients:
    """``count`` connections to ``127.0.0.1:port`` that never finish a request: a third
    send their headers a byte a second (a slowloris, a bad proxy), a third send a whole
    head and then trickle the body, a third connect and say nothing. One the server
    closes is opened again, so ``count`` stay open while the block runs."""

    HEAD = b"POST /webhooks/standard HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    KINDS = (HEAD + b"X-Slow: ", HEAD + b"Content-Length: 100000\r\n\r\n{", b"")

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.sockets: list[socket.socket | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def _open(self, n: int) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            sock.sendall(self.KINDS[n % 3])
            return sock
        except OSError:
            return None

    def _trickle(self) -> None:
        while not self._stop.wait(1.0):
            for n, sock in enumerate(self.sockets):
                if n % 3 == 2 and sock is not None:
                    continue  # silent
                try:
                    if sock is None:
                        raise OSError
                    sock.sendall(b"a" if n % 3 == 0 else b" ")
                except OSError:
                    if sock is not None:
                        sock.close()
                    self.sockets[n] = self._open(n)

    def __enter__(self) -> SlowClients:
        self.sockets = [self._open(n) for n in range(self.count)]
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets:
            if sock is not None:
                sock.close()
