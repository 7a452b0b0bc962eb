"""How a ``hookfleet`` command in a second terminal finds the fleet ``hookfleet up`` runs.

``hookfleet up`` writes ``<var dir>/fleet.json`` once the receiver answers: its pid, the
receiver's URL and the ``HOOKFLEET_*`` environment it gave its processes (the private
Redis URL, the database URL, the ops listener, trial mode, secrets). The file is mode
0600 and holds nothing the same user could not already read from
``/proc/<pid>/environ`` of the fleet's processes. A pointer,
``$XDG_STATE_HOME/hookfleet/current`` (``~/.local/state/hookfleet/current``), holds the
file's path, so a command run from any directory finds it. Both go on a clean stop —
the pointer only while it still names this fleet, and back to the fleet it named before
when that one still runs.

:func:`find_fleet` looks in ``$HOOKFLEET_VAR_DIR`` when it is set, then where the
pointer says (the last fleet started; not ``./var``, so a command run in a checkout
where a fleet happens to run, a test for one, does not pick it up unasked). A file
whose pid no longer runs a ``hookfleet`` process (the fleet was killed) is stale: it is
ignored, with one line saying so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLEET_FILE = "fleet.json"


class StaleFleet(Exception):
    """A fleet file whose ``hookfleet up`` is no longer running."""


@dataclass(frozen=True)
class RunningFleet:
    """What a running ``hookfleet up`` told the commands after it."""

    path: Path
    pid: int
    receiver_url: str
    env: dict[str, str]


def pointer_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/hookfleet/current``, else ``~/.local/state/hookfleet/current``
    (the XDG Base Directory specification's user state directory)."""
    state = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME") or "~") / ".local/state")
    return Path(state).expanduser() / "hookfleet" / "current"


def write_fleet_file(
    var_dir: Path, *, receiver_url: str, env: Mapping[str, str], environ: Mapping[str, str]
) -> Path:
    """Write ``var_dir/fleet.json`` (mode 0600, replaced atomically) and point the user's
    state directory at it. ``env`` is the fleet's environment: only its ``HOOKFLEET_*``
    variables are kept. Returns the file's path."""
    path = var_dir / FLEET_FILE
    pointer = pointer_path(environ)
    record = {
        "pid": os.getpid(),
        "started_at": time.time(),
        "receiver_url": receiver_url,
        "env": {k: v for k, v in env.items() if k.startswith("HOOKFLEET_")},
        # The fleet the pointer named before this one: it gets the pointer back.
        "previous": _pointed_at(pointer, other_than=path),
    }
    _write_private(path, json.dumps(record, indent=2) + "\n")
    try:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        _write_private(pointer, f"{path}\n")
    except OSError:
        pass  # a read-only home: ./var and HOOKFLEET_VAR_DIR still find the fleet
    return path


def remove_fleet_file(path: Path, environ: Mapping[str, str]) -> None:
    """Remove the fleet file; and the pointer if it still names this file (another
    fleet's pointer is left alone), pointing it back at the fleet it named before this
    one started when that fleet still runs."""
    try:
        previous = str(json.loads(path.read_text()).get("previous") or "")
    except (OSError, ValueError, AttributeError):
        previous = ""
    path.unlink(missing_ok=True)
    pointer = pointer_path(environ)
    try:
        if pointer.read_text().strip() != str(path):
            return
        if previous and _still_runs(Path(previous)):
            _write_private(pointer, f"{previous}\n")
        else:
            pointer.unlink()
    except OSError:
        pass


def _pointed_at(pointer: Path, *, other_than: Path) -> str | None:
    """The fleet file ``pointer`` names, if it is not ``other_than`` and still runs."""
    try:
        named = Path(pointer.read_text().strip())
    except OSError:
        return None
    if named == other_than or not _still_runs(named):
        return None
    return str(named)


def _still_runs(path: Path) -> bool:
    try:
        read_fleet_file(path)
    except (OSError, ValueError, KeyError, TypeError, StaleFleet):
        return False
    return True


def read_fleet_file(path: Path) -> RunningFleet:
    """The fleet recorded in ``path``; raises OSError/ValueError when it cannot be read
    and StaleFleet when its ``hookfleet up`` no longer runs."""
    record: dict[str, Any] = json.loads(path.read_text())
    fleet = RunningFleet(
        path=path,
        pid=int(record["pid"]),
        receiver_url=str(record["receiver_url"]),
        env={str(k): str(v) for k, v in dict(record["env"]).items()},
    )
    if not _runs_hookfleet(fleet.pid):
        raise StaleFleet(
            f"ignoring {path}: the hookfleet up that wrote it (pid {fleet.pid}) is not running"
        )
    return fleet


def find_fleet(environ: Mapping[str, str], cwd: Path | None = None) -> RunningFleet | None:
    """The running fleet a command should use, or None. Raises StaleFleet when the only
    file found is stale (the caller says so in one line and goes on without it)."""
    stale: StaleFleet | None = None
    for path in _candidates(environ, cwd or Path.cwd()):
        try:
            return read_fleet_file(path)
        except StaleFleet as error:
            stale = stale or error
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if stale is not None:
        raise stale
    return None


def fill_from_fleet(environ: Mapping[str, str], fleet: RunningFleet) -> dict[str, str]:
    """``environ`` with the fleet's ``HOOKFLEET_*`` added where ``environ`` has none (or
    a blank one): what the user exported wins."""
    merged = dict(environ)
    for key, value in fleet.env.items():
        if not merged.get(key, "").strip():
            merged[key] = value
    return merged


def _candidates(environ: Mapping[str, str], cwd: Path) -> list[Path]:
    paths = []
    if environ.get("HOOKFLEET_VAR_DIR", "").strip():
        paths.append((cwd / environ["HOOKFLEET_VAR_DIR"].strip()) / FLEET_FILE)
    try:
        paths.append(Path(pointer_path(environ).read_text().strip()))
    except OSError:
        pass
    unique: list[Path] = []
    for path in paths:
        if path.exists() and path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return unique


def _runs_hookfleet(pid: int) -> bool:
    """Whether ``pid`` is alive and (where /proc tells) still a ``hookfleet`` process:
    a pid reused by some other program after a crash does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's: /proc below decides if it can
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    # Empty for a moment after exec (and for a zombie): unknown, so alive.
    return not cmdline or b"hookfleet" in cmdline


def _write_private(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    os.replace(temporary, path)
