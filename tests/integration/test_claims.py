"""The pipelined claim client (ingest/claims.py) against real redis-server processes: it
answers as the blocking gate does, keeps every reply with its own request, and fails
the way the gate fails (the receiver then answers 503)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis
from redis.exceptions import OutOfMemoryError

from ingest.claims import PipelinedClaims
from ingest.dedup import Admission, DedupGate, RateLimit, rate_key
from models.broker.redis_links import FailoverReply, redis_client
from tests.faults.test_failover import SentinelServer, primary_and_replica, role_of
from tests.servers import RedisServer, _binary, die_with_tests, free_port, wait_until

T = TypeVar("T")
QUEUE = "celery"


def gate_for(url: str, *, timeout_s: float = 2.0, min_replicas: int = 0) -> DedupGate:
    """The gate as the receiver builds it (ingest/__init__.py): one client, one server."""
    client = redis_client(url, timeout_s=timeout_s)
    return DedupGate(client, client, same_server=True, min_replicas=min_replicas)


def pipelined(gate: DedupGate) -> PipelinedClaims:
    claims = PipelinedClaims.for_gate(gate)
    assert claims is not None
    return claims


Runner = Callable[[Coroutine[Any, Any, Any]], Any]


def run(
    claims: PipelinedClaims,
    work: Callable[[PipelinedClaims], Awaitable[T]],
    runner: Runner = asyncio.run,
) -> T:
    """``work`` on a fresh event loop, the client closed afterwards (as a worker exits)."""

    async def main() -> T:
        try:
            return await work(claims)
        finally:
            await claims.aclose()

    return cast(T, runner(main()))


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_runner(request: pytest.FixtureRequest) -> Runner:
    """Runs a coroutine on asyncio's own loop, or on uvloop's (the receiver's)."""
    if request.param == "asyncio":
        return asyncio.run
    uvloop = pytest.importorskip("uvloop")
    return cast(Runner, uvloop.run)


def test_answers_are_those_of_the_blocking_gate(redis_url: str) -> None:
    gate = gate_for(redis_url)
    store = redis.Redis.from_url(redis_url)
    limit = RateLimit(rate_key("pipelined-test"), per_second=0.01, burst=1)

    async def admit_both(key: str, shed_depth: int = 0) -> tuple[Admission, Admission]:
        # The same delivery through each path, on keys of their own, same Redis.
        claims = pipelined(gate)
        claim, message = f"claim-{key}", f"msg-{key}"
        try:
            blocking = gate.admit(f"g:{key}", claim, 60, QUEUE, message, shed_depth)
            piped = await claims.admit(f"p:{key}", claim, 60, QUEUE, message, shed_depth)
        finally:
            await claims.aclose()
        return blocking, piped

    async def scenarios() -> list[tuple[str, Admission, Admission]]:
        seen = [("accepted", *await admit_both("a"))]
        seen.append(("duplicate", *await admit_both("a")))
        depth = store.llen(QUEUE)
        seen.append(("shed", *await admit_both("b", depth)))
        seen.append(("under the depth", *await admit_both("c", depth + 10)))
        store.delete(limit.key)
        blocking_first = gate.admit("g:d", "claim-d", 60, QUEUE, "msg-d", rate_limit=limit)
        limited_blocking = gate.admit("g:e", "claim-e", 60, QUEUE, "msg-e", rate_limit=limit)
        store.delete(limit.key)
        claims = pipelined(gate)
        piped_first = await claims.admit("p:d", "claim-d", 60, QUEUE, "msg-d", rate_limit=limit)
        limited_piped = await claims.admit("p:e", "claim-e", 60, QUEUE, "msg-e", rate_limit=limit)
        await claims.aclose()
        seen.append(("first within the rate", blocking_first, piped_first))
        seen.append(("rate limited", limited_blocking, limited_piped))
        return seen

    for name, blocking, piped in asyncio.run(scenarios()):
        if name == "rate limited":
            # Milliseconds until the next token: the same order, not the same instant.
            assert piped.limited_ms > 0 and blocking.limited_ms > 0, name
            assert abs(piped.limited_ms - blocking.limited_ms) < 5_000, name
            piped = Admission(accepted=False, limited_ms=blocking.limited_ms)
        assert piped == blocking, name
    assert blocking.accepted is False
    # The same messages were queued, once each, and the same claims stored with a TTL.
    queued = sorted(store.lrange(QUEUE, 0, -1))
    assert queued == sorted([b"msg-a", b"msg-a", b"msg-c", b"msg-c", b"msg-d", b"msg-d"])
    for key in ("a", "c", "d"):
        assert store.get(f"g:{key}") == store.get(f"p:{key}") == f"claim-{key}".encode()
        assert 0 < store.ttl(f"p:{key}") <= 60
    assert not store.exists("p:b") and not store.exists("p:e")


def test_a_duplicate_is_seen_across_both_paths(redis_url: str) -> None:
    gate = gate_for(redis_url)

    async def work(claims: PipelinedClaims) -> tuple[Admission, Admission]:
        first = await claims.admit("k1", "from-loop", 60, QUEUE, "m1")
        gate.admit("k2", "from-thread", 60, QUEUE, "m2")
        return first, await claims.admit("k2", "later", 60, QUEUE, "m2")

    first, second = run(pipelined(gate), work)
    assert first == Admission(accepted=True)
    assert gate.admit("k1", "again", 60, QUEUE, "m1") == Admission(False, prior_claim="from-loop")
    assert second == Admission(False, prior_claim="from-thread")


def test_500_concurrent_claims_on_one_connection_each_get_their_own_answer(
    redis_url: str, loop_runner: Runner
) -> None:
    gate = gate_for(redis_url)
    store = redis.Redis.from_url(redis_url)
    # Every other key was claimed before, each by a claim naming it: a reply handed to
    # the wrong request shows as a wrong prior claim or a wrong accepted/duplicate.
    store.mset({f"k{n}": f"prior-{n}" for n in range(0, 500, 2)})
    before = {client["id"] for client in store.client_list()}

    async def work(claims: PipelinedClaims) -> tuple[list[Admission], int]:
        answers = await asyncio.gather(
            *(claims.admit(f"k{n}", f"new-{n}", 60, QUEUE, f"m{n}") for n in range(500))
        )
        # Connections that appeared meanwhile and sent the claim script.
        claiming = [
            client
            for client in store.client_list()
            if client["id"] not in before and client["cmd"] in ("evalsha", "eval")
        ]
        return answers, len(claiming)

    answers, connections = run(pipelined(gate), work, loop_runner)
    for n, answer in enumerate(answers):
        expected = Admission(False, prior_claim=f"prior-{n}") if n % 2 == 0 else Admission(True)
        assert answer == expected, n
    assert connections == 1
    assert sorted(store.lrange(QUEUE, 0, -1)) == sorted(f"m{n}".encode() for n in range(1, 500, 2))


def test_claims_go_on_after_redis_forgets_its_scripts(redis_url: str, loop_runner: Runner) -> None:
    gate = gate_for(redis_url)
    store = redis.Redis.from_url(redis_url)

    async def work(claims: PipelinedClaims) -> list[Admission]:
        answers = [await claims.admit("k1", "c1", 60, QUEUE, "m1")]
        store.script_flush()
        answers += await asyncio.gather(
            *(claims.admit(f"k{n}", f"c{n}", 60, QUEUE, f"m{n}") for n in (1, 2, 3))
        )
        return answers

    answers = run(pipelined(gate), work, loop_runner)
    assert answers == [
        Admission(True),
        Admission(False, prior_claim="c1"),
        Admission(True),
        Admission(True),
    ]
    assert store.llen(QUEUE) == 3


def test_a_stopped_redis_is_a_connection_error_and_claims_resume_after_its_restart(
    own_redis: RedisServer, loop_runner: Runner
) -> None:
    gate = gate_for(own_redis.url, timeout_s=1.0)

    async def work(claims: PipelinedClaims) -> tuple[Admission, type[BaseException], Admission]:
        first = await claims.admit("k1", "c1", 60, QUEUE, "m1")
        own_redis.stop()
        with pytest.raises(redis.ConnectionError) as down:
            await claims.admit("k2", "c2", 60, QUEUE, "m2")
        own_redis.start()
        return first, down.type, await claims.admit("k2", "c2", 60, QUEUE, "m2")

    first, error, after = run(pipelined(gate), work, loop_runner)
    assert first == after == Admission(True)
    assert issubclass(error, redis.ConnectionError)
    assert own_redis.client().lrange(QUEUE, 0, -1) == [b"m2"]  # no AOF: m1 went with the restart


def test_a_frozen_redis_times_out_and_no_late_reply_reaches_another_claim(
    own_redis: RedisServer, loop_runner: Runner
) -> None:
    timeout_s = 0.5
    gate = gate_for(own_redis.url, timeout_s=timeout_s)

    async def work(claims: PipelinedClaims) -> tuple[list[object], float, list[Admission]]:
        await claims.admit("warm", "warm", 60, QUEUE, "warm")
        own_redis.freeze()
        started = time.monotonic()
        frozen = await asyncio.gather(
            *(claims.admit(f"f{n}", f"frozen-{n}", 60, QUEUE, f"m{n}") for n in range(50)),
            return_exceptions=True,
        )
        waited = time.monotonic() - started
        own_redis.thaw()
        # The frozen claims may or may not have been applied once Redis resumed (as
        # with the blocking gate): asked again, each is new or finds its own claim.
        after = await asyncio.gather(
            *(claims.admit(f"f{n}", f"retry-{n}", 60, QUEUE, f"m{n}") for n in range(50)),
            *(claims.admit(f"new{n}", f"new-{n}", 60, QUEUE, f"n{n}") for n in range(50)),
        )
        return frozen, waited, list(after)

    frozen, waited, after = run(pipelined(gate), work, loop_runner)
    assert all(isinstance(error, redis.TimeoutError) for error in frozen), frozen
    # 2 ms of slack below: the timeout's clock starts inside the client, not at
    # ``started``, and a run once measured a hair under timeout_s (a flake, not an early
    # answer). Generous above: the box is shared.
    assert timeout_s - 0.002 <= waited < timeout_s + 3
    for n, answer in enumerate(after[:50]):
        assert answer in (Admission(True), Admission(False, prior_claim=f"frozen-{n}")), n
    assert after[50:] == [Admission(True)] * 50


def test_password_username_and_database_come_from_the_gate_url(own_redis: RedisServer) -> None:
    admin = own_redis.client()
    admin.acl_setuser("hook", enabled=True, passwords=["+userpw"], keys="*", commands=["+@all"])
    admin.config_set("requirepass", "defaultpw")
    admin = redis.Redis(port=own_redis.port, password="defaultpw")
    urls = {
        3: f"redis://:defaultpw@127.0.0.1:{own_redis.port}/3",
        5: f"redis://hook:userpw@127.0.0.1:{own_redis.port}/5",
    }
    for db, url in urls.items():
        answer = run(
            pipelined(gate_for(url)), lambda c, db=db: c.admit("k", f"c{db}", 60, QUEUE, "m")
        )
        assert answer == Admission(True)
        assert (
            redis.Redis(port=own_redis.port, password="defaultpw", db=db).get("k")
            == f"c{db}".encode()
        )
    wrong = f"redis://:nope@127.0.0.1:{own_redis.port}/0"
    with pytest.raises(redis.AuthenticationError):
        run(pipelined(gate_for(wrong)), lambda c: c.admit("k", "c", 60, QUEUE, "m"))
    assert admin.get("k") is None


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[Path]:
    """redis-server listening on a unix socket only."""
    path = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [
            _binary("redis-server"),
            "--port",
            "0",
            "--unixsocket",
            str(path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_tests(),
    )

    def answers() -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(path)).ping())
        except redis.RedisError:
            return False

    try:
        wait_until(answers, 15, "redis-server on a unix socket")
        yield path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_unix_socket_url_is_dialled(unix_redis: Path, loop_runner: Runner) -> None:
    gate = gate_for(f"unix://{unix_redis}?db=2")
    answer = run(pipelined(gate), lambda c: c.admit("k", "c", 60, QUEUE, "m"), loop_runner)
    assert answer == Admission(True)
    assert redis.Redis(unix_socket_path=str(unix_redis), db=2).lrange(QUEUE, 0, -1) == [b"m"]


