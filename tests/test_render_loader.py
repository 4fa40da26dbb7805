"""setpoint.render: loading valid stacks, File sources, file discovery and the cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from render_support import file_doc, fs_registry, make_tree, put
from setpoint.model.errors import ManifestErrors
from setpoint.model.resource import Location, Resource
from setpoint.providers.base import Registry
from setpoint.providers.files.spec import DirectorySpec, FileSpec
from setpoint.render import Limits, RenderCache, load_stack


@pytest.fixture
def registry() -> Registry:
    return fs_registry()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


def errors(tree: Path, registry: Registry, subdir: str = ".", **kw: object) -> list[str]:
    with pytest.raises(ManifestErrors) as info:
        load_stack(tree, subdir, registry, **kw)  # type: ignore[arg-type]
    return [str(e) for e in info.value.errors]


# --- valid stacks -----------------------------------------------------------------


def test_multi_document_file(tree: Path, registry: Registry) -> None:
    put(
        tree,
        "base.yaml",
        """\
        # a comment before the first document
        apiVersion: setpoint/v1
        kind: File
        metadata:
          name: motd
          labels: {tier: base, setpoint/prune: disabled}
        spec:
          path: /etc/motd
          content: "managed by setpoint\\n"
          mode: "0600"
        ---
        apiVersion: setpoint/v1
        kind: Directory
        metadata: {name: conf}
        spec: {path: /etc/app, dependsOn: [File/motd]}
        ---
        """,
    )
    motd, conf = load_stack(tree, ".", registry)
    assert motd.id == "File/motd"
    assert motd.location == Location("base.yaml", 2)  # the document's first key
    assert dict(motd.labels) == {"tier": "base", "setpoint/prune": "disabled"}
    assert motd.prune_disabled
    assert motd.blob == b"managed by setpoint\n"
    assert isinstance(motd.spec, FileSpec) and motd.spec.mode == "0600"
    assert motd.digest == Resource.compute_digest("File", motd.spec, motd.blob)
    assert conf.id == "Directory/conf"
    assert conf.location == Location("base.yaml", 12)
    assert conf.depends_on == ("File/motd",)
    assert conf.blob is None
    assert conf.labels == {}


def test_sorted_by_file_and_line_and_relative_to_tree(tree: Path, registry: Registry) -> None:
    put(tree, "stack/z.yaml", file_doc("z", "/z"))
    put(tree, "stack/a/b.yml", file_doc("b", "/b") + "---\n" + file_doc("b2", "/b2"))
    put(tree, "stack/a.yaml", file_doc("a", "/a"))
    put(tree, "stack/README.md", "not a manifest")
    put(tree, "stack/notes.yaml.txt", "not: a manifest")
    put(tree, "other/ignored.yaml", file_doc("o", "/o"))
    got = [(r.id, str(r.location)) for r in load_stack(tree, "stack", registry)]
    assert got == [  # plain string order of the path: "a.yaml" < "a/b.yml"
        ("File/a", "stack/a.yaml:1"),
        ("File/b", "stack/a/b.yml:1"),
        ("File/b2", "stack/a/b.yml:9"),
        ("File/z", "stack/z.yaml:1"),
    ]
    assert [r.id for r in load_stack(tree, "./stack/", registry)] == [x[0] for x in got]


def test_empty_documents_and_comment_only_files(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", "---\n---\n" + file_doc("a", "/a") + "---\n...\n---\n")
    put(tree, "empty.yaml", "")
    put(tree, "comments.yaml", "# nothing here yet\n")
    (res,) = load_stack(tree, ".", registry)
    assert res.location == Location("a.yaml", 3)


def test_empty_stack_is_empty(tree: Path, registry: Registry) -> None:
    (tree / "empty").mkdir()
    assert load_stack(tree, "empty", registry) == []


def test_dot_directories_and_symlinked_dirs_are_skipped(
    tree: Path, tmp_path: Path, registry: Registry
) -> None:
    put(tree, "a.yaml", file_doc("a", "/a"))
    put(tree, ".git/config.yaml", "not: [valid")
    put(tree, ".github/workflows/ci.yml", "on: push\njobs: {}\n")
    outside = tmp_path / "outside"
    put(outside, "evil.yaml", file_doc("evil", "/evil"))
    os.symlink(outside, tree / "linked")
    os.symlink(tree, tree / "loop")
    assert [r.id for r in load_stack(tree, ".", registry)] == ["File/a"]


def test_symlinked_manifest_inside_tree_is_read(tree: Path, registry: Registry) -> None:
    put(tree, "shared/real.yaml", file_doc("real", "/real"))
    (tree / "stack").mkdir()
    os.symlink("../shared/real.yaml", tree / "stack/link.yaml")
    (res,) = load_stack(tree, "stack", registry)
    assert res.location == Location("stack/link.yaml", 1)


def test_anchors_and_merge_keys(tree: Path, registry: Registry) -> None:
    put(
        tree,
        "a.yaml",
        """\
        apiVersion: setpoint/v1
        kind: Directory
        metadata: {name: &name two, labels: {app: *name}}
        spec:
          <<: [{mode: "0750", path: /ignored}, {purge: true, mode: "0700"}]
          path: /two
        """,
    )
    (two,) = load_stack(tree, ".", registry)
    assert isinstance(two.spec, DirectorySpec)
    # explicit keys win over merged ones, earlier merge sources over later ones
    assert (two.spec.path, two.spec.mode, two.spec.purge) == ("/two", "0750", True)
    assert two.labels == {"app": "two"}


def test_utf8_bom_and_unicode_content(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", "\ufeff" + file_doc("a", "/a", 'content: "grüße ☃\\n"'))
    (res,) = load_stack(tree, ".", registry)
    assert res.blob == "grüße ☃\n".encode()


# --- File sources ---------------------------------------------------------------


def test_source_binary_and_relative_to_manifest(tree: Path, registry: Registry) -> None:
    payload = bytes(range(256)) * 10
    put(tree, "files/logo.bin", payload)
    put(tree, "stack/web/site.yaml", file_doc("logo", "/srv/logo", "source: ../../files/logo.bin"))
    put(tree, "stack/web/conf/nginx.conf", b"server {}\n")
    put(tree, "stack/web/b.yaml", file_doc("nginx", "/etc/nginx.conf", "source: conf/nginx.conf"))
    res = {r.id: r for r in load_stack(tree, "stack", registry)}
    assert res["File/logo"].blob == payload
    assert res["File/nginx"].blob == b"server {}\n"
    assert res["File/logo"].digest != res["File/nginx"].digest


def test_source_symlink_inside_repo_is_followed(tree: Path, registry: Registry) -> None:
    put(tree, "files/real.txt", b"real\n")
    os.symlink("real.txt", tree / "files/alias.txt")
    put(tree, "a.yaml", file_doc("a", "/a", "source: files/alias.txt"))
    (res,) = load_stack(tree, ".", registry)
    assert res.blob == b"real\n"


def test_same_source_for_many_files_is_read_once(tree: Path, registry: Registry) -> None:
    put(tree, "files/x", b"x")
    put(
        tree,
        "a.yaml",
        file_doc("a", "/a", "source: files/x") + "---\n" + file_doc("b", "/b", "source: files/x"),
    )
    a, b = load_stack(tree, ".", registry)
    assert a.blob is b.blob


def test_yaml_used_as_source_is_not_a_manifest(tree: Path, registry: Registry) -> None:
    # Looks like a manifest (and an invalid one): as a source it is plain content.
    compose = "apiVersion: setpoint/v1\nkind: File\nmetadata: {name: BAD}\nspec: {oops: 1}\n"
    put(tree, "stack/files/compose.yaml", compose)
    put(
        tree,
        "stack/app.yaml",
        file_doc("compose", "/srv/compose.yaml", "source: files/compose.yaml"),
    )
    (res,) = load_stack(tree, "stack", registry)
    assert res.id == "File/compose"
    assert res.blob == compose.encode()


def test_big_yaml_used_as_source_is_not_a_manifest(tree: Path, registry: Registry) -> None:
    put(tree, "data/big.yaml", "k: " + "v" * 5000 + "\n")
    put(tree, "a.yaml", file_doc("big", "/big", "source: data/big.yaml"))
    (res,) = load_stack(tree, ".", registry, limits=Limits(max_manifest_bytes=1000))
    assert res.blob is not None and len(res.blob) == 5004


def test_source_referenced_through_symlink_is_not_a_manifest(
    tree: Path, registry: Registry
) -> None:
    put(tree, "data/values.yaml", "not: [a manifest")
    os.symlink("data/values.yaml", tree / "values-link.yaml")
    put(tree, "a.yaml", file_doc("v", "/v", "source: values-link.yaml"))
    assert [r.id for r in load_stack(tree, ".", registry)] == ["File/v"]


def test_file_whose_source_is_its_own_manifest_is_kept(tree: Path, registry: Registry) -> None:
    text = file_doc("self", "/self", "source: self.yaml")
    put(tree, "self.yaml", text)
    (res,) = load_stack(tree, ".", registry)
    assert res.blob == text.encode()


def test_empty_source_file(tree: Path, registry: Registry) -> None:
    put(tree, "empty", b"")
    put(tree, "a.yaml", file_doc("a", "/a", "source: empty"))
    (res,) = load_stack(tree, ".", registry)
    assert res.blob == b""


# --- the cache -----------------------------------------------------------------------


def test_cache_hits_do_not_reparse(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a"))
    cache = RenderCache(size=2)
    first = cache.get_or_load("rev1", tree, ".", registry)
    put(tree, "a.yaml", "broken: [")  # a revision never changes: the cache must not look
    again = cache.get_or_load("rev1", tree, "./", registry)
    assert [r.id for r in again] == ["File/a"]
    assert again is not first and again[0] is first[0]
    with pytest.raises(ManifestErrors):
        cache.get_or_load("rev2", tree, ".", registry)


def test_cache_re_raises_errors_and_evicts_lru(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", "broken: [")
    cache = RenderCache(size=2)
    for _ in range(2):
        with pytest.raises(ManifestErrors) as info:
            cache.get_or_load("bad", tree, ".", registry)
        assert [e.line for e in info.value.errors] == [2]
        assert info.value.__traceback__ is not None
    put(tree, "a.yaml", file_doc("a", "/a"))
    cache.get_or_load("good1", tree, ".", registry)
    cache.get_or_load("good2", tree, ".", registry)  # evicts "bad" (least recently used)
    assert len(cache) == 2
    assert [r.id for r in cache.get_or_load("bad", tree, ".", registry)] == ["File/a"]
    with pytest.raises(ValueError, match="at least 1"):
        RenderCache(size=0)


def test_cache_passes_limits(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a"))
    cache = RenderCache(limits=Limits(max_manifest_bytes=10))
    with pytest.raises(ManifestErrors, match="over the limit"):
        cache.get_or_load("r", tree, ".", registry)


# --- speed (not a timed assertion: printed with -s, the design target is < 2 s) ----


@pytest.mark.slow
def test_ten_thousand_resources_load(tree: Path, registry: Registry) -> None:
    for i in range(10_000):
        put(
            tree,
            f"d{i % 100:02d}/f{i:05d}.yaml",
            file_doc(
                f"f-{i:05d}",
                f"/srv/d{i % 100:02d}/f{i:05d}.conf",
                'content: "x\\n"\n  mode: "0644"',
            ),
        )
    t0 = time.perf_counter()
    resources = load_stack(tree, ".", registry)
    elapsed = time.perf_counter() - t0
    print(f"\n10,000 File resources in 10,000 files loaded in {elapsed:.2f} s")
    assert len(resources) == 10_000
