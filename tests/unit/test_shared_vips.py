"""Shared VIPs (issue 19 item 2): several http services on one VIP:port, routed by host and
path prefix, a certificate per service, TLS on any port; and what lint refuses.

The operator fleet's shop, cart and api share 192.0.2.82:443 (and its v6 twin); the
refusals are written into small catalogs and read as a user reads them (file:line, object,
key, and the other service's place).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_service_settings import BASE as SETTINGS_BASE, catalog, haproxy_cfg, refused as settings_refused, section

from anycastlb.apply import check_node
from anycastlb.compiler import compile_catalog
from anycastlb.render_cli import throwaway_certificates

FLEET = Path(__file__).resolve().parents[1] / "data" / "operator-fleet.yaml"
needs_haproxy = pytest.mark.skipif(not shutil.which("haproxy") or not shutil.which("openssl"),
                                   reason="needs haproxy and openssl (bash .ci/setup)")

BASE = SETTINGS_BASE.replace("services:\n", """templates:
  site: {mode: http, vip: 192.0.2.40, ports: [443], cluster: edge, tls: {certificate: a-cert}}
services:
""")


def write(tmp_path: Path, services: str) -> Path:
    return catalog(tmp_path, services, BASE)


def refused(tmp_path: Path, services: str) -> list[str]:
    return settings_refused(tmp_path, services, BASE)


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line holding ``text``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def frontend(cfg: str, name: str) -> list[str]:
    return section(cfg, f"frontend {name}")


@pytest.fixture(scope="module")
def fleet() -> Any:
    return compile_catalog(FLEET)


# ------------------------------------------------------------------ rendering


def test_one_frontend_routes_by_host_then_longest_path(fleet: Any) -> None:
    fes = {f["name"]: f for f in fleet.nodes["lb1"]["haproxy"]["frontends"]}
    assert "shop-443" not in fes and "cart-443" not in fes and "api-443" not in fes
    fe = fes["shared-443-192.0.2.82"]
    assert fe["services"] == ["api", "cart", "shop"] and fe["binds"] == ["192.0.2.82", "2001:db8:5::82"]
    assert fe["tls"]["certificates"] == ["api-example-org", "shop-example-org"]
    assert fe["backend"] is None and fe["backends"] == ["api-8083", "cart-8082", "shop-8082"]
    lines = frontend(haproxy_cfg(fleet.nodes["lb1"]), "shared-443-192.0.2.82")
    binds = [x for x in lines if x.startswith("bind ")]
    assert binds == ['bind 192.0.2.82:443,[2001:db8:5::82]:443 transparent ssl crt '
                     '"/etc/haproxy/certs/anycastlb-api-example-org.pem" crt '
                     '"/etc/haproxy/certs/anycastlb-shop-example-org.pem" alpn h2,http/1.1']
    assert 'acl h1 req.hdr(host),field(1,:),lower -m str "shop.example.org"' in lines
    assert 'acl p0 path "/cart"' in lines and 'acl p0 path_beg "/cart/"' in lines
    rules = [x for x in lines if x.startswith("use_backend")]
    # cart (shop.example.org/cart) is matched before shop (shop.example.org, every other path)
    assert rules == ["use_backend cart-8082 if h1 p0", "use_backend api-8083 if h0", "use_backend shop-8082 if h1"]
    assert not any(x.startswith("default_backend") for x in lines)
    assert any(x.startswith("http-request return status 404") and x.endswith("unless h1 p0 || h0 || h1")
               for x in lines)


def test_tls_on_another_port_is_the_service_own_frontend(fleet: Any) -> None:
    lines = frontend(haproxy_cfg(fleet.nodes["lb1"]), "api-8443")
    assert 'bind 192.0.2.82:8443,[2001:db8:5::82]:8443 transparent ssl crt ' \
           '"/etc/haproxy/certs/anycastlb-api-example-org.pem" ' \
           'alpn h2,http/1.1' in lines
    assert "default_backend api-8083" in lines and "http-request set-header X-Forwarded-Proto https" in lines
    assert fleet.services["api"]["tls_ports"] == [443, 8443]


def test_health_firewall_and_monitoring_of_a_shared_vip(fleet: Any) -> None:
    anns = {a["prefix"]: a for a in fleet.nodes["lb1"]["health"]["announcements"]}
    watch = anns["192.0.2.82/32"]["watch"]
    assert watch["frontends"] == ["api-8443", "shared-443-192.0.2.82"]
    assert watch["backends"] == ["api-8083", "cart-8082", "shop-8082"]
    rules = [r for r in fleet.nodes["lb1"]["firewall"]["rules"] if "192.0.2.82" in r["destinations"]]
    assert [(r["comment"], r["ports"]) for r in rules] == [("service api on its VIPs", [8443]),
                                                          ("services api, cart, shop on their shared VIPs", [443])]
    checks = {c["name"]: c for c in fleet.nodes["mon1"]["monitoring"]["checks"]}
    cart = checks["vip cart 192.0.2.82 443/tcp"]   # Host shop.example.org, a path under /cart: cart answers
    assert (cart["type"], cart["http_host"], cart["path"], cart["tls"]) == ("https", "shop.example.org",
                                                                           "/cart/healthz", True)
    assert checks["vip api 192.0.2.82 8443/tcp"]["tls"] is True
    assert checks["vip api 192.0.2.82 8443/tcp"]["http_host"] == "api.example.org"
    fe = checks["frontend shop-443 on lb1"]
    assert (fe["frontend"], fe["backend"]) == ("shared-443-192.0.2.82", "shop-8082")


@needs_haproxy
def test_shared_frontend_passes_haproxy(fleet: Any) -> None:
    model = fleet.nodes["lb1"]
    certs = throwaway_certificates(model["secrets"]["certificates"])
    ok, out = check_node(model, {"certificates": certs, "bgp_passwords": {}})["haproxy"]
    assert ok, out


@needs_haproxy
def test_a_catch_all_service_is_the_default_backend(tmp_path: Path) -> None:
    fleet = compile_catalog(write(tmp_path, """
        www:  {extends: site, backends: [web1], route: {}}
        docs: {extends: site, backends: [web2], route: {paths: [/docs/], hosts: ["*.example.org"]},
               tls: {certificate: a-cert}}
        """))
    lines = frontend(haproxy_cfg(fleet.nodes["lb1"]), "shared-443-192.0.2.40")
    assert "default_backend www-443" in lines and not any("return status 404" in x for x in lines)
    assert 'acl h0 req.hdr(host),field(1,:),lower -m end ".example.org"' in lines
    assert 'acl p0 path "/docs"' in lines   # /docs/ is the prefix /docs: /docs and /docs/...
    assert [x for x in lines if x.startswith("use_backend")] == ["use_backend docs-443 if h0 p0"]
    certs = throwaway_certificates(["a-cert"])
    ok, out = check_node(fleet.nodes["lb1"], {"certificates": certs, "bgp_passwords": {}})["haproxy"]
    assert ok, out


# ------------------------------------------------------------------ refusals


def test_two_services_claiming_one_host_and_path_are_refused_naming_both(tmp_path: Path) -> None:
    errors = refused(tmp_path, """
        one: {extends: site, backends: [web1], route: {hosts: [app.example.org], paths: [/api]}}
        two: {extends: site, backends: [web2], route: {hosts: [App.example.org, other.example.org], paths: [/api/]}}
        """)
    path = tmp_path / "catalog.yaml"
    one, two = line_of(path, "  one:"), line_of(path, "  two:")
    assert errors == [f"{path}:{two}: service 'two', key 'route.hosts': host app.example.org path /api on VIP "
                      f"192.0.2.40 port 443/tcp is already claimed by service 'one' ({path}:{one})"]


def test_no_route_keeps_one_vip_port_one_service(tmp_path: Path) -> None:
    errors = refused(tmp_path, """
        one: {extends: site, backends: [web1]}
        two: {extends: site, backends: [web2], route: {}}
        """)
    path = tmp_path / "catalog.yaml"   # 'ports' is written in the template; 'one' is named where it is declared
    assert len(errors) == 1 and errors[0].startswith(f"{path}:{line_of(path, 'ports: [443]')}: service 'two', key "
                                                     "'ports'"), errors
    assert f"VIP 192.0.2.40 port 443/tcp is already used by service 'one' ({path}:{line_of(path, '  one:')})" \
        in errors[0]
    assert errors[0].endswith("to share it, give 'one' a route (hosts and paths)")


def test_tcp_and_http_cannot_share_a_vip_port(tmp_path: Path) -> None:
    errors = refused(tmp_path, """
        web: {extends: site, backends: [web1], route: {}}
        raw: {mode: tcp, vip: 192.0.2.40, ports: [443], cluster: edge, backends: [web2]}
        """)
    assert len(errors) == 1 and "service 'web', key 'mode'" in errors[0], errors
    assert "modes http and tcp cannot share a VIP:port" in errors[0] and "service 'raw'" in errors[0]


@pytest.mark.parametrize("two,key,needle", [
    ("{extends: site, backends: [web2], route: {hosts: [b.example.org]}, tls: null}", "tls",
     "service 'one' terminates TLS on VIP 192.0.2.40 port 443/tcp and service 'two'"),
    ("{extends: site, backends: [web2], route: {hosts: [b.example.org]}, allow: [203.0.113.0/24]}", "allow",
     "allow differs from service 'one'"),
    ("{extends: site, backends: [web2], route: {hosts: [b.example.org]}, vip: [192.0.2.40, 192.0.2.41]}", "vip",
     "services that share a VIP:port have the same VIPs"),
    ("{extends: site, backends: [web2], route: {hosts: [a.example.org], paths: [/x]}, "
     "tls: {certificate: b-cert}}", "tls", "the services of one host name share one certificate"),
    ("{extends: site, backends: [web2], route: {hosts: [b.example.org]}, haproxy: {maxconn: 10}}",
     "haproxy.maxconn", "haproxy.maxconn differs from service 'one'"),
])
def test_what_one_frontend_cannot_hold_twice_is_refused(tmp_path: Path, two: str, key: str, needle: str) -> None:
    errors = refused(tmp_path, f"""
        one: {{extends: site, backends: [web1], route: {{hosts: [a.example.org]}}}}
        two: {two}
        """)
    mine = [e for e in errors if f"service 'two', key '{key}'" in e]
    assert mine and needle in mine[0], errors
    assert re.search(r"\((/\S+\.yaml:\d+)\)", mine[0]) or "terminates TLS" in mine[0], mine[0]


def test_tls_ports_and_route_keys_are_checked(tmp_path: Path) -> None:
    errors = refused(tmp_path, """
        one: {extends: site, backends: [web1], tls: {certificate: a-cert, ports: [443, 8443]}}
        two: {mode: tcp, vip: 192.0.2.42, ports: [389], cluster: edge, backends: [web2], route: {}}
        three: {extends: site, vip: 192.0.2.43, backends: [web2], route: {paths: [/a, /a/]}}
        """)
    text = "\n".join(errors)
    assert "service 'one', key 'tls.ports[1]': tls terminates on port 8443, which is not a tcp port in ports" in text
    assert "service 'two', key 'route': route needs mode http" in text
    assert "service 'three', key 'route.paths'" in text and "listed twice" in text


def test_show_prints_the_routes_of_a_shared_frontend(capsys: pytest.CaptureFixture[str]) -> None:
    from anycastlb.cli import main
    assert main(["show", str(FLEET), "lb1"]) == 0
    out = capsys.readouterr().out
    assert ("frontend shared-443-192.0.2.82 http 192.0.2.82, 2001:db8:5::82 :443 tls -> cart-8082 (shop.example.org "
            "/cart), api-8083 (api.example.org), shop-8082 (shop.example.org), else 404") in out
    assert "accept tcp 443 from any to 192.0.2.82, 2001:db8:5::82  # services api, cart, shop on their shared VIPs" in out