def test_redis_out_of_memory_raises_what_the_gate_raises(own_redis: RedisServer) -> None:
    gate = gate_for(own_redis.url)
    admin = own_redis.client()
    admin.config_set("maxmemory", "1")  # every write is now refused (noeviction)
    with pytest.raises(redis.ResponseError) as blocking:
        gate.admit("k1", "c1", 60, QUEUE, "m1")
    with pytest.raises(redis.ResponseError) as piped:
        run(pipelined(gate), lambda c: c.admit("k2", "c2", 60, QUEUE, "m2"))
    assert piped.type is blocking.type is OutOfMemoryError
    admin.config_set("maxmemory", "0")
    assert admin.llen(QUEUE) == 0 and not admin.exists("k1", "k2")


def test_a_demoted_redis_is_a_failover_reply_as_for_the_gate(
    own_redis: RedisServer, redis_server: RedisServer
) -> None:
    gate = gate_for(own_redis.url, timeout_s=1.0)
    replica = own_redis.client()
    replica.replicaof("127.0.0.1", redis_server.port)  # read-only from now on
    # Past its first sync (while loading the primary's data it answers LOADING instead).
    wait_until(
        lambda: replica.info("replication").get("master_link_status") == "up", 15, "the sync"
    )
    # (Keys no other test uses: the replica holds a copy of the shared test Redis.)
    with pytest.raises(FailoverReply) as blocking:
        gate.admit("demoted:k1", "c1", 60, QUEUE, "m1")
    with pytest.raises(FailoverReply) as piped:
        run(pipelined(gate), lambda c: c.admit("demoted:k2", "c2", 60, QUEUE, "m2"))
    assert piped.value.code == blocking.value.code == "READONLY"


