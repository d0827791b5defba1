"""ACME in the catalog: tls: {acme: true}, the fleet's acme section, the issuer and what each node gets."""
from __future__ import annotations

from pathlib import Path

import pytest

from anycastlb.compiler import ACME_CHALLENGE_PORT, compile_catalog
from anycastlb.errors import CatalogRefused
from anycastlb.render import daemon

CATALOG = """\
bgp: {asn: 64512}
vip_pools: [192.0.2.0/24]
management: [198.51.100.0/24]
acme:
  directory: https://198.51.100.5:14000/dir
  contact: hostmaster@example.org
  renew_before: 20d
nodes:
  master: {address: 198.51.100.5, roles: [salt-master, route-reflector]}
  lb1: {address: 198.51.100.21}
  lb2: {address: 198.51.100.22}
  lb3: {address: 198.51.100.23}
  web1: {address: 203.0.113.31}
clusters:
  edge: {nodes: [lb1, lb2]}
  other: {nodes: [lb3]}
templates:
  acme-web:
    mode: http
    ports: [80, 443]
    redirect_http: true
    tls: {acme: true}
    check: {http: {path: /healthz}}
services:
  www:
    extends: acme-web
    vip: 192.0.2.10
    cluster: edge
    apache: {server_name: www.example.org, aliases: [example.org]}
    backends: [web1]
  plain:
    mode: http
    vip: 192.0.2.11
    cluster: other
    ports: [80]
    backends: {x: {address: 203.0.113.40}}
"""


def compiled(tmp_path: Path, text: str = CATALOG) -> dict:
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    return compile_catalog(p).nodes


