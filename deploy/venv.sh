# Sourced by deploy/up.sh and tests/run.sh: make ./.venv hold Hookfleet with the given
# extras, (re)installing only when pyproject.toml changed since the last install.
hookfleet_venv() {
  local extras=$1 python=${PYTHON:-python3} stamp
  if ! command -v "$python" >/dev/null; then
    echo "Python 3.11+ is needed ($python not found)" >&2; return 1
  fi
  if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
      # Debian ships venv separately; install it when we may.
      rm -rf .venv
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        "$python" -m venv .venv
      else
        echo "cannot create a virtualenv: install python3-venv" >&2; return 1
      fi
    fi
  fi
  stamp="$(sha256sum pyproject.toml | cut -c1-16)-$extras"
  if [ "$(cat .venv/.hookfleet-installed 2>/dev/null)" != "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
    echo "$stamp" > .venv/.hookfleet-installed
  fi
}
