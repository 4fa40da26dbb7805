"""Shared fixtures: real Git repositories in temp dirs, temp target roots and state dirs.

Also the privilege rules of the suite. A test that needs an unprivileged user is marked
``@pytest.mark.nonroot(reason=...)`` and skips as root; ``scripts/test.sh`` run as root
(CI) runs the rest as root and these as the user ``setpoint-test``. A test that needs
root skips with a reason containing "needs root". With ``SETPOINT_CI_NO_SKIPS=1`` (set by
scripts/test.sh when ``CI=true``) a skip whose reason says "needs root" or "non-root" is
a failure: CI runs both kinds, so such a skip means a test silently stopped running.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.reports import TestReport

GIT_ENV = {
    "GIT_AUTHOR_NAME": "setpoint tests",
    "GIT_AUTHOR_EMAIL": "tests@setpoint.invalid",
    "GIT_COMMITTER_NAME": "setpoint tests",
    "GIT_COMMITTER_EMAIL": "tests@setpoint.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


# The phrases of privilege skips: the two runs of scripts/test.sh leave none of them.
PRIVILEGE_SKIP = re.compile(r"needs root|non-root")


def ci_no_skips() -> bool:
    return os.environ.get("SETPOINT_CI_NO_SKIPS") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        return
    for item in items:
        mark = item.get_closest_marker("nonroot")
        if mark is not None:
            why = mark.kwargs.get("reason", "")
            item.add_marker(
                pytest.mark.skip(
                    reason=f"needs a non-root user ({why}); "
                    "scripts/test.sh runs these as setpoint-test"
                )
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report: TestReport = outcome.get_result()
    if not (report.skipped and ci_no_skips()) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if PRIVILEGE_SKIP.search(reason):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in CI (SETPOINT_CI_NO_SKIPS=1), but CI runs root and non-root tests "
            f"both, so this must run: {reason}"
        )


class GitRepo:
    """A real work-tree repository made with the git CLI; ``commit`` writes files and commits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        env = {**os.environ, **GIT_ENV}
        return subprocess.run(
            ["git", *args], cwd=self.path, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    def write(self, rel: str, content: str | bytes) -> Path:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        return p

    def remove(self, rel: str) -> None:
        (self.path / rel).unlink()

    def commit(self, files: dict[str, str | bytes] | None = None, message: str = "change") -> str:
        for rel, content in (files or {}).items():
            self.write(rel, content)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    @property
    def url(self) -> str:
        return str(self.path)


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    r = tmp_path / "root"
    r.mkdir()
    yield r


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
