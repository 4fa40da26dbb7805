#!/usr/bin/env bash
# Quick start: run the agent on the embedded example against a sandbox root.
# Makes a local Git repository from examples/ in .example/repo, then runs
# `setpoint agent` with root .example/root and state .example/state. Ctrl-C stops it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
ex="$here/.example"
mkdir -p "$ex/root"
if [ ! -d "$ex/repo/.git" ]; then
  mkdir -p "$ex/repo"
  cp -r examples/. "$ex/repo/"
  git -C "$ex/repo" init -q -b main
  git -C "$ex/repo" add -A
  git -C "$ex/repo" -c user.name="setpoint example" -c user.email=example@setpoint.invalid \
    commit -q -m "example: initial desired state"
fi
cat <<MSG
setpoint agent: repository $ex/repo (hosts/demo), target root $ex/root
Things to try in another terminal:
  echo hacked >> $ex/root/etc/motd           # drift: reverted on the next check
  .venv/bin/setpoint status --state $ex/state
  .venv/bin/setpoint history --state $ex/state
  cd $ex/repo && sed -i 's/workers = 2/workers = 4/' hosts/demo/files/config.ini \\
    && git commit -qam 'more workers'       # a commit: applied on the next poll
Stop with Ctrl-C.
MSG
exec .venv/bin/setpoint agent --repo "$ex/repo" --path hosts/demo --stack demo \
  --root "$ex/root" --state "$ex/state" --interval "${INTERVAL:-5}" --resync "${RESYNC:-10}"
