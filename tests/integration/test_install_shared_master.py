"""A shared salt-master set up as docs/install.md says, with a minion the catalog does not name.

The master has the site's own file root (its top file gives every minion the site's
``site`` state and ``anycastlb``), the repo's ``salt/`` after it, and the anycastlb
ext_pillar. No ``module_dirs``, ``*_dirs`` or ``saltutil.sync_all`` anywhere: the
modules come from the installed package's ``salt.loader`` entry point. Minions:
``web1`` (a catalog node) and ``printserver42`` (not in the catalog).

The catalog node is never given a real ``state.apply anycastlb`` here (that would load
its firewall and daemons on the test machine): its states run with ``test=True``, and
the deploy runs as ``state.orchestrate ... test=True``, which still renders the
orchestration (the lock and the plan are real) and runs each node's states in test mode.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from anycastlb import deploylock

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TYPO = ("    balance: leastconn\n", "    balance: leastconn\n    balanse: roundrobin\n")


@pytest.fixture(scope="session")
def salt_factories_default_root_dir():
    """A short root: Unix socket paths under it must stay below 108 characters."""
    root = Path(tempfile.mkdtemp(prefix="aclbim-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site's own file root: its top file (docs/install.md) and one state of its own."""
    root = tmp_path_factory.mktemp("site")
    (root / "srv").mkdir()
    (root / "srv" / "top.sls").write_text("base:\n  '*':\n    - site\n    - anycastlb\n")
    (root / "srv" / "site.sls").write_text(
        "site-marker:\n  file.managed:\n"
        f"    - name: {root}/out/{{{{ grains['id'] }}}}.txt\n"
        "    - makedirs: True\n    - contents: the site's own state\n")
    return root


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, campus_catalog) -> Path:
    dst = tmp_path_factory.mktemp("catalog") / "campus.yaml"
    shutil.copy(campus_catalog, dst)
    assert TYPO[0] in dst.read_text()
    return dst


@pytest.fixture(scope="module")
def master(salt_factories, site, catalog, campus_secrets):
    factory = salt_factories.salt_master_daemon("aclb-shared", overrides={
        # docs/install.md, step 3: the site's root first, anycastlb's states after it
        "file_roots": {"base": [str(site / "srv"), str(REPO / "salt")]},
        "ext_pillar": [{"anycastlb": {"catalog": str(catalog), "secrets": str(campus_secrets)}}],
        "log_level_logfile": "info",
    })
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def minions(master):
    fast = {"acceptance_wait_time": 0.5, "random_reauth_delay": 0, "enable_fqdns_grains": False,
            "enable_gpu_grains": False}
    web1 = master.salt_minion_daemon("web1", overrides=fast)
    other = master.salt_minion_daemon("printserver42", overrides=fast)
    with web1.started(), other.started():
        yield {"web1": web1, "printserver42": other}


@pytest.fixture(scope="module")
def cli(master, minions):
    return master.salt_cli(timeout=120)


@pytest.fixture
def broken(catalog, cli):
    """The catalog with an unknown key (a typo), for the duration of a test."""
    good = catalog.read_text()
    catalog.write_text(good.replace(*TYPO))
    for m in ("web1", "printserver42"):
        assert cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=m).returncode == 0
    yield catalog
    catalog.write_text(good)
    for m in ("web1", "printserver42"):
        assert cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=m).returncode == 0


def typo_line(catalog: Path) -> int:
    return next(i for i, line in enumerate(catalog.read_text().splitlines(), 1) if "balanse" in line)


def site_highstate_works(cli, site: Path) -> None:
    """printserver42's highstate runs the site's state, and nothing of anycastlb."""
    marker = site / "out" / "printserver42.txt"
    marker.unlink(missing_ok=True)
    ret = cli.run("state.apply", minion_tgt="printserver42")
    assert ret.returncode == 0, ret
    assert list(ret.data) == [f"file_|-site-marker_|-{marker}_|-managed"], ret.data
    assert marker.read_text().rstrip("\n") == "the site's own state"


