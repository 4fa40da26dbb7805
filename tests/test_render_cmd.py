"""``setpoint render``: prints what a host gets, equal to what ``apply`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from helpers import cli, manifest
from render_support import fs_registry, make_tree, put
from setpoint.cli_render import render_json, render_yaml
from setpoint.render import Host, Keys, render_stack

OV = "apiVersion: setpoint/v1\nkind: Overlay\n"


def fleet_repo(git_repo) -> None:
    git_repo.commit({
        "base/setpoint.yaml": OV + "resources: [files.yaml, conf.yaml]\nvars: {port: 80}\n",
        "base/files.yaml": manifest("File", "motd", path="/etc/motd", content="base\n"),
        "base/conf.yaml": manifest("File", "conf", path="/etc/app.conf",
                                   templateSource="app.conf.j2"),
        "base/app.conf.j2": "role={{ labels.role | default('any') }}\n"
        "port={{ vars.port }}\n  indented\n",
        "base/bin.yaml": manifest("File", "bin", path="/bin/blob", source="blob.bin"),
        "base/blob.bin": b"\x00\xff\x01",
        "envs/prod/setpoint.yaml": OV + "resources:\n  - ../../base\n"
        "  - {path: ../../base/bin.yaml, selector: {matchLabels: {role: web}}}\n"
        "vars: {port: 8080}\n"
        "patches: [{target: {kind: File, name: motd}, patch: {spec: {content: \"prod\\n\"}}}]\n",
    })


def test_render_output_equals_what_apply_writes(git_repo, tmp_path, root, state_dir):
    fleet_repo(git_repo)
    out = cli("render", git_repo.path / "envs/prod", "--labels", "role=web,env=prod", check=0)
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["bin", "conf", "motd"]
    assert "# File/motd from base/files.yaml:1" in out.stdout
    assert "#   patches: envs/prod/setpoint.yaml:7" in out.stdout
    assert "#   template: base/app.conf.j2:1" in out.stdout
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(root), "state": str(state_dir), "labels": {"role": "web", "env": "prod"},
        "sources": [{"name": "repo", "url": git_repo.url}],
        "stacks": [{"name": "prod", "source": "repo", "path": "envs/prod"}],
    }))
    cli("apply", "--config", config, check=0)
    for d in docs:
        on_disk = (root / d["spec"]["path"].lstrip("/")).read_bytes()
        if "content" in d["spec"]:
            assert on_disk == d["spec"]["content"].encode(), d["metadata"]["name"]
        else:  # binary: the comment gives size and digest
            assert d["spec"]["source"] == "blob.bin" and on_disk == b"\x00\xff\x01"
    assert (root / "etc/app.conf").read_text() == "role=web\nport=8080\n  indented\n"


def test_render_json_and_labels_select(git_repo):
    fleet_repo(git_repo)
    out = cli("render", git_repo.path / "envs/prod", "--labels", "role=db", "--json", check=0)
    items = json.loads(out.stdout)
    assert [i["id"] for i in items] == ["File/conf", "File/motd"]
    conf = items[0]
    assert conf["template"] == "base/app.conf.j2:1"
    assert conf["document"]["spec"]["content"].startswith("role=db\nport=8080\n")
    assert items[1]["patches"] == ["envs/prod/setpoint.yaml:7"]


def test_render_prints_every_error_with_file_and_line(git_repo):
    git_repo.commit({"o/setpoint.yaml": OV + "resources:\n  - missing.yaml\n"})
    out = cli("render", git_repo.path / "o", check=1)
    assert f"{git_repo.path}/o/setpoint.yaml:4: resources: 'missing.yaml' does not exist" in (
        out.stdout
    )


def test_render_masks_secret_derived_content(tmp_path: Path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [t.yaml]\nsecretFiles: {db: db.enc}\n")
    put(tree, "o/t.yaml", manifest("File", "t", path="/t", template="{{ secrets.db.pw }}"))
    put(tree, "o/db.enc", '{"pw": "hunter2-secret"}')
    keys = Keys(lambda data, path: json.loads(data), "fp")
    rendered = render_stack(tree, "o", fs_registry(), host=Host({}, keys))
    text = render_yaml(rendered) + json.dumps(render_json(rendered))
    assert "hunter2" not in text
    assert "(sensitive, 14 bytes)" in text and "content masked: sensitive (from secrets)" in text


def test_validate_checks_an_overlay_that_builds_on_a_base_outside_it(git_repo):
    fleet_repo(git_repo)
    assert "2 resource(s) valid" in cli("validate", git_repo.path / "envs/prod", check=0).stdout
    git_repo.write("envs/prod/setpoint.yaml", OV + "resources: [../../base]\nbogus: 1\n")
    out = cli("validate", git_repo.path / "envs/prod", check=1)
    assert f"{git_repo.path}/envs/prod/setpoint.yaml:4: Overlay: bogus: unknown field" in out.stdout
