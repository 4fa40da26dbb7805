"""Shared fixtures: real Git repositories in temp dirs, temp target roots and state dirs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

GIT_ENV = {
    "GIT_AUTHOR_NAME": "setpoint tests",
    "GIT_AUTHOR_EMAIL": "tests@setpoint.invalid",
    "GIT_COMMITTER_NAME": "setpoint tests",
    "GIT_COMMITTER_EMAIL": "tests@setpoint.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


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
