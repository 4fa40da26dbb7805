"""A File or Symlink declared where a non-empty directory stands: replaced only with force.

Through the engine (a real Git repository, one pass in process): without ``force: true``
the resource fails permanently, the directory is left whole, the rest of the stack goes
on, and a dry run already says that apply will refuse.
"""

from __future__ import annotations

from pathlib import Path

from conftest import GitRepo
from helpers import docs, manifest, one_pass, one_stack

REFUSAL = (
    "cannot replace: /srv/data is a directory holding 3 entries; setpoint replaces a "
    "non-empty directory only with force: true on File/x"
)


def _data_dir(root: Path) -> Path:
    data = root / "srv/data"
    (data / "db").mkdir(parents=True)
    (data / "a").write_text("precious a")
    (data / "b").write_text("precious b")
    return data


def test_a_non_empty_directory_is_kept_and_the_rest_of_the_stack_applies(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    data = _data_dir(root)
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "x", path="/srv/data", content="typo\n"),
                manifest("File", "y", path="/etc/y", content="y\n"),
            )
        }
    )
    cfg = one_stack(git_repo.url, root, state_dir)
    plan, *_ = one_pass(cfg, dry_run=True)
    (x_plan,) = [o for o in plan.outcomes if o.resource == "File/x"]
    assert x_plan.state == "pending" and x_plan.change is not None
    assert x_plan.change.reason == (
        "a directory holding 3 entries is where a regular file is declared; apply will "
        "refuse (a non-empty directory is replaced only with force: true)"
    )

    result, status, journal, inventory = one_pass(cfg)
    states = {o.resource: (o.state, o.error) for o in result.outcomes}
    assert states["File/x"] == ("failed", REFUSAL)
    assert states["File/y"][0] == "changed"
    assert (root / "etc/y").read_text() == "y\n"
    assert sorted(p.name for p in data.iterdir()) == ["a", "b", "db"]
    assert (data / "a").read_text() == "precious a"
    assert "File/x" not in inventory and "File/y" in inventory
    assert status.condition("Ready").status is False
    failures = [e for e in journal if e.event == "failure" and e.resource == "File/x"]
    assert len(failures) == 1 and REFUSAL in failures[0].message


def test_force_replaces_a_non_empty_directory(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    _data_dir(root)
    git_repo.commit(
        {"m/a.yaml": manifest("File", "x", path="/srv/data", content="mine\n", force=True)}
    )
    result, *_ = one_pass(one_stack(git_repo.url, root, state_dir))
    assert {o.resource: o.state for o in result.outcomes} == {"File/x": "changed"}
    assert (root / "srv/data").read_text() == "mine\n"
