"""Answered calls' records kept on this host's disk while neither Redis nor the database
took them before the answer.

A Retell ``call_inbound`` is answered once its record is durable (ingest/inbound_record.py):
queued in Redis, else a row in the database. When both fail in time (Redis frozen, the
database 1 s away and its connection still opening) the answer still goes, and the record
was only in the receiver's memory: an outsider's SIGTERM 0.5 s after boot, with the
database 1 s away (its first connection took 14 s) and Redis frozen, lost 14-30 answered
calls in 4 of 5 runs. So such a record is written here first, synchronously, before the
answer: one file, written whole and renamed into place after ``fsync`` (the file, then
its directory), so a file that exists is complete and survives a kill, an OOM and a
power cut. ``ingest/late_records.py`` deletes it once Redis or the database took the
record.

Layout (``$HOOKFLEET_VAR_DIR/spool``)::

    spool/<database>/database-url                      the URL without its password
    spool/<database>/<pid>-<token>/owner.lock        flock(LOCK_EX) held by the owner
    spool/<database>/<pid>-<token>/<sha256(event id)>.json

``<database>`` is a digest of the database URL without its password: a record belongs
to the database its row goes to, and a receiver of another deployment sharing the
directory never takes it. Each receiver process owns one directory, made under a dot
name, locked, then renamed into place, so no other process sees it unlocked while its
owner lives. At boot (:meth:`Spool.adopt`), a receiver takes the directories whose lock
is free (their owner is gone: the kernel drops an ``flock`` with the process, whatever
killed it), moves their records into its own directory and hands them to its late
records; so the records an exit left here are queued by the next receiver started on
this host with the same database. Files are JSON, one object (:class:`SpooledRecord`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

log = logging.getLogger("hookfleet.ingest")

#: Under ``$HOOKFLEET_VAR_DIR``.
SPOOL_DIR = "spool"
LOCK_FILE = "owner.lock"
#: In ``spool/<database>``: that database's URL without its password.
URL_FILE = "database-url"
SUFFIX = ".json"


@dataclass(frozen=True)
class SpooledRecord:
    """What queueing a record again needs (``ingest/views.py`` ``Job``, and the claim's
    correlation id): the dedup key claimed for ``ttl_s`` seconds, the queue and the
    Celery message pushed there (``models/broker/envelope.py``)."""

    event_id: str
    dedup_key: str
    correlation_id: str
    ttl_s: int
    queue: str
    message: str


def shown_url(database_url: str) -> str:
    """``database_url`` without its password, as the spool names and records it."""
    try:
        return make_url(database_url).set(password=None).render_as_string()
    except ArgumentError:
        return database_url


def database_key(database_url: str) -> str:
    """The spool's directory name for ``database_url``: 16 hex digits of the SHA-256 of
    the URL without its password (a rotated password keeps the records)."""
    return hashlib.sha256(shown_url(database_url).encode()).hexdigest()[:16]


class Spool:
    """This process's spool directory for one database (made on first use)."""

    def __init__(self, var_dir: str, database_url: str) -> None:
        self.root = Path(var_dir).resolve() / SPOOL_DIR / database_key(database_url)
        self._url = shown_url(database_url)
        self._own: Path | None = None
        self._lock_fd: int | None = None

    def put(self, record: SpooledRecord) -> Path:
        """Write ``record`` durably (see the module docstring) and return its file.
        Raises ``OSError`` (disk full, read-only, permissions)."""
        try:
            return self._put(record)
        except FileNotFoundError:
            # Its directory was removed meanwhile (an operator's clean-up): a new one.
            self.release()
            return self._put(record)

    def _put(self, record: SpooledRecord) -> Path:
        own = self._directory()
        path = own / (hashlib.sha256(record.event_id.encode()).hexdigest() + SUFFIX)
        partial = path.with_suffix(".part")
        data = json.dumps(asdict(record), separators=(",", ":")).encode()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            written = os.write(fd, data)
            if written != len(data):  # a nearly full disk: never a truncated record
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
        _fsync_directory(own)
        return path

    def survey(self) -> list[tuple[Path, bool, int]]:
        """Every process's directory of this database's spool: (directory, whether its
        process lives, how many records it holds). Takes nothing. Raises ``OSError``."""
        return _survey(self.root, self._own)

    def release(self) -> None:
        """Give this process's directory up: from now on any process's :meth:`adopt`
        may take its records (a process's end does the same). The next :meth:`put`
        makes a new one."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._own, self._lock_fd = None, None

    def adopt(self) -> list[tuple[Path, SpooledRecord]]:
        """Take the records of every directory whose owner is gone into this process's
        own, and return them (file, record). A file that is not a record is renamed
        ``*.bad`` and logged at ERROR; a ``.part`` file (a write its process did not
        finish: its call was never answered) is deleted. Raises ``OSError``."""
        if not self.root.is_dir():
            return []
        taken: list[tuple[Path, SpooledRecord]] = []
        for former in sorted(self.root.iterdir()):
            if former.name.startswith(".") or former == self._own or not former.is_dir():
                continue
            try:
                lock_fd = _lock(former / LOCK_FILE)
            except FileNotFoundError:
                continue  # taken and removed by another process meanwhile
            if lock_fd is None:
                continue  # its owner lives, or another process is taking it
            try:
                taken += self._take(former)
            except FileNotFoundError:
                continue  # taken and removed by another process meanwhile
            finally:
                os.close(lock_fd)
        return taken

    def _take(self, former: Path) -> list[tuple[Path, SpooledRecord]]:
        own = self._directory() if any(former.glob("*" + SUFFIX)) else None
        taken = []
        for path in sorted(former.iterdir()):
            if path.suffix == ".part":
                path.unlink(missing_ok=True)
                continue
            if path.suffix != SUFFIX:
                continue
            try:
                record = _checked(SpooledRecord(**json.loads(path.read_bytes())))
            except (ValueError, TypeError, KeyError) as error:
                path.rename(path.with_suffix(".bad"))
                log.error(
                    "spooled record unreadable: left as .bad",
                    extra={"path": str(path), "error": type(error).__name__},
                )
                continue
            assert own is not None
            moved = own / path.name
            os.replace(path, moved)
            taken.append((moved, record))
        if own is not None:
            _fsync_directory(own)
        if not any(p.suffix == ".bad" for p in former.iterdir()):
            (former / LOCK_FILE).unlink(missing_ok=True)
            try:
                former.rmdir()
            except OSError:
                pass  # a file appeared (a .bad one): kept for the operator
        return taken

    def strays(self) -> list[tuple[str, int]]:
        """Records other database URLs' spools on this host hold, left by receivers that
        are gone: (that URL without its password, records), for each such spool. A
        receiver adopts only its own URL's spool, spelled as it is (``localhost`` and
        ``127.0.0.1``, a changed query are other URLs): these wait for a receiver started
        with that spelling, or ``hookfleet spool --to-database`` run with it. Takes
        nothing. Raises ``OSError``."""
        base = self.root.parent
        if not base.is_dir():
            return []
        found = []
        for spool in sorted(base.iterdir()):
            if spool == self.root or not spool.is_dir():
                continue
            records = sum(n for _, lives, n in _survey(spool, None) if not lives)
            if records:
                named = spool / URL_FILE
                url = named.read_text().strip() if named.is_file() else f"(digest {spool.name})"
                found.append((url, records))
        return found

    def _directory(self) -> Path:
        if self._own is not None:
            return self._own
        self.root.mkdir(parents=True, exist_ok=True)
        named = self.root / URL_FILE
        if not named.exists():  # which URL this spool is for, shown by strays()
            try:
                named.write_text(self._url + "\n")
            except OSError:
                pass  # only a name for the operator: never a reason to refuse a record
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        making = self.root / ("." + name)
        making.mkdir(mode=0o700)
        lock_fd = _lock(making / LOCK_FILE)
        if lock_fd is None:  # pragma: no cover (a fresh directory nobody else knows)
            raise OSError(errno.EAGAIN, "could not lock a new spool directory")
        own = self.root / name
        os.replace(making, own)
        _fsync_directory(self.root)
        self._own, self._lock_fd = own, lock_fd
        return own


@dataclass(frozen=True)
class Census:
    """The spool of one host at a glance, for ``/metrics`` (ingest/ops_probe.py):
    records of this database held by receivers running here (``running``), left by
    receivers gone (``gone``), left for other database URLs (``other_url``), files set
    aside as ``.bad``, and the age in seconds of the oldest record (None: none)."""

    running: int = 0
    gone: int = 0
    other_url: int = 0
    bad: int = 0
    oldest_age_s: float | None = None


def census(var_dir: str, database_url: str, now: float) -> Census:
    """Count ``$var_dir/spool`` (every database's spool under it) without taking
    anything; ``now`` is ``time.time()``. Raises ``OSError``."""
    here = Spool(var_dir, database_url)
    base = here.root.parent
    if not base.is_dir():
        return Census()
    counts = {"running": 0, "gone": 0, "other_url": 0}
    bad, oldest = 0, None
    for spool in base.iterdir():
        if not spool.is_dir():
            continue
        for directory, lives in _directories(spool, None):
            owner = "other_url" if spool != here.root else "running" if lives else "gone"
            for path in directory.iterdir():  # one listing: records, .bad files, ages
                if path.suffix == ".bad":
                    bad += 1
                elif path.suffix == SUFFIX:
                    counts[owner] += 1
                    try:
                        written = path.stat().st_mtime
                    except FileNotFoundError:
                        continue  # taken meanwhile
                    oldest = written if oldest is None else min(oldest, written)
    age = None if oldest is None else max(0.0, now - oldest)
    return Census(bad=bad, oldest_age_s=age, **counts)


def _directories(root: Path, own: Path | None) -> Iterator[tuple[Path, bool]]:
    """Each process's directory under ``root`` and whether its process lives (its lock
    is held, by a process other than the one owning ``own``)."""
    if not root.is_dir():
        return
    for directory in sorted(root.iterdir()):
        if directory.name.startswith(".") or not directory.is_dir():
            continue
        try:
            lock_fd = _lock(directory / LOCK_FILE)
        except FileNotFoundError:
            continue  # taken and removed meanwhile
        if lock_fd is not None:
            os.close(lock_fd)
        yield directory, lock_fd is None and directory != own


def _survey(root: Path, own: Path | None) -> list[tuple[Path, bool, int]]:
    return [
        (directory, lives, sum(1 for _ in directory.glob("*" + SUFFIX)))
        for directory, lives in _directories(root, own)
    ]


def _checked(record: SpooledRecord) -> SpooledRecord:
    """``record`` if every field has its type and its message is a delivery's; else
    ``ValueError`` (a damaged file must not block the records queued after it, nor be
    queued as something else)."""
    from ingest.shelved_events import event_of
    from models.contract import QUEUES

    strings = (record.event_id, record.dedup_key, record.correlation_id, record.queue)
    if not all(isinstance(value, str) and value for value in strings):
        raise ValueError("a field is not a non-empty string")
    if not isinstance(record.ttl_s, int) or isinstance(record.ttl_s, bool) or record.ttl_s < 1:
        raise ValueError("ttl_s is not a positive whole number")
    if record.queue not in QUEUES:
        raise ValueError("queue is not one of Hookfleet's")
    if not isinstance(record.message, str) or event_of(record.message).event_id != record.event_id:
        raise ValueError("the message is not this event's delivery")
    return record


def discard(path: Path) -> None:
    """Delete a record's file once Redis or the database took the record. Never raises
    (a file left behind is queued once more by the next start: idempotent)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        log.warning(
            "could not delete a spooled record", extra={"path": str(path), "error": str(error)}
        )


def _lock(path: Path) -> int | None:
    """An open descriptor holding ``flock(LOCK_EX)`` on ``path`` (made if missing), or
    None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
