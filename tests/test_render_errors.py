"""setpoint.render: every manifest error names its file and line, and all come at once."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, model_validator

from render_support import file_doc, fs_registry, make_tree, no_provider, put
from setpoint.model.errors import ManifestError, ManifestErrors, SetpointError, SourceError
from setpoint.providers.base import Registry
from setpoint.render import Limits, load_stack


class BoomSpec(BaseModel):
    """A kind whose validator blows the stack, as a buggy validator could."""

    model_config = ConfigDict(extra="forbid")
    path: str

    @model_validator(mode="after")
    def _boom(self) -> BoomSpec:
        raise RecursionError("maximum recursion depth exceeded")


@pytest.fixture
def registry() -> Registry:
    reg = fs_registry()
    reg.register("Boom", BoomSpec, no_provider)  # type: ignore[arg-type]
    return reg


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


def errs(tree: Path, registry: Registry, subdir: str = ".", **kw: Any) -> list[ManifestError]:
    with pytest.raises(ManifestErrors) as info:
        load_stack(tree, subdir, registry, **kw)
    return info.value.errors


def one(tree: Path, registry: Registry, **kw: Any) -> ManifestError:
    found = errs(tree, registry, **kw)
    assert len(found) == 1, found
    return found[0]


# --- the envelope ------------------------------------------------------------------


def test_document_must_be_a_mapping(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("ok", "/ok") + "---\n- just\n- a list\n")
    e = one(tree, registry)
    assert (e.file, e.line) == ("a.yaml", 9)
    assert "must be a mapping" in e.message and "a list" in e.message


def test_envelope_errors_all_reported_with_lines(tree: Path, registry: Registry) -> None:
    put(
        tree,
        "a.yaml",
        """\
        apiVersion: setpoint/v2
        kind: File
        metadata:
          name: motd
          annotations: {x: y}
          labels:
            tier: 1
        extra: true
        """,
    )
    got = {(e.line, e.message) for e in errs(tree, registry)}
    assert got == {
        (1, "File/motd: apiVersion must be setpoint/v1 (got 'setpoint/v2')"),
        (1, "File/motd: missing spec"),
        (5, "File/motd: unknown metadata key 'annotations' (allowed: name, labels)"),
        (7, "File/motd: label 'tier' must have a string value (got a number; quote it)"),
        (8, "File/motd: unknown top-level key 'extra' (allowed: apiVersion, kind, metadata, spec)"),
    }


def test_other_tools_yaml_gives_one_error(tree: Path, registry: Registry) -> None:
    put(tree, "compose.yaml", "# docker compose\nservices:\n  web: {image: nginx}\n")
    e = one(tree, registry)
    assert (e.file, e.line) == ("compose.yaml", 2)
    assert e.message == (
        "document: not a setpoint manifest: a document needs apiVersion, kind, metadata and "
        "spec (found 'services')"
    )


def test_unknown_kind_suggests(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", "apiVersion: setpoint/v1\nkind: Fiel\nmetadata: {name: x}\nspec: {}\n")
    e = one(tree, registry)
    assert e.line == 2
    assert e.message.startswith("Fiel/x: unknown kind 'Fiel' (known kinds: Boom, Directory, File")
    assert "did you mean 'File'?" in e.message


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ("{name: Bad_Name}", "metadata.name 'Bad_Name' is not a valid name"),
        ("{name: 12}", "metadata.name must be a string"),
        ("{labels: {a: b}}", "metadata.name is required"),
        ("[name]", "metadata must be a mapping"),
    ],
)
def test_bad_metadata(tree: Path, registry: Registry, meta: str, needle: str) -> None:
    put(tree, "a.yaml", f"apiVersion: setpoint/v1\nkind: File\nmetadata: {meta}\nspec: {{}}\n")
    found = errs(tree, registry)
    assert any(e.line == 3 and needle in e.message for e in found), found


def test_spec_must_be_a_mapping(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", "apiVersion: setpoint/v1\nkind: File\nmetadata: {name: a}\nspec:\n")
    e = one(tree, registry)
    assert (e.line, e.message) == (4, "File/a: spec must be a mapping (got nothing (null))")


# --- the spec (pydantic errors mapped to lines) ------------------------------------------


def test_unquoted_mode_gets_the_clear_message(tree: Path, registry: Registry) -> None:
    put(tree, "motd.yaml", file_doc("motd", "/etc/motd", 'content: "hi"\n  mode: 0644'))
    e = one(tree, registry)
    assert (e.file, e.line) == ("motd.yaml", 8)
    assert e.message.startswith(
        'File/motd: spec.mode: mode must be a quoted octal string such as "0644"'
    )
    assert "Value error" not in e.message and "https://" not in e.message


def test_missing_field_is_reported_at_enclosing_mapping(tree: Path, registry: Registry) -> None:
    put(
        tree,
        "a.yaml",
        "apiVersion: setpoint/v1\nkind: File\nmetadata: {name: a}\n\nspec:\n  content: x\n",
    )
    e = one(tree, registry)
    assert (e.line, e.message) == (5, "File/a: spec.path: is required")


def test_unknown_spec_field_with_suggestion(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "contnt: x"))
    e = one(tree, registry)
    assert e.line == 7
    assert e.message.startswith("File/a: spec.contnt: unknown field (known fields: content,")
    assert e.message.endswith("did you mean 'content'?")


def test_model_level_error_at_spec_line(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: x\n  source: y"))
    e = one(tree, registry)
    one_of = "exactly one of content, source, template or templateSource must be set"
    assert (e.line, e.message) == (5, f"File/a: spec: {one_of}")


def test_list_item_error_at_item_line(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: x\n  dependsOn:\n    - File/b\n    - nope"))
    found = errs(tree, registry)
    assert [(e.line, e.message.split(":")[0:2]) for e in found] == [
        (10, ["File/a", " spec.dependsOn[1]"])
    ]


def test_several_field_errors_in_one_spec(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "relative/path", "content: 5\n  owner: [x]"))
    assert [e.line for e in errs(tree, registry)] == [6, 7, 8]


def test_exception_inside_validation_becomes_manifest_error(tree: Path, registry: Registry) -> None:
    put(
        tree,
        "a.yaml",
        "apiVersion: setpoint/v1\nkind: Boom\nmetadata: {name: b}\nspec: {path: /b}\n",
    )
    put(tree, "b.yaml", file_doc("ok", "/ok", "content: 5"))
    found = errs(tree, registry)
    assert [(e.file, e.line) for e in found] == [("a.yaml", 1), ("b.yaml", 7)]
    assert "nested too deeply" in found[0].message


# --- stack-level checks -----------------------------------------------------------------


def test_duplicate_ids_name_both_locations(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("motd", "/etc/motd"))
    put(tree, "b/c.yaml", "# comment\n" + file_doc("motd", "/etc/motd2"))
    e = one(tree, registry)
    assert (e.file, e.line) == ("b/c.yaml", 2)
    assert e.message == "File/motd: declared twice (also at a.yaml:1)"


def test_path_conflict_names_the_other(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", "\n\n" + file_doc("x", "/etc/x"))
    put(
        tree,
        "b.yaml",
        "apiVersion: setpoint/v1\nkind: Directory\nmetadata: {name: y}\nspec:\n  path: /etc/x\n",
    )
    e = one(tree, registry)
    assert (e.file, e.line) == ("b.yaml", 5)
    assert e.message == "Directory/y: spec.path /etc/x conflicts with File/x at a.yaml:3"


def test_depends_on_unknown_id(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: x\n  dependsOn: [File/b, File/ghost]"))
    put(tree, "b.yaml", file_doc("b", "/b"))
    e = one(tree, registry)
    assert (e.file, e.line) == ("a.yaml", 8)
    assert e.message == "File/a: spec.dependsOn[1]: File/ghost is not declared in this stack"


def test_depends_on_a_broken_resource_is_not_also_unknown(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: x\n  dependsOn: [File/b]"))
    put(tree, "b.yaml", file_doc("b", "/b", "content: 5"))
    assert [e.file for e in errs(tree, registry)] == ["b.yaml"]


def test_two_bad_files_give_two_errors(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", 'content: "x"\n  mode: 0644'))
    put(tree, "z/b.yaml", "apiVersion: setpoint/v1\nkind: File\nmetadata: {name: b}\nspec: [\n")
    put(tree, "ok.yaml", file_doc("ok", "/ok"))
    found = errs(tree, registry)
    assert [(e.file, e.line) for e in found] == [("a.yaml", 8), ("z/b.yaml", 5)]
    assert str(found[0]).startswith("a.yaml:8: File/a: spec.mode:")


# --- YAML-level safety ----------------------------------------------------------------------


def test_duplicate_keys(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", 'content: "x"\n  mode: "0600"\n  mode: "0644"'))
    e = one(tree, registry)
    assert e.line == 9
    assert e.message == (
        "File/a: duplicate key 'mode' in one mapping (first at line 8); "
        "YAML would silently keep only the last one"
    )


def test_keys_equal_once_read_are_duplicates(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: x\n  1: one\n  true: yes"))
    e = one(tree, registry)
    assert e.line == 9
    assert "keys '1' and 'true' mean the same key (True)" in e.message
    assert "first at line 8" in e.message


def test_non_string_spec_key(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: x\n  42: answer"))
    e = one(tree, registry)
    assert e.line == 8
    assert e.message.startswith("File/a: spec.42: unknown field")


def test_duplicate_top_level_keys_even_if_equal(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a") + "kind: File\n")
    assert one(tree, registry).line == 8


def test_syntax_error_line_and_earlier_documents_still_checked(
    tree: Path, registry: Registry
) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: 5") + "---\nkey: [1, 2\nother: 3\n")
    found = errs(tree, registry)
    assert [(e.line, e.message.split(":")[0]) for e in found] == [
        (7, "File/a"),
        (10, "YAML syntax error"),
    ]


def test_tabs_and_control_characters(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", "apiVersion: setpoint/v1\nkind: File\n\tmetadata: {}\n")
    put(tree, "b.yaml", b"apiVersion: setpoint/v1\nkind: \x07File\n")
    found = errs(tree, registry)
    assert [(e.file, e.line) for e in found] == [("a.yaml", 3), ("b.yaml", 2)]


def test_not_utf8(tree: Path, registry: Registry) -> None:
    put(tree, "latin1.yaml", "apiVersion: setpoint/v1\nkind: File\n# caf\xe9\n".encode("latin-1"))
    put(tree, "utf16.yaml", file_doc("a", "/a").encode("utf-16"))
    found = errs(tree, registry)
    assert [(e.file, e.line) for e in found] == [("latin1.yaml", 3), ("utf16.yaml", 1)]
    assert all("not valid UTF-8" in e.message for e in found)
    assert "0xe9" in found[0].message


def test_alias_bomb_is_bounded(tree: Path, registry: Registry) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    bomb = "apiVersion: setpoint/v1\nkind: File\nmetadata: {name: bomb}\nspec:\n"
    bomb += "".join(f"  {line}\n" for line in lines)
    put(tree, "bomb.yaml", bomb)
    t0 = time.perf_counter()
    e = one(tree, registry)
    assert time.perf_counter() - t0 < 5
    assert e.file == "bomb.yaml" and 5 <= e.line <= 14
    assert "more than 100000 YAML nodes" in e.message and e.message.startswith("File/bomb:")


def test_recursive_alias_is_bounded(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: x\n  extra: &loop [*loop]"))
    e = one(tree, registry)
    assert (e.line, e.message) == (8, "File/a: nesting is deeper than 64 levels")


@pytest.mark.parametrize("depth", [65, 500, 5000])
def test_deep_nesting_is_bounded(tree: Path, registry: Registry, depth: int) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: " + "[" * depth + "]" * depth))
    t0 = time.perf_counter()
    e = one(tree, registry)
    assert time.perf_counter() - t0 < 5
    assert e.line == 7
    # libyaml itself refuses nesting past 1000 levels, before our own limit is checked.
    expected = (
        "YAML syntax error: exceeded maximum nesting depth (while increasing flow level)"
        if depth > 1000
        else "File/a: nesting is deeper than 64 levels"
    )
    assert e.message == expected


def test_nesting_within_limit_is_fine(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: " + "[" * 60 + "]" * 60))
    assert "spec.content" in one(tree, registry).message  # a list, not a string: but parsed


def test_unsupported_tags(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: !!python/object:os.system x"))
    put(tree, "b.yaml", file_doc("b", "/b", "content: !vault secret"))
    found = errs(tree, registry)
    assert [(e.file, e.line) for e in found] == [("a.yaml", 7), ("b.yaml", 7)]
    assert all("unsupported YAML tag" in e.message for e in found)
    assert "!!python/object:os.system" in found[0].message and "!vault" in found[1].message


def test_bad_explicit_scalar_tag(tree: Path, registry: Registry) -> None:
    put(tree, "a.yaml", file_doc("a", "/a", "content: x\n  owner: !!int xyz"))
    e = one(tree, registry)
    assert e.line == 8
    assert e.message.startswith("File/a: cannot read 'xyz' as !!int")


def test_oversize_manifest(tree: Path, registry: Registry) -> None:
    put(tree, "big.yaml", file_doc("a", "/a", f'content: "{"x" * 2000}"'))
    e = one(tree, registry, limits=Limits(max_manifest_bytes=1000))
    assert (e.file, e.line) == ("big.yaml", 1)
    assert "over the limit of 1000 bytes" in e.message


def test_fifo_named_yaml_is_refused_without_blocking(tree: Path, registry: Registry) -> None:
    os.mkfifo(tree / "pipe.yaml")
    e = one(tree, registry)
    assert (e.file, e.line) == ("pipe.yaml", 1)
    assert "FIFO" in e.message


def test_symlinked_manifest_escaping_is_refused(
    tree: Path, tmp_path: Path, registry: Registry
) -> None:
    outside = put(tmp_path, "secret.yaml", file_doc("s", "/s"))
    os.symlink(outside, tree / "link.yaml")
    e = one(tree, registry)
    assert (e.file, e.line) == ("link.yaml", 1)
    assert "leads outside the repository" in e.message


# --- File sources ----------------------------------------------------------------------------


def test_source_escaping_via_dotdot_absolute_and_symlink(
    tree: Path, tmp_path: Path, registry: Registry
) -> None:
    put(tmp_path, "secret", b"s3cret")
    os.symlink(tmp_path / "secret", tree / "innocent.txt")
    docs = [
        file_doc("a", "/a", "source: ../secret"),
        file_doc("b", "/b", f"source: {tmp_path / 'secret'}"),
        file_doc("c", "/c", "source: innocent.txt"),
    ]
    put(tree, "a.yaml", "---\n".join(docs))
    found = errs(tree, registry)
    assert [e.line for e in found] == [7, 15, 23]
    for e in found:
        assert "spec.source: source" in e.message
        assert "leads outside the repository" in e.message
    assert "s3cret" not in str(found)


def test_source_must_be_a_regular_file(tree: Path, registry: Registry) -> None:
    (tree / "adir").mkdir()
    os.mkfifo(tree / "fifo")
    put(
        tree,
        "a.yaml",
        file_doc("a", "/a", "source: adir") + "---\n" + file_doc("b", "/b", "source: fifo"),
    )
    found = errs(tree, registry)
    assert [(e.line, e.message) for e in found] == [
        (7, "File/a: spec.source: source 'adir' is a directory, not a regular file"),
        (15, "File/b: spec.source: source 'fifo' is a FIFO (named pipe), not a regular file"),
    ]


def test_source_missing_or_oversize(tree: Path, registry: Registry) -> None:
    put(tree, "big.bin", b"x" * 101)
    put(
        tree,
        "a.yaml",
        file_doc("a", "/a", "source: big.bin") + "---\n" + file_doc("b", "/b", "source: nope"),
    )
    found = errs(tree, registry, limits=Limits(max_source_bytes=100))
    assert [(e.line, e.message) for e in found] == [
        (7, "File/a: spec.source: source 'big.bin' is 101 bytes, over the limit of 100 bytes"),
        (15, "File/b: spec.source: cannot read source 'nope': No such file or directory"),
    ]


def test_dropped_source_manifest_takes_its_errors_with_it(tree: Path, registry: Registry) -> None:
    put(tree, "tpl/broken.yaml", "{{ not yaml at all\n")
    put(
        tree,
        "a.yaml",
        file_doc("a", "/a", "source: tpl/broken.yaml")
        + "---\n"
        + file_doc("b", "/b", "content: 5"),
    )
    assert [(e.file, e.line) for e in errs(tree, registry)] == [("a.yaml", 15)]


# --- the stack path and the loader ------------------------------------------------------------


@pytest.mark.parametrize("subdir", ["missing", "../", "/etc", "a.yaml"])
def test_bad_stack_path(tree: Path, registry: Registry, subdir: str) -> None:
    put(tree, "a.yaml", file_doc("a", "/a"))
    e = one(tree, registry, subdir=subdir)
    assert (e.file, e.line) == (subdir, 0)
    assert "stack path" in e.message


def test_missing_tree_is_a_source_error(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(SourceError, match="not a directory"):
        load_stack(tmp_path / "gone", ".", registry)


def test_without_libyaml_refuses_clearly(
    tree: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yaml, "__with_libyaml__", False)
    with pytest.raises(SetpointError, match="without libyaml") as info:
        load_stack(tree, ".", registry)
    assert not isinstance(info.value, ManifestErrors)


# --- property: anything either loads or raises ManifestErrors ---------------------------------

VALID = """\
apiVersion: setpoint/v1
kind: File
metadata:
  name: motd
  labels: {tier: base}
