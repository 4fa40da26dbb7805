#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up .venv, then lint, type-check and test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k drift).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh dev
# Tests commit to real Git repositories; give git an identity if the machine has none.
git config --global user.email >/dev/null 2>&1 || git config --global user.email "ci@setpoint.invalid"
git config --global user.name >/dev/null 2>&1 || git config --global user.name "setpoint CI"
echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -n 2 -q "$@"
