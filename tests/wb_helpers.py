"""Helpers for the write-back tests: a real bare remote seeded from a work tree."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from conftest import GIT_ENV

AUTHOR = "CI Bot <ci@setpoint.invalid>"
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


class Remote:
    """A bare repository (what CI pushes to) and a work clone to seed and inspect it."""

    def __init__(self, tmp: Path) -> None:
        self.bare = tmp / "remote.git"
        self.bare.mkdir()
        git(self.bare, "init", "-q", "--bare", "-b", "main")
        self.work = tmp / "seed"
        git(tmp, "clone", "-q", str(self.bare), str(self.work))
        git(self.work, "checkout", "-q", "-b", "main")

    @property
    def url(self) -> str:
        return str(self.bare)

    def push_files(self, files: dict[str, str | bytes], message: str = "seed") -> str:
        if self.head():
            git(self.work, "pull", "-q", "--ff-only", "origin", "main")
        for rel, content in files.items():
            p = self.work / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "HEAD:main")
        return self.head()

    def head(self) -> str:
        try:
            return git(self.bare, "rev-parse", "main").strip()
        except subprocess.CalledProcessError:
            return ""

    def show(self, path: str, rev: str = "main") -> str:
        return git(self.bare, "show", f"{rev}:{path}")

    def log(self, fmt: str = "%s", n: int = 1) -> str:
        return git(self.bare, "log", f"-{n}", f"--format={fmt}", "main")

    def count(self) -> int:
        return int(git(self.bare, "rev-list", "--count", "main").strip())


def release(name: str, version: str, sha: str = SHA_A, *, comment: str = "") -> str:
    return (
        f"apiVersion: setpoint/v1\nkind: Release\nmetadata:\n  name: {name}{comment}\n"
        f"spec:\n  version: {version}\n"
        f"  url: https://artifacts.example/{name}-{version}.tar.gz\n"
        f"  sha256: {sha}\n"
    )
