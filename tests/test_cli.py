"""The ``setpoint`` command as an operator runs it: real processes, real Git, temp roots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import cli, docs, manifest


def src(git_repo, root, state):  # type: ignore[no-untyped-def]
    return [
        "--repo",
        git_repo.url,
        "--path",
        "m",
        "--stack",
        "web",
        "--root",
        root,
        "--state",
        state,
    ]


def test_plan_apply_plan_exit_codes_and_diff(git_repo, root, state_dir):
    (root / "etc").mkdir()
    (root / "etc/app.conf").write_text("a=1\nb=2\n")
    os.chmod(root / "etc/app.conf", 0o600)
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "conf", path="/etc/app.conf", content="a=1\nb=3\n"),
                manifest("Symlink", "link", path="/etc/link", target="app.conf"),
            )
        }
    )
    plan = cli("plan", *src(git_repo, root, state_dir), check=2)
    assert "~ update File/conf /etc/app.conf" in plan.stdout
    assert "mode: 0600 → 0644" in plan.stdout
    assert "-b=2" in plan.stdout and "+b=3" in plan.stdout
    assert "+ create Symlink/link /etc/link" in plan.stdout
    assert (root / "etc/app.conf").read_text() == "a=1\nb=2\n"  # plan changes nothing
    cli("apply", *src(git_repo, root, state_dir), check=0)
    assert (root / "etc/app.conf").read_text() == "a=1\nb=3\n"
    out = cli("plan", *src(git_repo, root, state_dir), check=0)
    assert "0 to create, 0 to update" in out.stdout
    assert "File/conf" not in out.stdout  # no-ops are counted, listed only on request
    out = cli("plan", *src(git_repo, root, state_dir), "--unchanged", check=0)
    assert "= noop File/conf  (in sync)" in out.stdout
    assert "= noop Symlink/link  (in sync)" in out.stdout
    os.symlink("elsewhere", root / "etc/tmp-link")
    os.replace(root / "etc/tmp-link", root / "etc/link")
    out = cli("plan", *src(git_repo, root, state_dir), check=2)
    assert "target: elsewhere → app.conf" in out.stdout


def test_plan_json_and_error_exit(git_repo, root, state_dir):
    git_repo.commit({"m/a.yaml": manifest("File", "f", path="/f", content="x")})
    out = cli("plan", *src(git_repo, root, state_dir), "--json", check=2)
    (stack,) = json.loads(out.stdout)
    assert stack["resources"][0]["change"]["action"] == "create"
    bad = cli(
        "plan", "--repo", str(git_repo.path / "nope"), "--root", root, "--state", state_dir, check=1
    )
    assert "nope" in bad.stdout + bad.stderr


def test_validate_prints_every_error_with_file_and_line(tmp_path):
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "one.yaml").write_text(
        manifest("File", "a", path="/etc/a", content="x")
        + "---\n"
        + manifest("File", "b", path="relative", content="x")
    )
    (d / "two.yaml").write_text(
        "apiVersion: setpoint/v1\nkind: Fiel\nmetadata: {name: c}\nspec: {}\n"
    )
    (d / "three.yaml").write_text(manifest("File", "d", path="/etc/../x", content="x"))
    out = cli("validate", d, check=1)
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith(f"{d}/one.yaml:") and "absolute" in line for line in lines)
    assert any(line.startswith(f"{d}/two.yaml:2:") and "Fiel" in line for line in lines)
    assert any(line.startswith(f"{d}/three.yaml:") and ".." in line for line in lines)
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "a.yml").write_text(manifest("File", "a", path="/etc/a", content="x"))
    assert "1 resource(s) valid" in cli("validate", ok, check=0).stdout


def test_validate_reports_a_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text(
        docs(
            manifest("File", "a", path="/a", content="a", dependsOn=["File/b"]),
            manifest("File", "b", path="/b", content="b", dependsOn=["File/a"]),
        )
    )
    out = cli("validate", tmp_path, check=1)
    assert "dependency cycle" in out.stdout


def test_apply_exit_1_when_revision_refused_but_drift_still_repaired(git_repo, root, state_dir):
    git_repo.commit({"m/a.yaml": manifest("File", "a", path="/a", content="good\n")})
    cli("apply", *src(git_repo, root, state_dir), check=0)
    git_repo.commit(
        {
            "m/a.yaml": "apiVersion: setpoint/v1\nkind: File\nmetadata: {name: a}\n"
            "spec: {path: /a, content: bad, colour: red}\n"
        }
    )
    (root / "a").write_text("drift\n")
    out = cli("apply", *src(git_repo, root, state_dir), check=1)
    assert (root / "a").read_text() == "good\n"
    assert "refused" in out.stdout and "m/a.yaml:4" in out.stdout
    status = json.loads(cli("status", "--state", state_dir, "--json", check=0).stdout)
    (web,) = status
    stalled = next(c for c in web["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] is True and "m/a.yaml:4" in stalled["message"]
    human = cli("status", "--state", state_dir, check=0).stdout
    assert "Stalled=True ValidationFailed" in human


def test_status_and_history(git_repo, root, state_dir):
    sha = git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="hi\n")})
    cli("apply", *src(git_repo, root, state_dir), check=0)
    (root / "etc/motd").write_text("changed by hand\n")
    cli("apply", *src(git_repo, root, state_dir), check=0)
    (st,) = json.loads(cli("status", "--state", state_dir, "--json", check=0).stdout)
    assert st["applied_revision"] == sha and st["counts"]["in_sync"] == 1
    assert next(c for c in st["conditions"] if c["type"] == "Ready")["status"] is True
    hist = json.loads(cli("history", "--state", state_dir, "--json", check=0).stdout)
    events = [e["event"] for e in hist]
    assert "revision.fetched" in events and "apply" in events
    drift = next(e for e in hist if e["event"] == "drift")
    assert "-changed by hand" in drift["detail"]["diff"]
    human = cli("history", "--state", state_dir, check=0).stdout
    assert "drift File/motd" in human and "revert File/motd" in human


def test_ref_may_be_a_tag_or_a_commit(git_repo, root, state_dir):
    first = git_repo.commit({"m/a.yaml": manifest("File", "v", path="/v", content="1")})
    git_repo.git("tag", "v1")
    git_repo.commit({"m/a.yaml": manifest("File", "v", path="/v", content="2")})
    args = ["--repo", f"file://{git_repo.path}", "--path", "m", "--root", root]
    cli("apply", *args, "--ref", "v1", "--state", state_dir / "a", check=0)
    assert (root / "v").read_text() == "1"
    cli("apply", *args, "--ref", "main", "--state", state_dir / "b", check=0)
    assert (root / "v").read_text() == "2"
    cli("apply", *args, "--ref", first, "--state", state_dir / "c", check=0)
    assert (root / "v").read_text() == "1"


def test_config_file_with_two_stacks(git_repo, root, state_dir, tmp_path):
    git_repo.commit(
        {
            "a/x.yaml": manifest("File", "x", path="/x", content="x"),
            "b/y.yaml": manifest("File", "y", path="/y", content="y"),
        }
    )
    cfg = tmp_path / "setpoint.yaml"
    cfg.write_text(f"""
