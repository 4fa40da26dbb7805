#!/usr/bin/env bash
# Shared set-up for the quick-start commands: a virtualenv in .venv with setpoint
# installed (editable) and, with "dev", the test tools. Idempotent and quiet.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
python=${PYTHON:-python3}
# 3.11.4: tarfile's extraction filters (the same check as setpoint.python_problem).
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11, 4))' 2>/dev/null; then
  echo "setpoint needs Python 3.11.4 or newer ($python is $("$python" --version 2>&1 || echo missing)):" \
    "tarfile's extraction filters, which keep a release archive or an exported Git tree" \
    "from writing outside its directory, came in 3.11.4. Use a newer one: PYTHON=python3.12 $0" >&2
  exit 1
fi
command -v git >/dev/null || { echo "git is required (apt-get install git)" >&2; exit 1; }
if [ "${1:-run}" = dev ]; then
  # The signature tests make real keys: gpg (gnupg) and ssh-keygen (openssh-client).
  missing=""
  command -v gpg >/dev/null || missing="$missing gnupg"
  command -v ssh-keygen >/dev/null || missing="$missing openssh-client"
  # The ssh source tests run a real sshd on a loopback port (Debian's openssh-server).
  [ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
  # The fleet tests and bench/fleet.py run a real NATS server (Debian's nats-server, 2.9).
  [ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null || missing="$missing nats-server"
  # The web UI tests drive Debian's headless Chromium through its chromedriver.
  command -v chromium >/dev/null || missing="$missing chromium"
  command -v chromedriver >/dev/null || missing="$missing chromium-driver"
  # The PostgreSQL tests start their own server (initdb into a temp dir): Debian's package.
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing="$missing postgresql"
  # tests/test_metrics.py checks the shipped alert rules with promtool (Debian's prometheus).
  command -v promtool >/dev/null || missing="$missing prometheus"
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
      echo "the tests need:$missing (apt-get install$missing)" >&2
      exit 1
    fi
  fi
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
# This machine's pip config names local mirrors that may be absent: drop those warnings.
quiet_pip() { .venv/bin/python -m pip "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
stamp=".venv/.setpoint-installed-${1:-run}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  quiet_pip install -q --upgrade pip
  if [ "${1:-run}" = dev ]; then
    quiet_pip install -q -e '.[dev]'
  else
    quiet_pip install -q -e .
  fi
  touch "$stamp"
fi
