"""Integrity of the business record: what is wrong, and what can be repaired."""
