"""The broker transport's pop: a message is on its queue or in ``unacked``, never neither.

The worker-side loss these tests pin down: a consumer receives a message and then loses
Redis (or dies) before it could tell Redis it holds it. A TCP proxy between consumer and
Redis forwards the reply that carries the message and cuts the connection right after,
which is that instant made repeatable.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.exceptions import KombuError

from tests.servers import RedisServer, free_port
from workers.broker.transport import UNREADABLE_KEY

QUEUE = "hookfleet.high"
OURS = "workers.broker.transport:Transport"
STOCK = "redis"
OPTIONS = {"visibility_timeout": 1, "unacked_restore_throttle": 1}


class CuttingProxy:
    """Forwards TCP to Redis until a reply containing ``marker`` went through, then
    closes every connection and refuses new ones: Redis is gone for the consumer."""

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.port = free_port()
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, watch: bool) -> None:
        tail = b""
        try:
            while chunk := src.recv(65536):
                if watch and self.marker in tail + chunk:
                    self.cut.set()  # from now on nothing the consumer says reaches Redis
                    dst.sendall(chunk)
                    self.close()
                    return
                if self.cut.is_set():
                    return
                dst.sendall(chunk)
                tail = chunk[-len(self.marker) :]
        except OSError:
            pass

    def close(self) -> None:
        self.cut.set()
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _queue() -> Queue:
    return Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE)


def _publish(url: str, bodies: list[dict[str, Any]], marker: str = "") -> None:
    with Connection(url, transport=OURS) as conn:
        producer = conn.Producer()
        for body in bodies:
            producer.publish(
                body,
                exchange=_queue().exchange,
                routing_key=QUEUE,
                declare=[_queue()],
                headers={"marker": marker},
            )


def _drain_until(conn: Any, done: Callable[[], bool], seconds: float, tick: float = 0.2) -> None:
    """Let ``conn``'s consumers take messages until ``done()`` or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=tick)
        except TimeoutError:
            pass


def _receive(url: str, transport: str, want: int, seconds: float = 8) -> list[dict[str, Any]]:
    """What a consumer on ``transport`` receives (and acknowledges), until it has
    ``want`` messages or ``seconds`` passed."""
    got: list[dict[str, Any]] = []

    def on_message(body: dict[str, Any], message: Any) -> None:
        got.append(body)
        message.ack()

    with Connection(url, transport=transport, transport_options=OPTIONS) as conn:
        with conn.Consumer(_queue(), callbacks=[on_message]):
            _drain_until(conn, lambda: len(got) >= want, seconds)
    return got


def _receive_then_lose_redis(redis_port: int, transport: str) -> None:
    """A consumer through a proxy that cuts the moment the message reaches it."""
    marker = f"cut-{uuid.uuid4().hex}"
    proxy = CuttingProxy(redis_port, marker.encode())
    seen: list[Any] = []
    try:
        with Connection(
            f"redis://127.0.0.1:{proxy.port}/0",
            transport=transport,
            transport_options={**OPTIONS, "socket_timeout": 2, "socket_connect_timeout": 2},
        ) as conn:
            with conn.Consumer(_queue(), callbacks=[lambda body, msg: seen.append(body)]):
                _publish(f"redis://127.0.0.1:{redis_port}/0", [{"n": 1}], marker)
                for _ in range(20):
                    if proxy.cut.is_set():
                        break
                    try:
                        conn.drain_events(timeout=0.2)
                    except (TimeoutError, *conn.connection_errors, *conn.channel_errors):
                        pass
    except (OSError, redis.exceptions.RedisError, KombuError):
        pass  # the consumer dies with its connection, as a killed worker would
    finally:
        proxy.close()
    assert proxy.cut.is_set(), "the message never reached the consumer"


@pytest.fixture
def server(redis_url: str, redis_server: RedisServer) -> Iterator[RedisServer]:
    yield redis_server


