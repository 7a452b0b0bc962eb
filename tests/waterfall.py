"""A text waterfall of one trace, drawn from spans an OTLP receiver captured
(tests/otlp.py): the picture in the README's Tracing section.

``python -m tests.waterfall spans.json`` draws the trace a test saved
(``HOOKFLEET_TRACE_OUT``, see tests/e2e/test_tracing.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from tests.otlp import Span

KINDS = {1: "", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def waterfall(spans: list[Span], width: int = 36) -> str:
    """Each trace among ``spans`` in the order it started, drawn by :func:`draw`."""
    traces: dict[str, list[Span]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        traces.setdefault(span.trace_id, []).append(span)
    return "\n\n".join(draw(trace, width) for trace in traces.values())


def draw(spans: list[Span], width: int = 36) -> str:
    """One trace: a line per span, children under their parent (by start time), with
    its service, kind, duration and a bar placed on the trace's time axis."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[Span]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in by_id else ""
        children.setdefault(parent, []).append(s)
    start = min(s.start_ns for s in spans)
    total = max(max(s.end_ns for s in spans) - start, 1)
    lines = [f"trace {spans[0].trace_id}   {total / 1e6:.1f} ms in all"]

    def line(span: Span, depth: int) -> None:
        left = int((span.start_ns - start) / total * width)
        size = max(1, int((span.end_ns - span.start_ns) / total * width))
        bar = " " * left + "█" * min(size, width - left)
        kind = KINDS.get(span.kind, "")
        label = f"{'  ' * depth}{span.name}" + (f" ({kind})" if kind else "")
        lines.append(
            f"{label[:52]:<52} {span.service[:18]:<18} "
            f"{(span.end_ns - span.start_ns) / 1e6:>8.2f} ms |{bar:<{width}}|"
        )
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            line(child, depth + 1)

    for root in sorted(children.get("", []), key=lambda s: s.start_ns):
        line(root, 0)
    return "\n".join(lines)


def save(spans: list[Span], path: Path) -> None:
    path.write_text(json.dumps([asdict(s) for s in spans], indent=1))


def load(path: Path) -> list[Span]:
    return [
        Span(**{**raw, "links": tuple(map(tuple, raw["links"])), "events": tuple(raw["events"])})
        for raw in json.loads(path.read_text())
    ]


if __name__ == "__main__":
    print(waterfall(load(Path(sys.argv[1]))))
