"""Per-service HAProxy settings, protocol checks, per-port backend ports and raw directives (issue 19).

The operator fleet (tests/data/operator-fleet.yaml) is the "done when" catalog: it must
compile, render and pass every daemon's own checker on every node. The other tests
write one setting at a time into a small catalog and assert what a user would read in
haproxy.cfg (checked by the real ``haproxy -c``) or in the refusal.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from anycastlb.apply import check_node
from anycastlb.compiler import compile_catalog
from anycastlb.diff import diff_fleets, format_diff
from anycastlb.errors import CatalogRefused
from anycastlb.minion import render
from anycastlb.render_cli import throwaway_certificates

FLEET = Path(__file__).resolve().parents[1] / "data" / "operator-fleet.yaml"
needs_checkers = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("haproxy", "apache2", "bird", "icinga2", "nft", "openssl")),
    reason="needs haproxy, apache2, bird, icinga2, nft and openssl (bash .ci/setup)")
needs_haproxy = pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed")

BASE = """\
bgp: {asn: 64600}
vip_pools: [192.0.2.0/24]
management: [198.51.100.0/24]
nodes:
  rr1: {address: 198.51.100.11, roles: [route-reflector]}
  lb1: {address: 198.51.100.21}
  web1: {address: 198.51.100.31}
  web2: {address: 198.51.100.32}
  dns1: {address: 198.51.100.53}
clusters:
  edge: {nodes: [lb1]}