def test_a_consumer_that_loses_redis_as_the_message_arrives_does_not_lose_the_message(
    server: RedisServer, redis_client: redis.Redis
) -> None:
    _receive_then_lose_redis(server.port, OURS)

    assert redis_client.llen(QUEUE) + redis_client.hlen("unacked") == 1
    # After the visibility timeout the next consumer gets it again.
    assert _receive(server.url, OURS, want=1) == [{"n": 1}]
    assert redis_client.llen(QUEUE) + redis_client.hlen("unacked") == 0


@pytest.mark.slow
def test_stock_kombu_loses_that_message_which_is_why_hookfleet_has_its_own_pop(
    server: RedisServer, redis_client: redis.Redis
) -> None:
    """The control: if kombu ever records in the same step, workers.broker.transport can go."""
    _receive_then_lose_redis(server.port, STOCK)

    assert redis_client.llen(QUEUE) + redis_client.hlen("unacked") == 0
    assert _receive(server.url, OURS, want=1, seconds=3) == []


def test_every_message_is_received_once_in_order_and_acknowledged(
    redis_url: str, redis_client: redis.Redis
) -> None:
    _publish(redis_url, [{"n": n} for n in range(200)])

    got = _receive(redis_url, OURS, want=200)

    assert got == [{"n": n} for n in range(200)]
    assert redis_client.hlen("unacked") == redis_client.zcard("unacked_index") == 0


def test_a_message_that_is_not_kombu_json_is_set_aside_and_the_rest_still_flow(
    redis_url: str, redis_client: redis.Redis
) -> None:
    _publish(redis_url, [{"n": 1}])
    redis_client.lpush(QUEUE, b"not json", b'{"properties": {}}')
    _publish(redis_url, [{"n": 2}])

    got = _receive(redis_url, OURS, want=2)

    assert got == [{"n": 1}, {"n": 2}]
    assert redis_client.lrange(UNREADABLE_KEY, 0, -1) == [b'{"properties": {}}', b"not json"]


def test_a_message_published_while_the_consumer_waits_is_received(redis_url: str) -> None:
    got: list[dict[str, Any]] = []

    def on_message(body: dict[str, Any], message: Any) -> None:
        got.append(body)
        message.ack()

    with Connection(redis_url, transport=OURS) as conn:
        with conn.Consumer(_queue(), callbacks=[on_message]):
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=1.5)  # idle: the consumer is parked in its wait
            _publish(redis_url, [{"n": 7}])
            conn.drain_events(timeout=5)
    assert got == [{"n": 7}]


def test_a_consumer_drains_a_full_redis(tmp_path: Any) -> None:
    """At maxmemory (noeviction) consuming still works: it is what frees the memory."""
    server = RedisServer(tmp_path / "full").start()
    got: list[dict[str, Any]] = []

    def on_message(body: dict[str, Any], message: Any) -> None:
        got.append(body)
        message.ack()

    try:
        client = server.client()
        _publish(server.url, [{"n": n, "pad": "x" * 1000} for n in range(300)])
        with Connection(server.url, transport=OURS, transport_options=OPTIONS) as conn:
            with conn.Consumer(_queue(), callbacks=[on_message]):
                used = int(client.info("memory")["used_memory"])
                client.config_set("maxmemory", str(used - 100_000))
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    client.set("more", "x")
                deadline = time.monotonic() + 10
                while len(got) < 300 and time.monotonic() < deadline:
                    conn.drain_events(timeout=1)

        assert [body["n"] for body in got] == list(range(300))
        assert client.llen(QUEUE) == client.hlen("unacked") == 0
    finally:
        server.stop()