root: {root}
state: {state_dir}
sources:
  - name: infra
    url: {git_repo.url}
    ref: main
    interval: 30
stacks:
  - {{name: one, source: infra, path: a}}
  - {{name: two, source: infra, path: b, drift: report, prune: false}}
""")
    cli("apply", "--config", cfg, check=0)
    assert (root / "x").read_text() == "x" and (root / "y").read_text() == "y"
    cfg.write_text(cfg.read_text().replace("interval: 30", "interval: 30\n    colour: red"))
    out = cli("apply", "--config", cfg, check=1)
    assert "colour" in out.stderr


def _child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True
    )


def test_the_cli_imports_no_api_stack_nor_rich():
    """Start-up cost: `import setpoint.cli` loads neither the API stack (FastAPI, uvicorn),
    rich nor pydantic; each command imports what it needs."""
    out = _child(
        "import sys, setpoint.cli, setpoint.cli_fast, setpoint.cli_output\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'rich', 'pydantic', 'asyncio', "
        "'setpoint.engine.controller', 'setpoint.api') if m in sys.modules))"
    )
    assert out.stdout.strip() == "[]"
    # The engine does not import the CLI's output module either.
    out = _child(
        "import sys, setpoint.engine.controller, setpoint.engine.agent\n"
        "print(sorted(m for m in sys.modules if m.startswith('setpoint.cli') "
        "or m in ('rich', 'typer')))"
    )
    assert out.stdout.strip() == "[]"


def test_the_fast_help_is_typers_help():
    """`setpoint --help` is served without typer; its text must be typer's, to the byte."""
    typer_help = _child(
        "import sys; sys.argv = ['setpoint', '--help']\nfrom setpoint.cli import main; main()"
    ).stdout
    fast_help = _child(
        "import sys; sys.argv = ['setpoint', '--help']\n"
        "from setpoint.cli_fast import fast; fast(sys.argv[1:])"
    ).stdout
    assert fast_help == typer_help, (
        "update HELP in src/setpoint/cli_fast.py to what typer prints now:\n" + typer_help
    )
    via_m = cli("--help", check=0).stdout  # python -m setpoint, as click names it
    assert via_m == typer_help.replace("Usage: setpoint", "Usage: python -m setpoint", 1)


def test_status_options_the_fast_path_does_not_know_go_to_typer(state_dir):
    missing = cli("status", "--state", state_dir, check=1)
    assert f"no setpoint state in {state_dir}" in missing.stderr
    assert "--state" in cli("status", "--help", check=0).stdout  # typer's command help
    bad = cli("status", "--bogus", check=2)  # typer's usage error
    assert "No such option" in bad.stderr or "no such option" in bad.stderr.lower()