services:
"""


def catalog(tmp_path: Path, services: str, base: str = BASE) -> Path:
    p = tmp_path / "catalog.yaml"
    p.write_text(base + textwrap.indent(textwrap.dedent(services), "  "))
    return p


def refused(tmp_path: Path, services: str, base: str = BASE) -> list[str]:
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(catalog(tmp_path, services, base))
    return [str(e) for e in exc.value.errors]


def haproxy_cfg(model: dict[str, Any], secrets: dict[str, Any] | None = None) -> str:
    """haproxy.cfg of a node (``secrets`` default: throw-away certificates for the ones it names)."""
    if secrets is None:
        names = model["secrets"]["certificates"]
        secrets = {"certificates": throwaway_certificates(names) if names else {}, "bgp_passwords": {}}
    files = render(model, secrets, "haproxy", show_secrets=True)
    return next(text for path, text in files["haproxy"].items() if path.endswith("haproxy.cfg"))


def section(cfg: str, header: str) -> list[str]:
    """The stripped lines of one section (a backend found by its name also when it says ``from``)."""
    lines = cfg.splitlines()
    start = next(i for i, line in enumerate(lines) if line == header or line.startswith(header + " from "))
    out = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        out.append(line.strip())
    return out


@pytest.fixture(scope="module")
def fleet() -> Any:
    return compile_catalog(FLEET)


@pytest.fixture(scope="module")
def certs() -> dict[str, Any]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    return throwaway_certificates(["www-example-org", "shop-example-org", "api-example-org"])


# ------------------------------------------------------------------ the operator fleet


@needs_checkers
@pytest.mark.parametrize("node", ["lb1", "lb2", "rr1", "rr2", "web1", "web2", "dns1", "dns2", "mon1"])
def test_operator_fleet_passes_every_checker(fleet: Any, certs: dict[str, Any], node: str) -> None:
    model = fleet.nodes[node]
    secrets = {"certificates": {c: certs[c] for c in model["secrets"]["certificates"]}, "bgp_passwords": {}}
    results = check_node(model, secrets)
    assert results, f"{node} runs no daemon"
    failed = {name: out for name, (ok, out) in results.items() if not ok}
    assert not failed, failed


def test_operator_fleet_shape(fleet: Any) -> None:
    assert fleet.summary["roles"]["route-reflector"] == 2 and fleet.summary["roles"]["haproxy"] == 2
    assert fleet.summary["roles"]["monitoring"] == 1
    assert set(fleet.services) == {"www", "ldap", "resolver", "kdc", "shop", "cart", "api"}


def test_ldap_idle_binds_and_per_port_backend_ports(fleet: Any, certs: dict[str, Any]) -> None:
    cfg = haproxy_cfg(fleet.nodes["lb1"], {"certificates": certs, "bgp_passwords": {}})
    fe = section(cfg, "frontend ldap-636")
    assert "timeout client 900000ms" in fe and "maxconn 4000" in fe
    assert "default_backend ldap-1636" in fe
    assert "default_backend ldap-1389" in section(cfg, "frontend ldap-389")
    be = section(cfg, "backend ldap-1636")
    assert "option ldap-check" in be
    assert "timeout server 900000ms" in be and "timeout connect 3000ms" in be
    assert "stick-table type ipv6 size 100k expire 3600000ms" in be and "stick on src" in be
    assert "default-server inter 2000ms rise 2 fall 3 port 1389 maxconn 500" in be
    assert "server ldap1 203.0.113.89:1636 check weight 100" in be
    assert "server ldap1 203.0.113.89:1389 check weight 100" in section(cfg, "backend ldap-1389")


def test_www_proxy_protocol_stickiness_hsts_redirects(fleet: Any, certs: dict[str, Any]) -> None:
    cfg = haproxy_cfg(fleet.nodes["lb1"], {"certificates": certs, "bgp_passwords": {}})
    be = section(cfg, "backend www-8080")
    assert "default-server inter 2000ms rise 2 fall 3 send-proxy-v2 check-send-proxy" in be
    assert 'cookie "SRV_www" insert indirect nocache httponly' in be
    assert 'server web1 198.51.100.31:8080 check weight 100 cookie "web1"' in be
    assert 'http-check expect string "ok www"' in be
    fe = section(cfg, "frontend www-443")
    assert 'http-response set-header Strict-Transport-Security "max-age=31536000; includeSubDomains"' in fe
    assert ('http-request redirect prefix "https://www.example.org/archive" code 301 if { path_beg "/old/" }'
            in fe)
    fe80 = section(cfg, "frontend www-80")
    assert not any("Strict-Transport-Security" in x or "redirect prefix" in x for x in fe80)


def test_apache_reads_the_proxy_protocol_except_from_monitoring(fleet: Any) -> None:
    files = render(fleet.nodes["web1"], {"certificates": {}, "bgp_passwords": {}}, "apache2")["apache2"]
    vhost = files["/etc/apache2/sites-enabled/anycastlb-www.conf"]
    assert "\tRemoteIPProxyProtocol On\n" in vhost
    assert "\tRemoteIPProxyProtocolExceptions 198.51.100.61 2001:db8:100::61\n" in vhost
    assert "RemoteIPProxyProtocol On" in files["/etc/apache2/sites-enabled/anycastlb-000-default-8080.conf"]
    assert "mod_remoteip.so" in files["/etc/apache2/mods-enabled/zz-anycastlb.load"]


def test_resolver_is_checked_by_a_dns_query(fleet: Any) -> None:
    anns = fleet.nodes["dns1"]["health"]["announcements"]
    watches = {a["prefix"]: a["watch"] for a in anns}
    w = watches["192.0.2.53/32"]
    assert (w["type"], w["name"], w["qtype"], w["port"], w["address"]) == ("dns", "www.example.org", "A", 53,
                                                                           "192.0.2.53")
    assert watches["2001:db8:5::53/128"]["address"] == "2001:db8:5::53"


# ------------------------------------------------------------------ one setting at a time


@needs_haproxy
@pytest.mark.parametrize("check,line", [
    ("{ldap: {}}", "option ldap-check"),
    ("{smtp: {domain: mx.example.org}}", 'option smtpchk EHLO "mx.example.org"'),
    ("{mysql: {user: haproxy}}", 'option mysql-check user "haproxy" post-41'),
    ("{pgsql: {user: haproxy_check}}", 'option pgsql-check user "haproxy_check"'),
    ("{ssl_hello: {port: 8443}}", "option ssl-hello-chk"),
])
def test_protocol_checks_render_and_pass_haproxy(tmp_path: Path, check: str, line: str) -> None:
    fleet = compile_catalog(catalog(tmp_path, f"""
        db:
          mode: tcp
          vip: 192.0.2.30
          ports: [3306]
          cluster: edge
          check: {check}
          backends: [web1, web2]
        """))
    model = fleet.nodes["lb1"]
    assert line in section(haproxy_cfg(model), "backend db-3306")
    ok, out = check_node(model)["haproxy"]
    assert ok, out


@needs_haproxy
def test_timeouts_and_maxconn_in_http_mode(tmp_path: Path) -> None:
    fleet = compile_catalog(catalog(tmp_path, """
        app:
          mode: http
          vip: 192.0.2.31
          ports: [80]
          cluster: edge
          backends: [web1]
          haproxy:
            timeouts: {client: 2m, server: 90s, connect: 500ms, tunnel: 8h}
            maxconn: 100
            server_maxconn: 20
            send_proxy: v1
            stick: {by: source}
        """))
    cfg = haproxy_cfg(fleet.nodes["lb1"])
    fe, be = section(cfg, "frontend app-80"), section(cfg, "backend app-80")
    assert "timeout client 120000ms" in fe and "maxconn 100" in fe
    assert ["timeout connect 500ms", "timeout server 90000ms", "timeout tunnel 28800000ms"] == [
        x for x in be if x.startswith("timeout ") and "check" not in x]
    assert "stick-table type ipv6 size 100k expire 1800000ms" in be
    assert any(x.endswith("maxconn 20 send-proxy check-send-proxy") for x in be)
    ok, out = check_node(fleet.nodes["lb1"])["haproxy"]
    assert ok, out


def test_defaults_stay_when_nothing_is_set(tmp_path: Path) -> None:
    fleet = compile_catalog(catalog(tmp_path, """
        app: {mode: tcp, vip: 192.0.2.31, ports: [25], cluster: edge, backends: [web1]}
        """))
    cfg = haproxy_cfg(fleet.nodes["lb1"])
    assert not any(x.startswith(("timeout client", "maxconn")) for x in section(cfg, "frontend app-25"))
    assert "timeout client 30s" in section(cfg, "defaults")


@needs_haproxy
def test_raw_directives_are_marked_and_checked(tmp_path: Path) -> None:
    fleet = compile_catalog(catalog(tmp_path, """
        app:
          mode: http
          vip: 192.0.2.31
          ports: [80]
          cluster: edge
          backends: [web1]
          haproxy: {raw: {backend: ["http-request set-header X-Team blue"]}}
        """))
    be = section(haproxy_cfg(fleet.nodes["lb1"]), "backend app-80")
    i = be.index("http-request set-header X-Team blue")
    assert be[i - 1].startswith("# RAW directives from the catalog") and be[i + 1] == "# end of RAW directives"
    assert check_node(fleet.nodes["lb1"])["haproxy"][0]
    bad = compile_catalog(catalog(tmp_path, """
        app:
          mode: http
          vip: 192.0.2.31
          ports: [80]
          cluster: edge
          backends: [web1]
          haproxy: {raw: {backend: ["http-request no-such-action"]}}
        """))
    ok, out = check_node(bad.nodes["lb1"])["haproxy"]
    assert not ok and "no-such-action" in out


def test_diff_marks_raw_directives_loudly(tmp_path: Path) -> None:
    svc = """
        app:
          mode: http
          vip: 192.0.2.31
          ports: [80]
          cluster: edge
          backends: [web1]
          haproxy: {raw: {frontend: [%s]}}
        """
    old = compile_catalog(catalog(tmp_path, svc % ""))
    (tmp_path / "new").mkdir()
    new = compile_catalog(catalog(tmp_path / "new", svc % '"http-request deny if { path_beg /admin }"'))
    text = format_diff(diff_fleets(old, new))
    assert text.startswith("!! RAW HAProxy directives change")
    assert "!!   + app frontend: http-request deny if { path_beg /admin }" in text.splitlines()


@pytest.mark.parametrize("service,needle", [
    ("haproxy: {raw: {backend: [\"option httpclose\\nbackend evil\"]}}", "newlines are refused"),
    ("haproxy: {raw: {frontend: [\"backend evil\"]}}", "may not open a section ('backend')"),
    ("haproxy: {timeouts: {client: 600}}", "600 has no unit: write a duration such as 30s or 10m"),
    ("haproxy: {timeouts: {server: 10 m}}", "'10 m' is not a duration such as 30s or 10m"),
    ("haproxy: {stick: {by: cookie}}", "stickiness by cookie needs mode http"),
    ("haproxy: {hsts: {}}", "hsts is sent on TLS answers: it needs mode http and tls"),
    ("haproxy: {redirects: [{path: /a, location: 'https://x.example/'}]}", "redirects need mode http"),
    ("haproxy: {send_proxy: v3}", "'v3' is not allowed"),
    ("haproxy: {maxconn: 0}", "is out of range"),
    ("check: {dns: {name: example.org}}", "a dns check is run by healthd on an anycast service, not mode tcp"),
    ("check: {ldap: {}, http: {}}", "check has several kinds (http, ldap)"),
    ("check: {mysql: {user: \"root' #\"}}", "is not a name of letters, digits"),
    ("backend_port: {25: 2525, 26: 2626}", "port 26 is mapped but is not a tcp port of the service"),
    ("backend_port: {25: 70000}", "backend port 70000 is out of range"),
])
def test_refusals_name_service_and_key(tmp_path: Path, service: str, needle: str) -> None:
    errors = refused(tmp_path, f"""
        app:
          mode: tcp
          vip: 192.0.2.31
          ports: [25]
          cluster: edge
          backends: [web1]
          {service}
        """)
    assert any(needle in e and "service 'app'" in e and "catalog.yaml:" in e for e in errors), errors


@pytest.mark.parametrize("service,needle", [
    ("haproxy: {maxconn: 10}", "haproxy settings need mode http or tcp"),
    ("check: {ldap: {}}", "a ldap check is run by HAProxy on a service of mode tcp, not anycast"),
    ("check: {kerberos: {realm: example.org}}", "is not a Kerberos realm (upper case)"),
    ("check: {dns: {name: \"a b.example\"}}", "is not a host name"),
    ("check: {dns: {name: example.org, type: ANY}}", "'ANY' is not allowed"),
])
def test_anycast_refusals(tmp_path: Path, service: str, needle: str) -> None:
    errors = refused(tmp_path, f"""
        resolver:
          mode: anycast
          vip: 192.0.2.53
          ports: [53/udp, 53/tcp]
          backends: [dns1]
          {service}
        """)
    assert any(needle in e and "service 'resolver'" in e for e in errors), errors


def test_redirect_needs_location_or_prefix_and_hsts_max_age_unit(tmp_path: Path) -> None:
    errors = refused(tmp_path, """
        app:
          mode: http
          vip: 192.0.2.31
          ports: [80]
          cluster: edge
          backends: [web1]
          haproxy:
            redirects: [{path: /a, location: "https://a.example/", prefix: "https://b.example"}]
            stick: {by: source, cookie: SRV}
        """)
    assert any("a redirect has either location (one URL) or prefix" in e for e in errors), errors
    assert any("cookie names the cookie of stickiness by cookie" in e for e in errors), errors
    errors = refused(tmp_path, """
        app:
          mode: http
          vip: 192.0.2.31
          ports: [80]
          cluster: edge
          backends: [web1]
          haproxy: {redirects: [{path: "/a b", location: "https://a.example/\\"x"}]}
        """)
    assert any("'/a b' is not an absolute URI path" in e for e in errors), errors
    assert any("is not an http(s) URL" in e for e in errors), errors


def test_services_sharing_an_apache_port_agree_on_the_proxy_protocol(tmp_path: Path) -> None:
    errors = refused(tmp_path, """
        a:
          mode: http
          vip: 192.0.2.31
          ports: [80]
          backend_port: 8080
          cluster: edge
          backends: [web1]
          apache: {server_name: a.example.org}
          check: {http: {path: /healthz}}
          haproxy: {send_proxy: v2}
        b:
          mode: http
          vip: 192.0.2.32
          ports: [80]
          backend_port: 8080
          cluster: edge
          backends: [web1]
          apache: {server_name: b.example.org}
          check: {http: {path: /healthz}}
        """)
    assert any("service 'b'" in e and "apache on web1 port 8080 serves service 'a' with send_proxy v2" in e
               for e in errors), errors


def test_schema_exports_the_new_keys() -> None:
    from anycastlb.schema import json_schema
    text = str(json_schema())
    for key in ("HaproxySettings", "Timeouts", "DnsCheck", "KerberosCheck", "Redirect", "Hsts", "Raw", "Route"):
        assert key in text


def test_apache2_checker_accepts_proxy_protocol(fleet: Any) -> None:
    if not shutil.which("apache2"):
        pytest.skip("apache2 is not installed")
    ok, out = check_node(fleet.nodes["web2"])["apache2"]
    assert ok, out
    assert subprocess.run(["test", "-e", "/usr/lib/apache2/modules/mod_remoteip.so"]).returncode == 0


HOSTILE = ["a\nb", 'a"b', "a b", "a#b", "../x", "a$b", "a\\b", "a'b", "a{b", "a%b"]
#: Every string setting of this issue, as a service snippet with {} for the value.
STRING_LEAVES = [
    ("http", "check: {{http: {{path: /healthz, body: {}}}}}"),
    ("tcp", "check: {{smtp: {{domain: {}}}}}"),
    ("tcp", "check: {{mysql: {{user: {}}}}}"),
    ("tcp", "check: {{pgsql: {{user: {}}}}}"),
    ("http", "haproxy: {{stick: {{by: cookie, cookie: {}}}}}"),
    ("http", "haproxy: {{redirects: [{{path: {}, location: 'https://a.example/'}}]}}"),
    ("http", "haproxy: {{redirects: [{{path: /a, location: {}}}]}}"),
    ("http", "haproxy: {{redirects: [{{path: /a, prefix: {}}}]}}"),
    ("http", "route: {{hosts: [{}]}}"),
    ("http", "route: {{paths: [{}]}}"),
]


@needs_haproxy
@pytest.mark.parametrize("mode,snippet", STRING_LEAVES)
def test_hostile_strings_are_refused_or_inert(tmp_path: Path, mode: str, snippet: str) -> None:
    """Each hostile text in each new string setting: lint refuses it, or haproxy -c accepts the
    config and the text stays inside one quoted argument (never a second directive)."""
    import json
    for i, text in enumerate(HOSTILE):
        d = tmp_path / str(i)
        d.mkdir()
        value = json.dumps(text if "location" not in snippet and "prefix" not in snippet
                           else f"https://a.example/{text}")
        try:
            fleet = compile_catalog(catalog(d, f"""
                app:
                  mode: {mode}
                  vip: 192.0.2.31
                  ports: [80]
                  cluster: edge
                  backends: [web1]
                  {snippet.format(value)}
                """))
        except CatalogRefused:
            continue
        assert "\n" not in text, f"{snippet}: lint accepted a line break"
        cfg = haproxy_cfg(fleet.nodes["lb1"])
        from anycastlb.render.quote import haproxy as quoted, haproxy_lf as quoted_lf
        shown = json.loads(value)
        assert quoted(shown) in cfg or quoted_lf(shown) in cfg, f"{text!r} is not one quoted argument"
        ok, out = check_node(fleet.nodes["lb1"])["haproxy"]
        assert ok, f"{snippet} with {text!r}: lint accepted what haproxy -c refuses: {out}"
