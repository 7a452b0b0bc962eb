"""Tests against real Redis and databases (MariaDB and SQLite), in-process."""
