"""Configuration from HOOKFLEET_* variables: defaults, parsing, clear refusals."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import pytest

from models.knobs import Knob, items, knobs, number, positive, rate, switch, whole
from models.settings import (
    ConfigError,
    OutboundSettings,
    ProviderSettings,
    Settings,
    configuration_table,
)
from tests.processes import ROOT


def test_defaults_are_the_embedded_setup() -> None:
    settings = Settings.from_env({})

    assert settings.database_url == "sqlite:///var/hookfleet.db"
    assert settings.broker_url == settings.redis_url
    assert settings.dedup_on_broker
    assert settings.provider("standard").verify is True
    assert settings.provider("standard").dedup_ttl_s == 86400


def test_broker_defaults_to_the_dedup_redis_and_can_be_split() -> None:
    same = Settings.from_env({"HOOKFLEET_REDIS_URL": "redis://cache:6380/2"})
    split = Settings.from_env(
        {
            "HOOKFLEET_REDIS_URL": "redis://cache:6380/2",
            "HOOKFLEET_BROKER_URL": "redis://cache:6380/3",
        }
    )
    spelled_differently = Settings.from_env(
        {
            "HOOKFLEET_REDIS_URL": "redis://cache:6379",
            "HOOKFLEET_BROKER_URL": "redis://cache/0",
        }
    )

    assert same.broker_url == "redis://cache:6380/2" and same.dedup_on_broker
    assert not split.dedup_on_broker
    assert spelled_differently.dedup_on_broker


def test_provider_variables_are_read_per_provider() -> None:
    settings = Settings.from_env(
        {
            "HOOKFLEET_STANDARD_SECRETS": "whsec_a, whsec_b,,",
            "HOOKFLEET_STANDARD_TOLERANCE_S": "60",
            "HOOKFLEET_STRIPE_VERIFY": "off",
            "HOOKFLEET_STRIPE_DEDUP_TTL_S": "259200",
        }
    )

    assert settings.provider("standard").secrets == ("whsec_a", "whsec_b")
    assert settings.provider("standard").tolerance_s == 60
    assert settings.provider("stripe").verify is False
    assert settings.provider("stripe").dedup_ttl_s == 259200


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HOOKFLEET_DB_POOL_SIZE", "ten"),
        ("HOOKFLEET_MAX_BODY_BYTES", "-1"),
        ("HOOKFLEET_STANDARD_VERIFY", "maybe"),
        ("HOOKFLEET_REDIS_TIMEOUT_S", "soon"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_a_task_may_outlive_the_visibility_timeout_now_a_last_resort() -> None:
    settings = Settings.from_env(
        {"HOOKFLEET_VISIBILITY_TIMEOUT_S": "300", "HOOKFLEET_TASK_TIME_LIMIT_S": "600"}
    )
    assert (settings.task_time_limit_s, settings.visibility_timeout_s) == (600, 300)
    assert Settings.from_env({}).visibility_timeout_s >= 3600  # a last resort: hours


def test_the_lease_is_read_renewed_five_times_per_period_and_not_too_short() -> None:
    assert (Settings.from_env({}).lease_s, Settings.from_env({}).lease_renew_s) == (8.0, 1.6)
    assert Settings.from_env({"HOOKFLEET_LEASE_S": "20"}).lease_renew_s == 4.0
    with pytest.raises(ConfigError, match="HOOKFLEET_LEASE_S"):
        Settings.from_env({"HOOKFLEET_LEASE_S": "0.5"})


def test_stuck_work_waits_longer_than_a_running_task_or_is_off() -> None:
    assert Settings.from_env({}).stuck_after_s == 1800
    assert Settings.from_env({"HOOKFLEET_STUCK_AFTER_S": "0"}).stuck_after_s == 0
    with pytest.raises(ConfigError, match=r"STUCK_AFTER_S must be above .*TASK_TIME_LIMIT"):
        Settings.from_env({"HOOKFLEET_STUCK_AFTER_S": "300"})
    with pytest.raises(ConfigError, match="only duplicates work"):
        Settings.from_env({"HOOKFLEET_TASK_TIME_LIMIT_S": "1800"})


def test_replica_confirmation_is_off_by_default_and_read_when_set() -> None:
    default = Settings.from_env({})
    on = Settings.from_env(
        {"HOOKFLEET_REDIS_MIN_REPLICAS": "2", "HOOKFLEET_REDIS_REPLICA_WAIT_MS": "50"}
    )

    assert (default.redis_min_replicas, default.redis_replica_wait_ms) == (0, 200)
    assert (on.redis_min_replicas, on.redis_replica_wait_ms) == (2, 50)


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"HOOKFLEET_REDIS_MIN_REPLICAS": "two"}, "HOOKFLEET_REDIS_MIN_REPLICAS"),
        ({"HOOKFLEET_REDIS_MIN_REPLICAS": "-1"}, "HOOKFLEET_REDIS_MIN_REPLICAS"),
        ({"HOOKFLEET_REDIS_REPLICA_WAIT_MS": "0.2s"}, "HOOKFLEET_REDIS_REPLICA_WAIT_MS"),
        # WAIT 0 would block until the replicas answer, however long.
        (
            {"HOOKFLEET_REDIS_MIN_REPLICAS": "1", "HOOKFLEET_REDIS_REPLICA_WAIT_MS": "0"},
            "wait forever",
        ),
        # The socket's read timeout must not fire before WAIT's own.
        (
            {
                "HOOKFLEET_REDIS_MIN_REPLICAS": "1",
                "HOOKFLEET_REDIS_REPLICA_WAIT_MS": "1000",
                "HOOKFLEET_REDIS_TIMEOUT_S": "2",
            },
            "half of HOOKFLEET_REDIS_TIMEOUT_S",
        ),
    ],
)
def test_unusable_replica_settings_are_refused(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        Settings.from_env(env)


def test_the_readme_configuration_table_is_the_declared_one() -> None:
    """Every variable, default and meaning in README "Configuration" comes from the
    declarations; regenerate with ``python -m models.settings`` after changing one."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration") : readme.index("### Providers")]
    table = re.search(r"^\| Variable \|.*?(?=\n\n)", section, flags=re.DOTALL | re.MULTILINE)

    assert table is not None, "README Configuration has no variable table"
    assert table.group(0) == configuration_table()


