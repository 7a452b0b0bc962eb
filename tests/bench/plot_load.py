"""Run a real load against a local fleet, scrape its /metrics every second, plot it.

    pip install -e '.[plot,embedded]'
    python tests/bench/plot_load.py                       # writes deploy/load-run.png + .csv

Starts ``hookfleet up`` (private Redis, SQLite, gunicorn, one worker per queue, beat)
in a scratch directory, then sends three phases of Standard Webhooks deliveries: a
steady rate, a burst as fast as the sender can go (the queue grows: the workers cannot
keep up), then a trickle (the queue drains). Mixed in: repeats (duplicate), forged
Stripe signatures (invalid_signature) and broken JSON (bad_request). What the plot
shows is only what ``/metrics`` said while it happened.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# The plot the README shows lives with the deploy files it was measured on.
HERE = Path(__file__).resolve().parents[2] / "deploy"
QUEUES = ("hookfleet.high", "hookfleet.default", "hookfleet.low")
# (seconds, deliveries per second; 0 = as fast as the sender can)
PHASES = ((20, 60), (25, 0), (35, 20))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def one_delivery(port: int, n: int) -> int:
    rng = random.Random(n)
    roll = rng.random()
    if roll < 0.08 and n > 10:  # a provider retrying something we already took
        event_id = f"load_{rng.randrange(n)}"
        body = json.dumps({"type": "order.created", "data": {"n": event_id}}).encode()
        return post(port, "/webhooks/standard", body, {"webhook-id": event_id})
    if roll < 0.11:
        stamp = str(int(time.time()))
        return post(
            port,
            "/webhooks/stripe",
            b'{"id":"evt_forged","type":"x"}',
            {"Stripe-Signature": f"t={stamp},v1={'0' * 64}"},
        )
    if roll < 0.13:
        return post(port, "/webhooks/standard", b'{"broken', {"webhook-id": f"bad_{n}"})
    body = json.dumps({"type": "order.created", "data": {"n": n}}).encode()
    return post(port, "/webhooks/standard", body, {"webhook-id": f"load_{n}"})


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    row: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hookfleet_webhooks_received_total":
                key = f"received:{sample.labels['outcome']}"
                row[key] = row.get(key, 0.0) + sample.value
            elif sample.name in ("hookfleet_queue_depth", "hookfleet_queue_unacked"):
                kind = sample.name.rsplit("_", 1)[1]
                row[f"{kind}:{sample.labels['queue']}"] = sample.value
            elif sample.name == "hookfleet_task_duration_seconds_count":
                row["tasks"] = row.get("tasks", 0.0) + sample.value
    return row


def run_load(port: int, stop: threading.Event) -> None:
    counter = itertools.count()
    with ThreadPoolExecutor(max_workers=12) as pool:
        for seconds, rate in PHASES:
            until = time.monotonic() + seconds
            while time.monotonic() < until and not stop.is_set():
                tick = time.monotonic()
                size = rate or 48  # a burst: the next batch as soon as this one is answered
                batch = [pool.submit(one_delivery, port, next(counter)) for _ in range(size)]
                for future in batch:
                    future.result()
                if rate:
                    time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))


def plot(rows: list[dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [r["t"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    outcomes = sorted({k.split(":", 1)[1] for r in rows for k in r if k.startswith("received:")})
    for outcome in outcomes:
        key = f"received:{outcome}"
        rates = [0.0] + [
            max(0.0, (b.get(key, 0) - a.get(key, 0)) / (b["t"] - a["t"]))
            for a, b in itertools.pairwise(rows)
        ]
        if max(rates) > 0:
            top.plot(times, rates, label=outcome)
    processed = [0.0] + [
        max(0.0, (b.get("tasks", 0) - a.get("tasks", 0)) / (b["t"] - a["t"]))
        for a, b in itertools.pairwise(rows)
    ]
    top.plot(times, processed, label="tasks finished", linestyle="--", color="black")
    top.set_ylabel("per second")
    top.set_title("rate(hookfleet_webhooks_received_total) by outcome")
    top.legend(loc="upper right", fontsize="small")
    for queue in QUEUES:
        waiting = [r.get(f"depth:{queue}", 0) for r in rows]
        unacked = [r.get(f"unacked:{queue}", 0) for r in rows]
        if max(waiting) or max(unacked):
            line = bottom.plot(times, waiting, label=f"{queue} waiting")[0]
            bottom.plot(
                times, unacked, label=f"{queue} unacked", linestyle=":", color=line.get_color()
            )
    bottom.set_ylabel("messages")
    bottom.set_xlabel("seconds since the load started")
    bottom.set_title("hookfleet_queue_depth and hookfleet_queue_unacked")
    bottom.legend(loc="upper right", fontsize="small")
    edge = 0.0
    for seconds, rate in PHASES:
        top.axvline(edge, color="grey", linewidth=0.5)
        bottom.axvline(edge, color="grey", linewidth=0.5)
        top.text(
            edge + 0.5,
            top.get_ylim()[1] * 0.92,
            f"{rate}/s" if rate else "burst",
            fontsize="small",
            color="grey",
        )
        edge += seconds
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "load-run.png")
    parser.add_argument("--concurrency", type=int, default=2, help="Processes per worker.")
    args = parser.parse_args()
    port = free_port()
    var = Path(tempfile.mkdtemp(prefix="hookfleet-load-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKFLEET_", "PROMETHEUS_"))}
    env.update(
        HOOKFLEET_STANDARD_VERIFY="off",
        HOOKFLEET_STRIPE_SECRETS="whsec_load_run",
        HOOKFLEET_LOG_LEVEL="WARNING",
    )
    hookfleet = str(Path(sys.executable).parent / "hookfleet")
    log = open(var / "fleet.log", "wb")
    fleet = subprocess.Popen(
        [
            hookfleet,
            "up",
            "--port",
            str(port),
            "--var-dir",
            str(var),
            "--concurrency",
            str(args.concurrency),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                scrape(port)
                break
            except OSError:
                if fleet.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the fleet did not start; see {var}/fleet.log") from None
                time.sleep(0.5)
        rows: list[dict[str, float]] = []
        stop = threading.Event()
        load = threading.Thread(target=run_load, args=(port, stop), daemon=True)
        started = time.monotonic()
        load.start()
        total = sum(seconds for seconds, _ in PHASES) + 30  # and watch it drain
        while time.monotonic() - started < total:
            row = scrape(port)
            row["t"] = round(time.monotonic() - started, 2)
            rows.append(row)
            time.sleep(1.0)
        stop.set()
        load.join(timeout=30)
    finally:
        fleet.send_signal(signal.SIGINT)
        fleet.wait(timeout=60)
    keys = sorted({k for r in rows for k in r} - {"t"})
    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t", *keys])
        for r in rows:
            writer.writerow([r["t"], *(r.get(k, 0) for k in keys)])
    plot(rows, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')} ({len(rows)} scrapes)")


if __name__ == "__main__":
    main()