@pytest.mark.parametrize("settle", ["ack", "requeue"])
def test_settling_a_message_of_a_connection_lost_with_redis_neither_raises_nor_loses_it(
    tmp_path: Any, settle: str
) -> None:
    """What a worker does after a Redis restart: batches taken on the old connection
    finish and settle their messages on it. That must not take the worker down, and the
    message must come back (it may run again: the database makes that a no-op)."""
    server = RedisServer(tmp_path / "restart", appendonly=True).start()
    held: list[Any] = []
    try:
        _publish(server.url, [{"n": 1}])
        conn = Connection(server.url, transport=OURS, transport_options=OPTIONS)
        with conn.Consumer(_queue(), callbacks=[lambda body, message: held.append(message)]):
            conn.drain_events(timeout=5)
            server.stop()  # kill -9 of Redis: the consumer's connection is gone
            conn.close()
        server.start()

        if settle == "ack":
            held[0].ack()
        else:
            held[0].reject(requeue=True)

        assert _receive(server.url, OURS, want=1) == [{"n": 1}]
    finally:
        server.stop()


# --- The kombu / Celery names Hookfleet relies on (fast: no servers) ------------------------

# (where, name, what of ours breaks without it). workers.broker.transport subclasses kombu's
# Redis transport and overrides its consuming and settling; workers.broker.batching replaces
# Celery's task strategy. Both reach past the public API. When an upgrade renames one
# of these, this names it; then read the new kombu/Celery source around it (README,
# "Upgrading Celery and kombu").
PRIVATE_NAMES = [
    ("kombu.transport.redis:Channel", "_brpop_start", "transport: sends our pop script"),
    ("kombu.transport.redis:Channel", "_brpop_read", "transport: reads the pop's reply"),
    ("kombu.transport.redis:Channel", "_queue_cycle", "transport: queue order"),
    ("kombu.transport.redis:Channel", "_q_for_pri", "transport: priority list keys"),
    ("kombu.transport.redis:Channel", "priority_steps", "transport: priority list keys"),
    ("kombu.transport.redis:Channel", "_in_poll", "transport: poller bookkeeping"),
    ("kombu.transport.redis:Channel", "_brpop_sent_at", "transport: poller health check"),
    ("kombu.transport.redis:Channel", "_flush_brpop_reauth", "transport: re-auth after a pop"),
    ("kombu.transport.redis:Channel", "_create_client", "transport: settling off the pop's socket"),
    ("kombu.transport.redis:Channel", "_connparams", "leases: the lease's own connection"),
    ("kombu.transport.redis:Channel", "_get_pool", "leases: the lease's own connections"),
    ("kombu.transport.redis:Channel", "conn_or_acquire", "transport: restores"),
    ("kombu.transport.redis:Channel", "unacked_key", "leases: kombu's unacked hash"),
    ("kombu.transport.redis:Channel", "unacked_index_key", "leases: kombu's unacked index"),
    ("kombu.transport.redis:Channel", "global_keyprefix", "transport: refuses key prefixes"),
    ("kombu.transport.redis:Channel", "sep", "leases: priority suffix of list keys"),
    ("kombu.transport.redis:Channel", "_pool", "transport: bounded broker calls at shutdown"),
    ("kombu.transport.redis:Channel", "_async_pool", "transport: bounded calls at shutdown"),
    ("kombu.transport.redis:Channel", "_receive_one", "transport: bounded pub/sub read"),
    ("kombu.transport.virtual:Transport", "_deliver", "transport: hands each popped message on"),
    ("kombu.transport.redis:Channel", "_size", "transport: queue count outside MULTI"),
    ("kombu.transport.redis:Channel", "_queue_bind", "transport: binding while Redis is full"),
    ("kombu.transport.redis:Channel", "keyprefix_queue", "transport: binding while full"),
    ("kombu.transport.redis:Channel", "_expires", "transport: binding while Redis is full"),
    ("kombu.transport.redis:QoS", "restore_visible", "transport: the lease sweep hook"),
    ("kombu.transport.redis:QoS", "restore_by_tag", "transport: visibility-timeout restore"),
    ("kombu.transport.redis:QoS", "restore_unacked", "transport: restore at channel close"),
    ("kombu.transport.redis:QoS", "_vrestore_count", "transport: restore throttle"),
    ("kombu.transport.redis:QoS", "visibility_timeout", "transport: last-resort restore"),
    ("kombu.transport.virtual:QoS", "_delivered", "transport: what a channel holds"),
    ("kombu.transport.virtual:QoS", "_flush", "transport: restore at channel close"),
    ("kombu.transport.virtual:Channel", "_inplace_augment_message", "pop script: envelope"),
    ("kombu.transport.redis:MultiChannelPoller", "maybe_restore_messages", "lease sweep timer"),
    ("kombu.transport.redis:MultiChannelPoller", "on_poll_init", "lease sweep at start"),
    ("kombu.transport.redis", "bytes_to_str", "transport: decoding replies"),
    ("celery.worker.request:Request", "on_accepted", "batching: running-task bookkeeping"),
    ("celery.worker.request:Request", "_apply_result", "batching: cancel at shutdown"),
    ("celery.worker.request:Request", "request_dict", "batching: retries of a message"),
    ("celery.worker.request:Request", "_context", "batching: an invalid ETA's failure"),
    ("celery.worker.request:Request", "store_errors", "batching: an invalid ETA's failure"),
    ("celery.worker.request:Request", "argsrepr", "batching: the task-received event"),
    ("celery.worker.request:Request", "kwargsrepr", "batching: the task-received event"),
    ("celery.worker.state", "active_requests", "batching: what a reconnect keeps in hand"),
    ("celery.worker.consumer.consumer:Consumer", "on_close", "batching: a reconnect's drops"),
    ("celery.worker.consumer.events:Events", "start", "batching: sets event_dispatcher"),
    ("celery.worker.request", "create_request_cls", "batching: the strategy's requests"),
    ("celery.worker.strategy", "hybrid_to_proto2", "batching: message protocols"),
    ("celery.worker.strategy", "proto1_to_proto2", "batching: message protocols"),
    ("celery.worker.state", "task_reserved", "batching: reserved bookkeeping"),
    ("celery.worker.state", "task_ready", "batching: reserved bookkeeping"),
    ("celery.worker.state", "should_stop", "batching: shutdown vs reconnect"),
    ("celery.worker.state", "should_terminate", "batching: shutdown vs reconnect"),
    ("celery.worker.consumer.tasks", "Tasks", "batching: ReleaseReserved runs before it"),
    ("kombu.asynchronous.timer", "to_timestamp", "batching: retry countdowns"),
    ("pybreaker:CircuitBreaker", "_state_storage", "outbound.breaker: a breaker's opened_at"),
    ("pybreaker:CircuitRedisStorage", "BASE_NAMESPACE", "metrics: the breaker state key"),
    ("pybreaker:CircuitRedisStorage", "_namespace", "metrics: the breaker state key"),
]


