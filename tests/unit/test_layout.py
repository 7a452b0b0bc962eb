"""The shape the project promises: imports run one way, nothing happens at import."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.processes import ROOT


def test_imports_follow_the_declared_contracts() -> None:
    """pyproject's [tool.importlinter] contracts: models imports neither side, the
    receiver no worker code nor Celery, the business record no queue machinery, the
    outbound clients and shared helpers no job code, and the worker packages import
    downwards only (README "Layout")."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and "KEPT" in done.stdout


def test_every_worker_package_has_its_place_in_a_contract() -> None:
    """A package added under workers/ is placed in the layers (or fenced by a contract of
    its own), so the import rules cover it from its first commit."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    named = set()
    for contract in config["contracts"]:
        for entry in contract.get("layers", []) + contract.get("source_modules", []):
            named |= {part.strip() for part in entry.split("|")}
    packages = {f"workers.{init.parent.name}" for init in (ROOT / "workers").glob("*/__init__.py")}

    assert packages - named == set()


def test_top_level_is_exactly_the_documented_layout() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not tracked:
        pytest.fail("not a git checkout")
    top = {Path(p).parts[0] for p in tracked if not p.startswith(".")}
    assert top == {
        "pyproject.toml",
        "ingest",
        "workers",
        "models",
        "deploy",
        "tests",
        "Procfile",
        "README.md",
    }


@pytest.mark.slow  # a probe as a process
def test_the_receiver_loads_without_celery_or_worker_code() -> None:
    code = (
        "import sys, ingest; ingest.create_app({'HOOKFLEET_REDIS_URL': 'redis://127.0.0.1:1/0'});"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('celery', 'workers')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
