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

import math
import os
import re
import ssl
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qs, unquote, urlsplit

from models.knobs import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.engine.default import DefaultDialect

#: The databases Hookfleet runs on (models use MariaDB's dialect where it differs).
DATABASE_BACKENDS = ("mysql", "mariadb", "sqlite")
DATABASE_EXAMPLE = "mysql+pymysql://user:pw@host:3306/hookfleet or sqlite:///var/hookfleet.db"
REDIS_EXAMPLE = "redis://host:6379/0, rediss://, unix:///path.sock or redis+sentinel://h:26379/svc"

REDIS_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "sentinel")  # models.broker.redis_links

#: The query names redis-py's ``parse_url`` hands the connection (its
#: ``URL_QUERY_ARGUMENT_PARSERS``, plus the text-valued keywords its connection classes
#: take): any other name ends the first command in a TypeError, a value its parser
#: refuses ends it in a ValueError. tests/unit/test_url_settings.py holds this equal to
#: redis-py's own table and signatures.
QUERY_WHOLE_NUMBERS = ("db", "socket_read_size", "max_connections", "health_check_interval")
QUERY_SECONDS = ("socket_timeout", "socket_connect_timeout", "timeout")
QUERY_FLAGS = ("socket_keepalive", "retry_on_timeout", "legacy_responses")  # any value
QUERY_TEXT = ("client_name", "username", "password", "lib_name", "lib_version", "encoding")
QUERY_TLS_NUMBERS = ("ssl_min_version",)
QUERY_TLS_FLAGS = ("ssl_check_hostname",)
QUERY_TLS_VERIFY_FLAGS = ("ssl_include_verify_flags", "ssl_exclude_verify_flags")
QUERY_TLS_TEXT = (
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_ciphers",
    "ssl_password",
)
RESP_PROTOCOLS = ("2", "3")

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
        # Every SQLAlchemy dialect derives from DefaultDialect, which takes the DBAPI.
        dialect = cast("type[DefaultDialect]", url.get_dialect())
        dbapi = dialect.import_dbapi()
    except (ArgumentError, ImportError) as error:  # NoSuchModuleError: no such driver
        raise refuse(f"names a driver that cannot be loaded ({_first_line(error)})") from None
    _check_driver_options(url, dialect(dbapi=dbapi), refuse)
    if url.get_backend_name() == "sqlite":
        _check_sqlite_directory(url.database, refuse)
    return raw


