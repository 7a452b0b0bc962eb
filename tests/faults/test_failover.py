"""Redis failovers, restarts and silently dropped connections cost seconds, not an outage.

The fault rows (marker ``faults``) run the Procfile's real processes against real
``redis-server`` pairs, a real ``redis-server --sentinel``, and a TCP proxy written here
that can stop forwarding without closing anything (what a NAT or load balancer that
forgets a flow does) or send new connections elsewhere (a DNS name or proxy that moves
to the new primary). Each row is added to the fault suite's table with lost = 0,
duplicated = 0 and the recovery time measured. The other tests check the parts alone:
which replies count as a failover, the Sentinel URL, the translation for kombu.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from redis._parsers.base import BaseParser
from sqlalchemy import select, text

from ingest import create_app
from ingest.providers import retell
from models.broker.redis_links import (
    FailoverReply,
    failover_code,
    parse_sentinel_url,
    redis_client,
)
from models.contract import Queue
from models.events import WebhookEvent
from models.metrics import forget_dead_processes
from models.settings import Settings
from tests.e2e.test_metrics_e2e import per_process, scrape, value
from tests.faults.test_faults import (
    FAULT_FLEET,
    Ledger,
    Stack,
    assert_exactly_once,
    call_body,
    call_row_locked,
    deliver,
    ids,
    settle_and_count,
    stack_on,
    stream,
    this_row,
)
from tests.faults.test_leases import held_call_ids, recovered_after
from tests.helpers import OPS
from tests.processes import request
from tests.servers import MariaDBServer, RedisServer, _binary, free_port, wait_until
from workers.broker.leases import HELD_PREFIX
from workers.celery_app import kombu_broker

SECRET = "key_faults"  # tests.faults.test_faults signs with it


# --- A TCP proxy that can go silent or move -------------------------------------------------


@dataclass
class _Flow:
    client: socket.socket
    upstream: socket.socket
    silenced: bool = False


@dataclass
class SilentProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` (a port on 127.0.0.1).

    :meth:`go_silent`: the flows open now stop forwarding in both directions and are
    never closed (no FIN, no RST: the bytes just vanish), while new connections are
    forwarded as before — a NAT or load balancer that forgot its idle flows.
    :meth:`retarget`: new connections go to another port, open flows stay where they
    are — a DNS name or proxy moved to the new primary."""

    target: int
    port: int = 0
    flows: list[_Flow] = field(default_factory=list)
    dark: bool = False
    _listener: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SilentProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def go_silent(self) -> None:
        with self._lock:
            for flow in self.flows:
                flow.silenced = True

    def go_dark(self) -> None:
        """Nothing gets through any more, open flows or new ones (a network gone):
        connections are still accepted, then nothing is forwarded."""
        self.dark = True
        self.go_silent()

    def light(self) -> None:
        """New connections are forwarded again (the flows silenced stay silent)."""
        self.dark = False

    def retarget(self, port: int) -> None:
        self.target = port

    def stop(self) -> None:
        assert self._listener is not None
        self._listener.close()
        with self._lock:
            for flow in self.flows:
                flow.client.close()
                flow.upstream.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            flow = _Flow(client, upstream, silenced=self.dark)
            with self._lock:
                self.flows.append(flow)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(flow, source, sink), daemon=True).start()

    @staticmethod
    def _pump(flow: _Flow, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if flow.silenced:
                if not data:
                    return  # a silenced flow passes nothing on, not even a close
                continue
            if not data:
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --- Which replies are a failover ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("READONLY You can't write against a read only replica.", "READONLY"),
        (
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "MASTERDOWN",
        ),
        ("LOADING Redis is loading the dataset in memory", "LOADING"),
        (
            "UNBLOCKED force unblock from blocking operation, instance state changed "
            "(master -> replica?)",
            "UNBLOCKED",
        ),
    ],
)
def test_replies_of_a_demoted_or_loading_node_are_a_failover(reply: str, code: str) -> None:
    # Parsed by redis-py's own parser, as the error reply arrives on the wire.
    assert failover_code(BaseParser.parse_error(reply)) == code


@pytest.mark.parametrize(
    "reply",
    [
        "OOM command not allowed when used memory > 'maxmemory'.",
        "NOREPLICAS Not enough good replicas to write.",
        "NOSCRIPT No matching script. Please use EVAL.",
        "ERR wrong number of arguments for 'get' command",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    ],
)
def test_replies_from_the_right_node_are_not_a_failover(reply: str) -> None:
    # Dialling again would reach the same primary and get the same answer.
    assert failover_code(BaseParser.parse_error(reply)) is None


