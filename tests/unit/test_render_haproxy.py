"""HAProxy renderer: what a user expects in haproxy.cfg for the campus catalog, the real checker, and apply.

The apply tests run :func:`anycastlb.apply.apply_daemon` on a temp root with a
*recorder* in place of the service control (it records calls, runs nothing),
and the real ``haproxy -c`` as the checker.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from anycastlb.apply import apply_daemon, check_node
from anycastlb.compiler import compile_catalog
from anycastlb import minion
from anycastlb.render import RenderError, daemon
from anycastlb.render.haproxy import CONFIG, cert_path, render
from anycastlb.render.healthd import render as render_healthd
from anycastlb.render_cli import throwaway_certificates

needs_haproxy = pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed")


@pytest.fixture(scope="module")
def fleet(campus_catalog: Path) -> dict[str, dict[str, Any]]:
    return compile_catalog(campus_catalog).nodes


@pytest.fixture(scope="module")
def secrets() -> dict[str, Any]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    return {"certificates": throwaway_certificates(["campus-wildcard"]), "bgp_passwords": {}}


@pytest.fixture(scope="module")
def lb1_cfg(fleet: dict[str, Any], secrets: dict[str, Any]) -> str:
    files = render(fleet["lb1"], secrets, "/")
    return next(f.content for f in files if f.path == CONFIG)


def section(cfg: str, header: str) -> list[str]:
    """The stripped lines of one section (``frontend www-443``; a backend that names a defaults
    section with ``from`` is found by its name too), up to the next blank line."""
    lines = cfg.splitlines()
    start = next(i for i, line in enumerate(lines) if line == header or line.startswith(header + " from "))
    out = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        out.append(line.strip())
    return out


def test_healthd_follows_the_ring_the_config_fills(fleet: dict[str, Any], lb1_cfg: str) -> None:
    """The ring healthd asks for exists in lb1's haproxy.cfg, and every defaults section logs its
    state changes there, at level notice or more urgent (not the traffic logs, at info)."""
    ring = json.loads(render_healthd(fleet["lb1"], {}, "/")[0].content)["announcements"][0]["watch"]["events"]
    sections = re.split(r"\n(?=\S)", lb1_cfg)
    assert [s.split("\n")[0] for s in sections if s.startswith("ring ")] == [f"ring {ring}"]
    defaults = [s for s in sections if s.startswith("defaults")]
    assert len(defaults) == 2   # the http backends' named one and the last, for every other proxy
    assert all(f"\n    log ring@{ring} local0 notice\n" in d for d in defaults)


def test_header_and_master_worker(lb1_cfg: str) -> None:
    assert lb1_cfg.startswith("# managed by anycastlb")
    glob = section(lb1_cfg, "global")
    assert "master-worker" in glob
    assert 'stats socket "/run/haproxy/admin.sock" mode 660 level admin expose-fd listeners' in glob
    assert 'server-state-file "/var/lib/haproxy/server-state"' in glob
    assert "load-server-state-from-file global" in section(lb1_cfg, "defaults")


def test_www_tls_frontend_binds_both_vips_with_the_bundle(lb1_cfg: str) -> None:
    fe = section(lb1_cfg, "frontend www-443")
    pem = "/etc/haproxy/certs/anycastlb-campus-wildcard.pem"
    # one bind line for both VIPs: one TLS context per frontend, not one per address
    assert f'bind 192.0.2.10:443,[2001:db8:1::10]:443 transparent ssl crt "{pem}" alpn h2,http/1.1' in fe
    assert len([x for x in fe if x.startswith("bind ")]) == 1
    assert "option forwardfor" in fe
    assert "default_backend www-8080" in fe


def test_www_port_80_redirects_to_https(lb1_cfg: str) -> None:
    fe = section(lb1_cfg, "frontend www-80")
    assert "http-request redirect scheme https code 301" in fe
    assert "bind 192.0.2.10:80,[2001:db8:1::10]:80 transparent" in fe
    assert not any("redirect" in line for line in section(lb1_cfg, "frontend intranet-80"))


def test_intranet_allows_campus_only(lb1_cfg: str) -> None:
    fe = section(lb1_cfg, "frontend intranet-80")
    assert "tcp-request connection reject unless { src 198.51.100.0/24 2001:db8:100::/64 }" in fe
    assert not any("reject" in line for line in section(lb1_cfg, "frontend www-443"))


def test_intranet_backend_leastconn_httpchk_and_web2_drained(lb1_cfg: str) -> None:
    be = section(lb1_cfg, "backend intranet-8080")
    assert "balance leastconn" in be
    assert "option httpchk" in be
    assert 'http-check send meth GET uri "/healthz" ver HTTP/1.1 hdr Host "intranet.example.org"' in be
    assert 'http-check expect status "200"' in be
    assert "default-server inter 2000ms rise 2 fall 3" in be
    assert "server web1 198.51.100.31:8080 check weight 100" in be
    # drain: no new sessions (weight 0), running ones kept; written in the config so it survives reloads
    assert "server web2 198.51.100.32:8080 check weight 0" in be
    assert "server web2 198.51.100.32:8080 check weight 100" in section(lb1_cfg, "backend www-8080")


def test_imap_is_tcp_with_a_backup(lb1_cfg: str) -> None:
    assert "mode tcp" in section(lb1_cfg, "frontend imap-993")
    be = section(lb1_cfg, "backend imap-143")
    assert "mode tcp" in be and "option httpchk" not in be
    assert "server mail1 203.0.113.25:143 check weight 100" in be
    assert "server mail2 203.0.113.26:143 check weight 100 backup" in be


def test_a_dead_server_is_retried_elsewhere_only_when_safe(lb1_cfg: str) -> None:
    defaults = section(lb1_cfg, "defaults")
    assert "retries 3" in defaults and "option redispatch 1" in defaults
    # the http backends take their layer-7 retries from one named defaults section, which also
    # carries everything the anonymous one has (a backend that names it inherits nothing else)
    http = section(lb1_cfg, "defaults anycastlb-http")
    assert http[:len(defaults)] == defaults
    assert "retry-on conn-failure empty-response junk-response" in http
    assert "http-request disable-l7-retry unless METH_GET || METH_HEAD || METH_OPTIONS" in http
    assert "mode http" in http
    assert "backend www-8080 from anycastlb-http" in lb1_cfg.splitlines()
    # it comes first: frontends and the other proxies take the anonymous one (the last before them)
    assert lb1_cfg.index("defaults anycastlb-http\n") < lb1_cfg.index("defaults\n") < lb1_cfg.index("frontend ")
    # tcp backends have no layer-7 retries (the data may already have gone to the server)
    assert "backend imap-143" in lb1_cfg.splitlines()
    assert not any("retry-on" in line for line in section(lb1_cfg, "backend imap-143"))


def test_stats_and_prometheus_on_the_management_address(lb1_cfg: str) -> None:
    fe = section(lb1_cfg, "frontend stats")
    assert "bind 198.51.100.21:8404 transparent" in fe
    assert "http-request use-service prometheus-exporter if { path /metrics }" in fe


def test_maintenance_is_disabled(fleet: dict[str, Any], secrets: dict[str, Any]) -> None:
    model = copy.deepcopy(fleet["lb1"])
    model["haproxy"]["backends"][-1]["servers"][1]["state"] = "maintenance"
    cfg = render(model, secrets, "/")[0].content
    assert "server web2 198.51.100.32:8080 check weight 100 disabled" in section(cfg, "backend www-8080")


def test_bundle_is_secret_and_paths_follow_the_root(fleet: dict[str, Any], secrets: dict[str, Any]) -> None:
    files = {f.path: f for f in render(fleet["lb1"], secrets, "/srv/stage")}
    pem = files[cert_path("campus-wildcard")]
    assert pem.mode == 0o600
    assert "BEGIN CERTIFICATE" in pem.content and "PRIVATE KEY" in pem.content
    cfg = files[CONFIG].content
    assert 'crt "/srv/stage/etc/haproxy/certs/anycastlb-campus-wildcard.pem"' in cfg
    assert 'stats socket "/srv/stage/run/haproxy/admin.sock"' in cfg


def test_missing_certificate_is_a_render_error(fleet: dict[str, Any]) -> None:
    with pytest.raises(RenderError, match="campus-wildcard"):
        render(fleet["lb1"], {"certificates": {}, "bgp_passwords": {}}, "/")


def test_only_cluster_members_run_haproxy(fleet: dict[str, Any], secrets: dict[str, Any]) -> None:
    runs = sorted(n for n, m in fleet.items() if "haproxy" in minion.render(m, secrets))
    assert runs == ["lb1", "lb2", "lb3"]


@needs_haproxy
@pytest.mark.parametrize("node", ["lb1", "lb2", "lb3"])
def test_real_haproxy_accepts_every_lb(fleet: dict[str, Any], secrets: dict[str, Any], node: str) -> None:
    ok, output = check_node(fleet[node], secrets)["haproxy"]
    assert ok, output


# ------------------------------------------------------------------ apply, with a recorder


class Recorder:
    """A stand-in for ServiceControl that records what apply asked for and runs nothing."""

    def __init__(self, running: bool = True) -> None:
        self.calls: list[tuple[str, str]] = []
        self._running = running

    def running(self, name: str) -> bool:
        self.calls.append(("running", name))
        return self._running

    def start(self, name: str) -> str:
        self.calls.append(("start", name))
        return f"{name} started"

    def reload_or_start(self, name: str) -> str:
        self.calls.append(("reload_or_start", name))
        return f"{name} reloaded"

    def converge(self, name: str, model: dict[str, Any], test: bool = False) -> dict[str, Any]:
        self.calls.append(("converge", name))
        return {}


@needs_haproxy
def test_apply_writes_checks_and_reloads_once(tmp_path: Path, fleet: dict[str, Any],
                                              secrets: dict[str, Any]) -> None:
    rec = Recorder()
    res = apply_daemon("haproxy", fleet["lb1"], secrets, root=str(tmp_path), control=rec)
    assert res.result is True and res.reloaded
    assert ("reload_or_start", "haproxy") in rec.calls
    cfg = tmp_path / "etc/haproxy/haproxy.cfg"
    assert "frontend www-443" in cfg.read_text()
    pem = tmp_path / "etc/haproxy/certs/anycastlb-campus-wildcard.pem"
    assert os.stat(pem).st_mode & 0o777 == 0o600
    assert res.changes["diff"][cert_path("campus-wildcard")] == "(secret file changed: diff hidden)"

    rec2 = Recorder()
    again = apply_daemon("haproxy", fleet["lb1"], secrets, root=str(tmp_path), control=rec2)
    assert again.result is True and not again.reloaded and not again.changes
    assert not [c for c in rec2.calls if c[0] in ("reload_or_start", "start")]


@needs_haproxy
def test_refused_config_leaves_the_live_file_and_reloads_nothing(tmp_path: Path, fleet: dict[str, Any],
                                                                 secrets: dict[str, Any]) -> None:
    assert apply_daemon("haproxy", fleet["lb1"], secrets, root=str(tmp_path), control=Recorder()).result
    cfg = tmp_path / "etc/haproxy/haproxy.cfg"
    before = cfg.read_bytes()
    bad = copy.deepcopy(fleet["lb1"])
    bad["haproxy"]["backends"][0]["balance"] = "no-such-algorithm"
    rec = Recorder()
    res = apply_daemon("haproxy", bad, secrets, root=str(tmp_path), control=rec)
    assert res.result is False
    assert "balance only supports" in res.comment
    assert cfg.read_bytes() == before
    assert not [c for c in rec.calls if c[0] in ("reload_or_start", "start")]
    assert res.as_state()["skip_watch"] is True


@needs_haproxy
def test_garbage_certificate_is_refused(tmp_path: Path, fleet: dict[str, Any], secrets: dict[str, Any]) -> None:
    assert apply_daemon("haproxy", fleet["lb1"], secrets, root=str(tmp_path), control=Recorder()).result
    pem = tmp_path / "etc/haproxy/certs/anycastlb-campus-wildcard.pem"
    before = pem.read_bytes()
    garbage = {"certificates": {"campus-wildcard": {"cert": "not a certificate", "key": "nor a key"}},
               "bgp_passwords": {}}
    rec = Recorder()
    res = apply_daemon("haproxy", fleet["lb1"], garbage, root=str(tmp_path), control=rec)
    assert res.result is False
    assert "unable to load" in res.comment
    assert pem.read_bytes() == before
    assert not [c for c in rec.calls if c[0] in ("reload_or_start", "start")]


def test_test_mode_changes_nothing_and_shows_a_diff(tmp_path: Path, fleet: dict[str, Any],
                                                    secrets: dict[str, Any]) -> None:
    rec = Recorder()
    res = apply_daemon("haproxy", fleet["lb1"], secrets, root=str(tmp_path), test=True, control=rec)
    assert res.result is None
    assert "+frontend www-443" in res.changes["diff"][CONFIG]
    assert not (tmp_path / "etc").exists()
    assert not [c for c in rec.calls if c[0] in ("reload_or_start", "start")]


@needs_haproxy
def test_a_daemon_refusal_restores_the_previous_files(tmp_path: Path, fleet: dict[str, Any],
                                                      secrets: dict[str, Any]) -> None:
    from anycastlb.service import ServiceError

    class Refuses(Recorder):
        def reload_or_start(self, name: str) -> str:
            self.calls.append(("reload_or_start", name))
            raise ServiceError("haproxy refused the new config at reload")

    assert apply_daemon("haproxy", fleet["lb1"], secrets, root=str(tmp_path), control=Recorder()).result
    cfg = tmp_path / "etc/haproxy/haproxy.cfg"
    before = cfg.read_bytes()
    changed = copy.deepcopy(fleet["lb1"])
    changed["haproxy"]["backends"][0]["balance"] = "source"
    res = apply_daemon("haproxy", changed, secrets, root=str(tmp_path), control=Refuses())
    assert res.result is False
    assert "refused" in res.comment and "restored" in res.comment
    assert cfg.read_bytes() == before


def test_daemon_spec() -> None:
    spec = daemon("haproxy")
    assert spec.owned == ("/etc/haproxy/certs/anycastlb-*.pem", "/etc/haproxy/maps/anycastlb-*.map")
    assert spec.binary == "haproxy"


# ------------------------------------------------------------------ the CLI


@needs_haproxy
def test_cli_check_and_render(campus_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anycastlb.cli import main

    assert main(["check", str(campus_catalog)]) == 0
    out = capsys.readouterr().out
    assert "throwaway self-signed certificates for campus-wildcard" in out
    assert "lb3: haproxy: ok" in out and "rr1: bird: ok" in out and "all checks passed" in out
    assert main(["render", str(campus_catalog), "--out", str(tmp_path)]) == 0
    assert "frontend www-443" in (tmp_path / "lb1/etc/haproxy/haproxy.cfg").read_text()
    assert "rr client;" in (tmp_path / "rr1/etc/bird/bird.conf").read_text()
    assert os.stat(tmp_path / "lb2/etc/haproxy/certs/anycastlb-campus-wildcard.pem").st_mode & 0o777 == 0o600
