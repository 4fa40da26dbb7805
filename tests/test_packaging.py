"""What ships around the code: the Python version it needs, ``--version``, the systemd
unit, and documentation that links only to files in the repository."""

from __future__ import annotations

import configparser
import importlib.metadata
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

import setpoint
from setpoint import cli

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy/systemd/setpoint.service"
OLD = (
    "setpoint needs Python 3.11.4 or newer (this is 3.11.2): tarfile's extraction filters "
    "(tarfile.data_filter, extractall(filter=...)), which keep a release archive or an "
    "exported Git tree from writing outside its directory, came in 3.11.4."
)


def test_an_older_python_is_refused_at_import_with_the_reason() -> None:
    code = "import sys; sys.version_info = (3, 11, 2, 'final', 0); import setpoint.cli"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.startswith(OLD), res.stderr
    assert "Traceback" not in res.stderr


def test_python_problem_draws_the_line_at_3_11_4() -> None:
    assert setpoint.python_problem((3, 11, 4)) is None
    assert setpoint.python_problem((3, 12, 0)) is None
    assert setpoint.python_problem() is None  # this interpreter
    msg = setpoint.python_problem((3, 11, 3))
    assert msg is not None
    assert msg.startswith("setpoint needs Python 3.11.4 or newer (this is 3.11.3)")


def test_requires_python_is_what_the_check_needs() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"] == ">=3.11.4"
    assert setpoint.MIN_PYTHON == (3, 11, 4)


def test_setup_script_refuses_an_older_python(tmp_path: Path) -> None:
    fake = tmp_path / "python3"  # answers like Debian 12's python3 (3.11.2)
    fake.write_text(
        '#!/bin/sh\ncase "$1" in --version) echo "Python 3.11.2";;\n'
        '-c) exec "$REAL" -c "import sys; sys.version_info = (3, 11, 2); $2";;\nesac\n'
    )
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "REAL": sys.executable}
    res = subprocess.run(
        ["bash", str(REPO / "scripts/setup.sh")], cwd=tmp_path, env=env, capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert res.stderr.startswith(
        f"setpoint needs Python 3.11.4 or newer ({fake} is Python 3.11.2): tarfile's "
        "extraction filters"
    ), res.stderr


def test_version_option_prints_the_installed_version() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "setpoint", "--version"], capture_output=True, text=True
    )
    installed = importlib.metadata.version("setpoint")
    assert (res.returncode, res.stdout) == (0, f"setpoint {installed}\n")
    assert re.fullmatch(r"setpoint \d+\.\d+\.\d+\n", res.stdout)


def test_version_falls_back_to_the_package_version(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.setattr(setpoint, "__version__", "9.8.7")
    assert cli._version() == "9.8.7"


# -- systemd unit ---------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_leaves_supervised_services_running_when_the_agent_restarts() -> None:
    svc = unit()["Service"]
    assert svc["KillMode"] == "process"
    assert svc["Restart"] == "always"
    assert "NoNewPrivileges" not in svc  # inherited: services could not run setuid programs


def test_unit_execstart_is_a_valid_agent_command_line() -> None:
    argv = shlex.split(unit()["Service"]["ExecStart"])
    assert argv[:2] == ["/usr/local/bin/setpoint", "agent"]
    flags = [a for a in argv[2:] if a.startswith("--")]
    assert flags == ["--config"]
    helptext = subprocess.run(
        [sys.executable, "-m", "setpoint", "agent", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in flags:
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,]", helptext), flag
    # The whole line parses as the CLI would parse it (options, values, no stray word).
    agent = typer.main.get_command(cli.app).commands["agent"]  # type: ignore[attr-defined]
    sub = agent.make_context("agent", argv[2:])
    assert sub.params["config"] == Path("/etc/setpoint/config.yaml")


# -- documentation links --------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`([^`\s]*\.md)`")


def doc_files() -> list[Path]:
    return [REPO / "README.md", REPO / "SECURITY.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # https:, mailto:, an anchor in the same page
        path = (doc.parent / target.split("#")[0]).resolve()
        if not (path.is_relative_to(REPO) and path.exists()):
            bad.append(target)
    for name in CODE_PATH.findall(text):  # a path in backticks counts as a link too
        here, top = (doc.parent / name).resolve(), (REPO / name).resolve()
        if not any(p.is_relative_to(REPO) and p.exists() for p in (here, top)):
            bad.append(name)
    assert bad == [], f"{doc.name} points outside the repository or at missing files"
