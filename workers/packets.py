"""How large a statement the database takes, and how large a value is inside one.

MariaDB/MySQL refuse a statement larger than ``max_allowed_packet`` (error 1153, "Got
a packet bigger than 'max_allowed_packet' bytes"). PyMySQL sends each value inline,
as a quoted literal in which every backslash, quote, NUL, CR, LF and ^Z gains a
backslash (``pymysql.converters.escape_string``): a body of apostrophes or backslashes
takes twice its bytes. Sizes here are those escaped sizes, so a budget holds whatever
the text is.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

# What a statement carries besides its large values: SQL, column names, ids,
# timestamps. Generous, and taken once per statement.
STATEMENT_OVERHEAD_BYTES = 64 * 1024
# SQLite has no packet limit (a statement may reach SQLITE_MAX_LENGTH, 1e9 bytes); this
# keeps one statement, and the memory to build it, bounded.
SQLITE_STATEMENT_BUDGET = 16 * 1024 * 1024
_ESCAPED = (b"\\", b"'", b'"', b"\x00", b"\n", b"\r", b"\x1a")
# Each database's budget, by URL: a fact about the server, not a connection, so a forked
# child may inherit it (no PerProcess needed).
_BUDGETS: dict[str, int] = {}


def escaped_size(value: str | None) -> int:
    """Bytes ``value`` takes as a literal in a statement: its UTF-8 bytes plus one per
    character PyMySQL escapes (0 for None)."""
    if value is None:
        return 0
    encoded = value.encode("utf-8", "surrogatepass")
    return len(encoded) + sum(encoded.count(byte) for byte in _ESCAPED)


def statement_budget(session: Session) -> int:
    """Escaped bytes of values one statement may carry on this session's database:
    ``max_allowed_packet`` (read once per database) less STATEMENT_OVERHEAD_BYTES on
    MariaDB/MySQL; SQLITE_STATEMENT_BUDGET on SQLite."""
    bind = session.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        return SQLITE_STATEMENT_BUDGET
    key = bind.engine.url.render_as_string(hide_password=True)
    budget = _BUDGETS.get(key)
    if budget is None:
        packet = int(session.execute(text("SELECT @@max_allowed_packet")).scalar_one())
        budget = _BUDGETS[key] = max(packet - STATEMENT_OVERHEAD_BYTES, 1)
    return budget
