"""A real salt-master with the anycastlb ext_pillar and two real minions (lb1, web1).

The master loads the repo's ``_pillar`` straight from the checkout (``pillar_dirs``),
the minions the repo's ``_modules``/``_states`` (``module_dirs``/``states_dirs``):
no ``saltutil.sync_all`` is needed. One master and two minions per module.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def salt_factories_default_root_dir():
    """A short root: Unix socket paths under it must stay below 108 characters."""
    root = Path(tempfile.mkdtemp(prefix="aclbsf-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, campus_catalog):
    dst = tmp_path_factory.mktemp("catalog") / "campus.yaml"
    shutil.copy(campus_catalog, dst)
    return dst


@pytest.fixture(scope="module")
def master(salt_factories, catalog, campus_secrets):
    factory = salt_factories.salt_master_daemon(
        "aclb-master",
        overrides={
            "pillar_dirs": [str(REPO / "_pillar")],
            "ext_pillar": [{"anycastlb": {"catalog": str(catalog), "secrets": str(campus_secrets),
                                          "service_mode": "direct"}}],
            "file_roots": {"base": [str(REPO / "salt")]},
            "log_level_logfile": "info",
        },
    )
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def minions(master):
    overrides = {"module_dirs": [str(REPO / "_modules")], "states_dirs": [str(REPO / "_states")],
                 # a fast start: no waiting between authentication attempts, no expensive grains
                 "acceptance_wait_time": 0.5, "random_reauth_delay": 0, "enable_fqdns_grains": False,
                 "enable_gpu_grains": False}
    lb1 = master.salt_minion_daemon("lb1", overrides=overrides)
    web1 = master.salt_minion_daemon("web1", overrides=overrides)
    with lb1.started(), web1.started():
        yield {"lb1": lb1, "web1": web1}


@pytest.fixture(scope="module")
def salt_cli(master, minions):
    return master.salt_cli(timeout=60)


def test_lb1_gets_its_slice_with_the_certificate(salt_cli, campus_secrets):
    ret = salt_cli.run("pillar.items", "unmask=True", minion_tgt="lb1")
    assert ret.returncode == 0, ret
    data = ret.data["anycastlb"]
    assert data["node"] == "lb1" and "haproxy" in data["roles"]
    assert data["service_mode"] == "direct"
    cert = data["secrets"]["certificates"]["campus-wildcard"]
    assert cert["cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in cert["key"]
    assert data["secrets"]["bgp_passwords"] == {}
    assert "_errors" not in ret.data


def test_salt_masks_pillar_values_by_default(salt_cli):
    """Salt 3008 masks every pillar value in output unless asked: the key never shows by accident."""
    ret = salt_cli.run("pillar.items", minion_tgt="lb1")
    assert "BEGIN CERTIFICATE" not in ret.stdout and "PRIVATE KEY" not in ret.stdout


def test_web1_sees_a_different_slice_without_secrets(salt_cli):
    ret = salt_cli.run("pillar.items", "unmask=True", minion_tgt="web1")
    assert ret.returncode == 0, ret
    data = ret.data["anycastlb"]
    assert data["node"] == "web1" and data["haproxy"] is None and data["apache"] is not None
    assert data["secrets"] == {"certificates": {}, "bgp_passwords": {}}


def test_execution_module_is_loaded_on_the_minion(salt_cli):
    ret = salt_cli.run("anycastlb.daemons", minion_tgt="lb1")
    assert ret.returncode == 0, ret
    assert "bird" in ret.data and "haproxy" in ret.data


def test_broken_catalog_fails_pillar_and_state_apply_refuses(salt_cli, catalog):
    good = catalog.read_text()
    assert "    balance: leastconn\n" in good
    catalog.write_text(good.replace("    balance: leastconn\n", "    balance: leastconn\n    balanse: roundrobin\n"))
    try:
        assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="lb1").returncode == 0
        ret = salt_cli.run("pillar.items", "unmask=True", minion_tgt="lb1")
        errors = "\n".join(ret.data.get("_errors", []))
        assert "Failed to load ext_pillar anycastlb" in errors, ret
        assert f"{catalog}:" in errors and "service 'intranet', key 'balanse': unknown key 'balanse'" in errors
        assert "anycastlb" not in ret.data  # nothing of a refused catalog reaches a minion

        applied = salt_cli.run("state.apply", "test=True", minion_tgt="lb1")
        assert applied.returncode != 0
        assert applied.data[0] == "Pillar failed to render with the following messages:", applied
        assert "key 'balanse'" in "\n".join(applied.data)
    finally:
        catalog.write_text(good)
    assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="lb1").returncode == 0
    ret = salt_cli.run("pillar.items", "unmask=True", minion_tgt="lb1")
    assert "_errors" not in ret.data and ret.data["anycastlb"]["node"] == "lb1"
