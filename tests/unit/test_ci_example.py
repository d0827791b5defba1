"""docs/examples/ci/gitlab-ci.yml: its anycastlb and git commands, run as the CI would, on a catalog repository."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "docs" / "examples" / "ci" / "gitlab-ci.yml"


def _script(job: str) -> list[str]:
    """The job's commands that need neither the network nor the package index (git, anycastlb, cat)."""
    lines = yaml.safe_load(CI.read_text())[job]["script"]
    return [line for line in lines if line.split()[0] in ("git", "anycastlb", "cat")]


@pytest.fixture
def merge_request(tmp_path, campus_catalog, catalog_repo):
    """A clone of the catalog repository with one commit on top of main: the merge request's change."""
    repo = catalog_repo(tmp_path, campus_catalog.read_text())
    work = repo.clone(tmp_path / "mr")
    (work / "campus.yaml").write_text(campus_catalog.read_text().replace("vip: 192.0.2.11", "vip: 192.0.2.12"))
    repo.git("commit", "--quiet", "-am", "intranet moves to .12", cwd=work)
    return work


def _run(job: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CATALOG": "campus.yaml", "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(_script(job))], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_ci_file_lints_renders_and_comments_on_a_merge_request(merge_request):
    assert set(yaml.safe_load(CI.read_text())) >= {"lint", "render", "check", "diff"}
    lint = _run("lint", merge_request)
    assert lint.returncode == 0 and lint.stdout.startswith("ok: campus.yaml: 4 services"), lint
    render = _run("render", merge_request)
    assert render.returncode == 0, render
    assert (merge_request / "rendered" / "lb1" / "etc" / "haproxy" / "haproxy.cfg").is_file()
    diff = _run("diff", merge_request)
    assert diff.returncode == 0, diff
    comment = (merge_request / "diff.md").read_text()
    assert "192.0.2.12" in comment and "lb1" in comment, comment


@pytest.mark.skipif(os.geteuid() != 0, reason="the firewall's checker runs in a network namespace of its own")
def test_the_ci_file_checks_every_config_with_the_daemons_checkers(merge_request):
    check = _run("check", merge_request)
    assert check.returncode == 0 and "all checks passed" in check.stdout, check