def test_connection_trouble_is_not_a_failover_reply() -> None:
    assert failover_code(redis.ConnectionError("Connection refused")) is None
    assert failover_code(redis.TimeoutError("Timeout reading")) is None


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    address = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2/hookfleet/2")

    assert address.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (address.service, address.db, address.password) == ("hookfleet", 2, "s3cret")
    assert parse_sentinel_url("sentinel://h:5000/svc?db=3").db == 3
    with pytest.raises(ValueError):
        parse_sentinel_url("redis+sentinel://h:26379/")


def test_a_sentinel_broker_url_becomes_kombus_sentinel_transport() -> None:
    url, transport, options = kombu_broker("redis+sentinel://:pw@a:26379,b:26380/hookfleet/1")

    assert url == "sentinel://:pw@a:26379/1;sentinel://:pw@b:26380/1"
    assert transport == "workers.broker.links:SentinelTransport"
    assert options["master_name"] == "hookfleet"
    assert kombu_broker("redis://r:6379/0") == (
        "redis://r:6379/0",
        "workers.broker.links:Transport",
        {},
    )


def test_one_sentinel_service_is_one_server_for_dedup_and_broker() -> None:
    same = Settings.from_env({"HOOKFLEET_REDIS_URL": "redis+sentinel://a:26379/hf/0"})
    apart = Settings.from_env(
        {
            "HOOKFLEET_REDIS_URL": "redis+sentinel://a:26379/hf/0",
            "HOOKFLEET_BROKER_URL": "redis+sentinel://a:26379/other/0",
        }
    )
    assert same.dedup_on_broker and not apart.dedup_on_broker