@pytest.mark.parametrize(("where", "name", "why"), PRIVATE_NAMES)
def test_every_private_kombu_and_celery_name_hookfleet_relies_on_exists(
    where: str, name: str, why: str
) -> None:
    import importlib
    import inspect

    module, _, attribute = where.partition(":")
    owner = importlib.import_module(module)
    if attribute:
        owner = getattr(owner, attribute)
    # Some are set on the instance: then kombu's __init__ must still set them.
    on_instance = inspect.isclass(owner) and f"self.{name} =" in inspect.getsource(owner.__init__)
    assert hasattr(owner, name) or on_instance, (
        f"{where}.{name} is gone ({why}): read the new kombu/Celery source around it "
        "before upgrading (README: Upgrading Celery and kombu)"
    )


def test_the_breaker_state_key_the_receiver_reads_is_where_pybreaker_writes_it() -> None:
    """``/metrics`` reads each breaker's state from Redis under
    ``models.metrics.breaker_state_key``; pybreaker's CircuitRedisStorage builds the key
    with its private ``_namespace`` (no public reader)."""
    from types import SimpleNamespace

    from pybreaker import CircuitRedisStorage

    from models.metrics import BREAKER_NAMESPACE, breaker_state_key

    storage = SimpleNamespace(
        BASE_NAMESPACE=CircuitRedisStorage.BASE_NAMESPACE,
        _namespace_name=f"{BREAKER_NAMESPACE}:retell",
    )
    assert CircuitRedisStorage._namespace(storage, "state") == breaker_state_key("retell"), (
        "pybreaker moved its Redis state key: models.metrics.breaker_state_key must follow"
    )