def test_an_empty_environment_gives_the_declared_defaults() -> None:
    # One default per knob: reading nothing must give what the fields declare.
    assert Settings.from_env({}) == Settings()
    assert OutboundSettings.from_env({}) == OutboundSettings()


def _other_value(declared: Knob, default: Any) -> tuple[str, Any]:
    """A valid value for ``declared`` that differs from ``default`` (and keeps the
    invariants between knobs), as text and as parsed."""
    if declared.parse is switch:
        return ("off" if default else "on"), not default
    if declared.parse in (whole, positive):
        value = 2 * (default or 0) + 1
        return str(value), value
    if declared.parse in (number, rate):
        value = 2 * default + 1
        return f"{value}", value
    if declared.parse is items:
        return "a, b,,", ("a", "b")
    if declared.env == "HOOKFLEET_PHONE_REGIONS":
        return "fr, be", ("FR", "BE")
    if declared.env == "PORT":
        return "8080", 8080
    if declared.env in ("HOOKFLEET_BIND", "HOOKFLEET_OPS_BIND"):
        return "10.0.0.1:9000", "10.0.0.1:9000"
    if declared.env == "HOOKFLEET_ROUTES":
        return "stripe=hookfleet.low", {"stripe": "hookfleet.low"}
    if declared.env == "HOOKFLEET_LOG_LEVEL":
        return "debug", "DEBUG"
    if declared.env == "HOOKFLEET_LOG_FORMAT":
        return "JSON", "json"
    if declared.env in ("HOOKFLEET_REDIS_URL", "HOOKFLEET_BROKER_URL"):
        return "redis://elsewhere.example:6380/1", "redis://elsewhere.example:6380/1"
    if declared.env == "HOOKFLEET_DATABASE_URL":
        return "mysql+pymysql://u@elsewhere.example/x", "mysql+pymysql://u@elsewhere.example/x"
    return "https://elsewhere.example/x", "https://elsewhere.example/x"


@pytest.mark.parametrize("cls", [Settings, OutboundSettings])
def test_every_declared_variable_is_read_into_its_field(cls: type) -> None:
    defaults = {f.name: getattr(cls(), f.name) for f in fields(cls)}
    for name, declared in knobs(cls):
        raw, expected = _other_value(declared, defaults[name])
        built = cls.from_env({declared.env: raw})

        assert getattr(built, name) == expected, declared.env


def test_a_provider_variable_is_read_for_that_provider_only() -> None:
    for name, declared in knobs(ProviderSettings):
        raw, expected = _other_value(declared, getattr(ProviderSettings(), name))
        built = Settings.from_env({declared.env.format(provider="STRIPE"): raw})

        assert getattr(built.provider("stripe"), name) == expected, declared.env
        assert getattr(built.provider("calcom"), name) == getattr(ProviderSettings(), name)


def test_the_retell_api_key_defaults_to_the_first_retell_secret() -> None:
    only_secrets = Settings.from_env({"HOOKFLEET_RETELL_SECRETS": " key_a , key_b"})
    both = Settings.from_env(
        {"HOOKFLEET_RETELL_SECRETS": "key_a", "HOOKFLEET_RETELL_API_KEY": "key_api"}
    )

    assert only_secrets.outbound.retell_api_key == "key_a"
    assert both.outbound.retell_api_key == "key_api"