spec:
  path: /etc/motd
  content: "hello\\n"
  mode: "0644"
  dependsOn: [Directory/etc]
---
apiVersion: setpoint/v1
kind: Directory
metadata: {name: etc}
spec: &d {path: /etc, mode: "0755"}
"""

_YAMLISH = st.sampled_from(
    [*":-[]{}&*!|>'\"#%@`,?\n\t ", "---", "...", "<<", "0644", "~", "null", "!!binary", "\\"]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    text = VALID.encode()
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "bytes"]))
        if op == "insert":
            text = text[:pos] + draw(_YAMLISH).encode() + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)) :]
        elif op == "replace":
            text = text[:pos] + draw(st.text(max_size=8)).encode() + text[pos + 1 :]
        else:
            text = text[:pos] + draw(st.binary(max_size=4)) + text[pos:]
    return text


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(mutated(), st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_anything_loads_or_raises_manifest_errors(
    tree: Path, registry: Registry, data: bytes
) -> None:
    put(tree, "fuzz.yaml", data)
    try:
        resources = load_stack(tree, ".", registry)
    except ManifestErrors as exc:
        assert exc.errors
        for e in exc.errors:
            assert e.file == "fuzz.yaml" and e.line >= 1 and e.message
    else:
        assert all(r.location.file == "fuzz.yaml" for r in resources)
