"""Tests of one module, no servers (or only an in-process one)."""
