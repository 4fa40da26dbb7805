"""Helpers for scripts/test.sh: run pytest as an unprivileged user, and sum up the runs.

``as-user``: run a command as USER (root only, inside a private mount namespace made by
``unshare --mount``). Every directory on the way to a ``--reach`` path that USER may not
pass through (a CI checkout under /root, a pyenv interpreter in /root/.pyenv) is shadowed
*in that namespace only* by a directory of mode 0711 holding bind mounts of just the
entries on the way: nothing on the host changes mode, nothing is copied, and the mounts
vanish with the namespace.

``summary``: read the JUnit XML of each pytest run, print per run the counts and the skip
reasons, then the combined ``N passed, N failed, N skipped`` as the very last line (what
CI reads). Exit 1 when a run failed, errored, did not report, or collected nothing when
it should have (pytest's exit status 5 counts only with ``--selection``: the caller
narrowed the run with its own arguments).
"""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# -- as-user --------------------------------------------------------------------------


def passable(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether the user may traverse ``path`` by its mode bits (what the kernel checks)."""
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def blocked(targets: list[Path], uid: int, gids: set[int]) -> dict[Path, set[str]]:
    """Directories the user cannot traverse -> the entries in them it must reach.

    A target that is itself closed exposes all its entries.
    """
    out: dict[Path, set[str]] = {}
    for target in targets:
        parts = Path(os.path.realpath(target)).parts
        for i in range(1, len(parts) + 1):
            d = Path(*parts[:i])
            if not passable(d, uid, gids):
                names = {parts[i]} if i < len(parts) else set(os.listdir(d))
                out.setdefault(d, set()).update(names)
    return out


def _bind(src: Path, dst: Path) -> None:
    subprocess.run(["mount", "--no-canonicalize", "--rbind", str(src), str(dst)], check=True)


def shadow(closed: dict[Path, set[str]], scratch: Path) -> None:
    """Mount over each closed directory one that lets the user through to ``names``."""
    # The scratch dir may lie below a directory shadowed first (pytest's 0700 temp dirs):
    # reach it through a descriptor opened before any mount, and keep mount(8) from
    # resolving that /proc path back to the hidden name.
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    base = Path(f"/proc/{os.getpid()}/fd/{fd}")
    for n, d in enumerate(sorted(closed, key=lambda p: len(p.parts))):  # outermost first
        stand_in = base / f"shadow-{n}"
        stand_in.mkdir(mode=0o711)
        os.chmod(stand_in, 0o711)  # noqa: S103 - pass through, as the real one must
        for name in sorted(closed[d]):
            src, dst = d / name, stand_in / name
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
                continue
            if src.is_dir():
                dst.mkdir()
            else:
                dst.touch()
            _bind(src, dst)
        _bind(stand_in, d)


def as_user(args: argparse.Namespace) -> int:
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        # Shadowing /root in the caller's namespace would hide it from everyone there.
        print("as-user mounts: run it under `unshare --mount --propagation private`",
              file=sys.stderr)
        return 2
    pw = pwd.getpwnam(args.user)
    gids = {pw.pw_gid}
    closed = blocked([Path(p) for p in args.reach], pw.pw_uid, gids)
    for d, names in sorted(closed.items()):
        print(f"   {d} is closed to {args.user}: shadowed in this mount namespace, "
              f"exposing {', '.join(sorted(names))}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="shadow-", dir=args.scratch))
    shadow(closed, scratch)
    os.chdir(args.cwd)  # after the mounts: the cwd must be the shadowed view
    env = dict(kv.split("=", 1) for kv in args.env)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    os.setgroups([])
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    os.execvpe(cmd[0], cmd, env)  # noqa: S606 - argv as given, no shell
    return 127  # not reached


# -- summary --------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    status: int
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    problem: str | None = None  # why the run counts as failed beyond its test results


def read_run(label: str, xml_path: Path, status: int, selection: bool) -> Run:
    run = Run(label, status)
    if status == 5:
        if not selection:
            run.problem = "pytest collected no test (exit status 5): a marker or path is wrong"
        return run
    try:
        tree = ET.parse(xml_path)  # noqa: S314 - pytest wrote it in this run
    except (OSError, ET.ParseError) as exc:
        run.problem = f"the run exited with status {status} and left no report ({exc})"
        return run
    for case in tree.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            run.failed += 1
        elif (skip := case.find("skipped")) is not None:
            run.skipped += 1
            run.reasons[skip.get("message", "no reason given")] += 1
        else:
            run.passed += 1
    if status not in (0, 1):
        run.problem = f"pytest exited with status {status} (interrupted or internal error)"
    elif status == 1 and run.failed == 0:
        run.problem = "pytest exited with status 1 but reported no failed test"
    return run


def summary(args: argparse.Namespace) -> int:
    runs: list[Run] = []
    for spec in args.runs:
        label, rest = spec.split("=", 1)
        xml_path, status = rest.rsplit(":", 1)
        runs.append(read_run(label, Path(xml_path), int(status), args.selection))
    print("== summary")
    for r in runs:
        print(f"{r.label}: {r.passed} passed, {r.failed} failed, {r.skipped} skipped "
              f"(pytest exit status {r.status})")
        if r.skipped:
            why = "; ".join(f"{n} × {reason}" for reason, n in r.reasons.most_common())
            print(f"   skipped: {r.skipped} ({why})")
        if r.problem:
            print(f"   FAILED: {r.problem}")
        elif r.status == 5:
            print("   no test matched the selection given to scripts/test.sh")
    bad = any(r.failed or r.problem for r in runs)
    print(f"{sum(r.passed for r in runs)} passed, {sum(r.failed for r in runs)} failed, "
          f"{sum(r.skipped for r in runs)} skipped")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("as-user", help="run CMD as USER (root, in a private mount namespace)")
    p.add_argument("user")
    p.add_argument("--reach", action="append", default=[], help="a path USER must reach")
    p.add_argument("--cwd", required=True)
    p.add_argument("--scratch", help="where the stand-in directories go (default: $TMPDIR)")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE (the only ones)")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    s = sub.add_parser("summary", help="sum up pytest runs: LABEL=JUNIT.xml:EXIT_STATUS ...")
    s.add_argument("--selection", action="store_true", help="the runs were narrowed by args")
    s.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    return as_user(args) if args.what == "as-user" else summary(args)


if __name__ == "__main__":
    sys.exit(main())
