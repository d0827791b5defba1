"""`salt-run state.orchestrate anycastlb.orch.deploy test=True` on a real salt-master changes nothing anywhere.

A master with the anycastlb ext_pillar, runner and states; its catalog is a git work tree
whose origin has a newer commit. The dry run names the commit it would stage, lays out the
plan of the catalog the pillar reads now, and leaves the checkout, the master's state files
(lock, plan, snapshots) and the staging area as they were. No minion is needed: under
test=True no state publishes anything that changes a node.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def head(work: Path) -> str:
    return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="session")
def salt_factories_default_root_dir():
    root = Path(tempfile.mkdtemp(prefix="aclbdry-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, campus_catalog, catalog_repo):
    """The master's catalog checkout (one commit) and the commit pushed after it: (checkout, new rev)."""
    repo = catalog_repo(tmp_path_factory.mktemp("git"), campus_catalog.read_text())
    work = repo.clone(repo.bare.parent / "checkout")
    return work, repo.push(campus_catalog.read_text().replace("weight: 50", "weight: 60"), "two")


@pytest.fixture(scope="module")
def master(salt_factories, checkout):
    work, _ = checkout
    factory = salt_factories.salt_master_daemon("aclb-dry", overrides={
        "pillar_dirs": [str(REPO / "_pillar")],
        "runner_dirs": [str(REPO / "_runners")],
        "ext_pillar": [{"anycastlb": {"catalog": str(work / "campus.yaml")}}],
        "file_roots": {"base": [str(REPO / "salt")]},
    })
    with factory.started():
        yield factory


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) if d.exists() else []


def test_a_dry_deploy_changes_nothing_anywhere(master, checkout):
    work, rev = checkout
    before_head = head(work)
    state = Path(master.config["cachedir"]) / "anycastlb"
    before = _files(state)
    ret = master.salt_run_cli(timeout=180).run(
        "state.orchestrate", "anycastlb.orch.deploy", "test=True",
        "pillar=" + json.dumps({"anycastlb_deploy": {"rev": rev}}))
    # (the plan's runtime query of the speakers prints "No minions matched" before the JSON: none runs here)
    out = json.loads(ret.stdout[ret.stdout.index("{"):])
    states = next(iter(out["data"].values()))
    by = {k.split("_|-")[1]: v for k, v in states.items()}
    assert "no lock taken" in by["deploy lock"]["name"]
    assert rev in by["catalog checkout"]["name"] and "would be staged" in by["catalog checkout"]["name"]
    assert by["lint catalog"]["result"] is None
    # lb1's undrain records what it applied; rr1 (apply and verify only) has its own "applied" step
    assert {"apply rr1", "applied rr1", "drain lb1", "verify lb1", "undrain lb1"} <= set(by)
    assert "applied lb1" not in by
    assert by["verify lb1"]["result"] is None and by["undrain lb1"]["result"] is None
    assert by["applied rr1"]["result"] is None
    assert "deploy unlock" not in by, "no lock was taken, none is given back"
    assert head(work) == before_head, "no checkout"
    assert _files(state) == before == [], "no plan file, no lock, no staging"
