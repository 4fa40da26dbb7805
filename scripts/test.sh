#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up .venv, then lint, type-check and test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k drift).
#
# As root (CI) the suite runs twice so that no environment skips half of it:
#  1. as root, in a private mount namespace when the machine allows one (the fault tests'
#     tmpfs mounts stay inside it), every test not marked `nonroot`;
#  2. as the unprivileged system user setpoint-test (created if missing), the tests
#     marked `nonroot` (root bypasses the permission checks they are about).
# As another user the suite runs once; the tests that need root skip and say why.
# With CI=true, SETPOINT_CI_NO_SKIPS=1 makes a "needs root"/"non-root" skip a failure.
# The last line is the combined count, `N passed, N failed, N skipped`; the exit status
# is non-zero if either run failed or collected nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh dev
# Tests commit to real Git repositories; give git an identity if the machine has none.
git config --global user.email >/dev/null 2>&1 || git config --global user.email "ci@setpoint.invalid"
git config --global user.name >/dev/null 2>&1 || git config --global user.name "setpoint CI"
echo "== ruff"
.venv/bin/ruff check src tests bench scripts
echo "== mypy"
.venv/bin/mypy
if [ "${CI:-}" = true ]; then export SETPOINT_CI_NO_SKIPS=1; fi

work="$(mktemp -d /tmp/setpoint-test.XXXXXX)"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"  # the test user writes its report and home below it
runs=()
selection=()
if [ $# -gt 0 ]; then selection=(--selection); fi
test_user=setpoint-test

# Why the non-root run cannot happen here (empty when it can), after making the user.
nonroot_obstacle() {
  command -v unshare >/dev/null || { echo "unshare (util-linux) is missing"; return; }
  if ! id -u "$test_user" >/dev/null 2>&1; then
    command -v useradd >/dev/null || { echo "no user $test_user and no useradd"; return; }
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$test_user" 2>&1 || { echo "useradd $test_user failed"; return; }
  fi
  unshare --mount --propagation private true 2>&1 || echo "no private mount namespace"
}

if [ "$(id -u)" != 0 ]; then
  echo "== pytest as $(id -un) (the tests that need root skip; CI runs them as root)"
  status=0
  .venv/bin/python -m pytest -n 2 -q --junitxml="$work/all.xml" "$@" || status=$?
  runs+=("as $(id -un)=$work/all.xml:$status")
else
  ns=()
  if why="$(unshare --mount --propagation private true 2>&1)"; then
    ns=(unshare --mount --propagation private --)
    echo "== pytest as root, in a private mount namespace"
  else
    echo "== pytest as root (no private mount namespace here: $why; the tmpfs fault tests" \
      "mount in this one, or skip and say why)"
  fi
  status=0
  "${ns[@]}" .venv/bin/python -m pytest -n 2 -q -m "not nonroot" \
    --junitxml="$work/root.xml" "$@" || status=$?
  runs+=("root run=$work/root.xml:$status")

  obstacle="$(nonroot_obstacle)"
  mkdir -p "$work/home" "$work/reports"
  if [ -z "$obstacle" ]; then
    echo "== pytest as $test_user: the tests marked nonroot"
    chown "$test_user:" "$work/home" "$work/reports"
    base_prefix="$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')"
    status=0
    env_args=(
      --env "HOME=$work/home" --env "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
      --env LANG=C.UTF-8 --env PYTHONDONTWRITEBYTECODE=1 --env "CI=${CI:-}"
      --env "SETPOINT_CI_NO_SKIPS=${SETPOINT_CI_NO_SKIPS:-}"
      --env "GIT_AUTHOR_NAME=setpoint CI" --env "GIT_AUTHOR_EMAIL=ci@setpoint.invalid"
      --env "GIT_COMMITTER_NAME=setpoint CI" --env "GIT_COMMITTER_EMAIL=ci@setpoint.invalid"
    )
    unshare --mount --propagation private -- .venv/bin/python scripts/ci_support.py as-user \
      --cwd "$here" --scratch "$work" --reach "$here" --reach "$base_prefix" \
      --reach "$(readlink -f .venv/bin/python)" "${env_args[@]}" "$test_user" -- \
      "$here/.venv/bin/python" -m pytest -q -p no:cacheprovider -m nonroot \
      --junitxml="$work/reports/nonroot.xml" "$@" || status=$?
    runs+=("run as $test_user=$work/reports/nonroot.xml:$status")
  else
    # They still run, as root, so that they skip with their reason and are counted (and
    # fail under SETPOINT_CI_NO_SKIPS).
    echo "== the nonroot tests cannot run as $test_user here ($obstacle): as root, to count them"
    status=0
    .venv/bin/python -m pytest -q -p no:cacheprovider -m nonroot \
      --junitxml="$work/reports/nonroot.xml" "$@" || status=$?
    runs+=("nonroot tests as root=$work/reports/nonroot.xml:$status")
  fi
fi
.venv/bin/python scripts/ci_support.py summary "${selection[@]}" "${runs[@]}"