def refused(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(p)
    return [str(e) for e in exc.value.errors]


def edit(old: str, new: str, text: str = CATALOG) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def line(text: str, needle: str) -> int:
    return next(i for i, l in enumerate(text.splitlines(), 1) if needle in l)


def test_the_issuer_gets_the_account_and_every_name_to_certify(tmp_path: Path) -> None:
    nodes = compiled(tmp_path)
    acme = nodes["master"]["acme"]
    assert "acme" in nodes["master"]["roles"]
    assert acme["renew_before_ms"] == 20 * 86_400_000
    assert acme["certificates"] == [{"name": "acme-www", "service": "www", "domains": ["www.example.org",
                                     "example.org"], "cluster": "edge", "nodes": ["lb1", "lb2"]}]
    assert all(nodes[n]["acme"] is None for n in ("lb1", "lb2", "lb3", "web1"))
    rule = next(r for r in nodes["master"]["firewall"]["rules"] if r["comment"].startswith("acme"))
    assert rule["ports"] == [ACME_CHALLENGE_PORT] and rule["sources"] == ["198.51.100.21", "198.51.100.22"]


def test_only_the_cluster_of_the_service_is_handed_the_certificate(tmp_path: Path) -> None:
    nodes = compiled(tmp_path)
    assert nodes["lb1"]["secrets"]["certificates"] == ["acme-www"] == nodes["lb2"]["secrets"]["certificates"]
    assert all(nodes[n]["secrets"]["certificates"] == [] for n in ("lb3", "master", "web1"))


def test_every_lb_node_routes_the_challenge_path_to_the_issuer_before_the_https_redirect(tmp_path: Path) -> None:
    nodes = compiled(tmp_path)
    spec = daemon("haproxy")
    store = {"certificates": {"acme-www": {"cert": "C", "key": "K"}}, "bgp_passwords": {}}
    for n in ("lb1", "lb2"):
        cfg = spec.render(nodes[n], store, "/")[0].content
        fe80 = cfg.split("frontend www-80")[1].split("\nfrontend ")[0]
        assert 'acl acme_challenge path_beg "/.well-known/acme-challenge/"' in fe80
        assert fe80.index("use_backend acme-challenge if acme_challenge") < fe80.index("default_backend www-80")
        assert "http-request redirect scheme https code 301 unless acme_challenge" in fe80
        assert f"server issuer 198.51.100.5:{ACME_CHALLENGE_PORT}" in cfg
        assert "anycastlb-acme-www.pem" in cfg.split("frontend www-443")[1]
    lb3 = spec.render(nodes["lb3"], {"certificates": {}, "bgp_passwords": {}}, "/")[0].content
    assert "acme" not in lb3


def test_a_role_acme_node_is_the_issuer(tmp_path: Path) -> None:
    nodes = compiled(tmp_path, edit("  web1: {address: 203.0.113.31}",
                                    "  web1: {address: 203.0.113.31}\n  ca1: {address: 198.51.100.6, roles: [acme]}"))
    assert nodes["ca1"]["acme"] is not None and nodes["master"]["acme"] is None
    assert nodes["lb1"]["haproxy"]["acme"]["address"] == "198.51.100.6"


def test_acme_without_a_name_to_certify_is_refused_naming_file_line_object_and_key(tmp_path: Path) -> None:
    text = edit("    apache: {server_name: www.example.org, aliases: [example.org]}\n", "")
    errors = refused(tmp_path, text)
    assert any(e.startswith(f"{tmp_path / 'catalog.yaml'}:{line(text, 'tls: {acme: true}')}: service 'www', "
                            "key 'tls.acme': tls.acme certifies apache.server_name") for e in errors), errors


def test_acme_refusals(tmp_path: Path) -> None:
    wildcard = refused(tmp_path, edit("aliases: [example.org]", "aliases: ['*.example.org']"))
    assert any("key 'apache.aliases[0]'" in e and "wildcard" in e for e in wildcard), wildcard
    no_80 = refused(tmp_path, edit("ports: [80, 443]\n    redirect_http: true", "ports: [443]"))
    assert any("HTTP-01 on port 80" in e for e in no_80), no_80
    no_section = refused(tmp_path, CATALOG.replace(CATALOG[CATALOG.index("acme:\n"):CATALOG.index("nodes:")], ""))
    assert any("needs the catalog's acme section" in e for e in no_section), no_section
    no_issuer = refused(tmp_path, edit("roles: [salt-master, route-reflector]", "roles: [route-reflector]"))
    assert any("needs an issuer" in e for e in no_issuer), no_issuer
    both = refused(tmp_path, edit("tls: {acme: true}", "tls: {acme: true, certificate: x}"))
    assert any("both certificate and acme" in e for e in both), both


@pytest.mark.parametrize("key, value, expected", [
    ("directory", "http://198.51.100.5/dir", "not an https URL"),
    ("directory", "https://ca.example.org/dir\\nglobal", "not an https URL"),
    ("contact", "'a b@example.org'", "contact"),
    ("renew_before", "30", "has no unit"),
    ("renew_before", "30x", "not a duration"),
    ("eab", "{key_id: 'k 1', secret: eab}", "EAB key id"),
    ("colour", "blue", "colour"),
])
def test_the_acme_section_is_typed(tmp_path: Path, key: str, value: str, expected: str) -> None:
    text = CATALOG.replace("  renew_before: 20d\n", "") if key == "renew_before" else CATALOG
    if key in ("directory", "contact"):
        text = "\n".join(l if not l.startswith(f"  {key}:") else f"  {key}: {value}" for l in text.splitlines())
    else:
        text = text.replace("  contact: hostmaster@example.org\n",
                            f"  contact: hostmaster@example.org\n  {key}: \"{value}\"\n" if key == "colour" else
                            f"  contact: hostmaster@example.org\n  {key}: {value}\n")
    errors = refused(tmp_path, text)
    assert any(f"{tmp_path / 'catalog.yaml'}:" in e and "acme" in e and expected in e for e in errors), errors


def test_the_eab_secret_must_be_in_the_store_at_deploy_time(tmp_path: Path) -> None:
    text = edit("  renew_before: 20d\n", "  renew_before: 20d\n  eab: {key_id: kid-1, secret: ca-eab}\n")
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(p, secrets={"certificates": {}, "bgp_passwords": {}})
    assert "EAB key 'ca-eab' is not under acme_eab" in str(exc.value)
    fleet = compile_catalog(p, secrets={"certificates": {}, "bgp_passwords": {}, "acme_eab": {"ca-eab": "x"}})
    assert fleet.nodes["master"]["acme"]["eab"] == {"key_id": "kid-1", "secret": "ca-eab"}


def test_the_monitoring_checks_each_acme_name_on_each_vip_and_warns_before_renewal_is_late(tmp_path: Path) -> None:
    """The rendered Icinga service, run as Icinga runs it (check_http from monitoring-plugins), against a
    local TLS server whose certificate has 12 days left: WARNING (renew_before 20d → warn below 19 days,
    critical at 6). check_http floors the days left, so a certificate issued for exactly the critical
    figure + 1 (7 days) reads 6 = CRITICAL as soon as one second passes between issuing and checking:
    the days sit mid-band."""
    import shutil
    import socket
    import ssl
    import subprocess
    import threading

    from anycastlb.lab.pki import LabCA
    from anycastlb.render.icinga2 import objects
    plugin = "/usr/lib/nagios/plugins/check_http"
    if not shutil.which(plugin):
        pytest.skip("needs monitoring-plugins' check_http")
    nodes = compiled(tmp_path, edit("roles: [salt-master, route-reflector]",
                                    "roles: [salt-master, route-reflector, monitoring]"))
    services = {s["name"]: s for s in objects(nodes["master"])["services"]}
    names = sorted(n for n in services if n.startswith("acme ") and n.endswith(" certificate"))
    assert names == ["acme www example.org 192.0.2.10 certificate", "acme www www.example.org 192.0.2.10 certificate"]
    v = services["acme www www.example.org 192.0.2.10 certificate"]["vars"]
    assert (v["http_address"], v["http_port"], v["http_vhost"], v["http_certificate"]) == (
        "192.0.2.10", 443, "www.example.org", "19,6")
    leaf = LabCA(tmp_path / "ca").issue(["www.example.org", "example.org"], days=12)
    (tmp_path / "b.pem").write_text(leaf.bundle)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "b.pem")
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:   # the socket listens already; serve until it is shut down
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(4096)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except (ssl.SSLError, OSError):
                pass
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    argv = [plugin, "-I", "127.0.0.1", "-p", str(port), "-H", v["http_vhost"], "-u", v["http_uri"], "-S", "--sni",
            "-C", v["http_certificate"]]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    srv.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept (close alone would not)
    srv.close()
    t.join(5)
    assert p.returncode == 1 and "WARNING" in p.stdout, p.stdout + p.stderr