def _check_driver_options(url: URL, dialect: DefaultDialect, refuse: Refusal) -> None:
    """The ``?name=value`` options are ones the driver's ``connect()`` takes, with values
    it takes: without this an unknown name (TypeError), a number that is not one
    (``?connect_timeout=abc``: ValueError) or a charset PyMySQL does not know
    (``?charset=bogus``: AttributeError in ``pymysql.connections.Connection``) ended
    ``hookfleet migrate`` in a traceback before any connection was tried. SQLAlchemy's
    own ``create_connect_args`` makes the keyword arguments (and coerces the numbers);
    PyMySQL's ``Connection`` signature and ``pymysql.charset`` are the rest."""
    try:
        _, keywords = dialect.create_connect_args(url)
    except (ValueError, TypeError) as error:
        raise refuse(f"has a query option its driver cannot take ({_first_line(error)})") from None
    if url.get_driver_name() != "pymysql":
        return
    import inspect

    import pymysql.charset
    import pymysql.connections

    taken = inspect.signature(pymysql.connections.Connection.__init__).parameters
    if unknown := set(keywords) - set(taken):
        raise refuse(f"has query options PyMySQL does not take ({_names(unknown)})")
    tls = keywords.get("ssl") or {}
    for option, path in tls.items():
        # PyMySQL loads these while building the connection, before dialling.
        if option in ("ca", "cert", "key") and not os.path.isfile(path):
            raise refuse(f"has ?ssl_{option}= naming no file")
        if option == "capath" and not os.path.isdir(path):
            raise refuse("has ?ssl_capath= naming no directory")
    _check_tls_files(
        refuse,
        ca=("ssl_ca", tls.get("ca")),
        capath=tls.get("capath"),
        cert=("ssl_cert", tls.get("cert")),
        key=tls.get("key"),
        password=tls.get("password"),
    )
    charset = keywords.get("charset")
    if charset and pymysql.charset.charset_by_name(charset) is None:
        raise refuse(f"names a charset {charset!r} PyMySQL does not know (e.g. utf8mb4)")


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
        # urllib lowers the scheme; redis-py and kombu compare it as written.
        if raw.partition("://")[0] not in (*REDIS_SCHEMES, *SENTINEL_SCHEMES):
            raise refuse(
                f"must start with {', '.join(f'{s}://' for s in REDIS_SCHEMES)} or "
                "redis+sentinel:// (sentinel:// too), in lower case"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        if parts.scheme in SENTINEL_SCHEMES:
            ports = _sentinel_ports(parts.netloc.rpartition("@")[2], refuse)
            path = [unquote(p) for p in parts.path.split("/") if p]
            if not path:
                raise refuse("names no Sentinel service (.../<service>[/<db>])")
            if len(path) > 2:
                raise refuse("has more than .../<service>/<db> in its path")
            if set(query) - {"db"}:
                raise refuse(f"gives a Sentinel URL {_names(set(query) - {'db'})}: only ?db=N")
            _check_db(query.get("db", [path[1] if len(path) > 1 else "0"])[-1], refuse)
        else:
            ports = [parts.port]
            db = query.get("db", [unquote(parts.path).strip("/")])[0]
            if parts.scheme != "unix" and db:
                _check_db(db, refuse)
            _check_query(parts.scheme, query, refuse)
            if parts.scheme == "rediss":
                _check_redis_tls_files(query, refuse)
    except ValueError as error:  # urllib: a port that is not a number or out of range
        if isinstance(error, ConfigError):
            raise
        raise refuse(f"is not a Redis URL ({_first_line(error)})") from None
    for port in ports:
        _check_port(port, refuse)
    return raw


def _check_db(db: str, refuse: Refusal) -> None:
    if not db.isdigit():
        raise refuse(f"names a database {db!r} that is not a number")


def _names(names: set[str]) -> str:
    return ", ".join(f"?{name}=" for name in sorted(names))


def _check_query(scheme: str, query: dict[str, list[str]], refuse: Refusal) -> None:
    """Each ``?name=value`` is one redis-py takes, with a value its parser takes
    (``redis.connection.parse_url``; the first value of a repeated name counts)."""
    tls = scheme == "rediss"
    flags = {*QUERY_FLAGS, *(QUERY_TLS_FLAGS if tls else ())}
    if scheme == "unix":
        flags.discard("socket_keepalive")  # UnixDomainSocketConnection takes no keepalive
    numbers = {*QUERY_WHOLE_NUMBERS, *(QUERY_TLS_NUMBERS if tls else ())}
    text = {*QUERY_TEXT, *(QUERY_TLS_TEXT if tls else ())}
    verify = set(QUERY_TLS_VERIFY_FLAGS if tls else ())
    known = {*flags, *numbers, *text, *verify, *QUERY_SECONDS, "protocol"}
    if unknown := set(query) - known:
        raise refuse(f"has query options redis-py does not take ({_names(unknown)})")
    for name, values in query.items():
        value = values[0]
        if name in numbers and not value.isdigit():
            raise refuse(f"has ?{name}={value!r}, not a whole number")
        if name in QUERY_SECONDS and not _positive_seconds(value):
            raise refuse(f"has ?{name}={value!r}, not a number of seconds above 0")
        if name == "protocol" and value not in RESP_PROTOCOLS:
            raise refuse(f"has ?protocol={value!r}: RESP is 2 or 3")
        if name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") and not os.path.isfile(value):
            raise refuse(f"has ?{name}= naming no file")
        if name == "ssl_ca_path" and not os.path.isdir(value):
            raise refuse("has ?ssl_ca_path= naming no directory")
        if name in verify:
            flag_names = [f.strip() for f in value.strip("[]").split(",")]
            bad = [f for f in flag_names if f not in ssl.VerifyFlags.__members__]
            if bad:
                raise refuse(f"has ?{name}= naming no ssl.VerifyFlags ({bad[0]!r})")


def _check_redis_tls_files(query: dict[str, list[str]], refuse: Refusal) -> None:
    """``rediss://`` certificate options, loaded as redis-py's SSLConnection loads them."""

    def first(name: str) -> str | None:
        return query.get(name, [None])[0]

    _check_tls_files(
        refuse,
        ca=("ssl_ca_certs", first("ssl_ca_certs")),
        capath=first("ssl_ca_path"),
        cert=("ssl_certfile", first("ssl_certfile")),
        key=first("ssl_keyfile"),
        password=first("ssl_password"),
    )


def _check_tls_files(
    refuse: Refusal,
    *,
    ca: tuple[str, str | None],
    capath: str | None,
    cert: tuple[str, str | None],
    key: str | None,
    password: str | None,
) -> None:
    """The certificate files load into an ``ssl.SSLContext`` as the driver will load them
    when it first connects (PyMySQL ``Connection._create_ssl_ctx``, redis-py
    ``SSLConnection._connect``): a file that is there but is no PEM certificate or key
    used to end the first connection in an ``ssl.SSLError`` traceback."""
    (ca_option, ca_file), (cert_option, cert_file) = ca, cert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file or capath:
        try:
            context.load_verify_locations(cafile=ca_file, capath=capath)
        except (ssl.SSLError, OSError) as error:
            raise refuse(
                f"has ?{ca_option}= naming no PEM certificate ({_first_line(error)})"
            ) from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, keyfile=key, password=password)
        except (ssl.SSLError, OSError) as error:
            raise refuse(
                f"has ?{cert_option}= (with its key) naming no PEM certificate and key "
                f"({_first_line(error)})"
            ) from None


def _positive_seconds(value: str) -> bool:
    try:
        seconds = float(value)
    except ValueError:
        return False
    return math.isfinite(seconds) and seconds > 0


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
