"""``python -m tests.bench.run``: every performance case back to back, in one run.

Starts a private Redis and MariaDB (tests/servers.py) unless ``--redis-url`` and
``--database-url`` are given, runs the cases, prints a table, and writes
``tests/bench/results/latest.json`` and ``latest.png`` (the plot needs the ``bench``
extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, func, insert, select, text

from models.business import Branch, Company
from models.contract import QUEUES, Queue
from models.events import EventStatus, WebhookEvent
from models.migrate import upgrade
from models.settings import Settings
from tests.bench import deliveries, load
from tests.bench.fleet import SERVERS, Proc, rss_kb, web_command, worker_command
from tests.bench.report import machine, render_table, summarize, write_plot
from tests.otlp import otlp_sink
from tests.processes import request
from tests.servers import MariaDBServer, RedisServer, clean_env, wait_until

RESULTS = Path(__file__).with_name("results")

# name → (WSGI app, request kind, duplicate share, also measure p99 at half the max
# rate, server from tests.bench.fleet.SERVERS)
RECEIVER_CASES: dict[str, tuple[str, str, float, bool, str]] = {
    # The fixed reference columns: the usual deployment (stock gunicorn gthread 2 x 4)
    # with nothing in it, and with the usual recipe. They stay on that server whatever
    # Hookfleet ships, so the ratios of issue 18 are read off one run.
    "ref-flask-gthread": ("tests.bench.apps:ceiling_app()", "standard", 0.0, False, "gthread-2x4"),
    "ref-recipe-gthread": (
        "tests.bench.apps:usual_recipe_app()",
        "standard",
        0.0,
        False,
        "gthread-2x4",
    ),
    # The same two on Hookfleet's own server settings.
    "ceiling": ("tests.bench.apps:ceiling_app()", "standard", 0.0, False, "shipped"),
    "usual-recipe": ("tests.bench.apps:usual_recipe_app()", "standard", 0.0, False, "shipped"),
    "hookfleet-standard": ("ingest:create_app()", "standard", 0.0, True, "shipped"),
    # The receiver on the reference server: what Hookfleet's own settings and worker
    # (ingest/gunicorn_conf.py, ingest/gunicorn_worker.py) change.
    "hookfleet-gthread": ("ingest:create_app()", "standard", 0.0, False, "gthread-2x4"),
    # The A/B: the real receiver (claim, signatures, metrics, logging) and bare Flask
    # on granian.
    "hookfleet-granian": ("ingest:create_app()", "standard", 0.0, True, "granian"),
    "ceiling-granian": ("tests.bench.apps:ceiling_app()", "standard", 0.0, False, "granian"),
    # Diagnostic: the same receiver without its Redis claim (see tests/bench/apps.py).
    "no-claim-standard": (
        "tests.bench.apps:without_claim_app()",
        "standard",
        0.0,
        False,
        "shipped",
    ),
    # Diagnostic: the same receiver with deliveries served by Flask's route, not the
    # fast path (ingest/fastpath.py): what Flask's request machinery costs.
    "flask-route-standard": (
        "tests.bench.apps:flask_route_app()",
        "standard",
        0.0,
        False,
        "shipped",
    ),
    "hookfleet-standard-dup30": ("ingest:create_app()", "standard", 0.3, False, "shipped"),
    "hookfleet-stripe": ("ingest:create_app()", "stripe", 0.0, False, "shipped"),
    "hookfleet-stripe-dup30": ("ingest:create_app()", "stripe", 0.3, False, "shipped"),
    "hookfleet-calcom": ("ingest:create_app()", "calcom", 0.0, False, "shipped"),
    "hookfleet-calcom-dup30": ("ingest:create_app()", "calcom", 0.3, False, "shipped"),
    "hookfleet-retell": ("ingest:create_app()", "retell", 0.0, False, "shipped"),
    "hookfleet-retell-dup30": ("ingest:create_app()", "retell", 0.3, False, "shipped"),
    "inbound-warm": ("ingest:create_app()", "inbound-warm", 0.0, True, "shipped"),
    # hookfleet-standard with tracing on (issue 21), exporting every span over OTLP/HTTP
    # to a local receiver (tests/otlp.py): what tracing costs against the case above.
    "hookfleet-traced": ("ingest:create_app()", "standard", 0.0, False, "shipped"),
    # ...keeping one trace in ten (OTEL_TRACES_SAMPLER=parentbased_traceidratio, 0.1).
    "hookfleet-traced-10pct": ("ingest:create_app()", "standard", 0.0, False, "shipped"),
    "inbound-cold": ("ingest:create_app()", "inbound-cold", 0.0, True, "shipped"),
}
# What the receiver targets are judged on: run --rounds times, interleaved.
HEADLINE_CASES = (
    "ref-flask-gthread",
    "ref-recipe-gthread",
    "ceiling",
    "usual-recipe",
    "hookfleet-standard",
    "hookfleet-gthread",
    "hookfleet-granian",
    "ceiling-granian",
    "no-claim-standard",
    "flask-route-standard",
    "inbound-warm",
    "hookfleet-traced",
    "hookfleet-traced-10pct",
)
# N slow or idle connections (a third each: slow headers, slow body, silent) held open
# while legitimate deliveries and Retell inbound calls come at a moderate pace.
SLOW_CASES = {"slow-8": 8, "slow-64": 64, "slow-512": 512}
SLOW_PACE_PER_S = 200
# `--cases edge`: issue 18's table, under five minutes with --duration 5 --warmup 2.
PRESETS = {
    "edge": (
        "ref-flask-gthread",
        "ref-recipe-gthread",
        "ceiling",
        "hookfleet-standard",
        "hookfleet-gthread",
        "hookfleet-granian",
        "ceiling-granian",
        *SLOW_CASES,
    ),
    # `--cases tracing`: the receiver with tracing off and on, interleaved by --rounds.
    "tracing": ("hookfleet-standard", "hookfleet-traced", "hookfleet-traced-10pct"),
}
# Cases whose receiver exports traces to a local OTLP receiver, with their OTEL_* settings.
TRACED_CASES: dict[str, dict[str, str]] = {
    "hookfleet-traced": {},
    "hookfleet-traced-10pct": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
}
DRAIN_CASES = ("celery-noop", "hookfleet-worker", "naive-worker", "end-to-end")
MEMORY_CASES = ("memory",)
ALL_CASES = (*RECEIVER_CASES, *SLOW_CASES, *DRAIN_CASES, *MEMORY_CASES)


@dataclass
class Bench:
    work: Path
    redis_url: str
    mariadb: MariaDBServer | None
    database_url: str | None
    duration: float
    warmup: float
    connections: int
    wrk: str | None
    drain_events: int
    memory_events: int
    max_rate: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- plumbing --------------------------------------------------------------------
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=30)

    def new_database(self) -> str:
        """A freshly migrated database (a new one per case on the private MariaDB)."""
        if self.mariadb is not None:
            url = self.mariadb.create_database()
        else:
            assert self.database_url, "--database-url is required with --redis-url"
            url = self.database_url
        upgrade(Settings(database_url=url))
        return url

    def env(self, database_url: str, **extra: str) -> dict[str, str]:
        return clean_env(
            HOOKFLEET_REDIS_URL=self.redis_url,
            HOOKFLEET_DATABASE_URL=database_url,
            HOOKFLEET_VAR_DIR=str(self.work),
            **deliveries.SECRET_ENV,
            **extra,
        )

    def requests_file(self, name: str, kind: str, dups: float, count: int, start: int) -> Path:
        path = self.work / f"{name}.requests"
        deliveries.write_requests(path, deliveries.requests(kind, count, dups, start=start))
        return path

    def blast(self, url: str, requests: Path, seconds: float) -> dict[str, Any]:
        """Full speed for ``seconds``: wrk when we have it, else the Python generator."""
        if self.wrk:
            return load.run_wrk(self.wrk, url, requests, seconds, self.connections, threads=2)
        return load.run_python(url, requests, seconds=seconds, connections=self.connections)

    def paced(self, url: str, requests: Path, seconds: float, rate: float) -> dict[str, Any]:
        """``rate`` requests a second for ``seconds``: wrk paced when we have it (its own
        CPU is small beside the Python generator's, whose lag on two cores made the
        figure its own), else the Python generator. Either way the result carries the
        rate reached against ``rate`` and says when it fell short (load.reached)."""
        if self.wrk:
            return load.run_wrk_paced(
                self.wrk, url, requests, seconds, rate, self.connections, threads=2
            )
        result = load.run_python(
            url, requests, seconds=seconds, rate=rate, connections=self.connections
        )
        return load.reached(result, rate)

    # -- cases 1-4: receivers ----------------------------------------------------------
    def receiver_case(self, name: str, database_url: str) -> None:
        app, kind, dups, _paced, server = RECEIVER_CASES[name]
        client = self.redis()
        client.flushall()
        warm_n = int(self.max_rate * self.warmup) + 1
        measured_n = int(self.max_rate * self.duration) + 1
        warm_file = self.requests_file(f"{name}-warmup", kind, dups, warm_n, 0)
        measured_file = self.requests_file(name, kind, dups, measured_n, warm_n)
        sink = otlp_sink() if name in TRACED_CASES else nullcontext(None)
        with sink as traces:
            tracing = (
                {"OTEL_EXPORTER_OTLP_ENDPOINT": traces.url, **TRACED_CASES[name]} if traces else {}
            )
            web = Proc(
                name, SERVERS[server](app), self.env(database_url, **tracing), self.work / "logs"
            )
            result = self._receiver_round(web, client, warm_file, measured_file, name, kind, dups)
            result["server"] = server
            if traces is not None:
                result["spans_exported"] = len(traces.spans)
        self._keep_round(name, result)

    def _receiver_round(
        self,
        web: Proc,
        client: redis.Redis,
        warm_file: Path,
        measured_file: Path,
        name: str,
        kind: str,
        dups: float,
    ) -> dict[str, Any]:
        _, _, _, paced, _ = RECEIVER_CASES[name]
        warm_n = int(self.max_rate * self.warmup) + 1
        measured_n = int(self.max_rate * self.duration) + 1
        try:
            web.start().wait_for_web()
            if self.warmup:
                self.blast(web.url, warm_file, self.warmup)
            queued_before = _queued(client)
            result = self.blast(web.url, measured_file, self.duration)
            result["queued"] = _queued(client) - queued_before
            result["kind"], result["duplicates"] = kind, dups
            if paced:
                paced_file = self.requests_file(
                    f"{name}-paced", kind, dups, measured_n, warm_n + measured_n
                )
                result["half_rate"] = self.paced(
                    web.url, paced_file, self.duration, max(1.0, result["rate"] / 2)
                )
        finally:
            web.stop()
        return result

    def _keep_round(self, name: str, result: dict[str, Any]) -> None:
        rounds = [*self.results.get(name, {}).get("rounds", []), result]
        # Several rounds: the one with the median rate stands for the case, and the
        # rates of all of them are kept beside it.
        median = dict(_median(rounds, lambda r: r["rate"]))
        paced = [r for r in rounds if "half_rate" in r]
        if paced:
            # The tail at half rate is the noisiest figure: its own median round.
            median["half_rate"] = _median(paced, lambda r: r["half_rate"]["p99_ms"])["half_rate"]
        self.results[name] = {**median, "rounds": rounds}
        print(f"  {name}: {result['rate']:.0f}/s p99 {result['p99_ms']:.1f} ms", flush=True)

    def slow_case(self, name: str, database_url: str) -> None:
        """``SLOW_CASES[name]`` slow or idle connections held open (and re-opened when
        the server closes them) while deliveries and inbound calls come paced."""
        count = SLOW_CASES[name]
        self.redis().flushall()
        n = int(SLOW_PACE_PER_S * self.duration) + 1
        deliveries_file = self.requests_file(f"{name}-standard", "standard", 0.0, n, 0)
        inbound_file = self.requests_file(f"{name}-inbound", "inbound-warm", 0.0, n, n)
        web = Proc(
            name, web_command("ingest:create_app()"), self.env(database_url), self.work / "logs"
        )
        try:
            web.start().wait_for_web()
            with load.SlowClients(web.port, count):
                standard = load.run_python(
                    web.url, deliveries_file, seconds=self.duration, rate=SLOW_PACE_PER_S
                )
                inbound = load.run_python(
                    web.url, inbound_file, seconds=self.duration, rate=SLOW_PACE_PER_S
                )
                healthz = request(web.url, "GET", "/healthz")[0]
            booted = web.log().count("Booting worker")
        finally:
            web.stop()
        self.results[name] = {
            "slow_connections": count,
            "pace_per_s": SLOW_PACE_PER_S,
            "deliveries": standard,
            "inbound": inbound,
            "healthz_status": healthz,
            "worker_restarts": max(
                0, booted - int(self.env(database_url).get("WEB_CONCURRENCY", "2"))
            ),
        }
        print(
            f"  {name}: deliveries p99 {standard['p99_ms']:.1f} ms ({standard['errors']} errors), "
            f"inbound p99 {inbound['p99_ms']:.1f} ms, /healthz {healthz}",
            flush=True,
        )

    def seed_branches(self, database_url: str, cold: int) -> None:
        """One warm branch, and ``cold`` more each with a number of its own."""
        engine = create_engine(database_url)
        with engine.begin() as db:
            company_id = db.execute(insert(Company).values(name="Bench GmbH")).inserted_primary_key[
                0
            ]  # type: ignore[index]
            rows = [
                {
                    "company_id": company_id,
                    "name": "Mitte",
                    "phone": deliveries.WARM_NUMBER,
                    "retell_agent_id": "agent_bench",
                }
            ]
            rows += [
                {
                    "company_id": company_id,
                    "name": f"b{i}",
                    "phone": deliveries.cold_number(i),
                    "retell_agent_id": f"agent_{i}",
                }
                for i in range(cold)
            ]
            for start in range(0, len(rows), 5000):
                db.execute(insert(Branch), rows[start : start + 5000])
        engine.dispose()

    # -- cases 5-6: workers --------------------------------------------------------------
    def fill_queue(self, database_url: str, count: int, name: str) -> dict[str, Any]:
        """``count`` unique Standard Webhooks deliveries accepted through the receiver."""
        web = Proc(
            f"{name}-fill",
            web_command("ingest:create_app()"),
            self.env(database_url),
            self.work / "logs",
        )
        requests = self.requests_file(f"{name}-fill", "standard", 0.0, count, 0)
        try:
            web.start().wait_for_web()
            result = load.run_python(web.url, requests, count=count, connections=16)
        finally:
            web.stop()
        return result

    def drain(
        self,
        name: str,
        worker_app: str | None,
        database_url: str,
        count: int,
        done: Callable[[], bool],
    ) -> dict[str, Any]:
        """Start a worker on a full ``hookfleet.default``; events/s from its first take
        until ``done()``."""
        client = self.redis()
        worker = Proc(name, worker_command(worker_app), self.env(database_url), self.work / "logs")
        worker.start()
        try:
            wait_until(
                lambda: client.llen(Queue.DEFAULT) < count,
                120,
                f"{name} to start taking",
                interval=0.005,
            )
            started = time.perf_counter()
            wait_until(done, 1800, f"{name} to finish {count} events", interval=0.02)
            seconds = time.perf_counter() - started
        finally:
            worker.stop()
        result = {"events": count, "seconds": round(seconds, 3), "rate": round(count / seconds, 1)}
        print(f"  {name}: {result['rate']:.0f} events/s", flush=True)
        return result

    def drain_cases(self, selected: list[str]) -> None:
        n = self.drain_events
        client = self.redis()
        client.flushall()
        fill = self.fill_queue(self.new_database(), n, "drain")
        assert client.llen(Queue.DEFAULT) == n, client.llen(Queue.DEFAULT)
        client.copy(Queue.DEFAULT, "bench:saved")

        def restore() -> None:
            client.delete(Queue.DEFAULT, "unacked", "unacked_index")
            client.copy("bench:saved", Queue.DEFAULT)

        def rows_done(url: str) -> Callable[[], bool]:
            engine = create_engine(url)
            query = (
                select(func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.status == EventStatus.PROCESSED)
            )

            def check() -> bool:
                with engine.connect() as db:
                    return int(db.execute(query).scalar_one()) >= n

            return check

        def drained() -> bool:
            return client.llen(Queue.DEFAULT) == 0 and client.hlen("unacked") == 0

        if "celery-noop" in selected:
            restore()
            self.results["celery-noop"] = self.drain(
                "celery-noop", "tests.bench.comparison_workers:noop_app", "sqlite://", n, drained
            )
        if "hookfleet-worker" in selected:
            restore()
            url = self.new_database()
            result = self.drain("hookfleet-worker", None, url, n, rows_done(url))
            result["fill"] = fill
            self.results["hookfleet-worker"] = result
        if "naive-worker" in selected:
            restore()
            url = self.new_database()
            self.results["naive-worker"] = self.drain(
                "naive-worker", "tests.bench.comparison_workers:naive_app", url, n, rows_done(url)
            )
        if "end-to-end" in selected:
            self.results["end-to-end"] = self.end_to_end()

    def end_to_end(self) -> dict[str, Any]:
        """Receiver and worker together: load for ``duration``, then until every
        accepted event is a committed row."""
        client = self.redis()
        client.flushall()
        url = self.new_database()
        env = self.env(url)
        requests = self.requests_file(
            "e2e", "standard", 0.0, int(self.max_rate * self.duration) + 1, 0
        )
        web = Proc("e2e-web", web_command("ingest:create_app()"), env, self.work / "logs")
        worker = Proc("e2e-worker", worker_command(), env, self.work / "logs")
        engine = create_engine(url)
        try:
            web.start()
            worker.start()
            web.wait_for_web()
            worker.wait_for_worker()
            started = time.perf_counter()
            result = self.blast(web.url, requests, self.duration)
            accepted = result["requests"] - result["errors"]
            backlog = _queued(client)

            def committed() -> int:
                with engine.connect() as db:
                    return int(
                        db.execute(
                            select(func.count())
                            .select_from(WebhookEvent)
                            .where(WebhookEvent.status == EventStatus.PROCESSED)
                        ).scalar_one()
                    )

            wait_until(lambda: committed() >= accepted, 1800, "end-to-end drain", interval=0.05)
            seconds = time.perf_counter() - started
        finally:
            web.stop()
            worker.stop()
            engine.dispose()
        result.update(
            events=accepted,
            backlog_after_load=backlog,
            total_seconds=round(seconds, 3),
            committed_rate=round(accepted / seconds, 1),
        )
        print(
            f"  end-to-end: accepted {result['rate']:.0f}/s, committed "
            f"{result['committed_rate']:.0f}/s",
            flush=True,
        )
        return result

    # -- case 7: memory --------------------------------------------------------------
    def memory(self) -> None:
        n = self.memory_events
        client = self.redis()
        client.flushall()
        url = self.new_database()
        # No shedding: all n events must stay queued for the worker half of the case.
        env = self.env(url, HOOKFLEET_SHED_QUEUE_DEPTH="0")
        warm = self.requests_file("memory-warm", "standard", 0.0, 2000, 0)
        requests = self.requests_file("memory", "standard", 0.0, n, 2000)
        web = Proc("memory-web", web_command("ingest:create_app()"), env, self.work / "logs")
        result: dict[str, Any] = {"events": n}
        try:
            web.start().wait_for_web()
            load.run_python(web.url, warm, count=2000, connections=8)
            result["receiver_rss_before_kb"] = [rss_kb(p) for p in web.pids()]
            sent = self._send_exactly(web.url, requests, n)
            result["receiver_sent"] = sent
            result["receiver_rss_after_kb"] = [rss_kb(p) for p in web.pids()]
        finally:
            web.stop()
        queued = int(client.llen(Queue.DEFAULT))
        worker = Proc("memory-worker", worker_command(), env, self.work / "logs")
        engine = create_engine(url)
        try:
            worker.start().wait_for_worker()
            wait_until(
                lambda: client.llen(Queue.DEFAULT) <= queued - 2000,
                600,
                "the first 2000 events",
                interval=0.05,
            )
            result["worker_rss_before_kb"] = [rss_kb(p) for p in worker.pids()]
            wait_until(
                lambda: client.llen(Queue.DEFAULT) == 0 and client.hlen("unacked") == 0,
                3600,
                "the memory drain",
                interval=0.2,
            )
            result["worker_rss_after_kb"] = [rss_kb(p) for p in worker.pids()]
            with engine.connect() as db:
                result["worker_rows"] = int(
                    db.execute(text("SELECT COUNT(*) FROM webhook_events")).scalar_one()
                )
        finally:
            worker.stop()
            engine.dispose()
        result["replay"] = "measured apart: python -m tests.bench.replay_memory"
        self.results["memory"] = result
        print(
            f"  memory: receiver {result['receiver_rss_before_kb']} -> "
            f"{result['receiver_rss_after_kb']} KiB, worker {result['worker_rss_before_kb']}"
            f" -> {result['worker_rss_after_kb']} KiB",
            flush=True,
        )

    def _send_exactly(self, url: str, requests: Path, n: int) -> int:
        """All of ``requests`` once: wrk cannot stop at a count, so the Python
        generator sends them (slower, but memory does not care)."""
        result = load.run_python(url, requests, count=n, connections=self.connections)
        return int(result["requests"])


def _median(rounds: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> dict[str, Any]:
    """The middle round by ``key`` (of an even number, the lower middle)."""
    return sorted(rounds, key=key)[(len(rounds) - 1) // 2]


def _queued(client: redis.Redis) -> int:
    return sum(int(client.llen(q)) for q in (*QUEUES, "bench.usual"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per case")
    parser.add_argument(
        "--cases",
        default="all",
        help=f"comma-separated, from: {', '.join((*PRESETS, *ALL_CASES))} (edge: issue 18's)",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the headline receiver cases; the median round is reported",
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk (installed when missing, as root), else Python",
    )
    parser.add_argument("--drain-events", type=int, default=20_000)
    parser.add_argument("--memory-events", type=int, default=100_000)
    parser.add_argument(
        "--max-rate",
        type=int,
        default=6000,
        help="requests/s to prepare signed bodies for (unique per request)",
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--database-url", help="a MariaDB/MySQL URL (migrated here)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    if args.cases == "all":
        args.cases = list(ALL_CASES)
    else:
        args.cases = [c for name in args.cases.split(",") for c in PRESETS.get(name, (name,))]
    unknown = set(args.cases) - set(ALL_CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = None
    if args.generator != "python":
        wrk = load.ensure_wrk()
        if wrk is None and args.generator == "wrk":
            print("wrk is not installed and could not be installed", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="hookfleet-bench-"))
    redis_server = mariadb = None
    try:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            redis_server = RedisServer(work / "redis").start()
            redis_url = redis_server.url
        if not args.database_url:
            mariadb = MariaDBServer(work / "mariadb").start()
            # The test server relaxes commit durability for speed; production MariaDB
            # flushes the log at every commit, and that cost is what batching saves.
            mariadb.sql("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
        bench = Bench(
            work=work,
            redis_url=redis_url,
            mariadb=mariadb,
            database_url=args.database_url,
            duration=args.duration,
            warmup=args.warmup,
            connections=args.connections,
            wrk=wrk,
            drain_events=args.drain_events,
            memory_events=args.memory_events,
            max_rate=args.max_rate,
        )
        print(f"generator: {wrk or 'python'}; work dir {work}", flush=True)
        receiver_db = None
        # The headline comparison runs in interleaved rounds, so that a hiccup of this
        # shared machine during one case cannot decide a ratio on its own.
        headline = [c for c in HEADLINE_CASES if c in args.cases]
        receivers = headline * (args.rounds - 1) + [c for c in args.cases if c in RECEIVER_CASES]
        for name in receivers:
            if name in RECEIVER_CASES:
                if receiver_db is None:
                    receiver_db = bench.new_database()
                    cold = "inbound-cold" in args.cases
                    bench.seed_branches(
                        receiver_db,
                        cold=int(args.max_rate * (args.warmup + 2 * args.duration)) + 3
                        if cold
                        else 0,
                    )
                bench.receiver_case(name, receiver_db)
        for name in [c for c in args.cases if c in SLOW_CASES]:
            if receiver_db is None:
                receiver_db = bench.new_database()
                bench.seed_branches(receiver_db, cold=0)
            bench.slow_case(name, receiver_db)
        drains = [c for c in args.cases if c in DRAIN_CASES]
        if drains:
            bench.drain_cases(drains)
        if "memory" in args.cases:
            bench.memory()
        report = {
            "command": "python -m tests.bench.run " + " ".join(argv or sys.argv[1:]),
            "machine": machine(redis_url, bench),
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "rounds": args.rounds,
                "generator": "wrk" if wrk else "python",
                "half_rate_generator": "wrk-paced" if wrk else "python-paced-asyncio",
                "servers": {
                    "shipped": "the Procfile's web: gunicorn, ingest/gunicorn_conf.py (2 x 4)",
                    "gthread-2x4": "stock gunicorn --worker-class gthread --workers 2 --threads 4",
                    "granian": "granian WSGI, 2 workers, 2 blocking threads each",
                },
                "celery": "Procfile worker_default: prefork, concurrency 2, batches of 50",
            },
            "cases": bench.results,
            "summary": summarize(bench.results),
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(render_table(report))
        plot = write_plot(report, args.output.with_suffix(".png"))
        print(
            f"wrote {args.output}"
            + (
                f" and {plot}"
                if plot
                else " (no plot: matplotlib is missing; pip install -e '.[bench]')"
            )
        )
        return 0
    finally:
        if mariadb is not None:
            mariadb.stop()
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
