"""Shared health checks: servers that backends would check alike are checked once per node.

What a user sees: services in front of the same server (address and port) with the same check
(kind, path, host, expected status, timers, check port, connect timeout, PROXY protocol, mode)
get one check backend ``chk-<digest>`` whose server their servers ``track``; a check used by one
backend only, or a backend with raw directives, keeps its own; weight, backup and maintenance
stay each backend's own; the name does not move when services come and go; the config passes
``haproxy -c``; ``anycastlb show`` says which servers track which check.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from anycastlb.compiler import compile_catalog
from anycastlb.apply import stage_and_check
from anycastlb.render import daemon
from anycastlb.render.haproxy import CONFIG, render

CATALOG: dict[str, Any] = yaml.safe_load("""
bgp: {asn: 64512}
vip_pools: [192.0.2.0/24]
management: [198.51.100.0/24]
nodes:
  rr1: {address: 198.51.100.11, roles: [route-reflector]}
  lb1: {address: 198.51.100.21}
clusters:
  edge: {nodes: [lb1]}
services:
  imap-a:
    mode: tcp
    vip: 192.0.2.10
    cluster: edge
    ports: [143]
    check: {tcp: {}}
    backends: {mail1: {address: 203.0.113.25}, mail2: {address: 203.0.113.26, backup: true}}
  imap-b:
    mode: tcp
    vip: 192.0.2.11
    cluster: edge
    ports: [143]
    check: {tcp: {}}
    backends: {m1: {address: 203.0.113.25, weight: 50}, m2: {address: 203.0.113.26, state: maintenance}}
  imap-slow:
    mode: tcp
    vip: 192.0.2.12
    cluster: edge
    ports: [143]
    check: {tcp: {}, interval: 5s}
    backends: {mail1: {address: 203.0.113.25}}
  imap-raw:
    mode: tcp
    vip: 192.0.2.13
    cluster: edge
    ports: [143]
    check: {tcp: {}}
    haproxy: {raw: {backend: ["option log-health-checks"]}}
    backends: {mail1: {address: 203.0.113.25}}
  web:
    mode: http
    vip: 192.0.2.14
    cluster: edge
    ports: [80]
    backend_port: 8080
    check: {http: {path: /healthz}}
    backends: {w1: {address: 203.0.113.31}}
""")


def lb1(tmp_path: Path, catalog: dict[str, Any] = CATALOG, name: str = "catalog.yaml") -> dict[str, Any]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(catalog))
    return compile_catalog(path).nodes["lb1"]


def servers(model: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(b["name"], s["name"]): s for b in model["haproxy"]["backends"] for s in b["servers"]}


def test_alike_checks_of_different_backends_are_one_tracked_check(tmp_path: Path) -> None:
    m = lb1(tmp_path)
    [chk] = m["haproxy"]["checks"]
    assert chk["name"].startswith("chk-") and chk["backends"] == ["imap-a-143", "imap-b-143"]
    assert [s["name"] for s in chk["servers"]] == ["203.0.113.25:143", "203.0.113.26:143"]
    assert chk["check"]["type"] == "tcp" and chk["mode"] == "tcp"
    srv = servers(m)
    assert srv[("imap-a-143", "mail1")]["track"] == {"backend": chk["name"], "server": "203.0.113.25:143"}
    assert srv[("imap-b-143", "m1")]["track"] == {"backend": chk["name"], "server": "203.0.113.25:143"}
    assert srv[("imap-b-143", "m2")]["track"] == {"backend": chk["name"], "server": "203.0.113.26:143"}
    # another interval is another check; raw directives may change the check; one user keeps its own
    assert srv[("imap-slow-143", "mail1")]["track"] is None
    assert srv[("imap-raw-143", "mail1")]["track"] is None
    assert srv[("web-8080", "w1")]["track"] is None
    # what stays each backend's own
    assert srv[("imap-b-143", "m1")]["weight"] == 50 and srv[("imap-a-143", "mail2")]["backup"] is True
    assert srv[("imap-b-143", "m2")]["state"] == "maintenance"


def test_the_check_backend_keeps_its_name_as_services_come_and_go(tmp_path: Path) -> None:
    name = lb1(tmp_path)["haproxy"]["checks"][0]["name"]
    more = copy.deepcopy(CATALOG)
    more["services"]["imap-c"] = {**copy.deepcopy(CATALOG["services"]["imap-a"]), "vip": "192.0.2.20"}
    [chk] = lb1(tmp_path, more, "more.yaml")["haproxy"]["checks"]
    assert chk["name"] == name and chk["backends"] == ["imap-a-143", "imap-b-143", "imap-c-143"]
    fewer = copy.deepcopy(CATALOG)
    del fewer["services"]["imap-b"]
    m = lb1(tmp_path, fewer, "fewer.yaml")
    assert m["haproxy"]["checks"] == []   # a check used once is the backend's own again
    assert servers(m)[("imap-a-143", "mail1")]["track"] is None


def test_the_connect_timeout_and_proxy_protocol_make_another_check(tmp_path: Path) -> None:
    cat = copy.deepcopy(CATALOG)
    cat["services"]["imap-b"]["haproxy"] = {"timeouts": {"connect": "1s"}}
    assert lb1(tmp_path, cat)["haproxy"]["checks"] == []
    cat = copy.deepcopy(CATALOG)
    cat["services"]["imap-b"]["haproxy"] = {"send_proxy": "v2"}
    assert lb1(tmp_path, cat, "proxy.yaml")["haproxy"]["checks"] == []


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed")
def test_rendered_tracking_passes_haproxy(tmp_path: Path) -> None:
    m = lb1(tmp_path)
    chk = m["haproxy"]["checks"][0]["name"]
    staging = tmp_path / "staging"
    files = render(m, {"certificates": {}, "bgp_passwords": {}}, str(staging))
    cfg = next(f for f in files if f.path == CONFIG).content
    assert f"backend {chk}\n    mode tcp\n" in cfg
    assert "    server 203.0.113.25:143 203.0.113.25:143 check\n" in cfg
    assert f"server mail1 203.0.113.25:143 track {chk}/203.0.113.25:143 weight 100\n" in cfg
    assert f"server mail2 203.0.113.26:143 track {chk}/203.0.113.26:143 weight 100 backup\n" in cfg
    assert f"server m2 203.0.113.26:143 track {chk}/203.0.113.26:143 weight 100 disabled\n" in cfg
    assert "server mail1 203.0.113.25:143 check weight 100\n" in cfg   # imap-slow's and imap-raw's own
    ok, out = stage_and_check(daemon("haproxy"), m, {"certificates": {}, "bgp_passwords": {}})
    assert ok, out
    # HAProxy resolves every track: a check backend that is not there is refused
    ok, out = stage_and_check(daemon("haproxy"), {**m, "haproxy": {**m["haproxy"], "checks": []}},
                              {"certificates": {}, "bgp_passwords": {}})
    assert not ok and "unable to find required proxy" in out, out


def test_show_says_which_check_a_server_tracks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anycastlb.cli import main
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(CATALOG))
    assert main(["show", str(path), "lb1"]) == 0
    out = capsys.readouterr().out
    chk = lb1(tmp_path)["haproxy"]["checks"][0]["name"]
    assert f"mail1=203.0.113.25:143 w100 tracks {chk}" in out
    assert f"check {chk} tcp: 203.0.113.25:143, 203.0.113.26:143 (imap-a-143, imap-b-143)" in out
