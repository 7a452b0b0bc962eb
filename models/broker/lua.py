"""Hookfleet's Redis Lua scripts, kept as ``.lua`` files beside the module that runs them.

Read from the installed package (they ship as package data), so an editor, ``luacheck``
and a reviewer see Lua rather than a Python string.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def lua(package: str, *names: str) -> str:
    """The text of ``<package>/<name>.lua`` for each name, joined in order (a script that
    needs a shared function names that file first). Raises ``FileNotFoundError``."""
    folder = resources.files(package)
    return "".join(folder.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in names)
