"""A finding: one thing an operator must fix (error) or should look at (warning)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    message: str  # what is wrong, naming the offending value
    action: str  # what to do about it, concretely

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def error(code: str, message: str, action: str) -> Finding:
    return Finding("error", code, message, action)


def warning(code: str, message: str, action: str) -> Finding:
    return Finding("warning", code, message, action)


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def findings_table(findings: list[Finding], width: int = 100) -> str:
    """The findings as a plain-text table an operator reads in a terminal."""
    import textwrap

    if not findings:
        return "No findings: the branch is ready to provision."
    ordered = sorted(findings, key=lambda f: (f.severity != "error", f.code))
    code_width = max(len(f.code) for f in ordered)
    indent = " " * (9 + code_width + 2)
    text_width = max(40, width - len(indent))
    lines = [f"{'SEVERITY':<9}{'CODE':<{code_width + 2}}PROBLEM → WHAT TO DO", "-" * width]
    for f in ordered:
        message = textwrap.wrap(f.message, text_width) or [""]
        action = textwrap.wrap("→ " + f.action, text_width)
        lines.append(f"{f.severity:<9}{f.code:<{code_width + 2}}{message[0]}")
        lines += [indent + line for line in message[1:] + action]
    errors = sum(f.severity == "error" for f in ordered)
    warnings = len(ordered) - errors
    lines += ["-" * width, f"{errors} error(s), {warnings} warning(s)"]
    return "\n".join(lines)
