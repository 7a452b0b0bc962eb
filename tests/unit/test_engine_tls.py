"""TLS to MariaDB: none to a server on this host when the URL names no ``?ssl_*=`` option
(no TLS context built per connection), PyMySQL's default to a remote one, verified TLS
when the URL names a CA. The same for the pooled engines and for Alembic's."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import certifi
import pymysql.connections
import pytest
from sqlalchemy import Engine, event

from models.engine import make_engine
from models.migrate import migration_engine
from models.settings import Settings

URL = "mysql+pymysql://hookfleet:s3cret@db.invalid:3306/hookfleet"
LOCAL_URLS = [
    "mysql+pymysql://hookfleet:s3cret@127.0.0.1:3306/hookfleet",
    "mysql+pymysql://hookfleet:s3cret@localhost/hookfleet",
    "mysql+pymysql://hookfleet:s3cret@[::1]:3306/hookfleet",
    "mysql+pymysql://hookfleet:s3cret@/hookfleet?unix_socket=/run/mysqld/mysqld.sock",
]


class Dialled(Exception):
    """Raised instead of dialling: the test only wants what PyMySQL would be given."""


def pooled_engine(url: str) -> Engine:
    return make_engine(Settings(database_url=url))


# The receiver's and workers' pooled engines; Alembic's (``hookfleet migrate``, the tests'
# migrations) and the revision check.
ENGINES = pytest.mark.parametrize("build", [pooled_engine, migration_engine])


def driver_connection(
    url: str, build: Callable[[str], Engine] = pooled_engine
) -> pymysql.connections.Connection[Any]:
    """The PyMySQL connection the engine of ``url`` would open, built but not dialled."""
    engine = build(url)
    given: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def _capture(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        given.update(params)
        raise Dialled

    with pytest.raises(Dialled):
        engine.connect()
    engine.dispose()
    return pymysql.connections.Connection(**given, defer_connect=True)


@ENGINES
@pytest.mark.parametrize("url", LOCAL_URLS)
def test_a_local_server_named_without_tls_gets_plain_connections_without_a_tls_context(
    url: str, build: Callable[[str], Engine]
) -> None:
    connection = driver_connection(url, build)
    assert connection.ssl is False
    assert not hasattr(connection, "ctx")


@ENGINES
def test_a_remote_server_named_without_tls_keeps_the_drivers_default_tls(
    build: Callable[[str], Engine],
) -> None:
    connection = driver_connection(URL, build)
    assert hasattr(connection, "ctx")


@ENGINES
def test_a_url_naming_a_ca_requires_verified_tls(build: Callable[[str], Engine]) -> None:
    connection = driver_connection(f"{URL}?ssl_ca={certifi.where()}", build)
    assert connection.ssl is True
    assert connection.ctx.verify_mode == ssl.CERT_REQUIRED
    assert connection.ctx.check_hostname is True
