"""``hookfleet send <provider> [fixture|file]``: a sample delivery, signed as the
provider signs it, posted to the running receiver (what ``stripe trigger`` gives).

Signed with the first configured secret (``HOOKFLEET_<PROVIDER>_SECRETS``, from the
environment or the running fleet, see ``workers.cli.discovery``) by the receiver's own
signing functions, so a send proves the secret and the wire format end to end:

- Stripe: ``Stripe-Signature: t=<unix s>,v1=<hex>`` (``ingest.providers.stripe.sign``),
  body pretty-printed as Stripe sends it.
- Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature:
  v1,<base64>`` (``ingest.providers.standard.sign``).
- Retell: ``x-retell-signature: v=<unix ms>,d=<hex>`` (``ingest.providers.retell.sign``).
- Cal.com: ``X-Cal-Signature-256: <hex>`` and ``X-Cal-Webhook-Version``
  (``ingest.providers.calcom.sign``).

With no secret configured the delivery goes unsigned, and the command says so (in trial
mode, ``HOOKFLEET_<PROVIDER>_VERIFY=off``, it is accepted). Exit status 1 when the
receiver refuses the delivery or cannot be reached.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from models.settings import ProviderSettings
from workers.cli.params import invocation_fleet, invocation_settings
from workers.cli.samples import (
    DEFAULT_FIXTURE,
    PROVIDERS,
    UnknownFixture,
    fixture_names,
    fresh,
    load_fixture,
)

if TYPE_CHECKING:
    import httpx

# The receiver when no fleet was found and no --url given: this host, on the port the
# Procfile's `web` line binds (`PORT`, 8000 unless set).
DEFAULT_RECEIVER_URL = "http://127.0.0.1:$PORT"
CALCOM_WEBHOOK_VERSION = "2021-10-20"
TIMEOUT_S = 15.0


@click.command()
@click.argument("provider", type=click.Choice(PROVIDERS))
@click.argument("sample", required=False, metavar="[FIXTURE|FILE]")
@click.option("--list", "list_only", is_flag=True, help="List PROVIDER's fixtures and exit.")
@click.option(
    "--url",
    default="",
    help=f"The receiver's base URL [default: the running fleet's, else {DEFAULT_RECEIVER_URL}].",
)
@click.option(
    "--same-id",
    is_flag=True,
    help="Keep the sample's event id (a second send is a duplicate) instead of a new one.",
)
def send(provider: str, sample: str | None, list_only: bool, url: str, same_id: bool) -> None:
    """Sign a sample PROVIDER delivery with the configured secret and post it to the
    receiver; print the answer. FIXTURE is one of `--list` (default: a common event),
    FILE a JSON body of your own. Each send is a new event (new ids, the time now)."""
    if list_only:
        for name in fixture_names(provider):
            click.echo(f"{name}{'  (default)' if name == DEFAULT_FIXTURE[provider] else ''}")
        return
    name, body_text = _read_sample(provider, sample)
    every = invocation_settings()
    settings = every.provider(provider)
    base = url or _fleet_url(every.port)
    if body_text is not None and same_id:
        body = body_text.encode()  # a file sent again as it is, byte for byte
        extra: dict[str, str] = {}
        if provider == "standard":
            extra = fresh(provider, None, same_id=True).headers
    else:
        fresh_sample = fresh(provider, _parse(name, body_text, provider), same_id=same_id)
        body, extra = _serialize(provider, fresh_sample.payload), fresh_sample.headers
    headers, how = _sign(provider, body, settings, extra)
    target = f"{base.rstrip('/')}/webhooks/{provider}"
    click.echo(f"POST {target}  ({name}, {how})")
    import httpx  # here, not at the top: `send --list` and a bad secret post nothing

    try:
        answer = httpx.post(target, content=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as error:
        raise click.ClickException(
            f"no answer from {target}: {error}. Is `hookfleet up` running? (--url to choose)"
        ) from None
    _print_answer(provider, answer)


def _read_sample(provider: str, sample: str | None) -> tuple[str, str | None]:
    """``(name, text)``: text is a file's content, None for a shipped fixture."""
    sample = sample or DEFAULT_FIXTURE[provider]
    path = Path(sample)
    if path.is_file():
        return path.name, path.read_text(encoding="utf-8")
    if sample not in fixture_names(provider) and ("/" in sample or sample.endswith(".json")):
        raise click.ClickException(f"no such file: {sample}")
    return sample, None


def _parse(name: str, text: str | None, provider: str) -> Any:
    if text is None:
        try:
            return load_fixture(provider, name)
        except UnknownFixture as error:
            raise click.ClickException(str(error)) from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise click.ClickException(f"{name} is not JSON: {error}") from None


def _serialize(provider: str, payload: Any) -> bytes:
    if provider == "stripe":  # Stripe sends its events pretty-printed
        return json.dumps(payload, indent=2, ensure_ascii=False).encode()
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _fleet_url(port: int) -> str:
    fleet = invocation_fleet()
    return fleet.receiver_url if fleet else DEFAULT_RECEIVER_URL.replace("$PORT", str(port))


def _sign(
    provider: str, body: bytes, settings: ProviderSettings, extra: dict[str, str]
) -> tuple[dict[str, str], str]:
    """The delivery's headers, signed with the first configured secret when there is
    one, and a few words on how it was signed."""
    from ingest.providers import calcom, retell, standard, stripe

    variable = f"HOOKFLEET_{provider.upper()}_SECRETS"
    headers = {"content-type": "application/json", "user-agent": "hookfleet-send", **extra}
    now = time.time()
    if provider == "standard":
        headers["webhook-timestamp"] = str(int(now))
    elif provider == "calcom":
        headers["x-cal-webhook-version"] = CALCOM_WEBHOOK_VERSION
    if not settings.secrets:
        if not settings.verify:
            return headers, f"unsigned: trial mode, HOOKFLEET_{provider.upper()}_VERIFY=off"
        click.echo(
            f"warning: no secret configured for {provider} ({variable}); sending it "
            "unsigned, the receiver will refuse it",
            err=True,
        )
        return headers, "unsigned"
    secret = settings.secrets[0]
    try:
        if provider == "stripe":
            headers["stripe-signature"] = stripe.sign(secret, body, int(now))
        elif provider == "standard":
            headers["webhook-signature"] = standard.sign(
                secret, body, int(now), webhook_id=headers["webhook-id"]
            )
        elif provider == "retell":
            headers["x-retell-signature"] = retell.sign(secret, body, int(now * 1000))
        else:
            headers["x-cal-signature-256"] = calcom.sign(secret, body)
    except ValueError as error:  # a Standard Webhooks secret that is not whsec_<base64>
        raise click.ClickException(f"{variable}: {error}") from None
    return headers, f"signed with the first of {variable}"


def _print_answer(provider: str, answer: httpx.Response) -> None:
    click.echo(f"{answer.status_code} {answer.reason_phrase}")
    try:
        document = answer.json()
    except ValueError:
        click.echo(answer.text)
        document = None
    else:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    if answer.status_code < 400:
        return
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        reason = f"{error.get('code')}: {error.get('message')}"
    else:
        reason = f"status {answer.status_code}"
    hint = ""
    if answer.status_code == 401:
        hint = (
            f" (the signing secret, HOOKFLEET_{provider.upper()}_SECRETS here, must be one "
            "the receiver has)"
        )
    raise click.ClickException(f"refused: {reason}{hint}")
