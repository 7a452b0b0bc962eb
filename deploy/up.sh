#!/usr/bin/env bash
# The whole fleet on this machine: receiver, a worker per queue, beat, a private Redis
# (unless HOOKFLEET_REDIS_URL is set) and SQLite in ./var (unless
# HOOKFLEET_DATABASE_URL is set). Arguments go to `hookfleet up` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/venv.sh
hookfleet_venv embedded
exec .venv/bin/hookfleet up "$@"