def test_every_lb_node_serves_its_acme_certificates_to_the_monitoring_for_the_serial_check(tmp_path: Path) -> None:
    """A VIP reaches one node: each LB node of the cluster also serves the ACME certificate on its own
    address (port 8403, from the same file), open to the monitoring nodes only; the monitoring compares
    the serials of all of them and reads the issuer's renewal report."""
    from anycastlb.minion import render   # what `salt-call anycastlb.render` shows
    from anycastlb.render.icinga2 import objects
    nodes = compiled(tmp_path, edit("roles: [salt-master, route-reflector]",
                                    "roles: [salt-master, route-reflector, monitoring]"))
    assert nodes["lb1"]["haproxy"]["acme_probe"] == {"address": "198.51.100.21", "port": 8403,
                                                     "certificates": ["acme-www"]}
    assert nodes["lb3"]["haproxy"]["acme_probe"] is None
    probe = [r for r in nodes["lb1"]["firewall"]["rules"] if r["comment"] == "acme certificate probe for monitoring"]
    assert probe == [{"comment": "acme certificate probe for monitoring", "protocol": "tcp", "ports": [8403],
                      "sources": ["198.51.100.5"], "destinations": ["198.51.100.21"]}]
    cfg = render(nodes["lb1"], {"certificates": {"acme-www": {"cert": "c", "key": "k"}}}, "haproxy")[
        "haproxy"]["/etc/haproxy/haproxy.cfg"]
    assert ("frontend acme-probe\n    mode http\n    bind 198.51.100.21:8403 transparent ssl "
            'crt "/etc/haproxy/certs/anycastlb-acme-www.pem"\n') in cfg
    services = {s["name"]: s for s in objects(nodes["master"])["services"]}
    serial, renewal = services["acme www serial"], services["acme www renewal"]
    assert (serial["command"], serial["host"]) == ("anycastlb-acme-serial", "vip-www")
    assert {k: v for k, v in serial["vars"].items() if k.startswith("anycastlb_acme")} == {
        "anycastlb_acme_sni": "www.example.org", "anycastlb_acme_port": 8403,
        "anycastlb_acme_nodes": ["lb1=198.51.100.21", "lb2=198.51.100.22"]}
    assert renewal["command"] == "anycastlb-acme-renewal"
    assert renewal["vars"]["anycastlb_acme_certificate"] == "acme-www"
    without = compiled(tmp_path)   # no monitoring node: no probe, no rule
    assert without["lb1"]["haproxy"]["acme_probe"] is None