@contextmanager
def proxied(port: int) -> Iterator[SilentProxy]:
    """A ``SilentProxy`` in front of ``port`` for the block, stopped after it."""
    proxy = SilentProxy(port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@contextmanager
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis with AOF on, as shipped, for the block."""
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def primary_and_replica(
    tmp_path: Path, appendonly: bool = True
) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica (AOF on unless ``appendonly`` is false) for the block."""
    primary = RedisServer(tmp_path / "a", appendonly=appendonly).start()
    try:
        replica = RedisServer(tmp_path / "b", appendonly=appendonly, replica_of=primary).start()
        try:
            yield primary, replica
        finally:
            replica.stop()
    finally:
        primary.stop()


# --- The receiver alone, in process ------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    with primary_and_replica(tmp_path, appendonly=False) as servers:
        yield servers


def role_of(server: RedisServer) -> str | None:
    """The server's replication role, or None while it cannot answer: a primary being
    demoted closes its clients' connections (a reset is "not yet", not a failure)."""
    try:
        return str(server.client().info("replication")["role"])
    except redis.ConnectionError:
        return None


def demote_in_place(old: RedisServer, new: RedisServer) -> None:
    """Redis's own coordinated ``FAILOVER``: the primary pauses writes until its replica
    has everything, then the two swap roles; the old one stays up, a replica now."""
    old.client().execute_command("FAILOVER", "TO", "127.0.0.1", new.port)
    wait_until(lambda: role_of(new) == "master", 10, "promotion")
    wait_until(lambda: role_of(old) == "slave", 10, "demotion")


class _Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def hookfleet_log() -> Iterator[list[logging.LogRecord]]:
    """The records Hookfleet's loggers emit meanwhile (they do not propagate to root)."""
    handler = _Collected()
    logger = logging.getLogger("hookfleet")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def post(client: Any, webhook_id: str) -> Any:
    body = json.dumps({"type": "x", "id": webhook_id})
    return client.post(
        "/webhooks/standard",
        data=body,
        content_type="application/json",
        headers={"webhook-id": webhook_id},
    )


def test_a_receiver_thread_on_a_demoted_primary_dials_the_new_one_within_the_request(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    with proxied(primary.port) as proxy:
        client = create_app(
            {"HOOKFLEET_REDIS_URL": proxy.url, "HOOKFLEET_STANDARD_VERIFY": "off"}
        ).test_client()
        assert post(client, "before").status_code == 202  # the thread's connection: A
        demote_in_place(primary, replica)
        proxy.retarget(replica.port)  # new connections reach the new primary

        with hookfleet_log() as records:
            after = post(client, "after")

    assert after.status_code == 202
    assert replica.client().llen(Queue.DEFAULT) == 2
    levels = [(r.levelname, getattr(r, "code", None)) for r in records]
    assert ("WARNING", "READONLY") in levels  # one line for the dropped connection
    assert not [r for r in records if r.levelno >= logging.ERROR]


def test_a_node_that_stays_demoted_is_answered_503_for_that_request_only(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    client = create_app(
        {
            "HOOKFLEET_REDIS_URL": primary.url,  # an address that does not move
            "HOOKFLEET_STANDARD_VERIFY": "off",
            "HOOKFLEET_RETRY_AFTER_S": "3",
        }
    ).test_client()
    demote_in_place(primary, replica)

    refused = post(client, "during")
    demote_in_place(replica, primary)  # the address is a primary again
    back = post(client, "during")

    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "3")
    assert refused.get_json()["error"]["code"] == "queue_unavailable"
    assert back.status_code == 202


def test_pooled_clients_drop_a_connection_that_answers_readonly(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    with proxied(primary.port) as proxy:
        client = redis_client(proxy.url, timeout_s=2)
        client.set("k", "1")
        demote_in_place(primary, replica)
        proxy.retarget(replica.port)
        # redis-py's retry dials again after the failover reply: the write lands.
        client.set("k", "2")
        assert replica.client().get("k") == b"2"
        with pytest.raises(FailoverReply):
            redis_client(primary.url, timeout_s=2).set("k", "3")


def test_an_idle_receiver_connection_dropped_silently_is_replaced_without_a_503(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("models.broker.redis_links.HEALTH_CHECK_S", 1)
    with proxied(redis_server.port) as proxy:
        client = create_app(
            {
                "HOOKFLEET_REDIS_URL": proxy.url,
                "HOOKFLEET_STANDARD_VERIFY": "off",
                "HOOKFLEET_REDIS_TIMEOUT_S": "2",
            }
        ).test_client()
        assert post(client, "idle-1").status_code == 202
        proxy.go_silent()
        time.sleep(1.2)  # idle past the health-check interval

        started = time.monotonic()
        response = post(client, "idle-2")
        elapsed = time.monotonic() - started

    assert response.status_code == 202
    assert elapsed < 2  # one short ping, not the 2 s socket timeout


def test_live_gauges_of_a_killed_process_leave_the_sums(tmp_path: Path) -> None:
    script = (
        "import os, time\n"
        "from prometheus_client import Gauge\n"
        "Gauge('g', 'g', multiprocess_mode='livesum').set(7)\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    child = subprocess.Popen([_python(), "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pid = int(child.stdout.readline())
    assert forget_dead_processes(str(tmp_path)) == []  # alive: kept
    child.send_signal(signal.SIGKILL)
    child.wait()

    assert forget_dead_processes(str(tmp_path)) == [pid]
    assert not list(tmp_path.glob(f"gauge_livesum_{pid}.db"))


def _python() -> str:
    import sys

    return sys.executable


# --- Fault rows: real processes ---------------------------------------------------------------


def log_problems(stack: Stack) -> list[str]:
    """ERROR (or worse) lines and tracebacks in the receiver's and workers' logs (from
    where the row began, on a module's shared fleet)."""
    found = []
    for path in sorted(stack.logs.glob("*.log")):
        for line in stack.log_since(path.stem).splitlines():
            if "Traceback" in line or re.search(r'"level": "(ERROR|CRITICAL)"', line):
                found.append(f"{path.name}: {line[:300]}")
    return found


def time_to_apply(stack: Stack, call_ids: set[str]) -> float:
    """The longest wait, receiver to processed, of these deliveries (seconds)."""
    event_ids = [f"{c}:call_ended" for c in call_ids]
    with stack.engine.connect() as connection:
        rows = connection.execute(
            select(WebhookEvent.received_at, WebhookEvent.processed_at).where(
                WebhookEvent.event_id.in_(event_ids)
            )
        ).all()
    return max((done - got).total_seconds() for got, done in rows if done is not None)


class TimedLedger(Ledger):
    """A ledger that also remembers when each answer came."""

    def __init__(self, scenario: str) -> None:
        super().__init__(scenario)
        self.timeline: list[tuple[float, int]] = []

    def saw(self, call_id: str, status: int) -> None:
        super().saw(call_id, status)
        with self.lock:
            self.timeline.append((time.monotonic(), status))


def outage_window(ledger: TimedLedger, started: float) -> float:
    """Seconds from ``started`` to the last non-2xx answer (0 when there was none)."""
    with ledger.lock:
        refused = [at for at, status in ledger.timeline if status >= 300 and at >= started]
    return round(max(refused) - started, 2) if refused else 0.0


#: What kombu logs when it drops a silent pub/sub connection (broadcast, control).
PUBSUB_DROPPED = "pub/sub connection missed"


def seconds_to_log(log: str, text: str, since: datetime) -> float:
    """Seconds from ``since`` (local time, as the log's ``ts``) to the first log line
    containing ``text`` at or after it."""
    for line in log.splitlines():
        if text in line and line.startswith("{"):
            at = datetime.strptime(json.loads(line)["ts"], "%Y-%m-%d %H:%M:%S,%f")
            if at >= since:
                return round((at - since).total_seconds(), 2)
    raise AssertionError(f"{text!r} not logged after {since}")


@pytest.mark.faults
@pytest.mark.e2e
def test_a_silently_dropped_broker_connection_is_replaced_within_15_s(
    tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    with aof_redis(tmp_path) as server, proxied(server.port) as proxy:
        with stack_on(tmp_path, mariadb_server, proxy.url, server) as stack:
            warm = TimedLedger("warm-up")
            for call_id in ids("warm", 5):
                deliver(stack, warm, call_id)
            wait_until(lambda: stack.processed(warm.accepted) == warm.accepted, 30, "warm-up")
            time.sleep(3)  # every worker idle, waiting on its broker connection

            ledger = TimedLedger("broker connection dropped silently")
            proxy.go_silent()
            cut, cut_wall = time.monotonic(), datetime.now()
            first = ids("hz", 1)
            deliver(stack, ledger, first[0])
            receiver_back_s = round(time.monotonic() - cut, 2)
            wait_until(lambda: stack.processed(set(first)) == set(first), 60, "first applied")
            worker_back_s = round(time.monotonic() - cut, 2)
            stream(stack, ledger, ids("hz", 200)[1:])()

            row = settle_and_count(stack, ledger, timeout_s=90)
            worst_wait_s = round(time_to_apply(stack, ledger.accepted), 2)
            wait_until(
                lambda: PUBSUB_DROPPED in stack.fleet.log("worker_high"),
                30,
                "the silent pub/sub connection dropped",
            )
            worker_log = stack.fleet.log("worker_high")
            pubsub_back_s = seconds_to_log(worker_log, PUBSUB_DROPPED, cut_wall)
            problems = log_problems(stack)
    row.update(
        receiver_recovery_s=receiver_back_s,
        worker_recovery_s=worker_back_s,
        worst_wait_s=worst_wait_s,
        pubsub_recovery_s=pubsub_back_s,
    )
    assert_exactly_once(row)
    assert "got no reply" in worker_log  # the idle worker noticed, not a lucky reconnect
    assert receiver_back_s < 15 and worker_back_s < 15, row
    # Broadcast and remote control too (issue 17: 15.7-17.3 s when checked every 5 s).
    assert pubsub_back_s < 15, row
    assert worst_wait_s < 20, row  # ~15 s + processing on a loaded box
    assert problems == []


def failover_under_load(stack: Stack, flip: Any, scenario: str, n: int = 600) -> dict[str, Any]:
    """Stream ``n`` deliveries, run ``flip`` a quarter of the way in, count, and time
    the window of refusals from the flip on."""
    ledger = TimedLedger(scenario)
    finish = stream(stack, ledger, ids("fo", n))
    wait_until(lambda: len(ledger.accepted) >= n // 4, 60, "a quarter accepted")
    started = time.monotonic()
    flip()
    flipped_in = round(time.monotonic() - started, 2)
    finish()
    row = settle_and_count(stack, ledger, timeout_s=120)
    row.update(flip_s=flipped_in, refused_for_s=outage_window(ledger, started))
    row["log_problems"] = len(log_problems(stack))
    return row


@pytest.mark.faults
@pytest.mark.e2e
@pytest.mark.parametrize("min_replicas", ["0", "1"])
def test_a_primary_demoted_in_place_under_load_costs_only_the_flip(
    tmp_path: Path, mariadb_server: MariaDBServer, min_replicas: str
) -> None:
    # The proxy is the address clients know, which moves.
    with primary_and_replica(tmp_path) as (primary, replica), proxied(primary.port) as proxy:

        def flip() -> None:
            demote_in_place(primary, replica)
            proxy.retarget(replica.port)

        with stack_on(
            tmp_path,
            mariadb_server,
            proxy.url,
            primary,
            HOOKFLEET_REDIS_MIN_REPLICAS=min_replicas,
            HOOKFLEET_REDIS_REPLICA_WAIT_MS="200",
        ) as stack:
            row = failover_under_load(
                stack, flip, f"primary demoted in place, min replicas {min_replicas}"
            )
            tail = [status for _, status in stack_tail(stack)]
    assert_exactly_once(row)
    assert row["refused_for_s"] < 10, row  # the flip, not forever
    assert tail == [202] * len(tail)
    assert row["log_problems"] == 0, row


def stack_tail(stack: Stack) -> list[tuple[str, int]]:
    """Ten fresh deliveries after everything settled: all must be accepted at once."""
    answers = []
    for call_id in ids("after", 10):
        raw = call_body(call_id)
        headers = {"x-retell-signature": retell.sign(SECRET, raw, int(time.time() * 1000))}
        status = request(stack.fleet.base_url, "POST", "/webhooks/retell", raw, headers)[0]
        answers.append((call_id, status))
    return answers


@dataclass
class SentinelServer:
    """``redis-server --sentinel`` watching ``primary`` as service ``name``."""

    directory: Path
    primary: RedisServer
    name: str = "hookfleet"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.name}/0"

    def start(self) -> SentinelServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 10000\n"
        )
        self.proc = subprocess.Popen(
            [_binary("redis-server"), str(config), "--sentinel"],
            stdout=open(self.directory / "sentinel.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)

        def knows_replica() -> bool:
            try:
                return bool(client.execute_command("SENTINEL", "REPLICAS", self.name))
            except redis.RedisError:
                return False

        wait_until(knows_replica, 30, "sentinel to find the replica", interval=0.2)
        return self

    def failover(self) -> None:
        redis.Redis(port=self.port).execute_command("SENTINEL", "FAILOVER", self.name)

    def primary_port(self) -> int:
        host_port = redis.Redis(port=self.port).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name
        )
        return int(host_port[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.mark.faults
@pytest.mark.e2e
def test_a_sentinel_failover_under_load_costs_only_the_flip(
    tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    with primary_and_replica(tmp_path) as (primary, replica):
        sentinel = SentinelServer(tmp_path / "sentinel", primary).start()

        def flip() -> None:
            sentinel.failover()
            wait_until(lambda: sentinel.primary_port() == replica.port, 30, "sentinel failover")
            wait_until(lambda: role_of(primary) == "slave", 30, "demotion")

        # SENTINEL FAILOVER promotes the replica, then demotes the old primary only when
        # its next INFO poll finds it (~10 s): a client still on the old primary writes
        # what the demotion then throws away. HOOKFLEET_REDIS_MIN_REPLICAS=1 is what the
        # README names for exactly once across a failover: no replica confirms a write
        # to the old primary once its replica is promoted, so it is answered 503
        # not_replicated and the provider's retry is accepted by the new one. (With the
        # default 0 this row lost 92 and 145 of 600 accepted deliveries at load ~18,
        # when the workers lagged behind the old primary's queue.)
        try:
            with stack_on(
                tmp_path,
                mariadb_server,
                sentinel.url,
                primary,
                HOOKFLEET_REDIS_MIN_REPLICAS="1",
                HOOKFLEET_REDIS_REPLICA_WAIT_MS="200",
            ) as stack:
                row = failover_under_load(stack, flip, "sentinel failover, min replicas 1")
                tail = [status for _, status in stack_tail(stack)]
        finally:
            sentinel.stop()
    assert_exactly_once(row)
    assert row["refused_for_s"] < row["flip_s"] + 5, row  # the flip, not forever
    assert tail == [202] * len(tail)
    assert row["log_problems"] == 0, row


@pytest.fixture(scope="module")
def shared_aof_stack(
    tmp_path_factory: pytest.TempPathFactory, mariadb_server: MariaDBServer
) -> Iterator[Stack]:
    """One fault fleet on a Redis of its own (AOF on, no proxy, no replica) for the rows
    that leave it whole: they restart the Redis they stop (same port, its AOF) or lose
    one pool child, which the worker replaces. Each reads the logs from where its row
    began. Rows with a proxy, a replica or a Sentinel build their own."""
    tmp = tmp_path_factory.mktemp("failover-aof")
    with aof_redis(tmp) as server, stack_on(tmp, mariadb_server, server.url, server) as built:
        yield built


@pytest.fixture
def aof_row_stack(shared_aof_stack: Stack) -> Stack:
    """The module's AOF fleet, checked whole, for one row (``this_row``)."""
    fleet = shared_aof_stack.fleet
    exited = {n: p.returncode for n, p in fleet.running.items() if p.poll() is not None}
    assert not exited and set(fleet.running) == set(FAULT_FLEET), exited
    return this_row(shared_aof_stack)


@pytest.mark.faults
@pytest.mark.e2e
def test_a_redis_restart_logs_warnings_not_errors(aof_row_stack: Stack) -> None:
    stack = aof_row_stack
    server = stack.redis
    ledger = TimedLedger("redis restarted: warnings only")
    finish = stream(stack, ledger, ids(f"rs{stack.run}", 600))
    wait_until(lambda: len(ledger.accepted) >= 150, 60, "150 accepted")
    started = time.monotonic()
    server.stop()  # SIGTERM: Redis writes its AOF and exits
    time.sleep(2)
    server.start()
    finish()
    row = settle_and_count(stack, ledger, timeout_s=120)
    row["refused_for_s"] = outage_window(ledger, started)
    problems = log_problems(stack)
    warnings = sum(
        stack.log_since(name).count('"level": "WARNING"')
        for name in ("worker_high", "worker_default", "worker_low")
    )
    assert_exactly_once(row)
    assert problems == [], problems[:5]
    assert warnings > 0  # the reconnects were noticed, as warnings


@pytest.mark.faults
@pytest.mark.e2e
def test_a_killed_pool_childs_gauges_leave_the_metrics_sums(aof_row_stack: Stack) -> None:
    stack = aof_row_stack
    ledger = TimedLedger("kill -9 pool child: /metrics ghost")
    ghost = f"ghost{stack.run}"
    with call_row_locked(stack, ghost) as release:
        deliver(stack, ledger, ghost)
        # The batch waits on the row lock holding a database connection: freeze
        # the child while its own gauge says so, then kill it.
        pid = kill_a_child_holding_a_connection(stack)
        killed = time.monotonic()
        release()
    row = settle_and_count(stack, ledger, timeout_s=90)

    def checked_out() -> float:
        return value(scrape(stack.fleet.ops_url), "hookfleet_db_pool_checked_out")

    wait_until(lambda: checked_out() == 0, 30, "the ghost to leave the sum")
    row["ghost_gone_after_s"] = round(time.monotonic() - killed, 2)
    left = list(Path(stack.fleet.env["PROMETHEUS_MULTIPROC_DIR"]).glob(f"*_{pid}.db"))
    assert_exactly_once(row)
    # Its counters stay (a count does not go back); its live gauges are gone.
    assert left and not [p for p in left if p.name.startswith("gauge_live")]


def kill_a_child_holding_a_connection(stack: Stack) -> int:
    metrics_dir = Path(stack.fleet.env["PROMETHEUS_MULTIPROC_DIR"])
    main = stack.fleet.running["worker_high"].pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True)
        for pid in map(int, children.stdout.split()):
            if holds_a_connection(metrics_dir, pid):
                os.kill(pid, signal.SIGSTOP)
                if holds_a_connection(metrics_dir, pid):  # still, now that it is frozen
                    os.kill(pid, signal.SIGKILL)
                    return pid
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise TimeoutError("no pool child held a database connection")


def holds_a_connection(metrics_dir: Path, pid: int) -> bool:
    shares = per_process(metrics_dir, "gauge_livesum", "hookfleet_db_pool_checked_out")
    return shares.get(f"gauge_livesum_{pid}.db", 0) >= 1


def test_what_a_reconnect_makes_celery_and_kombu_log_is_one_warning_line() -> None:
    from workers.celery_app import _ReconnectIsAWarning

    def record(name: str, msg: str, *args: object, error: BaseException | None = None) -> Any:
        exc_info = (type(error), error, None) if error else None
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)

    cannot_connect = record(
        "celery.worker.consumer.consumer", "consumer: Cannot connect to %s: %s.", "redis://", "x"
    )
    refresh = record(
        "kombu.transport.redis",
        "maybe_refresh_binding_expiry: Redis error, will retry",
        error=redis.ConnectionError("Connection refused"),
    )
    cancelled = record(
        "hookfleet.worker.batching",
        "batch of %d did not finish (%s); its messages are requeued",
        2,
        "Traceback ... billiard.exceptions.Terminated: 15",
    )
    died = record(
        "hookfleet.worker.batching",
        "batch of %d did not finish (%s); its messages are requeued",
        2,
        "WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL)')",
    )
    for item in (cannot_connect, refresh, cancelled, died):
        assert _ReconnectIsAWarning().filter(item)

    assert [r.levelname for r in (cannot_connect, refresh, cancelled)] == ["WARNING"] * 3
    assert refresh.exc_info is None and "Connection refused" in refresh.getMessage()
    assert "Traceback" not in cancelled.getMessage()
    assert died.levelname == "ERROR"  # a killed pool process stays an error


def test_readyz_says_not_ready_on_a_demoted_node_and_ready_once_the_address_moves(
    pair: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    primary, replica = pair
    with proxied(primary.port) as proxy:
        client = create_app(
            {
                "HOOKFLEET_REDIS_URL": proxy.url,
                "HOOKFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'ready.db'}",
            }
        ).test_client()
        assert client.get("/readyz", base_url=OPS).status_code == 200
        demote_in_place(primary, replica)  # still answers PING, refuses writes
        demoted = client.get("/readyz", base_url=OPS)
        proxy.retarget(replica.port)
        moved = client.get("/readyz", base_url=OPS)

    assert demoted.status_code == 503
    assert "READONLY" in demoted.get_json()["checks"]["redis"]["error"]
    assert moved.status_code == 200


# --- Ownership after reconnects, shutdown on a dead network -----------------------------------


def held_in_redis(server: RedisServer, pid: int | None = None) -> int:
    """Messages recorded as a consumer's (of ``pid``'s, if given) in ``server``."""
    client = server.client()
    pattern = f"{HELD_PREFIX}*:{pid}:*" if pid else f"{HELD_PREFIX}*"
    return sum(int(client.hlen(key)) for key in client.scan_iter(pattern))


def restored_total(stack: Stack) -> float:
    """``hookfleet_messages_restored_total``, all queues and reasons."""
    samples = scrape(stack.fleet.ops_url)
    return sum(v for (name, _), v in samples.items() if name == "hookfleet_messages_restored_total")


def paced_stream(stack: Stack, ledger: Ledger, call_ids: list[str], per_s: float) -> Any:
    """Deliver ``call_ids`` at about ``per_s`` a second (load that lasts through both
    flips); the returned function waits for the senders."""
    pool = ThreadPoolExecutor(16)
    futures: list[Any] = []

    def submit() -> None:
        for call_id in call_ids:
            futures.append(pool.submit(deliver, stack, ledger, call_id))
            time.sleep(1 / per_s)

    feeder = threading.Thread(target=submit, daemon=True)
    feeder.start()

    def finish() -> None:
        feeder.join()
        for future in futures:
            future.result()
        pool.shutdown()

    return finish


@pytest.mark.faults
@pytest.mark.e2e
@pytest.mark.parametrize("address", ["moves", "stays"])
def test_a_failover_and_flip_back_under_load_leaves_nothing_owned_but_not_in_hand(
    tmp_path: Path, mariadb_server: MariaDBServer, address: str
) -> None:
    """The primary is demoted in place, and promoted back 15 s later, while deliveries
    stream in. Each flip replaces every worker's broker connection; Celery forgets the
    requests it had reserved, and what the worker had in hand must follow: nothing may
    stay recorded as a live worker's (no sweep restores those) once all is processed.
    ``moves``: the address follows the primary (a proxy, DNS); ``stays``: it names the
    first node throughout, a replica for 15 s."""
    with primary_and_replica(tmp_path) as (primary, replica), proxied(primary.port) as proxy:
        with stack_on(tmp_path, mariadb_server, proxy.url, primary) as stack:
            ledger = TimedLedger(f"failover, flip back 15 s later, address {address}")
            finish = paced_stream(stack, ledger, ids("fb", 1200), per_s=40)
            wait_until(lambda: len(ledger.accepted) >= 300, 60, "300 accepted")
            before = restored_total(stack)
            demote_in_place(primary, replica)
            if address == "moves":
                proxy.retarget(replica.port)
            time.sleep(15)
            demote_in_place(replica, primary)
            proxy.retarget(primary.port)
            flipped_back = time.monotonic()
            held = held_call_ids(stack)  # recorded as some worker's at the flip back
            recovery_s = recovered_after(stack, held, flipped_back)
            finish()
            row = settle_and_count(stack, ledger, timeout_s=120)
            # Idle now: every message settled, none left recorded as anybody's.
            try:
                wait_until(lambda: held_in_redis(primary) == 0, 15, "nothing held")
            except TimeoutError:
                pass
            stranded = held_in_redis(primary)
            unacked = int(primary.client().hlen("unacked"))
            given_back = sum(
                stack.fleet.log(name).count("no longer hold")
                for name in ("worker_high", "worker_default", "worker_low")
            )
            counted = restored_total(stack) - before
            # Celery cancels running tasks on a connection loss and forks new pool
            # processes; on this loaded 2-core box one can take longer than its 4 s
            # start-up check (an ERROR from Celery's pool, then it forks again).
            # Counted in the row; every other ERROR line fails the test.
            slow_forks = [p for p in log_problems(stack) if "waiting for UP message" in p]
            problems = [p for p in log_problems(stack) if p not in slow_forks]
    row.update(
        recovery_s=recovery_s,
        held_at_flip_back=len(held),
        stranded=stranded,
        unacked_left=unacked,
        restored_counted=counted,
        let_go_logged=given_back,
        slow_pool_forks=len(slow_forks),
    )
    assert_exactly_once(row)
    assert (stranded, unacked) == (0, 0), row
    assert recovery_s < 30, row
    if given_back:
        assert counted > 0, row  # every return is counted
    assert problems == [], problems[:5]


@pytest.mark.faults
@pytest.mark.e2e
@pytest.mark.parametrize("network", ["half-open", "gone"])
def test_sigterm_on_a_dead_broker_connection_hands_back_at_once_and_exits_in_bounded_time(
    tmp_path: Path, mariadb_server: MariaDBServer, network: str
) -> None:
    """The worker holds reserved messages when its broker connections go silent (no FIN,
    no RST); then SIGTERM. ``half-open``: new connections still get through, so the
    reserved messages go back at once on a fresh one. ``gone``: nothing gets through
    any more; the worker must still exit in bounded time (no broker call waits without
    end), and its messages come back by its lease once the network is back."""
    with aof_redis(tmp_path) as server, proxied(server.port) as proxy:
        with stack_on(tmp_path, mariadb_server, proxy.url, server) as stack:
            ledger = TimedLedger(f"SIGTERM, broker connection {network}")
            worker = stack.fleet.running["worker_high"]
            running = 2 * Settings().batch_size  # two pool processes, one batch each
            hung = stack.engine.connect()  # every batch waits on the table lock
            hung.execute(text("LOCK TABLES webhook_events WRITE"))
            handed_back_s = None
            try:
                stream(stack, ledger, ids("ho", 400))()
                wait_until(
                    lambda: held_in_redis(server, worker.pid) > running + 20,
                    60,
                    "messages reserved",
                )
                if network == "gone":
                    proxy.go_dark()
                else:
                    proxy.go_silent()  # every connection open now: the worker's, the lease's
                os.kill(worker.pid, signal.SIGTERM)
                termed_at = time.monotonic()
                if network == "half-open":
                    wait_until(
                        lambda: held_in_redis(server, worker.pid) <= running,
                        30,
                        "reserved handed back",
                        interval=0.1,
                    )
                    handed_back_s = round(time.monotonic() - termed_at, 1)
            finally:
                hung.execute(text("UNLOCK TABLES"))  # the running batches finish
                hung.close()
            try:
                worker.wait(120)
            finally:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGKILL)
            exited_s = round(time.monotonic() - termed_at, 1)
            proxy.light()
            stack.fleet.running.pop("worker_high")
            stack.fleet.start("worker_high")
            row = settle_and_count(stack, ledger, timeout_s=120)
    row.update(recovery_s=handed_back_s, exited_after_s=exited_s)
    assert_exactly_once(row)
    if network == "half-open":
        assert handed_back_s is not None and handed_back_s < 5, row
    # The running batches' work plus bounded broker calls: inside the 20 s soft
    # shutdown default, and Kubernetes' 30 s grace period.
    assert exited_s < 20, row