def test_the_signatures_hookfleet_calls_past_the_public_api_still_fit() -> None:
    import inspect

    from billiard.pool import Pool
    from kombu.transport.redis import QoS as RedisQoS

    wanted = {"callback", "error_callback", "accept_callback", "timeout_callback"}
    wanted |= {"soft_timeout", "timeout"}
    missing = wanted - set(inspect.signature(Pool.apply_async).parameters)
    assert not missing, f"billiard Pool.apply_async lost {missing} (workers.broker.batching)"
    restore = set(inspect.signature(RedisQoS.restore_visible).parameters)
    assert {"start", "num", "interval"} <= restore, (
        f"kombu QoS.restore_visible is now {restore} (workers.broker.transport overrides it)"
    )


def test_the_message_envelope_our_pop_script_reads_is_kombus() -> None:
    """The pop and restore scripts read ``properties.delivery_tag`` (a string) and
    ``properties.delivery_info.{exchange,routing_key}`` from the JSON kombu stores, and
    the unacked entry as ``[message, exchange, routing_key]``."""
    with Connection("memory://") as conn:
        channel = conn.default_channel
        message = channel.prepare_message("{}", priority=0, headers={}, properties={})
        channel._inplace_augment_message(message, QUEUE, QUEUE)
    properties = message["properties"]
    assert isinstance(properties["delivery_tag"], str), properties
    assert properties["delivery_info"]["exchange"] == QUEUE, properties
    assert properties["delivery_info"]["routing_key"] == QUEUE, properties


# --- Leases (workers.broker.leases): a dead consumer's messages come back within its lease --------

LEASED = {"hookfleet_lease_s": 1, "hookfleet_lease_renew_s": 0.2}

# A consumer process: takes one message, says "holding", then acknowledges it when its
# stdin says so and says "acked".
_HOLDER = """
import sys
from kombu import Connection, Exchange, Queue
q = Queue(sys.argv[2], Exchange(sys.argv[2]), routing_key=sys.argv[2])
held = []
with Connection(sys.argv[1], transport="workers.broker.transport:Transport",
                transport_options={"hookfleet_lease_s": 1, "hookfleet_lease_renew_s": 0.2,
                                   "visibility_timeout": 3600}) as conn:
    with conn.Consumer(q, callbacks=[lambda body, message: held.append(message)]):
        conn.drain_events(timeout=10)
        print("holding", flush=True)
        sys.stdin.readline()
        held[0].ack()
        print("acked", flush=True)
        sys.stdin.readline()
"""