def test_counts_that_must_be_positive_are_raised_to_one() -> None:
    settings = Settings.from_env({"HOOKFLEET_BATCH_SIZE": "0", "HOOKFLEET_DB_RETRY_ATTEMPTS": "0"})

    assert (settings.batch_size, settings.db_retry_attempts) == (1, 1)


def test_every_variable_the_code_reads_is_in_the_table() -> None:
    """A HOOKFLEET_* name in the code, the Procfile or the systemd units that the table
    lacks is a knob read past the declarations (or one the README forgot)."""
    table = configuration_table()
    suffixes = "|".join(k.env.split("}_")[1] for _, k in knobs(ProviderSettings))
    provider_knob = re.compile(rf"^HOOKFLEET_[A-Z0-9]+_({suffixes})$")
    sources = [ROOT / "Procfile", *(ROOT / "deploy" / "systemd").iterdir()]
    for package in ("ingest", "workers", "models"):
        sources += (ROOT / package).rglob("*.py")
    named = {
        name
        for path in sources
        if path.is_file()
        for name in re.findall(r"HOOKFLEET_[A-Z0-9_]+", path.read_text())
    }
    # Flask's config key for the Settings object, not a variable.
    named.discard("HOOKFLEET_SETTINGS")

    assert {n for n in named if f"`{n}`" not in table and not provider_knob.match(n)} == set()


@pytest.mark.parametrize("value", ["XX", "ZZ", "UN", "AUT", "001", "A T", "AT;DE", "DE,XX"])
def test_a_phone_region_phonenumbers_does_not_know_is_refused_naming_it(value: str) -> None:
    # A region phonenumbers does not know reads no national number: calls stored with
    # no branch, inbound calls answered with the default agent.
    bad = next(r for r in value.split(",") if r.strip().upper() not in ("DE", "AT"))

    with pytest.raises(ConfigError, match=rf"HOOKFLEET_PHONE_REGIONS entry '{re.escape(bad)}'"):
        Settings.from_env({"HOOKFLEET_PHONE_REGIONS": value})


@pytest.mark.parametrize(
    ("value", "regions"),
    [("at", ("AT",)), (" AT", ("AT",)), ("AT,", ("AT",)), ("AT,,de", ("AT", "DE"))],
)
def test_phone_regions_are_read_case_and_blank_insensitively(
    value: str, regions: tuple[str, ...]
) -> None:
    assert Settings.from_env({"HOOKFLEET_PHONE_REGIONS": value}).phone_regions == regions
    assert Settings.from_env({"HOOKFLEET_PHONE_REGIONS": ","}).phone_regions == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEB_CONCURRENCY", "0"),
        ("WEB_CONCURRENCY", "abc"),
        ("WEB_CONCURRENCY", "-1"),
        ("WEB_CONCURRENCY", "100000"),
        ("HOOKFLEET_WEB_THREADS", "0"),
        ("HOOKFLEET_WEB_THREADS", "abc"),
        ("PORT", "99999"),
        ("PORT", "abc"),
        ("PORT", "0"),
        ("HOOKFLEET_OPS_BIND", "127.0.0.1:99999"),
        ("HOOKFLEET_OPS_BIND", "abc"),
        ("HOOKFLEET_OPS_BIND", "127.0.0.1:"),
        ("HOOKFLEET_BIND", "nonsense::"),
        ("HOOKFLEET_BIND", "::1:8000"),
        ("HOOKFLEET_BIND", "unix:"),
        ("HOOKFLEET_WORKER_CONCURRENCY", "abc"),
        ("HOOKFLEET_WORKER_CONCURRENCY", "0"),
        ("HOOKFLEET_WORKER_CONCURRENCY", "100000"),
    ],
)
def test_a_process_size_or_address_no_server_could_use_is_refused_naming_it(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{name} "):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "address", ["127.0.0.1:8000", "0.0.0.0:1", "[::1]:8000", "[::]:65535", "unix:/run/hf.sock"]
)
def test_every_address_shape_gunicorn_binds_is_accepted(address: str) -> None:
    settings = Settings.from_env({"HOOKFLEET_BIND": address, "HOOKFLEET_OPS_BIND": address})
    assert (settings.bind, settings.ops_bind) == (address, address)


def test_the_procfile_and_up_default_the_worker_concurrency_as_the_settings_do() -> None:
    """The Procfile's ``${HOOKFLEET_WORKER_CONCURRENCY:-N}`` and ``hookfleet up
    --concurrency`` restate the setting's default (the Kubernetes commands are held to
    the Procfile word for word by tests/e2e/test_deploy.py)."""
    from workers.cli.main import up

    default = Settings().worker_concurrency
    procfile = (ROOT / "Procfile").read_text()
    assert set(re.findall(r"\$\{HOOKFLEET_WORKER_CONCURRENCY:-(\d+)\}", procfile)) == {str(default)}
    (option,) = (p for p in up.params if p.name == "concurrency")
    assert option.default == default
