#!/usr/bin/env bash
# The whole test suite, on real Redis and real MariaDB (and SQLite). Installs what is
# missing (redis-server, mariadb-server with apt-get when root; the venv with pip),
# then lints, type-checks and runs pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
# The README's signed curl examples are run as written (tests/e2e/test_readme.py).
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "please install: ${missing[*]}" >&2
    exit 1
  fi
fi

# promtool checks and unit-tests deploy/prometheus; Debian ships it in "prometheus"
# (~7 s to install without recommends, which would add node-exporter and more).
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing prometheus (for promtool)"
    # The package would start a Prometheus server; policy-rc.d forbids that here.
    policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      policy=added
    fi
    apt-get update -qq
    status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      >/dev/null || status=$?
    [ "$policy" = added ] && rm -f /usr/sbin/policy-rc.d
    [ "$status" = 0 ] || exit "$status"
  else
    echo "please install prometheus (for promtool)" >&2
    exit 1
  fi
fi

. deploy/venv.sh
hookfleet_venv test,embedded

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# pytest exits 5 when it collected nothing; that is a failure here too.
# Side by side (pytest-xdist): HOOKFLEET_TEST_WORKERS processes, 4 unless told (each starts
# its own Redis and MariaDB; most rows wait on real servers, sockets and deadlines, which
# more processes fill: on two cores, same tree, same half hour, everything but the fault
# suite took 2 min 55 s with 4 against 3 min 38 s with 3, and the whole run 6 min 15 s
# with 4 against 7 min 33 s with 3; README *Tests*);
# HOOKFLEET_TEST_WORKERS=0 runs every test in this one process, in order.
# A failed test runs once more (pytest-rerunfailures; shown as R in the summary): the
# fault and e2e rows race real processes on two shared cores. Failing twice fails.
exec .venv/bin/pytest -n "${HOOKFLEET_TEST_WORKERS:-4}" --dist loadgroup --reruns 1 "$@"
