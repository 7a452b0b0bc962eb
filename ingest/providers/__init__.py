"""The provider registry: URL segment → provider. Adding a provider is one line here."""

from __future__ import annotations

from ingest.providers import standard
from ingest.providers.base import Provider

REGISTRY: dict[str, Provider] = {
    "standard": standard.PROVIDER,
}


def find_provider(name: str) -> Provider | None:
    return REGISTRY.get(name)