def _holder(url: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, QUEUE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def _held_by_a_killed_consumer(url: str) -> None:
    """A consumer process takes the message, holds it unacknowledged, and is killed."""
    holder = _holder(url)
    holder.kill()
    holder.wait()


def test_a_killed_consumers_message_comes_back_within_its_lease_not_the_visibility_timeout(
    redis_url: str, redis_client: redis.Redis
) -> None:
    _publish(redis_url, [{"n": 1}])
    _held_by_a_killed_consumer(redis_url)
    assert redis_client.llen(QUEUE) == 0 and redis_client.hlen("unacked") == 1

    started = time.monotonic()
    with Connection(
        redis_url, transport=OURS, transport_options={**LEASED, "visibility_timeout": 3600}
    ) as conn:
        got: list[Any] = []
        with conn.Consumer(_queue(), callbacks=[lambda body, m: (got.append(body), m.ack())]):
            _drain_until(conn, lambda: bool(got), 10)
    assert got == [{"n": 1}]
    assert time.monotonic() - started < 5  # the 1 s lease, not the hour
    assert redis_client.hlen("unacked") == redis_client.hlen("hookfleet.unacked_owner") == 0


@pytest.mark.slow
def test_a_message_restored_by_lease_is_one_a_stock_kombu_consumer_reads(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Stock workers can share the queues: the restore puts the very bytes back."""
    _publish(redis_url, [{"n": 2}])
    published = redis_client.lrange(QUEUE, 0, -1)
    _held_by_a_killed_consumer(redis_url)
    time.sleep(1.5)  # the lease lapses
    other = Queue("hookfleet.low", Exchange("hookfleet.low"), routing_key="hookfleet.low")
    with Connection(redis_url, transport=OURS, transport_options=LEASED) as conn:
        with conn.Consumer(other):  # consuming anything sweeps for lapsed leases
            # The sweep runs at start, then periodically.
            _drain_until(conn, lambda: redis_client.llen(QUEUE) > 0, 10, tick=0.5)

    assert redis_client.lrange(QUEUE, 0, -1) == published
    stock = {"visibility_timeout": 3600}
    with Connection(redis_url, transport=STOCK, transport_options=stock) as conn:
        got: list[Any] = []
        with conn.Consumer(_queue(), callbacks=[lambda body, m: (got.append(body), m.ack())]):
            conn.drain_events(timeout=5)
    assert got == [{"n": 2}]


def test_a_thawed_consumers_late_ack_leaves_the_copy_another_consumer_holds(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Frozen past its lease, the first holder lost the message to a second consumer;
    its ack on waking must not remove the entry that protects the second one's copy."""
    _publish(redis_url, [{"n": 3}])
    holder = _holder(redis_url)
    try:
        holder.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # the lease lapses
        taken: list[Any] = []
        options = {**LEASED, "visibility_timeout": 3600}
        with Connection(redis_url, transport=OURS, transport_options=options) as conn:
            with conn.Consumer(_queue(), callbacks=[lambda body, m: taken.append(m)]):
                _drain_until(conn, lambda: bool(taken), 10)
                assert [m.payload for m in taken] == [{"n": 3}]
                tag = taken[0].delivery_tag
                holder.send_signal(signal.SIGCONT)
                assert holder.stdin is not None and holder.stdout is not None
                holder.stdin.write("ack\n")
                holder.stdin.flush()
                assert holder.stdout.readline().strip() == "acked"

                assert redis_client.hexists("unacked", tag)  # the copy is still protected
                taken[0].ack()
        assert redis_client.hlen("unacked") == redis_client.llen(QUEUE) == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_wake_up_with_no_pop_pending_is_no_message_not_a_crash(redis_url: str) -> None:
    """After a reconnect the poller can wake for a wait the new connection never sent;
    reading it raised IndexError, which Celery treats as unrecoverable (the worker
    exited). It is simply no message."""
    from kombu.transport import virtual

    with Connection(redis_url, transport=OURS) as conn:
        channel = conn.default_channel
        channel._pending = 0
        with pytest.raises(virtual.Empty):
            channel._brpop_read()


@pytest.mark.slow
def test_a_pop_whose_reply_was_lost_comes_back_to_the_live_consumer_within_seconds(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A silently dropped connection: the server runs the pop (it records the message
    as this live worker's) but the reply never arrives. The worker's lease stays
    renewed, so only the orphan check (workers.broker.leases.ORPHAN_AFTER_S) can give it back:
    seconds, not the visibility timeout, and the same worker then receives it."""
    _publish(redis_url, [{"n": 9}])
    got: list[Any] = []
    with Connection(
        redis_url, transport=OURS, transport_options={**LEASED, "visibility_timeout": 3600}
    ) as conn:
        with conn.Consumer(_queue(), callbacks=[lambda body, m: (got.append(body), m.ack())]):
            channel = conn.default_channel
            if channel.client.connection is None:  # as kombu's _register_BRPOP does
                channel.client.connection = channel.client.connection_pool.get_connection()
            channel._brpop_start()  # the pop is sent ...
            deadline = time.monotonic() + 5
            while redis_client.hlen("unacked") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            channel.client.connection.disconnect()  # ... and its reply lost
            channel._in_poll, channel._pending = None, 0
            assert redis_client.hlen("unacked") == 1 and redis_client.llen(QUEUE) == 0

            started = time.monotonic()
            while not got and time.monotonic() < started + 40:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
    assert got == [{"n": 9}]
    assert time.monotonic() - started < 15  # the orphan age and a renewal, not 60 s or hours


def test_messages_a_reconnect_dropped_go_back_at_once_and_are_counted(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """After a lost broker connection Celery forgets the requests it had reserved; the
    worker keeps only what its running requests will settle (workers.broker.batching,
    ``let_go_of_dropped``). The rest must not stay recorded as this live worker's — no
    sweep restores a live worker's messages — but go back at the next consume."""
    from workers.broker.leases import HELD_PREFIX, current_lease, restored_counter

    _publish(redis_url, [{"n": 1}, {"n": 2}, {"n": 3}])
    taken: list[Any] = []
    with Connection(redis_url, transport=OURS, transport_options=LEASED) as conn:
        with conn.Consumer(_queue(), callbacks=[lambda body, m: taken.append(m)]):
            _drain_until(conn, lambda: len(taken) >= 3, 10)
            lease = current_lease()
            assert lease is not None and len(taken) == 3
            running = taken[0]  # a request still running in the pool keeps its message
            before = _orphaned_count(restored_counter())

            # The connection is replaced; two of the three requests were dropped.
            assert lease.keep_only([running.delivery_tag]) == 2
            with Connection(redis_url, transport=OURS, transport_options=LEASED) as again:
                with again.Consumer(_queue(), callbacks=[]):  # attaches: the give-back
                    back = redis_client.llen(QUEUE)
                    held = redis_client.hlen(HELD_PREFIX + lease.consumer_id)
            after = _orphaned_count(restored_counter())
            running.ack()  # the running one settles as usual

    assert (back, held) == (2, 1)
    assert after - before == 2
    assert redis_client.hlen("unacked") == 0


def _orphaned_count(counter: Any) -> float:
    from prometheus_client import REGISTRY

    labels = {"queue": QUEUE, "reason": "orphaned"}
    return REGISTRY.get_sample_value("hookfleet_messages_restored_total", labels) or 0.0


def test_a_pubsub_read_with_nothing_to_read_gives_up_within_the_socket_timeout(
    redis_url: str,
) -> None:
    """Issue 17 (F2): after kombu dropped a silent pub/sub connection, a worker's main
    thread waited in ``recvfrom`` for good on the pub/sub socket (no timeout): redis-py
    8's ``PubSub.parse_response()`` dials a dropped connection again and reads with no
    socket timeout, and kombu calls it when its poller woke for that connection — with
    nothing to read, the wait lasts until a broadcast comes, which may be never. It
    renewed its lease but never consumed again, and SIGTERM did not end it. Now the
    read gives up within the channel's socket timeout: no reply is no message."""
    options = {**OPTIONS, "socket_timeout": 1}
    outcome: list[Any] = []
    with Connection(redis_url, transport=OURS, transport_options=options) as conn:
        channel: Any = conn.default_channel
        channel.subclient.psubscribe("/0.hookfleet-test.*")
        channel._receive()  # the subscription's confirmation: the link works
        done = threading.Event()

        def read() -> None:  # as kombu's event loop does on a wake-up with nothing there
            try:
                outcome.append(channel._receive())
            except redis.RedisError as error:  # asserted on below
                outcome.append(error)
            done.set()

        started = time.monotonic()
        threading.Thread(target=read, daemon=True).start()
        finished = done.wait(15)
        took_s = time.monotonic() - started
    assert finished, "the pub/sub read waited for a message that never came"
    assert outcome == [False]  # no message, no error
    assert took_s < 5, took_s
