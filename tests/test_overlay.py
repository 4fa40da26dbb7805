"""Overlays: the assemble stage (resources, nesting, selectors), patches, labels, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import manifest, one_pass, one_stack
from render_support import fs_registry, make_tree, put
from setpoint.model.errors import ManifestError, ManifestErrors
from setpoint.render import Host, RenderCache, render_stack
from setpoint.render.patch import merge_patch

registry = fs_registry()

OV = "apiVersion: setpoint/v1\nkind: Overlay\n"


def render(tree: Path, subdir: str, **labels: str):
    return render_stack(tree, subdir, registry, host=Host(labels))


def by_id(tree: Path, subdir: str, **labels: str):
    return {r.id: r for r in render(tree, subdir, **labels).resources}


def errors(tree: Path, subdir: str, **labels: str) -> list[ManifestError]:
    with pytest.raises(ManifestErrors) as exc:
        render(tree, subdir, **labels)
    return exc.value.errors


# RFC 7386, Appendix A: (original, patch, result).
RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC7386)
def test_merge_patch_follows_rfc7386_appendix_a(original, patch, result):
    before = repr(original)
    assert merge_patch(original, patch) == result
    assert repr(original) == before  # the target is not modified


def base_and_prod(tree: Path) -> None:
    put(tree, "base/setpoint.yaml", OV + "resources: [files.yaml]\nlabels: {tier: base, env: x}\n")
    put(
        tree,
        "base/files.yaml",
        manifest("File", "motd", path="/etc/motd", content="base\n", owner="root")
        + "---\n"
        + manifest("File", "conf", labels={"app": "web"}, path="/etc/conf", content="c\n"),
    )
    put(
        tree,
        "envs/prod/setpoint.yaml",
        OV
        + "resources:\n"
        + "  - ../../base\n"  # line 4
        + "  - {path: extra.yaml, selector: {matchLabels: {role: web}}}\n"  # line 5
        + "labels: {env: prod}\n"
        + "patches:\n"
        + "  - target: {kind: File, name: motd}\n"  # line 8
        + "    patch: {spec: {content: \"prod\\n\", owner: null, mode: \"0600\"}}\n"
        + "  - target: {labelSelector: {matchLabels: {tier: base, app: web}}}\n"  # line 10
        + "    patch: {spec: {mode: \"0640\"}}\n",
    )
    put(tree, "envs/prod/extra.yaml", manifest("File", "extra", path="/etc/extra", content="e\n"))


def test_nested_overlays_patch_label_and_select(tmp_path):
    tree = make_tree(tmp_path)
    base_and_prod(tree)
    got = render(tree, "envs/prod", role="web")
    res = {r.id: r for r in got.resources}
    assert sorted(res) == ["File/conf", "File/extra", "File/motd"]
    motd = res["File/motd"]
    # kind/name patch: content replaced, owner deleted by null, mode set.
    assert motd.blob == b"prod\n"
    assert motd.spec.owner is None and motd.spec.mode == "0600"
    # labelSelector patch: matches the label the base overlay added (tier) and the own one.
    assert res["File/conf"].spec.mode == "0640"
    assert res["File/extra"].spec.mode == "0644"
    # labels: outer overlay overrides inner; a resource's own labels are kept.
    assert dict(res["File/conf"].labels) == {"app": "web", "tier": "base", "env": "prod"}
    assert dict(res["File/extra"].labels) == {"env": "prod"}
    origin = got.origins["File/motd"]
    assert origin.overlays == ("base/setpoint.yaml", "envs/prod/setpoint.yaml")
    assert origin.patches == ("envs/prod/setpoint.yaml:8",)
    assert str(origin.location) == "base/files.yaml:1"


def test_a_resource_entry_selector_includes_only_on_matching_hosts(tmp_path):
    tree = make_tree(tmp_path)
    base_and_prod(tree)
    assert "File/extra" in by_id(tree, "envs/prod", role="web")
    assert "File/extra" not in by_id(tree, "envs/prod", role="db")
    assert "File/extra" not in by_id(tree, "envs/prod")


def test_outer_patches_apply_after_inner_ones(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "base/setpoint.yaml", OV + "resources: [a.yaml]\npatches:\n"
        "  - {target: {kind: File, name: a}, patch: {spec: {mode: '0600', content: inner}}}\n")
    put(tree, "base/a.yaml", manifest("File", "a", path="/a", content="x"))
    put(tree, "prod/setpoint.yaml", OV + "resources: [../base]\npatches:\n"
        "  - {target: {kind: File, name: a}, patch: {spec: {mode: '0640'}}}\n")
    a = by_id(tree, "prod")["File/a"]
    assert (a.spec.mode, a.blob) == ("0640", b"inner")


def test_a_plain_directory_keeps_todays_behaviour_and_skips_overlay_and_fleet_docs(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "m/a.yaml", manifest("File", "a", path="/a", content="x"))
    put(tree, "m/fleet.yaml", "apiVersion: setpoint/v1\nkind: Fleet\nmetadata: {name: f}\n"
        "stacks: [{name: base, path: base}]\n")
    # An overlay below a plain directory is not followed, but what it names is no manifest.
    put(tree, "m/sub/setpoint.yaml", OV + "resources: [b.yaml]\nvarFiles: [vars.yaml]\n")
    put(tree, "m/sub/b.yaml", manifest("File", "b", path="/b", content="y"))
    put(tree, "m/sub/vars.yaml", "greeting: hello\n")
    assert sorted(by_id(tree, "m")) == ["File/a", "File/b"]


def test_an_overlay_loads_only_what_it_includes(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [a.yaml]\n")
    put(tree, "o/a.yaml", manifest("File", "a", path="/a", content="x"))
    put(tree, "o/unlisted.yaml", manifest("File", "u", path="/u", content="x"))
    assert list(by_id(tree, "o")) == ["File/a"]


def test_dot_walks_the_overlays_own_directory_without_its_var_files(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [.]\nvarFiles: [vars.yaml]\n")
    put(tree, "o/a.yaml", manifest("File", "a", path="/a", content="x"))
    put(tree, "o/vars.yaml", "x: 1\n")
    assert list(by_id(tree, "o")) == ["File/a"]


# -- errors, each at the overlay file's line ---------------------------------------------


def test_an_overlay_cycle_is_an_error_at_the_entry_closing_it(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "a/setpoint.yaml", OV + "resources: [../b]\n")
    put(tree, "b/setpoint.yaml", OV + "resources:\n  - ../a\n")
    (e,) = errors(tree, "a")
    assert (e.file, e.line) == ("b/setpoint.yaml", 4)
    assert "overlay cycle: a -> b -> a" in e.message


def test_a_path_outside_the_repository_is_an_error(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources:\n  - ../../outside\n")
    (tmp_path / "outside").mkdir()
    (e,) = errors(tree, "o")
    assert (e.file, e.line) == ("o/setpoint.yaml", 4)
    assert "leads outside the repository" in e.message


def test_a_patch_that_matches_nothing_is_an_error(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [a.yaml]\npatches:\n"
        "  - {target: {kind: File, name: a}, patch: {spec: {mode: '0600'}}}\n"
        "  - {target: {kind: File, name: typo}, patch: {spec: {mode: '0600'}}}\n"
        "  - {target: {labelSelector: {matchLabels: {x: y}}}, patch: {spec: {mode: '0600'}}}\n")
    put(tree, "o/a.yaml", manifest("File", "a", path="/a", content="x"))
    errs = errors(tree, "o")
    assert [(e.file, e.line) for e in errs] == [("o/setpoint.yaml", 6), ("o/setpoint.yaml", 7)]
    assert "File/typo matches no resource" in errs[0].message
    assert "labelSelector x=y matches no resource" in errs[1].message


def test_a_resource_included_twice_is_an_error(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "base/setpoint.yaml", OV + "resources: [a.yaml]\n")
    put(tree, "base/a.yaml", manifest("File", "a", path="/a", content="x"))
    put(tree, "o/setpoint.yaml", OV + "resources:\n  - ../base\n  - ../base/a.yaml\n")
    (e,) = errors(tree, "o")
    assert (e.file, e.line) == ("o/setpoint.yaml", 5)
    assert "base/a.yaml is included twice (first by base/setpoint.yaml:3)" in e.message


def test_unknown_fields_are_errors_with_a_suggestion(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [a.yaml]\npatchs: []\n"
        "patches:\n  - target: {kind: File, name: a, bogus: 1}\n    patch: {}\n")
    put(tree, "o/a.yaml", manifest("File", "a", path="/a", content="x"))
    errs = errors(tree, "o")
    assert [(e.file, e.line) for e in errs] == [("o/setpoint.yaml", 4), ("o/setpoint.yaml", 6)]
    assert "patchs: unknown field" in errs[0].message
    assert "did you mean 'patches'" in errs[0].message
    assert "patches.0.target.bogus: unknown field" in errs[1].message


def test_a_missing_resource_path_and_a_wrong_kind_are_errors(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [gone.yaml]\n")
    (e,) = errors(tree, "o")
    assert (e.file, e.line) == ("o/setpoint.yaml", 3)
    assert "'gone.yaml' does not exist" in e.message
    put(tree, "p/setpoint.yaml", manifest("File", "a", path="/a", content="x"))
    (e,) = errors(tree, "p")
    assert e.file == "p/setpoint.yaml" and "must hold a document of kind Overlay" in e.message


def test_a_patch_that_breaks_validation_is_reported_with_the_patch(tmp_path):
    tree = make_tree(tmp_path)
    put(tree, "o/setpoint.yaml", OV + "resources: [a.yaml]\npatches:\n"
        "  - {target: {kind: File, name: a}, patch: {spec: {mode: 'rwx'}}}\n")
    put(tree, "o/a.yaml", manifest("File", "a", path="/a", content="x"))
    (e,) = errors(tree, "o")
    assert e.file == "o/a.yaml" and "mode 'rwx' is not an octal" in e.message
    assert "(after patches at o/setpoint.yaml:5)" in e.message


# -- cache and engine ------------------------------------------------------------------------


def test_the_render_cache_key_includes_the_hosts_labels(tmp_path):
    tree = make_tree(tmp_path)
    base_and_prod(tree)
    cache = RenderCache()
    web = cache.get_or_load("rev", tree, "envs/prod", registry, Host({"role": "web"}))
    db = cache.get_or_load("rev", tree, "envs/prod", registry, Host({"role": "db"}))
    assert len(web) == 3 and len(db) == 2 and len(cache) == 2
    assert cache.get_or_load("rev", tree, "envs/prod", registry, Host({"role": "web"})) == web


def test_the_agent_renders_an_overlay_for_the_labels_in_its_config(git_repo, root, state_dir):
    git_repo.commit({
        "base/setpoint.yaml": OV + "resources: [a.yaml]\n",
        "base/a.yaml": manifest("File", "a", path="/a", content="base\n"),
        "m/setpoint.yaml": OV + "resources:\n  - ../base\n"
        "  - {path: web.yaml, selector: {matchLabels: {role: web}}}\n"
        "patches: [{target: {kind: File, name: a}, patch: {spec: {content: \"prod\\n\"}}}]\n",
        "m/web.yaml": manifest("File", "web", path="/web", content="w\n"),
    })
    cfg = one_stack(git_repo.url, root, state_dir)
    result, *_ = one_pass(cfg.model_copy(update={"labels": {"role": "web"}}))
    assert result.converged, result.errors
    assert (root / "a").read_text() == "prod\n" and (root / "web").read_text() == "w\n"
    # Another host (other labels): the selected-out resource is pruned, the rest kept.
    result, *_ = one_pass(cfg.model_copy(update={"labels": {"role": "db"}}))
    assert result.converged, result.errors
    assert (root / "a").read_text() == "prod\n" and not (root / "web").exists()
