"""The provider registry: URL segment → provider. Adding a provider is one line here."""

from __future__ import annotations

from ingest.providers import calcom, retell, standard, stripe
from ingest.providers.base import Provider

REGISTRY: dict[str, Provider] = {
    "retell": retell.PROVIDER,
    "calcom": calcom.PROVIDER,
    "stripe": stripe.PROVIDER,
    "standard": standard.PROVIDER,
}


def find_provider(name: str) -> Provider | None:
    return REGISTRY.get(name)
