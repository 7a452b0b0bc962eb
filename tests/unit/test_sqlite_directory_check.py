"""A SQLite URL is checked where settings are built by trying what the engine will do:
make a directory where the file's directory is (or would be made). Mode bits and
``os.access`` say yes to root for ``/proc`` and ``/sys``, where the engine then failed
with a traceback in every entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.settings import ConfigError, Settings


@pytest.mark.parametrize(
    ("url", "where"),
    [("sqlite:////proc/x/hf.db", "/proc"), ("sqlite:////sys/hf.db", "/sys")],
)
def test_a_sqlite_file_where_nothing_can_be_made_is_refused_naming_the_setting(
    url: str, where: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"HOOKFLEET_DATABASE_URL": url})
    message = str(refused.value)
    assert message.startswith("HOOKFLEET_DATABASE_URL ") and f"in {where} (" in message
    assert "\n" not in message


def test_checking_a_sqlite_url_leaves_nothing_behind(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path}/hf.db", f"sqlite:///{tmp_path}/not/yet/hf.db"):
        assert Settings.from_env({"HOOKFLEET_DATABASE_URL": url}).database_url == url
    assert list(tmp_path.iterdir()) == []
