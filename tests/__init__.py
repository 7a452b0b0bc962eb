"""Hookfleet's tests. Imported before any conftest or test module (pytest imports the
package first), which is why bytecode is switched back on here."""

import sys

# Write bytecode whatever PYTHONDONTWRITEBYTECODE says (this machine's environment sets
# it): without it pytest rewrites every test module's assertions again on every run, and
# the project's modules are compiled again in each test process and in every receiver,
# worker and console script the tests start (those inherit the variable, so they only
# read what a test process wrote). Nothing relies on there being no __pycache__
# (.gitignore lists it).
sys.dont_write_bytecode = False
