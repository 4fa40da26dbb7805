"""Byte-preserving edits of one YAML value (the core of set, promote, update-versions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from setpoint.writeback.transaction import edit_field
from setpoint.writeback.yamledit import EditError

DOC = """\
kind: File   # a file
metadata: {name: motd}
spec:
  path: /etc/motd
  content: |
    line one
    line two

  flow: {mode: "0644", owner: root}
  keep: 3
"""


def edit(tmp_path: Path, text: str, field: tuple[str | int, ...], value: str) -> str:
    (tmp_path / "f.yaml").write_text(text)
    edit_field(tmp_path, "f.yaml", 0, field, value)
    return (tmp_path / "f.yaml").read_text()


def test_a_literal_block_stays_a_block_with_its_trailing_lines(tmp_path: Path) -> None:
    out = edit(tmp_path, DOC, ("spec", "content"), "new one\nnew two\nnew three\n")
    assert out == DOC.replace(
        "    line one\n    line two\n", "    new one\n    new two\n    new three\n"
    )


def test_a_value_inside_a_flow_mapping_keeps_its_quotes(tmp_path: Path) -> None:
    out = edit(tmp_path, DOC, ("spec", "flow", "mode"), "0600")
    assert out == DOC.replace('mode: "0644"', 'mode: "0600"')


@pytest.mark.parametrize(
    ("field", "value", "written"),
    [
        (("spec", "keep"), "5", "keep: 5\n"),  # a number stays a number
        (("spec", "keep"), "many", 'keep: "many"\n'),  # type changes are quoted
        (("spec", "path"), "true", 'path: "true"\n'),  # a string never becomes a boolean
        (("spec", "path"), "1.10", 'path: "1.10"\n'),
    ],
)
def test_types_are_kept_or_quoted(
    tmp_path: Path, field: tuple[str, ...], value: str, written: str
) -> None:
    out = edit(tmp_path, DOC, field, value)
    assert written in out
    assert str(yaml.safe_load(out)["spec"][field[1]]) == value


def test_a_missing_key_is_added_at_the_mapping_indentation(tmp_path: Path) -> None:
    out = edit(tmp_path, DOC, ("spec", "owner"), "www-data")
    assert out == DOC + "  owner: www-data\n"
    out = edit(tmp_path, DOC, ("spec", "sub", "version"), "1.10")
    assert out == DOC + '  sub:\n    version: "1.10"\n'


def test_a_mapping_is_not_a_value(tmp_path: Path) -> None:
    with pytest.raises(EditError, match=r"spec\.flow is a mapping"):
        edit(tmp_path, DOC, ("spec", "flow"), "x")