def test_modules_come_from_the_entry_point(cli, master):
    ret = cli.run("sys.list_functions", "anycastlb", minion_tgt="printserver42")
    assert ret.returncode == 0 and "anycastlb.status" in ret.data, ret
    run = master.salt_run_cli(timeout=60).run("anycastlb.lint")
    assert run.returncode == 0 and run.data["result"] is True, run


def test_unrelated_minion_with_a_good_catalog(cli, site):
    ret = cli.run("pillar.items", "unmask=True", minion_tgt="printserver42")
    assert ret.returncode == 0 and "anycastlb" not in ret.data and "_errors" not in ret.data, ret
    site_highstate_works(cli, site)


def test_catalog_node_gets_its_slice_the_site_state_and_anycastlb(cli):
    ret = cli.run("pillar.items", "unmask=True", minion_tgt="web1")
    assert ret.data["anycastlb"]["node"] == "web1", ret
    top = cli.run("state.show_top", minion_tgt="web1")
    assert top.data == {"base": ["site", "anycastlb"]}, top
    low = cli.run("state.show_lowstate", minion_tgt="web1")
    ids = [c["__id__"] for c in low.data]
    assert ids[0] == "site-marker" and "anycastlb-apache2" in ids and "anycastlb-nftables" in ids, ids


def test_broken_catalog_fails_only_the_catalog_node(cli, site, broken):
    web1 = cli.run("pillar.items", "unmask=True", minion_tgt="web1")
    errors = "\n".join(web1.data.get("_errors", []))
    assert f"{broken}:{typo_line(broken)}: service 'intranet', key 'balanse'" in errors, web1
    applied = cli.run("state.apply", "test=True", minion_tgt="web1")
    assert applied.returncode != 0
    assert applied.data[0] == "Pillar failed to render with the following messages:", applied

    other = cli.run("pillar.items", "unmask=True", minion_tgt="printserver42")
    assert other.returncode == 0 and "_errors" not in other.data and "anycastlb" not in other.data, other
    site_highstate_works(cli, site)


def test_deploy_applies_only_the_anycastlb_states(master, cli, site):
    marker = site / "out" / "printserver42.txt"
    site_highstate_works(cli, site)
    before = marker.stat().st_mtime_ns
    run = master.salt_run_cli(timeout=300).run(
        "state.orchestrate", "anycastlb.orch.deploy", "test=True",
        "pillar=" + json.dumps({"anycastlb_deploy": {"nodes": ["web1"]}}))
    assert run.returncode == 0, run
    [states] = run.data["data"].values()  # keyed by the master-minion id
    by_id = {v["__id__"]: v for v in states.values()}
    assert by_id["deploy lock"]["result"] is True
    assert "no lock taken" in by_id["deploy lock"]["name"]  # test=True: checked, not taken
    applied = by_id["apply web1"]
    node_ret = applied["changes"]["ret"]["web1"]
    ids = {v["__id__"] for v in node_ret.values()}
    assert "anycastlb-apache2" in ids and "site-marker" not in ids, ids
    assert all(i.startswith("anycastlb-") for i in ids), ids
    assert not any(i.startswith("apply printserver42") for i in by_id)
    assert marker.stat().st_mtime_ns == before


def test_a_second_deploy_is_refused_while_one_runs(master, cli):
    other = subprocess.Popen(["sleep", "120"])  # stands for the process running the first deploy
    cachedir = master.config["cachedir"]
    try:
        first = deploylock.acquire(cachedir, pid=other.pid)
        run = master.salt_run_cli(timeout=300).run("state.orchestrate", "anycastlb.orch.deploy", "test=True")
        assert run.returncode != 0, run
        [states] = run.data["data"].values()  # keyed by the master-minion id
        [lock] = [v for v in states.values() if v["__id__"] == "deploy lock"]
        assert lock["result"] is False
        assert f"another deploy is running: {first.describe()}" in lock["name"], lock
        assert not [v for v in states.values() if v["__id__"].startswith("apply ")]
    finally:
        other.kill()
        other.wait()
    assert deploylock.holder(cachedir) is None  # its process is gone: the lock is free again
