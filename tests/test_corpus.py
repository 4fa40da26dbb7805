"""The bad-input corpus (tests/corpus/cases.yaml): every case is refused as file:line: message
by the real `setpoint validate` and by the engine's apply, nothing is applied, nothing crashes.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import GitRepo
from helpers import cli, manifest
from setpoint.cli import app
from setpoint.config import AgentConfig
from setpoint.engine.controller import Controller

CORPUS = Path(__file__).parent / "corpus"
CASES: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def test_the_corpus_is_large_enough_and_every_case_has_a_directory():
    assert len(CASES) >= 30
    for name in CASES:
        assert (CORPUS / name / "m").is_dir(), name


def _setup(m: Path, setup: dict[str, Any]) -> None:
    for name, target in (setup.get("symlink") or {}).items():
        os.symlink(target, m / name)
    for name in setup.get("fifo") or []:
        os.mkfifo(m / name)
    for name in setup.get("device") or []:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(m / name, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    for name, size in (setup.get("sparse") or {}).items():
        with open(m / name, "wb") as f:
            f.truncate(size)
    if setup.get("nonutf8"):
        text = manifest("File", "weird", path="/etc/weird", content="x\n")
        (m / os.fsdecode(b"\xff" + setup["nonutf8"].encode())).write_text(text)


def _copy(name: str, dest: Path, setup: dict[str, Any]) -> Path:
    shutil.copytree(CORPUS / name, dest, symlinks=True)
    m = dest / "m"
    for keep in m.glob(".keep"):
        keep.unlink()
    _setup(m, setup)
    return m


def _expected(case: dict[str, Any], prefix: str, apply: bool = False) -> tuple[str, str]:
    message = case["message"]
    if apply and isinstance(case.get("apply"), dict):
        message = case["apply"].get("message", message)
    return f"{prefix}{case['file']}:{case['line']}: ", message


# A few cases also run in a child process (the command exactly as an operator runs it);
# all of them run the same `validate` command in process, which is 10x quicker.
SUBPROCESS = {"alias-bomb", "deep-nesting", "manifest-name-not-utf8", "source-is-fifo"}


def _validate(m: Path, subprocess: bool) -> tuple[int, str, str]:
    if subprocess:
        out = cli("validate", m, timeout=60)
        return out.returncode, out.stdout, out.stderr
    res = CliRunner().invoke(app, ["validate", str(m)])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_validate_refuses_with_file_and_line(name, tmp_path):
    case = CASES[name]
    m = _copy(name, tmp_path / "case", case.get("setup") or {})
    code, stdout, stderr = _validate(m, name in SUBPROCESS)
    assert code == 1, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    where, message = _expected(case, f"{m}/")
    lines = stdout.splitlines()
    assert any(line.startswith(where) and message in line for line in lines), (
        f"expected a line starting {where!r} with {message!r}; got:\n{stdout}{stderr}"
    )


GOOD = manifest("File", "good", path="/etc/good", content="good\n")


@pytest.mark.parametrize("name", sorted(CASES))
def test_apply_refuses_applies_nothing_and_keeps_the_last_good(name, tmp_path):
    case = CASES[name]
    spec = case.get("apply")
    if spec == "skip":
        pytest.skip(f"{name}: Git cannot hold it (covered by the validate run)")
    spec = spec or {}
    repo = GitRepo(tmp_path / "repo")
    root = tmp_path / "root"
    root.mkdir()
    cfg = AgentConfig.model_validate(
        {
            "root": str(root),
            "state": str(tmp_path / "state"),
            "sources": [{"name": "repo", "url": repo.url}],
            "stacks": [{"name": "web", "source": "repo", "path": "m"}],
            "limits": spec.get("limits") or {},
        }
    )
    good = repo.commit({"m/good.yaml": GOOD})
    ctl = Controller(cfg)
    try:
        (first,) = ctl.run_once()
    finally:
        ctl.close()
    assert first.converged, first

    shutil.rmtree(repo.path / "m")
    _copy(name, repo.path / "case", spec.get("setup", case.get("setup")) or {})
    (repo.path / "case/m").rename(repo.path / "m")
    shutil.rmtree(repo.path / "case")
    bad = repo.commit(message=f"bad input: {name}")

    ctl = Controller(cfg)
    try:
        (result,) = ctl.run_once()
        status = ctl.db.load_status("web")
        inventory = ctl.db.inventory("web")
    finally:
        ctl.close()
    where, message = _expected(case, "m/", apply=True)
    errors = "\n".join(result.errors)
    assert result.refused == bad, (name, result)
    assert any(e.startswith(where) and message in e for e in errors.splitlines()), (
        f"expected {where!r} with {message!r}; got:\n{errors}"
    )
    assert result.revision == good  # the last good revision stays in force
    assert status.condition("Stalled") is not None
    assert status.last_good_revision == good
    # Nothing from the bad revision applied, nothing pruned.
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["etc", "etc/good"]
    assert (root / "etc/good").read_text() == "good\n"
    assert set(inventory) == {"File/good"}


def test_a_symlink_leading_out_of_the_root_is_never_written_through(tmp_path):
    """Valid manifests, hostile layout: a declared Symlink points out of the root and a
    File is declared below it. The File is refused at apply time; nothing lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = GitRepo(tmp_path / "repo")
    root = tmp_path / "root"
    root.mkdir()
    rel = os.path.relpath(outside, root / "etc")
    repo.commit(
        {
            "m/a.yaml": "---\n".join(
                [
                    manifest("Symlink", "out", path="/etc/out", target=rel),
                    manifest("File", "b", path="/etc/out/b", content="x\n"),
                ]
            )
        }
    )
    out = cli(
        "apply", "--repo", repo.url, "--path", "m", "--root", root, "--state", tmp_path / "st"
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert list(outside.iterdir()) == []
    assert "outside" in out.stdout + out.stderr
