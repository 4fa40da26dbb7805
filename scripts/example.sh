#!/usr/bin/env bash
# Quick start: two hosts reconciling one fleet repository, in sandboxes (no root needed).
# Makes a local Git repository from examples/ in .example/repo (a Fleet file, a base,
# staging and prod overlays of one app, a worker role, a template and a SOPS secret),
# applies it once as a worker host (labels role=worker,env=staging; root
# .example/worker/root), then runs the agent as a web host (labels role=web,env=prod;
# root .example/root, state .example/state). Ctrl-C stops it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
ex="$here/.example"
mkdir -p "$ex/root" "$ex/worker/root"
if [ ! -d "$ex/repo/.git" ]; then
  mkdir -p "$ex/repo"
  cp -r examples/. "$ex/repo/"
  git -C "$ex/repo" init -q -b main
  git -C "$ex/repo" add -A
  git -C "$ex/repo" -c user.name="setpoint example" -c user.email=example@setpoint.invalid \
    commit -q -m "example: initial desired state"
fi
# The demo's age key is committed in examples/keys/ for this demo only (see its README).
host_config() {  # NAME ROOT STATE LABELS
  cat > "$ex/$1.yaml" <<YAML
root: $2
state: $3
sources:
  - {name: demo, url: $ex/repo, ref: main, interval: ${INTERVAL:-5}}
labels: {$4}
fleet: {source: demo, path: fleet.yaml}
decryption: {ageKeyFile: $here/examples/keys/demo-age.key}
YAML
}
host_config web "$ex/root" "$ex/state" "role: web, env: prod"
host_config worker "$ex/worker/root" "$ex/worker/state" "role: worker, env: staging"

echo "== host 2 (role=worker, env=staging): one apply of the same repository"
.venv/bin/setpoint apply --config "$ex/worker.yaml" || true
echo "host 2 now holds:"
(cd "$ex/worker/root" && find . -type f | sort | sed 's/^\./  /')
cat <<MSG

== host 1 (role=web, env=prod): the agent, on repository $ex/repo, root $ex/root
Things to try in another terminal:
  curl 127.0.0.1:8080/                       # hello 1.0, workers=4 (prod's overlay)
  echo hacked >> $ex/root/etc/motd           # drift: reverted at once
  .venv/bin/setpoint status --state $ex/state
  .venv/bin/setpoint history --state $ex/state
  .venv/bin/setpoint render $ex/repo/envs/staging --labels role=web,env=staging
  cd $ex/repo && sed -i 's/workers: 4/workers: 6/' envs/prod/setpoint.yaml \\
    && git commit -qam 'more workers'       # a commit: applied on the next poll, SIGHUP
Stop with Ctrl-C.
MSG
exec .venv/bin/setpoint agent --config "$ex/web.yaml"
