"""What an integrity run found or changed: :class:`Report`, and the batched read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

EXAMPLES = 5


@dataclass
class Finding:
    """One kind of problem: how many rows (or groups) and the first few, described."""

    kind: str
    label: str
    repairable: bool
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What a run found (``applied`` False) or changed (True), per kind, in a fixed order.

    ``problems`` counts what ``fix`` repairs; the rest (appointments without a customer,
    invalid phones, phones now shared) is for a person to review: nothing automatic can
    clear it, so it does not fail ``check``.
    """

    applied: bool
    max_examples: int = EXAMPLES
    findings: dict[str, Finding] = field(default_factory=dict)

    def kind(self, kind: str, label: str, *, repairable: bool) -> None:
        self.findings.setdefault(kind, Finding(kind, label, repairable))

    def add(self, kind: str, example: str) -> None:
        finding = self.findings[kind]
        finding.count += 1
        if len(finding.examples) < self.max_examples:
            finding.examples.append(example)

    def counts(self) -> dict[str, int]:
        """Kinds with something found, and how much."""
        return {f.kind: f.count for f in self.findings.values() if f.count}

    @property
    def problems(self) -> int:
        return sum(f.count for f in self.findings.values() if f.repairable)


def batches(
    engine: Engine, key: Any, query: Callable[[Any], Any], batch_size: int
) -> Iterator[list[Any]]:
    """Rows of ``query(last_key)`` ordered by ``key``, ``batch_size`` at a time; each
    batch is read in its own short transaction."""
    last: Any = 0
    while True:
        with engine.connect() as connection:
            rows = list(connection.execute(query(last).order_by(key).limit(batch_size)))
        if not rows:
            return
        yield rows
        last = rows[-1][0]