def test_a_gate_that_cannot_be_pipelined_gets_none(redis_url: str) -> None:
    client = redis_client(redis_url, timeout_s=1.0)
    waits = DedupGate(client, client, same_server=True, min_replicas=1)
    separate = DedupGate(client, redis_client(redis_url, timeout_s=1.0), same_server=False)
    assert PipelinedClaims.for_gate(waits) is None
    assert PipelinedClaims.for_gate(separate) is None
    assert PipelinedClaims.for_gate(gate_for(redis_url)) is not None


@pytest.mark.slow
def test_after_a_sentinel_failover_claims_go_to_the_new_primary(tmp_path: Path) -> None:
    with primary_and_replica(tmp_path, appendonly=False) as (primary, replica):
        sentinel = SentinelServer(tmp_path / "sentinel", primary).start()
        try:
            gate = gate_for(sentinel.url, timeout_s=1.0)

            def started_failover() -> bool:
                try:
                    sentinel.failover()
                except redis.ResponseError:  # NOGOODSLAVE: it has not judged the replica yet
                    return False
                return True

            async def work(claims: PipelinedClaims) -> tuple[Admission, list[object]]:
                first = await claims.admit("k1", "c1", 60, QUEUE, "m1")
                wait_until(started_failover, 30, "Sentinel to take the replica", interval=0.5)
                wait_until(lambda: sentinel.primary_port() == replica.port, 30, "failover")
                wait_until(lambda: role_of(primary) == "slave", 30, "demotion")
                # The old connection now reaches a replica: its READONLY drops it, and
                # the claim is sent again to whatever Sentinel names (once, at once).
                answers: list[object] = []
                for _ in range(10):
                    try:
                        answers.append(await claims.admit("k2", "c2", 60, QUEUE, "m2"))
                    except redis.ConnectionError as error:  # answered 503: retried
                        answers.append(error)
                        continue
                    break
                answers.append(await claims.admit("k1", "again", 60, QUEUE, "m1"))
                return first, answers

            first, answers = run(pipelined(gate), work)
        finally:
            sentinel.stop()
        assert first == Admission(True)
        assert answers[-2:] == [Admission(True), Admission(False, prior_claim="c1")], answers
        assert len(answers) <= 4, answers  # the flip costs a retry or two, not more
        assert replica.client().lrange(QUEUE, 0, -1) == [b"m2", b"m1"]


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """redis-server speaking TLS only, with a certificate for localhost signed by a CA
    of its own; yields the port and the CA certificate."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
        "-out", "ca.crt", "-days", "1", "-subj", "/CN=hookfleet-test-ca",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost",
    )  # fmt: skip
    (tmp_path / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf",
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [
            _binary("redis-server"), "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
            "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_tests(),
    )  # fmt: skip
    ca = tmp_path / "ca.crt"

    def answers() -> bool:
        try:
            return bool(redis.Redis(port=port, ssl=True, ssl_ca_certs=str(ca)).ping())
        except redis.RedisError:
            return False

    try:
        wait_until(answers, 15, "redis-server with TLS")
        yield port, ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_rediss_url_is_dialled_with_tls_and_its_certificate_checked(
    tls_redis: tuple[int, Path],
) -> None:
    port, ca = tls_redis
    trusted = gate_for(f"rediss://localhost:{port}/1?ssl_ca_certs={ca}")
    answer = run(pipelined(trusted), lambda c: c.admit("k", "c", 60, QUEUE, "m"))
    assert answer == Admission(True)
    assert trusted.admit("k", "again", 60, QUEUE, "m") == Admission(False, prior_claim="c")
    # Not signed by a CA it trusts (the system's): refused, as the gate refuses it.
    untrusted = gate_for(f"rediss://localhost:{port}/1")
    with pytest.raises(redis.ConnectionError):
        untrusted.admit("k2", "c2", 60, QUEUE, "m2")
    with pytest.raises(redis.ConnectionError):
        run(pipelined(untrusted), lambda c: c.admit("k2", "c2", 60, QUEUE, "m2"))


def test_a_closed_client_fails_its_waiting_claims_and_dials_no_more(redis_url: str) -> None:
    gate = gate_for(redis_url)
    store = redis.Redis.from_url(redis_url)

    before = {client["id"] for client in store.client_list()}

    async def work() -> tuple[list[object], type[BaseException], int]:
        claims = pipelined(gate)
        await claims.admit("k0", "c0", 60, QUEUE, "m0")
        waiting = [
            asyncio.ensure_future(claims.admit(f"k{n}", f"c{n}", 60, QUEUE, f"m{n}"))
            for n in range(1, 50)
        ]
        await asyncio.sleep(0)  # they are written, their answers not read yet
        await claims.aclose()
        answers = await asyncio.gather(*waiting, return_exceptions=True)
        with pytest.raises(redis.ConnectionError) as late:
            await claims.admit("late", "c", 60, QUEUE, "m")
        open_claim_connections = sum(
            client["id"] not in before and client["cmd"] in ("evalsha", "eval")
            for client in store.client_list()
        )
        return answers, late.type, open_claim_connections

    answers, late, open_connections = asyncio.run(work())
    # Each waiting claim was answered or failed as a 503 would (never cancelled); a
    # failed one may still have been made, as after a timeout: its retry is a duplicate.
    assert all(a == Admission(True) or isinstance(a, redis.ConnectionError) for a in answers)
    assert issubclass(late, redis.ConnectionError)
    assert open_connections == 0
    assert not store.exists("late")
