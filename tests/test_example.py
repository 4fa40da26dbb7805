"""The embedded example (examples/): one fleet repository, two hosts, different results.

Runs the real CLI as the quick start does for its second host (role=worker), and
renders the web host's production overlay with the demo's age key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from conftest import GitRepo
from helpers import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KEY = EXAMPLES / "keys/demo-age.key"


def host_config(tmp_path: Path, url: str, labels: dict[str, str]) -> Path:
    (tmp_path / "root").mkdir()
    path = tmp_path / "host.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "root": str(tmp_path / "root"),
                "state": str(tmp_path / "state"),
                "sources": [{"name": "demo", "url": url}],
                "labels": labels,
                "fleet": {"source": "demo", "path": "fleet.yaml"},
                "decryption": {"ageKeyFile": str(KEY)},
            }
        )
    )
    return path


def test_the_worker_host_gets_the_base_and_its_role_only(git_repo: GitRepo, tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, git_repo.path, dirs_exist_ok=True)
    git_repo.commit()
    config = host_config(tmp_path, git_repo.url, {"role": "worker", "env": "staging"})
    cli("apply", "--config", config, check=0)
    root = tmp_path / "root"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "etc/motd",
        "etc/worker.conf",
    ]
    assert (root / "etc/worker.conf").read_text().startswith("queue = jobs-staging\n")
    assert "role worker" in (root / "etc/motd").read_text()


def test_the_environments_render_from_one_base_with_their_own_settings() -> None:
    prod = cli(
        "render",
        EXAMPLES / "envs/prod",
        "--labels",
        "role=web,env=prod",
        "--age-key-file",
        KEY,
        "--json",
        check=0,
    ).stdout
    staging = cli(
        "render",
        EXAMPLES / "envs/staging",
        "--labels",
        "role=web,env=staging",
        "--age-key-file",
        KEY,
        "--json",
        check=0,
    ).stdout
    for out in (prod, staging):
        assert "s3cret-demo" not in out  # the secret is masked
    assert '"readyTimeout": 30' in prod and '"readyTimeout": 30' not in staging  # prod's patch
    no_key = cli("render", EXAMPLES / "envs/prod", "--labels", "role=web,env=prod")
    assert no_key.returncode == 1 and "no age identity" in no_key.stdout + no_key.stderr
