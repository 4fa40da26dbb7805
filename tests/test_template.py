"""Templates: vars, labels, secrets (through an injected decryptor), and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import manifest, one_stack
from render_support import fs_registry, make_tree, put
from setpoint.engine.controller import Controller
from setpoint.model.errors import ManifestError, ManifestErrors, SetpointError
from setpoint.render import Host, Keys, Limits, RenderCache, render_stack

registry = fs_registry()
OV = "apiVersion: setpoint/v1\nkind: Overlay\n"
SECRET = "hunter2-ZX81-plaintext"


def fake_decrypt(data: bytes, path: str) -> object:
    """A test-only stand-in for sops.decrypt: the 'ciphertext' is JSON behind a marker."""
    text = data.decode()
    if not text.startswith("ENC:"):
        raise SetpointError(f"{path}: MAC mismatch (tampered?)")
    return json.loads(text[4:])


KEYS = Keys(fake_decrypt, "age1fingerprint")


def render(tree: Path, subdir: str = "o", keys: Keys | None = KEYS, **labels: str):
    return render_stack(tree, subdir, registry, host=Host(labels, keys))


def content(tree: Path, name: str = "File/t", subdir: str = "o", **labels: str) -> bytes:
    (r,) = [r for r in render(tree, subdir, **labels).resources if r.id == name]
    assert r.blob is not None
    return r.blob


def one_error(tree: Path, subdir: str = "o", keys: Keys | None = KEYS, **labels) -> ManifestError:
    with pytest.raises(ManifestErrors) as exc:
        render(tree, subdir, keys, **labels)
    (e,) = exc.value.errors
    return e


def templated(tree: Path, template: str, overlay: str = "resources: [t.yaml]\n") -> None:
    put(tree, "o/setpoint.yaml", OV + overlay)
    put(tree, "o/t.yaml", manifest("File", "t", path="/t", template=template))


def test_vars_and_labels_reach_the_template(tmp_path):
    tree = make_tree(tmp_path)
    templated(tree, "{{ vars.name }} on {{ labels.role }}\n",
              "resources: [t.yaml]\nvars: {name: motd}\n")
    assert content(tree, role="web") == b"motd on web\n"
    assert content(tree, role="db") == b"motd on db\n"


def test_a_template_source_is_read_relative_to_the_manifest_and_is_no_manifest(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [.]\nvars: {x: 1}\n")
    put(tree, "o/t.yaml", manifest("File", "t", path="/t", templateSource="tpl/conf.yaml"))
    put(tree, "o/tpl/conf.yaml", "x: {{ vars.x }}\n")  # a .yaml template: not a manifest
    assert content(tree) == b"x: 1\n"


def test_var_precedence_varfiles_then_vars_then_outer_overlays(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "base/setpoint.yaml", OV + "resources: [t.yaml]\n"
        "varFiles: [one.yaml, two.yaml]\nvars: {b: base-inline}\n")
    put(tree, "base/one.yaml", "a: one\nb: one\nc: one\nd: {x: one, y: one}\n")
    put(tree, "base/two.yaml", "c: two\n")
    put(tree, "base/t.yaml", manifest(
        "File", "t", path="/t",
        template="{{ vars.a }} {{ vars.b }} {{ vars.c }} {{ vars.d.x }} {{ vars.d.y }}"))
    put(tree, "prod/setpoint.yaml", OV + "resources: [../base]\nvarFiles: [p.yaml]\n"
        "vars: {d: {y: prod-inline}}\n")
    put(tree, "prod/p.yaml", "a: prod-file\nd: {y: prod-file}\n")
    assert content(tree, subdir="base") == b"one base-inline two one one"
    # Outer overrides inner; mappings merge key by key; inline vars beat varFiles.
    assert content(tree, subdir="prod") == b"prod-file base-inline two one prod-inline"


def test_secrets_are_decrypted_for_templates_and_make_the_file_sensitive(tmp_path):
    tree = make_tree(tmp_path)
    templated(tree, "password={{ secrets.db.password }}\n",
              "resources: [t.yaml, plain.yaml]\nsecretFiles: {db: db.enc.yaml}\n")
    put(tree, "o/plain.yaml", manifest("File", "plain", path="/p", template="no secrets\n"))
    put(tree, "o/db.enc.yaml", "ENC:" + json.dumps({"password": SECRET}))
    got = render(tree)
    res = {r.id: r for r in got.resources}
    assert res["File/t"].blob == f"password={SECRET}\n".encode()
    assert res["File/t"].spec.sensitive and got.origins["File/t"].from_secrets
    assert not res["File/plain"].spec.sensitive
    assert "o/db.enc.yaml" in got.inputs


def test_secret_files_without_keys_or_undecryptable_refuse_the_render(tmp_path):
    tree = make_tree(tmp_path)
    templated(tree, "x", "resources: [t.yaml]\nsecretFiles:\n  db: db.enc.yaml\n")
    put(tree, "o/db.enc.yaml", "ENC:{}")
    e = one_error(tree, keys=None)
    assert (e.file, e.line) == ("o/setpoint.yaml", 5)
    assert "no age identity configured to decrypt o/db.enc.yaml" in e.message
    put(tree, "o/db.enc.yaml", "tampered")
    e = one_error(tree)
    assert (e.file, e.line) == ("o/setpoint.yaml", 5)
    assert "cannot decrypt o/db.enc.yaml" in e.message and "MAC mismatch" in e.message


def test_an_undefined_name_is_an_error_at_the_manifest_line_plus_offset(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [t.yaml]\n")
    put(tree, "o/t.yaml", "apiVersion: setpoint/v1\nkind: File\nmetadata: {name: t}\nspec:\n"
        "  path: /t\n"
        "  template: |\n"  # line 6
        "    line one\n    line two\n    {{ vars.missing }}\n")
    e = one_error(tree)
    assert (e.file, e.line) == ("o/t.yaml", 9)
    assert "File/t: undefined in template" in e.message and "missing" in e.message


def test_a_template_source_error_is_at_its_line_in_the_template_file(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [t.yaml]\n")
    put(tree, "o/t.yaml", manifest("File", "t", path="/t", templateSource="conf.j2"))
    put(tree, "o/conf.j2", "a\nb\n{{ nope }}\n")
    e = one_error(tree)
    assert (e.file, e.line) == ("o/conf.j2", 3) and "'nope' is undefined" in e.message


def test_a_syntax_error_is_at_its_line(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [t.yaml]\n")
    put(tree, "o/t.yaml", manifest("File", "t", path="/t", templateSource="conf.j2"))
    put(tree, "o/conf.j2", "ok\n{% if %}\n")
    e = one_error(tree)
    assert (e.file, e.line) == ("o/conf.j2", 2) and "template syntax error" in e.message


def test_a_sandbox_escape_is_refused_at_its_line(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [t.yaml]\n")
    put(tree, "o/t.yaml", manifest("File", "t", path="/t", templateSource="evil.j2"))
    put(tree, "o/evil.j2", "fine\n{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    e = one_error(tree)
    assert (e.file, e.line) == ("o/evil.j2", 2)
    assert "refused by the template sandbox" in e.message and "__class__" in e.message


def test_a_plain_directory_file_can_be_templated_too(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "m/t.yaml", manifest("File", "t", path="/t", template="{{ labels.role }}"))
    assert content(tree, subdir="m", role="web") == b"web"


def test_rendering_is_deterministic_and_cached_per_labels(tmp_path):
    tree = make_tree(tmp_path)
    templated(tree, "{% for k, v in labels.items() %}{{ k }}={{ v }}\n{% endfor %}")
    a = content(tree, zone="a", role="web")
    assert a == content(tree, role="web", zone="a") == b"role=web\nzone=a\n"
    cache = RenderCache()
    one = cache.get_or_render("rev", tree, "o", registry, Host({"role": "web"}))
    assert cache.get_or_render("rev", tree, "o", registry, Host({"role": "web"})) is one
    two = cache.get_or_render("rev", tree, "o", registry, Host({"role": "web"}, KEYS))
    assert two is not one  # other keys: another render


def test_template_output_is_capped(tmp_path):
    tree = make_tree(tmp_path)
    templated(tree, "{% for i in range(1000) %}xxxxxxxxxx{% endfor %}")
    with pytest.raises(ManifestErrors) as exc:
        render_stack(tree, "o", registry, limits=Limits(max_source_bytes=500))
    assert "renders to more than 500 bytes" in str(exc.value)


def test_errors_of_a_secret_reading_template_never_show_the_secret(tmp_path):
    tree = make_tree(tmp_path)
    templated(tree, "{{ secrets.db[secrets.db.password] }}",
              "resources: [t.yaml]\nsecretFiles: {db: db.enc}\n")
    put(tree, "o/db.enc", "ENC:" + json.dumps({"password": SECRET}))
    e = one_error(tree)
    assert SECRET not in str(e) and "(secret)" in e.message


def test_a_secret_templated_file_never_reaches_plan_journal_or_state(git_repo, root, state_dir):
    git_repo.commit({
        "m/setpoint.yaml": OV + "resources: [t.yaml]\nsecretFiles: {db: db.enc}\n",
        "m/t.yaml": manifest("File", "t", path="/creds", mode="0600",
                             template="pw={{ secrets.db.password }}\n"),
        "m/db.enc": "ENC:" + json.dumps({"password": SECRET}),
    })
    cfg = one_stack(git_repo.url, root, state_dir)
    shown = []
    for dry_run in (True, False, False):
        ctl = Controller(cfg)
        ctl.reconciler.desired.set_host(Host({}, KEYS))
        try:
            (result,) = ctl.run_once(dry_run=dry_run)
            assert result.converged or dry_run, result.errors
            shown.append(repr(result))
            shown.append(repr([(e.message, e.detail) for e in ctl.db.history(limit=100)]))
        finally:
            ctl.close()
        if not dry_run:
            assert (root / "creds").read_text() == f"pw={SECRET}\n"
            (root / "creds").write_text("pw=changed-by-hand\n")  # drift, reverted next pass
    assert "(sensitive, " in "".join(shown)
    assert not any(SECRET in s or "changed-by-hand" in s for s in shown)
    for path in state_dir.rglob("*"):
        if path.is_file() and "sources" not in path.parts:  # the git cache holds ciphertext
            assert SECRET.encode() not in path.read_bytes(), path


def test_var_and_secret_files_are_never_manifests_and_bad_paths_are_errors(tmp_path):
    tree = make_tree(tmp_path)
    templated(tree, "{{ vars.a }}{{ secrets.s.b }}",
              "resources: [.]\nvarFiles: [v.yaml]\nsecretFiles: {s: s.enc.yaml}\n")
    put(tree, "o/v.yaml", "a: 1\n")
    put(tree, "o/s.enc.yaml", "ENC:" + json.dumps({"b": 2}))
    assert content(tree) == b"12"
    templated(tree, "x", "resources: [t.yaml]\nvarFiles:\n  - ../../outside.yaml\n  - gone.yaml\n")
    with pytest.raises(ManifestErrors) as exc:
        render(tree)
    errs = exc.value.errors
    assert [(e.file, e.line) for e in errs] == [("o/setpoint.yaml", 5), ("o/setpoint.yaml", 6)]
    assert "leads outside the repository" in errs[0].message
    assert "cannot read varFiles 'gone.yaml'" in errs[1].message
