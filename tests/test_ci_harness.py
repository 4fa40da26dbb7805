"""The test harness itself: skip rules in CI, the summary CI reads, the non-root runner.

Each test runs real pytest (or scripts/ci_support.py) in a subprocess on a small suite
made in a temp dir, as scripts/test.sh does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUPPORT = REPO / "scripts/ci_support.py"
sys.path.insert(0, str(SUPPORT.parent))
import ci_support  # noqa: E402

SUITE = '''
import pytest

def test_one(): pass
def test_two(): pass
def test_needs_root(): pytest.skip("making a device node needs root")
def test_git_cannot_hold_it(): pytest.skip("fifo: Git cannot hold it")
@pytest.mark.nonroot(reason="root bypasses permission checks")
def test_denied(): pass
def test_broken(): assert 1 == 2
'''


def run_suite(tmp_path: Path, *args: str, ci: bool = False) -> tuple[int, Path]:
    """Run SUITE with the project's conftest loaded as a plugin; return status, JUnit."""
    (tmp_path / "suite").mkdir(exist_ok=True)
    (tmp_path / "suite/test_suite.py").write_text(SUITE)
    junit = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.xml"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    env.pop("SETPOINT_CI_NO_SKIPS", None)
    if ci:
        env["SETPOINT_CI_NO_SKIPS"] = "1"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
         "-p", "no:xdist", f"--junitxml={junit}", "suite", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    return res.returncode, junit


def outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).iter("testcase"):
        kinds = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        out[case.get("name", "")] = kinds[0] if kinds else "passed"
    return out


def summary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SUPPORT), "summary", *args], capture_output=True, text=True
    )


def test_ci_mode_fails_a_skip_for_want_of_root_and_keeps_other_skips(tmp_path: Path) -> None:
    _, plain = run_suite(tmp_path)
    _, strict = run_suite(tmp_path, ci=True)
    assert outcomes(plain)["test_needs_root"] == "skipped"
    assert outcomes(strict)["test_needs_root"] == "failure"
    assert outcomes(strict)["test_git_cannot_hold_it"] == "skipped"
    assert outcomes(strict)["test_one"] == "passed"


def test_nonroot_marker_skips_as_root_and_runs_otherwise(tmp_path: Path) -> None:
    _, junit = run_suite(tmp_path, "-m", "nonroot")
    assert set(outcomes(junit)) == {"test_denied"}
    case = next(ET.parse(junit).iter("testcase"))
    if os.geteuid() == 0:
        skipped = case.find("skipped")
        assert skipped is not None
        assert skipped.get("message") == (
            "needs a non-root user (root bypasses permission checks); "
            "scripts/test.sh runs these as setpoint-test"
        )
    else:
        assert outcomes(junit) == {"test_denied": "passed"}


def test_summary_counts_each_run_and_ends_with_the_combined_line(tmp_path: Path) -> None:
    status1, first = run_suite(tmp_path, "-m", "not nonroot")
    status2, second = run_suite(tmp_path, "-k", "one or two")
    res = summary(f"root run={first}:{status1}", f"as user={second}:{status2}")
    lines = res.stdout.splitlines()
    assert res.returncode == 1  # test_broken failed
    assert "root run: 2 passed, 1 failed, 2 skipped (pytest exit status 1)" in lines
    assert (
        "   skipped: 2 (1 × making a device node needs root; 1 × fifo: Git cannot hold it)"
        in lines
    )
    assert "as user: 2 passed, 0 failed, 0 skipped (pytest exit status 0)" in lines
    assert lines[-1] == "4 passed, 1 failed, 2 skipped"


def test_summary_fails_a_run_that_collected_nothing(tmp_path: Path) -> None:
    status, junit = run_suite(tmp_path, "-m", "no_such_marker")
    assert status == 5
    res = summary(f"as user={junit}:{status}")
    assert res.returncode == 1
    assert "   FAILED: pytest collected no test (exit status 5): a marker or path is wrong" in (
        res.stdout.splitlines()
    )
    assert res.stdout.splitlines()[-1] == "0 passed, 0 failed, 0 skipped"
    narrowed = summary("--selection", f"as user={junit}:{status}")  # scripts/test.sh -k x
    assert narrowed.returncode == 0
    assert "   no test matched the selection given to scripts/test.sh" in narrowed.stdout


def test_summary_fails_a_run_that_left_no_report(tmp_path: Path) -> None:
    res = summary(f"as user={tmp_path / 'none.xml'}:2")
    assert res.returncode == 1
    assert "FAILED: the run exited with status 2 and left no report" in res.stdout


def test_closed_directories_are_found_on_the_way_to_each_target(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "closed/open/target").mkdir(parents=True)
    (top / "closed").chmod(0o700)
    shut = tmp_path / "shut"  # a target that is itself closed exposes all its entries
    (shut / "d").mkdir(parents=True)
    (shut / "f").write_text("x")
    shut.chmod(0o700)
    nobody = 65534
    found = ci_support.blocked([top / "closed/open/target", shut], nobody, {nobody})
    below = {p: names for p, names in found.items() if p.parent.is_relative_to(tmp_path)}
    assert below == {top / "closed": {"open"}, shut: {"d", "f"}}
    for p, names in found.items():  # tmp_path and above: exactly the closed ancestors
        if p not in below:
            assert tmp_path.is_relative_to(p) and os.stat(p).st_mode & 0o001 == 0
            on_the_way = {"top", "shut"} if p == tmp_path else {tmp_path.relative_to(p).parts[0]}
            assert names == on_the_way


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_as_user_reaches_through_closed_dirs_without_changing_the_host(tmp_path: Path) -> None:
    why = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True
    )
    if why.returncode != 0 or shutil.which("unshare") is None:
        pytest.skip(f"no private mount namespace here: {why.stderr.strip()}")
    secret = tmp_path / "closed/inner"
    secret.mkdir(parents=True)
    (tmp_path / "closed").chmod(0o700)
    (secret / "file").write_text("reached\n")
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, str(SUPPORT),
         "as-user", "--cwd", str(secret), "--scratch", str(tmp_path), "--reach", str(secret),
         "--env", "PATH=/usr/bin:/bin", "nobody", "--", "sh", "-c", "id -u; cat file"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-2:] == ["65534", "reached"]
    assert f"{tmp_path / 'closed'} is closed to nobody" in res.stdout
    assert os.stat(tmp_path / "closed").st_mode & 0o777 == 0o700  # unchanged on the host
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
