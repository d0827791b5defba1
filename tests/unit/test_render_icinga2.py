"""Icinga2: the monitoring node's objects, checked by ``icinga2 daemon -C`` on the whole tree."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from anycastlb.apply import apply_daemon, stage_and_check
from anycastlb.compiler import compile_catalog, copy_model
from anycastlb.render import HEADER, icinga2

needs_icinga = pytest.mark.skipif(not (shutil.which("icinga2") and os.path.isdir("/etc/icinga2")),
                                  reason="needs Debian's icinga2 package")
OURS = "/etc/icinga2/conf.d/anycastlb"


@pytest.fixture(scope="module")
def fleet(campus_catalog):
    return compile_catalog(campus_catalog)


def files(model, root="/"):
    return {f.path: f for f in icinga2.render(model, {}, root)}


def obj(text: str, kind: str, name: str) -> str:
    """The body of ``object KIND "NAME" { ... }`` (objects are rendered one level deep)."""
    m = re.search(rf'^object {kind} "{re.escape(name)}" {{\n(.*?)^}}', text, re.M | re.S)
    assert m, f"no {kind} {name!r}"
    return m.group(1)


@needs_icinga
def test_monitoring_node_passes_icinga2_check(fleet):
    ok, out = stage_and_check(icinga2.SPEC, fleet.nodes["mon1"], {}, "/")
    assert ok, out
    assert "Finished validating the configuration" in out


def test_only_the_monitoring_node_runs_icinga(fleet):
    assert [n for n, m in fleet.nodes.items() if icinga2.SPEC.wanted(m)] == ["mon1"]


def test_debian_examples_left_out_api_users_kept(fleet):
    main = files(fleet.nodes["mon1"])["/etc/icinga2/icinga2.conf"].content
    assert HEADER in main.splitlines()[0]
    includes = [line for line in main.splitlines() if line.startswith("include")]
    assert 'include_recursive "conf.d"' not in includes
    assert 'include_recursive "conf.d", "api-users.conf"' in includes
    assert 'include_recursive "conf.d/anycastlb"' in includes
    assert 'include "features-enabled/*.conf"' in includes


def test_a_host_per_node_external_backend_and_vip(fleet):
    hosts = files(fleet.nodes["mon1"])[f"{OURS}/hosts.conf"].content
    names = re.findall(r'^object Host "([^"]+)"', hosts, re.M)
    assert set(names) == {"salt", "rr1", "rr2", "lb1", "lb2", "lb3", "web1", "web2", "kdc1", "kdc2", "mon1",
                          "mail1", "mail2", "vip-www", "vip-intranet", "vip-imap", "vip-kdc"}
    assert 'address = "203.0.113.25"' in obj(hosts, "Host", "mail1")
    vip = obj(hosts, "Host", "vip-www")
    assert 'check_command = "dummy"' in vip and 'address6 = "2001:db8:1::10"' in vip


def test_drained_node_and_backend_are_visible(fleet):
    f = files(fleet.nodes["mon1"])
    assert 'display_name = "lb3 [drain]"' in obj(f[f"{OURS}/hosts.conf"].content, "Host", "lb3")
    web2 = obj(f[f"{OURS}/services.conf"].content, "Service", "backend intranet web2:8080")
    assert 'display_name = "backend intranet web2:8080 [drain]"' in web2
    assert 'vars.anycastlb_backend_state = "drain"' in web2
    assert 'host_name = "web2"' in web2, "a backend check belongs to its backend host"
    assert 'vars.http_vhost = "intranet.example.org"' in web2
    assert 'vars.http_uri = "/healthz"' in web2 and 'vars.http_expect = "200"' in web2


def test_announcers_for_www_expect_lb1_lb2_not_drained_lb3(fleet):
    s = files(fleet.nodes["mon1"])[f"{OURS}/services.conf"].content
    for prefix, name in (("192.0.2.10/32", "announcers www 192.0.2.10"), ("2001:db8:1::10/128", "announcers www 2001:db8:1::10")):
        body = obj(s, "Service", name)
        assert 'check_command = "anycastlb-announcers"' in body
        assert 'vars.anycastlb_expected = [ "lb1", "lb2" ]' in body
        assert f'vars.anycastlb_prefix = "{prefix}"' in body
        assert 'host_name = "vip-www"' in body


def test_rr_sessions_use_the_listener_neighbors(fleet):
    body = obj(files(fleet.nodes["mon1"])[f"{OURS}/services.conf"].content, "Service", "bgp sessions of rr2")
    assert 'vars.anycastlb_neighbors = [ "198.51.100.12", "2001:db8:100::12" ]' in body
    assert 'vars.anycastlb_expected = [ "kdc1", "kdc2", "lb1", "lb2" ]' in body


def test_https_checks_sni_and_certificate_expiry(fleet):
    s = files(fleet.nodes["mon1"])[f"{OURS}/services.conf"].content
    body = obj(s, "Service", "vip www 2001:db8:1::10 443/tcp")
    assert "vars.http_ssl = true" in body and "vars.http_sni = true" in body and "vars.http_ipv6 = true" in body
    cert = obj(s, "Service", "vip www 2001:db8:1::10 443/tcp certificate")
    assert 'vars.http_certificate = "30,14"' in cert
    redirect = obj(s, "Service", "vip www 192.0.2.10 80/tcp")
    assert 'vars.http_expect = "301"' in redirect


def test_haproxy_udp_and_tcp_commands(fleet):
    s = files(fleet.nodes["mon1"])[f"{OURS}/services.conf"].content
    fe = obj(s, "Service", "frontend intranet-80 on lb1")
    assert 'check_command = "anycastlb-haproxy"' in fe
    for line in ('vars.anycastlb_address = "198.51.100.21"', "vars.anycastlb_port = 8404",
                 'vars.anycastlb_frontend = "intranet-80"', 'vars.anycastlb_backend = "intranet-8080"'):
        assert line in fe
    kdc = obj(s, "Service", "anycast kdc 88/udp on kdc2")
    assert 'check_command = "anycastlb-udp"' in kdc and 'vars.anycastlb_udp_address = "198.51.100.42"' in kdc
    assert 'check_command = "tcp"' in obj(s, "Service", "backend imap mail2:993")


def test_users_and_log_notification(fleet):
    f = files(fleet.nodes["mon1"])
    assert 'object User "netops"' in f[f"{OURS}/users.conf"].content
    base = f[f"{OURS}/00-base.conf"].content
    assert 'object NotificationCommand "anycastlb-log-service"' in base
    assert 'LogDir + "/anycastlb-notifications.log"' in base
    assert 'vars.anycastlb_notify = [ "netops" ]' in obj(f[f"{OURS}/services.conf"].content, "Service",
                                                         "backend www web1:8080")


def test_plugins_are_deployed_executable(fleet):
    f = files(fleet.nodes["mon1"])
    for name in ("check_anycastlb_bird", "check_anycastlb_haproxy", "check_anycastlb_poll", "check_anycastlb_udp",
                 "anycastlb_notify_log"):
        plugin = f[f"/usr/local/lib/anycastlb/plugins/{name}"]
        assert plugin.mode == 0o755
        src = Path(icinga2.__file__).parent.parent / "plugins" / f"{name}.py"
        assert plugin.content == src.read_text()
    staged = files(fleet.nodes["mon1"], root="/tmp/stage")[f"{OURS}/00-base.conf"].content
    assert 'const AnycastlbPluginDir = "/tmp/stage/usr/local/lib/anycastlb/plugins"' in staged


@needs_icinga
def test_maintenance_node_is_not_an_error(fleet):
    m = copy_model(fleet.nodes["mon1"])
    for h in m["monitoring"]["hosts"]:
        if h["name"] == "kdc2":
            h["state"] = "maintenance"
    f = files(m)
    host = obj(f[f"{OURS}/hosts.conf"].content, "Host", "kdc2")
    assert "enable_notifications = false" in host and 'display_name = "kdc2 [maintenance]"' in host
    svc = obj(f[f"{OURS}/services.conf"].content, "Service", "anycast kdc 88/tcp on kdc2")
    assert "enable_notifications = false" in svc and "vars.anycastlb_notify = []" in svc
    assert 'apply ScheduledDowntime "anycastlb-maintenance" to Host' in f[f"{OURS}/00-base.conf"].content
    ok, out = stage_and_check(icinga2.SPEC, m, {}, "/")
    assert ok, out
    assert "ScheduledDowntime" in out and "does not match anywhere" not in out


def test_quoting_of_names():
    assert icinga2.q('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    assert icinga2.q([]) == "[]" and icinga2.q([1, "x"]) == '[ 1, "x" ]' and icinga2.q(None) == "null"


class Recorder:
    def __init__(self):
        self.calls = []

    def running(self, daemon):
        return True

    def start(self, daemon):
        self.calls.append(("start", daemon))
        return "started"

    def reload_or_start(self, daemon):
        self.calls.append(("reload", daemon))
        return "reloaded"


@needs_icinga
def test_apply_rejected_config_changes_and_reloads_nothing(fleet, tmp_path):
    shutil.copytree("/etc/icinga2", tmp_path / "etc/icinga2", symlinks=True)
    rec = Recorder()
    res = apply_daemon("icinga2", fleet.nodes["mon1"], root=str(tmp_path), control=rec)
    assert res.result is True, res.comment
    assert rec.calls == [("reload", "icinga2")]
    before = (tmp_path / "etc/icinga2/conf.d/anycastlb/services.conf").read_text()
    rec.calls.clear()
    bad = copy_model(fleet.nodes["mon1"])
    bad["monitoring"]["checks"][0]["expected"] = ["lb1"]  # a real change, together with ...
    bad["monitoring"]["checks"][0]["notify"] = ["nobody"]  # ... a user that is not defined: Icinga2 refuses
    res = apply_daemon("icinga2", bad, root=str(tmp_path), control=rec)
    assert res.result is False, res.comment
    assert "nobody" in res.comment
    assert rec.calls == []
    assert (tmp_path / "etc/icinga2/conf.d/anycastlb/services.conf").read_text() == before
