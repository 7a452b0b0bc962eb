"""The README's signed curl examples work, pasted as they are, against a real gunicorn.

Each ``sh`` block marked ``# readme-example: <name>`` is run with bash, with only its
``url=`` pointed at the test's port, against the Procfile's ``web`` process configured
with the secrets the examples name.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from models.business import Branch, Company
from models.migrate import upgrade
from models.settings import Settings
from tests.processes import ROOT, Processes
from tests.servers import RedisServer

EXAMPLES = dict(
    re.findall(
        r"```sh\n# readme-example: ([\w-]+)\n(.*?)```",
        (ROOT / "README.md").read_text(),
        flags=re.DOTALL,
    )
)
SECRETS = {
    "HOOKFLEET_STRIPE_SECRETS": "whsec_hookfleet_example",
    "HOOKFLEET_CALCOM_SECRETS": "calcom_hookfleet_example",
    "HOOKFLEET_RETELL_SECRETS": "key_hookfleet_example",
    "HOOKFLEET_STANDARD_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("openssl")), reason="needs curl and openssl"
)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("readme")
    database_url = f"sqlite:///{tmp / 'hookfleet.db'}"
    upgrade(Settings(database_url=database_url))
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        company = Company(name="Salon Ada")
        session.add(company)
        session.add(
            Branch(company=company, name="Mitte", phone="030 901820", retell_agent_id="agent_mitte")
        )
    engine.dispose()
    processes = Processes.for_servers(
        tmp / "fleet",
        HOOKFLEET_REDIS_URL=redis_server.url,
        HOOKFLEET_DATABASE_URL=database_url,
        **SECRETS,
    )
    processes.start("web")
    processes.wait_for_web()
    try:
        yield processes.base_url
    finally:
        processes.stop_all()


def run_example(name: str, base_url: str) -> tuple[int, dict[str, object]]:
    script = EXAMPLES[name].replace("url=http://127.0.0.1:8000", f"url={base_url}", 1)
    assert script != EXAMPLES[name], f"example {name} no longer sets url="
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    status = int(head.split()[1])
    return status, json.loads(body)


def test_the_readme_has_an_example_for_every_provider() -> None:
    assert set(EXAMPLES) >= {"stripe", "calcom", "retell", "retell-inbound", "standard"}


@pytest.mark.parametrize("name", ["stripe", "calcom", "retell", "standard"])
def test_a_pasted_example_is_accepted_and_a_second_paste_is_a_duplicate(
    web: str, name: str
) -> None:
    first_status, first = run_example(name, web)
    second_status, second = run_example(name, web)

    assert (first_status, first["status"]) == (202, "accepted"), first
    assert (second_status, second["status"]) == (200, "duplicate"), second
    assert second["event_id"] == first["event_id"]


def test_the_pasted_inbound_example_is_answered_with_the_branch_agent(
    web: str, redis_url: str
) -> None:
    # redis_url empties the shared test Redis first: an earlier test's inbound call to
    # the same number, answered "no branch" from its own database, is cached there for
    # 10 s (ingest.inbound.UNKNOWN_TTL_S) and would answer for this fleet's branch.
    status, answer = run_example("retell-inbound", web)

    assert status == 200
    assert answer["call_inbound"]["override_agent_id"] == "agent_mitte"  # type: ignore[index]
    assert answer["call_inbound"]["dynamic_variables"] == {  # type: ignore[index]
        "company_name": "Salon Ada",
        "branch_name": "Mitte",
        "branch_timezone": "Europe/Berlin",
        "caller_number": "+4915112345678",
    }


def test_every_example_names_secrets_the_test_configures() -> None:
    # If the README's secrets drift from SECRETS, the examples above would fail with
    # 401; this says why directly.
    text = "\n".join(EXAMPLES.values())
    for secret in SECRETS.values():
        assert secret in text
