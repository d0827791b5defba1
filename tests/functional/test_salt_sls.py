"""The sls tree (salt/): which states a node's highstate holds, in which order.

The highstate comes from the example site top file (docs/examples/salt/top.sls: '*' gets
``anycastlb``), as a site sets it up (docs/install.md)."""
from __future__ import annotations

import pytest

from anycastlb import minion
from anycastlb.pillar import node_pillar


def lowstate(make_minion_opts, tmp_path, catalog, minion_id, pillar_sls: str | None = None):
    from saltfactories.utils.functional import Loaders

    opts = make_minion_opts(tmp_path, minion_id, catalog, None)
    if pillar_sls:
        (tmp_path / "pillar" / "top.sls").write_text("base:\n  '*':\n    - site\n")
        (tmp_path / "pillar" / "site.sls").write_text(pillar_sls)
    loaders = Loaders(opts)
    try:
        low = loaders.modules.state.show_lowstate()
        top = loaders.modules.state.show_top()
    finally:
        loaders.reset_state()
    return top, [(c["__id__"], f"{c['state']}.{c['fun']}", c["name"]) for c in low]


def test_lb1_gets_packages_then_daemons_in_registry_order(make_minion_opts, tmp_path, catalog_copy):
    top, low = lowstate(make_minion_opts, tmp_path, catalog_copy, "lb1")
    assert top == {"base": ["anycastlb"]}
    model = node_pillar("lb1", str(catalog_copy))["anycastlb"]
    daemons = minion.wanted(model)
    assert "haproxy" in daemons and "bird" in daemons
    assert low == [
        ("anycastlb-packages-common", "pkg.installed", "anycastlb-packages-common"),
        # liberal conntrack before the first firewall load keeps pre-existing connections alive
        ("anycastlb-conntrack-liberal-persist", "file.managed", "/etc/sysctl.d/60-anycastlb.conf"),
        ("anycastlb-conntrack-liberal", "anycastlb.sysctl", "net.netfilter.nf_conntrack_tcp_be_liberal"),
        ("anycastlb-packages-bird", "pkg.installed", "anycastlb-packages-bird"),
        ("anycastlb-packages-haproxy", "pkg.installed", "anycastlb-packages-haproxy"),
        # what the node no longer runs goes first (a role it lost)
        ("anycastlb-retired", "anycastlb.retired", "daemons this node no longer runs"),
    ] + [(f"anycastlb-{d}", "anycastlb.configured", d) for d in daemons] + [
        # last: the model this run was given, for the rolling deploy's verify
        ("anycastlb-model-recorded", "anycastlb.recorded", "the model this state run was given")]


def test_packages_can_be_switched_off(make_minion_opts, tmp_path, catalog_copy):
    _, low = lowstate(make_minion_opts, tmp_path, catalog_copy, "web1",
                      "anycastlb:\n  manage_packages: False\n")
    assert [s for s in low if s[1] == "pkg.installed"] == []
    daemons = minion.wanted(node_pillar("web1", str(catalog_copy))["anycastlb"])
    assert [s[2] for s in low if s[1] == "anycastlb.configured"] == daemons


def test_monitoring_node_installs_icinga2_and_plugins(make_minion_opts, tmp_path, catalog_copy):
    from saltfactories.utils.functional import Loaders

    loaders = Loaders(make_minion_opts(tmp_path, "mon1", catalog_copy, None))
    try:
        high = loaders.modules.state.show_highstate()
    finally:
        loaders.reset_state()
    pkgs = high["anycastlb-packages-monitoring"]["pkg"]
    assert {"pkgs": ["icinga2", "monitoring-plugins"]} in pkgs


@pytest.mark.parametrize("minion_id", ["stranger"])
def test_a_minion_the_catalog_does_not_name_gets_no_states(make_minion_opts, tmp_path, catalog_copy, minion_id):
    top, low = lowstate(make_minion_opts, tmp_path, catalog_copy, minion_id)
    assert top == {"base": ["anycastlb"]} and low == []


def test_on_systemd_the_units_are_installed_and_enabled(make_minion_opts, tmp_path, catalog_copy, monkeypatch):
    monkeypatch.setenv("ANYCASTLB_SERVICE_MODE", "systemd")
    _, low = lowstate(make_minion_opts, tmp_path, catalog_copy, "lb1")
    daemons = minion.wanted(node_pillar("lb1", str(catalog_copy))["anycastlb"])
    names = [s[0] for s in low]
    assert low[names.index("anycastlb-unit-anycastlb-healthd.service")][1:] == (
        "file.managed", "/etc/systemd/system/anycastlb-healthd.service")
    assert names.index("anycastlb-units-daemon-reload") < names.index("anycastlb-healthd")
    assert ("anycastlb-nftables-conf-include", "file.append", "/etc/nftables.conf") in low
    enabled = [s[2] for s in low if s[1] == "service.enabled"]
    assert enabled == ["nftables.service", "haproxy.service", "anycastlb-healthd.service", "bird.service"]
    assert names.index(f"anycastlb-{daemons[-1]}") < names.index("anycastlb-enable-nftables.service")


ACME_FLEET = minion.__file__.rsplit("/anycastlb/", 1)[0] + "/tests/data/acme-fleet.yaml"


def _acme_catalog(tmp_path, roles_of_rr1: str = "[route-reflector]"):
    from pathlib import Path
    text = Path(ACME_FLEET).read_text().replace("tls: {certificate: www-cert}", "tls: {acme: true}")
    text = text.replace("roles: [route-reflector]", f"roles: {roles_of_rr1}")
    path = tmp_path / "acme-fleet.yaml"
    path.write_text(text)
    return path


def test_the_issuer_on_the_master_gets_the_renewal_schedule(make_minion_opts, tmp_path):
    """The issuer's schedule runs `salt-run anycastlb.renew` through saltutil.runner, every 12 h."""
    from saltfactories.utils.functional import Loaders

    loaders = Loaders(make_minion_opts(tmp_path, "salt", _acme_catalog(tmp_path), None))
    try:
        high = loaders.modules.state.show_highstate()
    finally:
        loaders.reset_state()
    args = {k: v for d in high["anycastlb-acme-renew"]["schedule"] if isinstance(d, dict) for k, v in d.items()}
    assert args["function"] == "saltutil.runner" and args["job_args"] == ["anycastlb.renew"]
    assert args["hours"] == 12 and args["maxrunning"] == 1 and args["run_on_start"] is False


def test_an_issuer_that_is_not_the_master_is_refused_by_its_state(make_minion_opts, tmp_path):
    _, low = lowstate(make_minion_opts, tmp_path, _acme_catalog(tmp_path, "[route-reflector, acme]"), "rr1")
    fails = [s for s in low if s[1] == "test.fail_without_changes"]
    assert len(fails) == 1 and "runs on the salt-master" in fails[0][2]
    assert not [s for s in low if s[1] == "schedule.present"]
