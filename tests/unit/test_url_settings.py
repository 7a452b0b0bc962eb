"""The URL settings are checked where settings are built: a URL no process could use is
one ConfigError naming the variable and what is wrong, with any password hidden."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from models.settings import ConfigError, Settings

BAD_DATABASE_URLS = {
    "mysql://hookfleet:s3cret@db/hookfleet": "driver that cannot be loaded",  # MySQLdb
    "postgresql://hookfleet:s3cret@db/hookfleet": "MariaDB/MySQL or SQLite",
    "garbage": "not a database URL",
    "nosuch+driver://hookfleet:s3cret@db/x": "MariaDB/MySQL or SQLite",
    "mysql+nosuchdriver://hookfleet:s3cret@db/x": "driver that cannot be loaded",
    "mysql+pymysql://hookfleet:s3cret@db:notaport/hookfleet": "port that is not a number",
    "mysql+pymysql://hookfleet:s3cret@db:99999/hookfleet": "port outside 1-65535",
    "sqlite:////etc/hostname/below/a/file.db": "not a directory",
    # Query options PyMySQL's connect() refuses before dialling (a traceback in migrate).
    "mysql+pymysql://hookfleet:s3cret@db/hookfleet?charset=bogus": "charset 'bogus'",
    "mysql+pymysql://hookfleet:s3cret@db/hookfleet?connect_timeout=abc": "'abc'",
    "mysql+pymysql://hookfleet:s3cret@db/hookfleet?local_infile=maybe": "driver cannot take",
    "mysql+pymysql://hookfleet:s3cret@db/hookfleet?foo=1": "?foo=",
    "mysql+pymysql://hookfleet:s3cret@db/hookfleet?ssl_ca=/nonexistent/ca.pem": "?ssl_ca=",
    "sqlite:///hookfleet.db?timeout=abc": "'abc'",
}
BAD_REDIS_URLS = {
    "garbage://x": "must start with redis://",
    "http://x": "must start with redis://",
    "garbage": "must start with redis://",
    "redis://:s3cret@cache:notaport/0": "not a Redis URL",
    "redis://:s3cret@cache:0/0": "port outside 1-65535",
    "redis://cache:70000/0": "65535",
    "redis://cache/x": "database 'x' that is not a number",
    "redis://cache/0?db=zz": "database 'zz' that is not a number",
    "redis+sentinel://:s3cret@h1:notaport/mymaster": "Sentinel port 'notaport'",
    "redis+sentinel://h1:26379": "no Sentinel service",
    "redis+sentinel:///mymaster": "no Sentinel host",
    # Shapes that passed the check and then broke the first command (redis-py's parse_url).
    "redis+sentinel://h:1/mymaster/x": "database 'x' that is not a number",
    "redis+sentinel://h:1,h:2/mymaster?db=x": "database 'x' that is not a number",
    "redis+sentinel://h:1/mymaster/1/extra": "more than .../<service>/<db>",
    "redis+sentinel://h:1/mymaster?socket_timeout=1": "only ?db=N",
    "REDIS://cache:6379/15": "in lower case",
    "Redis+Sentinel://h:1/mymaster": "in lower case",
    "redis://cache/1?socket_timeout=abc": "?socket_timeout='abc'",
    "redis://cache/1?socket_connect_timeout=-1": "seconds above 0",
    "redis://cache/1?timeout=nan": "seconds above 0",
    "redis://cache/1?health_check_interval=1.5": "not a whole number",
    "redis://cache/1?max_connections=many": "not a whole number",
    "redis://cache/1?protocol=7": "RESP is 2 or 3",
    "redis://cache/1?foo=1": "?foo=",
    "redis://cache/1?ssl_cert_reqs=none": "?ssl_cert_reqs=",  # TLS options: rediss:// only
    "rediss://cache/1?ssl_min_version=x": "not a whole number",
    "rediss://cache/1?ssl_include_verify_flags=NOPE": "'NOPE'",
    "unix:///run/redis.sock?socket_keepalive=1": "?socket_keepalive=",
}


@pytest.mark.parametrize(("url", "why"), BAD_DATABASE_URLS.items())
def test_an_unusable_database_url_is_refused_naming_the_setting(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"HOOKFLEET_DATABASE_URL": url})
    message = str(refused.value)
    assert message.startswith("HOOKFLEET_DATABASE_URL ") and why in message
    assert "s3cret" not in message and "\n" not in message


@pytest.mark.parametrize("var", ["HOOKFLEET_REDIS_URL", "HOOKFLEET_BROKER_URL"])
@pytest.mark.parametrize(("url", "why"), BAD_REDIS_URLS.items())
def test_an_unusable_redis_url_is_refused_naming_the_setting(var: str, url: str, why: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({var: url})
    message = str(refused.value)
    assert message.startswith(f"{var} ") and why in message
    assert "s3cret" not in message and "\n" not in message


def test_a_broker_falling_back_to_a_bad_redis_url_is_refused_too() -> None:
    with pytest.raises(ConfigError, match="HOOKFLEET_REDIS_URL"):
        Settings.from_env({"HOOKFLEET_REDIS_URL": "redis://cache:notaport"})


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:pw@cache/2",
        "rediss://user:pw@cache:6380/0",
        "unix:///run/redis/redis.sock?db=1",
        "redis+sentinel://:pw@h1:26379,h2:26380/mymaster/1",
        "sentinel://h1/mymaster",
        "redis+sentinel://h:1,h:2/mymaster?db=3",
        "redis://cache/1?socket_timeout=2.5&client_name=hf&protocol=3&retry_on_timeout=yes",
        "rediss://cache/1?ssl_cert_reqs=none&ssl_include_verify_flags=VERIFY_X509_STRICT",
    ],
)
def test_every_redis_url_shape_hookfleet_speaks_is_accepted(url: str) -> None:
    assert Settings.from_env({"HOOKFLEET_REDIS_URL": url}).redis_url == url


def test_working_database_urls_are_accepted(tmp_path: Path) -> None:
    for url in (
        "mysql+pymysql://hookfleet:pw@db:3306/hookfleet",
        "mariadb+pymysql://hookfleet@db/hookfleet",
        "mysql+pymysql://hf:pw@db/hookfleet?charset=utf8mb4&connect_timeout=5&local_infile=0",
        "sqlite:///hookfleet.db?timeout=5",
        "sqlite://",
        "sqlite:///:memory:",
        f"sqlite:///{tmp_path}/not/yet/made/hookfleet.db",  # models.engine makes it
    ):
        assert Settings.from_env({"HOOKFLEET_DATABASE_URL": url}).database_url == url


def test_the_query_options_accepted_are_ones_redis_py_parses_and_its_connections_take() -> None:
    import inspect

    import redis
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    from models import url_knobs as k

    def keywords(cls: type) -> set[str]:
        return {
            name
            for klass in cls.__mro__
            if "__init__" in vars(klass)
            for name in inspect.signature(klass.__init__).parameters
        }

    typed = {*k.QUERY_WHOLE_NUMBERS, *k.QUERY_SECONDS, *k.QUERY_FLAGS, "protocol"}
    tls_typed = {*k.QUERY_TLS_NUMBERS, *k.QUERY_TLS_FLAGS, *k.QUERY_TLS_VERIFY_FLAGS}
    assert typed | tls_typed <= set(URL_QUERY_ARGUMENT_PARSERS)
    pool_only = {"max_connections", "timeout"}  # the pool's keywords, not the connection's
    plain = typed | set(k.QUERY_TEXT)
    assert plain - pool_only <= keywords(redis.Connection)
    tls = plain | tls_typed | set(k.QUERY_TLS_TEXT)
    assert tls - pool_only <= keywords(redis.SSLConnection)
    unix = plain - pool_only - {"socket_keepalive"}
    assert unix <= keywords(redis.UnixDomainSocketConnection)


@pytest.fixture(scope="module")
def pem_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made by openssl (tests/run.sh installs it)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=hookfleet-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_a_certificate_option_naming_a_file_that_is_no_certificate_is_refused(
    tmp_path: Path, pem_pair: tuple[Path, Path]
) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    cert, key = pem_pair
    refused = {
        "HOOKFLEET_DATABASE_URL": [
            f"mysql+pymysql://hf:s3cret@db/hookfleet?ssl_ca={junk}",
            f"mysql+pymysql://hf:s3cret@db/hookfleet?ssl_cert={junk}&ssl_key={key}",
            f"mysql+pymysql://hf:s3cret@db/hookfleet?ssl_cert={cert}&ssl_key={junk}",
        ],
        "HOOKFLEET_REDIS_URL": [
            f"rediss://:s3cret@cache/0?ssl_ca_certs={junk}",
            f"rediss://:s3cret@cache/0?ssl_certfile={junk}&ssl_keyfile={key}",
            f"rediss://:s3cret@cache/0?ssl_certfile={cert}&ssl_keyfile={junk}",
            f"rediss://:s3cret@cache/0?ssl_ca_certs={tmp_path / 'missing.pem'}",
        ],
    }
    for name, urls in refused.items():
        for url in urls:
            with pytest.raises(ConfigError) as refusal:
                Settings.from_env({name: url})
            message = str(refusal.value)
            assert message.startswith(f"{name} has ?ssl_"), message
            assert "s3cret" not in message and "\n" not in message


def test_certificate_options_naming_real_pem_files_are_accepted(
    pem_pair: tuple[Path, Path],
) -> None:
    cert, key = pem_pair
    database = f"mysql+pymysql://hf:pw@db/hookfleet?ssl_ca={cert}&ssl_cert={cert}&ssl_key={key}"
    redis_url = f"rediss://cache/0?ssl_ca_certs={cert}&ssl_certfile={cert}&ssl_keyfile={key}"
    settings = Settings.from_env(
        {"HOOKFLEET_DATABASE_URL": database, "HOOKFLEET_REDIS_URL": redis_url}
    )
    assert (settings.database_url, settings.redis_url) == (database, redis_url)
