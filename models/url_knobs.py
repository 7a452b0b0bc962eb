"""Parsers for the URL settings (``HOOKFLEET_DATABASE_URL``, ``HOOKFLEET_REDIS_URL``,
``HOOKFLEET_BROKER_URL``): a URL no process could use is refused where the settings are
built, with one line naming the variable and what is wrong, password hidden.

Without them a malformed URL, a database driver that is not installed or a port that
is not a number passed startup and ended every command, the receiver's workers and
the Celery worker in a traceback at first use. The checks parse only (and import the
database driver, as the first connection would): nothing here connects.

Same shapes as the libraries that use them: SQLAlchemy's ``make_url``
(``dialect+driver://user:password@host:port/database``, SQLAlchemy's "Engine
Configuration" docs) and redis-py's ``redis.connection.parse_url`` (``redis://``,
``rediss://``, ``unix://``), plus the Sentinel form of ``models.broker.redis_links``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from models.knobs import ConfigError

#: The databases Hookfleet runs on (models use MariaDB's dialect where it differs).
DATABASE_BACKENDS = ("mysql", "mariadb", "sqlite")
DATABASE_EXAMPLE = "mysql+pymysql://user:pw@host:3306/hookfleet or sqlite:///var/hookfleet.db"
REDIS_EXAMPLE = "redis://host:6379/0, rediss://, unix:///path.sock or redis+sentinel://h:26379/svc"

REDIS_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "sentinel")  # models.broker.redis_links

# Builds the ConfigError for one reason ("has a port outside 1-65535").
Refusal = Callable[[str], ConfigError]

_PASSWORD = re.compile(r"(//[^/@:]*:)[^/@]*@")


def masked(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``
    (also when the rest does not parse): safe to print and log."""
    return _PASSWORD.sub(r"\1***@", url)


def database_url(name: str, raw: str) -> str:
    """An SQLAlchemy URL of a MariaDB/MySQL or SQLite database whose driver is
    installed; a SQLite file's directory must exist or be creatable. Raises ConfigError."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{name} {why}, got {masked(raw)!r} (e.g. {DATABASE_EXAMPLE})")

    try:
        url = make_url(raw)
    except ArgumentError:
        raise refuse("is not a database URL") from None
    except ValueError:  # int() of the port
        raise refuse("has a port that is not a number") from None
    if url.get_backend_name() not in DATABASE_BACKENDS:
        raise refuse("must be a MariaDB/MySQL or SQLite URL")
    _check_port(url.port, refuse)
    try:
        url.get_dialect().import_dbapi()
    except (ArgumentError, ImportError) as error:  # NoSuchModuleError: no such driver
        raise refuse(f"names a driver that cannot be loaded ({_first_line(error)})") from None
    if url.get_backend_name() == "sqlite":
        _check_sqlite_directory(url.database, refuse)
    return raw


def redis_url(name: str, raw: str) -> str:
    """A URL redis-py's ``parse_url`` takes (``redis://``, ``rediss://``, ``unix://``:
    a port that is a port, a database that is a number) or a Sentinel URL as
    ``models.broker.redis_links.parse_sentinel_url`` reads it
    (``redis+sentinel://[[user]:password@]h1:26379[,h2:26379]/service[/db]``). Checked
    with ``urllib`` alone: the business record imports settings, never redis.
    Raises ConfigError."""

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{name} {why}, got {masked(raw)!r} (e.g. {REDIS_EXAMPLE})")

    try:
        parts = urlsplit(raw)
        if parts.scheme in SENTINEL_SCHEMES:
            ports = _sentinel_ports(parts.netloc.rpartition("@")[2], refuse)
            if not [p for p in parts.path.split("/") if p]:
                raise refuse("names no Sentinel service (.../<service>[/<db>])")
        elif parts.scheme in REDIS_SCHEMES:
            ports = [parts.port]
            db = parse_qs(parts.query).get("db", [unquote(parts.path).strip("/")])[0]
            if parts.scheme != "unix" and db and not db.isdigit():
                raise refuse(f"names a database {db!r} that is not a number")
        else:
            raise refuse(
                f"must start with {', '.join(f'{s}://' for s in REDIS_SCHEMES)} or redis+sentinel://"
            )
    except ValueError as error:  # urllib: a port that is not a number or out of range
        if isinstance(error, ConfigError):
            raise
        raise refuse(f"is not a Redis URL ({_first_line(error)})") from None
    for port in ports:
        _check_port(port, refuse)
    return raw


def _sentinel_ports(hosts: str, refuse: Refusal) -> list[int | None]:
    ports: list[int | None] = []
    for host_port in filter(None, hosts.split(",")):
        port = host_port.rpartition(":")[2] if ":" in host_port else ""
        if port and not port.isdigit():
            raise refuse(f"has a Sentinel port {port!r} that is not a number")
        ports.append(int(port) if port else None)
    if not ports:
        raise refuse("names no Sentinel host")
    return ports


def _check_port(port: int | None, refuse: Refusal) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise refuse("has a port outside 1-65535")


def _check_sqlite_directory(database: str | None, refuse: Refusal) -> None:
    """The directory of a SQLite file is one this process can write in, or its nearest
    existing ancestor is one it can create it in (``models.engine`` creates it).

    Tried, not inferred: a directory is made (and removed) there, since neither the
    mode bits nor ``os.access`` tell root that ``/proc`` or ``/sys`` refuse new entries.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    directory = os.path.dirname(os.path.abspath(database))
    ancestor = directory
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise refuse(f"names a file under {ancestor}, which is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hookfleet-check-", dir=ancestor))
    except OSError as error:
        what = "write in" if ancestor == directory else "create a directory in"
        reason = error.strerror or type(error).__name__
        raise refuse(f"names a file this process cannot {what} {ancestor} ({reason})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
