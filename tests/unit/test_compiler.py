"""The catalog compiler: the campus model, and every refusal with its message."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused

ROOT = Path(__file__).resolve().parents[2]
CAMPUS = ROOT / "anycastlb" / "examples" / "campus.yaml"
SHARED = ROOT.parent / "shared" / "examples" / "campus.yaml"
CAMPUS_TEXT = CAMPUS.read_text()


def test_shipped_example_equals_the_normative_one():
    if not SHARED.exists():
        pytest.skip("../shared is absent (users' clones have none)")
    assert CAMPUS.read_bytes() == SHARED.read_bytes()


@pytest.fixture(scope="module")
def campus():
    return compile_catalog(CAMPUS)


def refused(tmp_path: Path, text: str, name: str = "catalog.yaml") -> list[str]:
    """Compile ``text``; return the error lines (the test fails if it compiles)."""
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(p)
    return [str(e) for e in exc.value.errors]


def edit(old: str, new: str, text: str = CAMPUS_TEXT) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# ---------------------------------------------------------------- the campus model


def test_campus_summary(campus):
    assert campus.summary["services"] == 4
    assert campus.summary["vips"] == 6
    assert campus.summary["nodes"] == 11


@pytest.mark.parametrize("node,roles", [
    ("lb1", ["bird", "haproxy"]),
    ("lb3", ["bird", "haproxy"]),
    ("rr1", ["bird", "route-reflector"]),
    ("web1", ["apache", "backend"]),
    ("kdc1", ["anycast", "bird"]),
    ("mon1", ["bird", "monitoring"]),
    ("salt", ["salt-master"]),
])
def test_roles(campus, node, roles):
    assert campus.nodes[node]["roles"] == roles


def test_active_lb_announces_every_vip_of_its_cluster(campus):
    assert campus.nodes["lb1"]["bgp"]["announce"] == [
        "192.0.2.10/32", "192.0.2.11/32", "192.0.2.20/32", "2001:db8:1::10/128"]


def test_drained_lb_announces_nothing_but_keeps_sessions_and_vips(campus):
    bgp = campus.nodes["lb3"]["bgp"]
    assert bgp["announce"] == []
    assert {n["name"] for n in bgp["neighbors"]} == {"rr1", "rr2"}
    # The VIPs stay on lo (HAProxy keeps serving the connections it has).
    assert [v["prefix"] for v in bgp["vips"]] == [v["prefix"] for v in campus.nodes["lb1"]["bgp"]["vips"]]
    assert campus.nodes["lb3"]["health"]["announcements"] == []


def test_anycast_backend_announces_its_vips_with_its_check(campus):
    m = campus.nodes["kdc1"]
    assert m["bgp"]["announce"] == ["192.0.2.88/32", "2001:db8:1::88/128"]
    watches = {a["prefix"]: a["watch"] for a in m["health"]["announcements"]}
    assert watches["192.0.2.88/32"]["type"] == "tcp"
    assert watches["192.0.2.88/32"]["port"] == 88
    assert watches["2001:db8:1::88/128"]["address"] == "2001:db8:1::88"
    assert m["haproxy"] is None


def test_route_reflector_neighbours(campus):
    nbs = campus.nodes["rr1"]["bgp"]["neighbors"]
    clients = sorted({n["name"] for n in nbs if n["kind"] == "client"})
    assert clients == ["kdc1", "kdc2", "lb1", "lb2", "lb3"]
    peers = [n for n in nbs if n["kind"] == "peer"]
    assert {(p["address"], p["asn"], p["add_paths"], p["ebgp"]) for p in peers} == {
        ("198.51.100.1", 64500, "tx", True), ("2001:db8:100::1", 64500, "tx", True)}
    assert all(n["bfd"] for n in nbs)
    assert campus.nodes["rr1"]["bgp"]["bfd"] == {"interval_ms": 100, "multiplier": 3}


def test_speakers_peer_with_every_route_reflector_only(campus):
    nbs = campus.nodes["kdc2"]["bgp"]["neighbors"]
    assert {(n["name"], n["family"]) for n in nbs} == {
        ("rr1", "ipv4"), ("rr1", "ipv6"), ("rr2", "ipv4"), ("rr2", "ipv6")}


def test_haproxy_backends_weights_backup_and_states(campus):
    be = {b["name"]: b for b in campus.nodes["lb2"]["haproxy"]["backends"]}
    intranet = {s["name"]: s for s in be["intranet-8080"]["servers"]}
    assert intranet["web1"]["weight"] == 100 and intranet["web1"]["state"] == "active"
    assert intranet["web2"]["weight"] == 50 and intranet["web2"]["state"] == "drain"
    assert be["intranet-8080"]["balance"] == "leastconn"
    imap = {s["name"]: s for s in be["imap-993"]["servers"]}
    assert imap["mail2"]["backup"] is True and imap["mail2"]["address"] == "203.0.113.26"
    assert imap["mail1"]["port"] == 993
    assert be["www-8080"]["check"]["type"] == "http"
    assert be["www-8080"]["check"]["path"] == "/healthz"
    assert be["www-8080"]["check"]["interval_ms"] == 2000


def test_tls_and_redirect_frontends(campus):
    fe = {f["name"]: f for f in campus.nodes["lb1"]["haproxy"]["frontends"]}
    assert fe["www-443"]["tls"] == {"certificate": "campus-wildcard", "certificates": ["campus-wildcard"]}
    assert fe["www-443"]["binds"] == ["192.0.2.10", "2001:db8:1::10"]
    assert fe["www-80"]["redirect_https"] is True and fe["www-80"]["tls"] is None
    assert fe["intranet-80"]["allow"] == ["198.51.100.0/24", "2001:db8:100::/64"]


def test_secret_names_only_where_used(campus):
    assert campus.nodes["lb1"]["secrets"]["certificates"] == ["campus-wildcard"]
    for node in ("web1", "kdc1", "rr1"):
        assert campus.nodes[node]["secrets"]["certificates"] == []


def test_apache_vhosts_on_backends(campus):
    vh = {(v["service"], v["port"]) for v in campus.nodes["web2"]["apache"]["vhosts"]}
    assert vh == {("www", 8080), ("intranet", 8080)}
    names = {v["server_name"] for v in campus.nodes["web1"]["apache"]["vhosts"]}
    assert names == {"www.example.org", "intranet.example.org"}


def firewall_rule(model, comment_start):
    return [r for r in model["firewall"]["rules"] if r["comment"].startswith(comment_start)]


def test_firewall_allow_lists(campus):
    web1 = campus.nodes["web1"]
    (rule,) = [r for r in firewall_rule(web1, "backend of www")]
    assert rule["ports"] == [8080]
    assert set(rule["sources"]) == {"198.51.100.21", "198.51.100.22", "198.51.100.23", "198.51.100.51",
                                    "2001:db8:100::21", "2001:db8:100::22", "2001:db8:100::23",
                                    "2001:db8:100::51"}
    lb1 = campus.nodes["lb1"]
    (intranet,) = firewall_rule(lb1, "service intranet")
    assert "198.51.100.0/24" in intranet["sources"] and intranet["destinations"] == ["192.0.2.11"]
    (www,) = firewall_rule(lb1, "service www")
    assert www["sources"] == [] and www["ports"] == [80, 443]
    bgp = firewall_rule(lb1, "bgp from")
    assert {s for r in bgp for s in r["sources"]} == {"198.51.100.11", "198.51.100.12", "2001:db8:100::11",
                                                       "2001:db8:100::12"}
    kdc = firewall_rule(campus.nodes["kdc1"], "service kdc")
    assert {(r["protocol"], tuple(r["ports"])) for r in kdc} == {("tcp", (88, 464)), ("udp", (88, 464))}
    (ssh,) = firewall_rule(web1, "ssh")
    assert ssh["sources"] == ["198.51.100.0/24", "2001:db8:100::/64"]


def test_monitoring_checks(campus):
    mon = campus.nodes["mon1"]["monitoring"]
    ann = {c["prefix"]: c for c in mon["checks"] if c["type"] == "announcers"}
    assert ann["192.0.2.10/32"]["expected"] == ["lb1", "lb2"]          # lb3 is drained
    assert ann["192.0.2.88/32"]["expected"] == ["kdc1", "kdc2"]
    assert ann["192.0.2.10/32"]["notify"] == ["netops"]
    hosts = {h["name"] for h in mon["hosts"]}
    assert {"mail1", "mail2", "lb1", "web2"} <= hosts
    types = {c["type"] for c in mon["checks"]}
    assert {"http", "https", "tcp", "udp", "haproxy-frontend", "announcers", "rr-sessions"} <= types


def test_deterministic_byte_identical(tmp_path):
    a = compile_catalog(CAMPUS)
    b = compile_catalog(CAMPUS)
    assert a.to_json() == b.to_json()
    for node in a.nodes:
        assert a.to_json(node) == b.to_json(node)
        json.loads(a.to_json(node))


def test_directory_catalog_merges_sections(tmp_path):
    head, _, services = CAMPUS_TEXT.partition("\nservices:\n")
    d = tmp_path / "cat"
    (d / "teams").mkdir(parents=True)
    (d / "base.yaml").write_text(head + "\n")
    (d / "teams" / "web.yaml").write_text("services:\n" + services)
    assert compile_catalog(d).to_json() == compile_catalog(CAMPUS).to_json().replace(str(CAMPUS), str(d))


def test_defaults_templates_service_precedence(campus):
    www = campus.services["www"]
    assert www["ports"] == ["80/tcp", "443/tcp"]          # tls-web's list replaces web's
    assert www["backend_port"] == 8080                     # from web, two levels up
    assert www["check"]["path"] == "/healthz" and www["check"]["rise"] == 2   # deep merge with defaults
    assert campus.services["intranet"]["balance"] == "leastconn"   # the service wins
    assert campus.services["imap"]["balance"] == "roundrobin"      # defaults


# ---------------------------------------------------------------- refusals


def test_unknown_key_names_file_line_service_key(tmp_path):
    text = edit("    balance: leastconn\n", "    balance: leastconn\n    colour: blue\n")
    errs = refused(tmp_path, text)
    assert errs == [f"{tmp_path}/catalog.yaml:{line_of(text, 'colour')}: service 'intranet', key 'colour': "
                    "unknown key 'colour'"]


def test_unknown_nested_key(tmp_path):
    text = edit("check: {tcp: {port: 88}}", "check: {tcp: {port: 88, prot: x}}")
    (err,) = refused(tmp_path, text)
    assert "service 'kdc', key 'check.tcp.prot': unknown key 'prot'" in err


def test_unknown_section(tmp_path):
    (err,) = refused(tmp_path, CAMPUS_TEXT + "\nloadbalancers: {}\n")
    assert "unknown section 'loadbalancers'" in err


def test_vip_outside_pools(tmp_path):
    text = edit("vip: 192.0.2.20", "vip: 203.0.113.20")
    (err,) = refused(tmp_path, text)
    assert f":{line_of(text, 'vip: 203.0.113.20')}: service 'imap', key 'vip[0]'" in err
    assert "outside vip_pools" in err


def test_vip_family_without_pool(tmp_path):
    text = edit("  - 2001:db8:1::/64\n", "")
    errs = refused(tmp_path, text)
    assert any("service 'www', key 'vip[1]'" in e and "vip_pools has no IPv6 prefix" in e for e in errs)
    assert any("service 'kdc'" in e for e in errs)


def test_same_vip_and_port_on_two_services(tmp_path):
    text = edit("vip: 192.0.2.20", "vip: 192.0.2.11\n    ports: [80]") .replace("    ports: [143, 993]\n", "", 1)
    errs = refused(tmp_path, text)
    assert any("VIP 192.0.2.11 port 80/tcp is already used by service 'imap'" in e or
               "VIP 192.0.2.11 port 80/tcp is already used by service 'intranet'" in e for e in errs)


def test_backend_neither_node_nor_address(tmp_path):
    text = edit("mail2: {address: 203.0.113.26, backup: true}", "mail2: {backup: true}")
    (err,) = refused(tmp_path, text)
    assert "service 'imap', key 'backends.mail2': backend 'mail2' is not a node and has no address" in err


def test_missing_cluster(tmp_path):
    text = edit("    cluster: edge\n    backends: [web1, web2]", "    cluster: core\n    backends: [web1, web2]")
    (err,) = refused(tmp_path, text)
    assert "service 'www', key 'cluster': cluster 'core' does not exist" in err
    assert f":{line_of(text, 'cluster: core')}:" in err


def test_missing_template(tmp_path):
    text = edit("  intranet:\n    extends: web\n", "  intranet:\n    extends: website\n")
    (err,) = refused(tmp_path, text)
    assert "service 'intranet', key 'extends': template 'website' does not exist" in err


def test_extends_cycle(tmp_path):
    text = edit("  web:\n    mode: http\n", "  web:\n    extends: tls-web\n    mode: http\n")
    errs = refused(tmp_path, text)
    assert any("extends cycle: tls-web -> web -> tls-web" in e or "extends cycle: web -> tls-web -> web" in e
               for e in errs)
    assert all("template" in e or "service" in e for e in errs)


def test_udp_on_haproxy_service(tmp_path):
    text = edit("ports: [143, 993]", "ports: [143, 993/udp]")
    (err,) = refused(tmp_path, text)
    assert "service 'imap', key 'ports[1]': udp port 993/udp needs mode anycast" in err


def test_tls_certificate_missing_from_secrets(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CAMPUS_TEXT)
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(p, secrets={"certificates": {"other": {}}})
    (err,) = [str(e) for e in exc.value.errors]
    assert "service 'www', key 'tls.certificate': certificate 'campus-wildcard' is not in the secrets pillar" in err
    assert f"{tmp_path}/c.yaml:{line_of(CAMPUS_TEXT, 'campus-wildcard')}" in err   # the template's line
    compile_catalog(p, secrets={"certificates": {"campus-wildcard": {"cert": "x", "key": "y"}}})


def test_node_in_cluster_and_anycast_backend_of_same_vip(tmp_path):
    text = edit("    vip: [192.0.2.88, \"2001:db8:1::88\"]", "    vip: [192.0.2.88, \"2001:db8:1::88\", 192.0.2.20]")
    text = edit("backends: [kdc1, kdc2]", "backends: [kdc1, kdc2, lb1]", text)
    errs = refused(tmp_path, text)
    assert any("service 'kdc', key 'backends.lb1': node 'lb1' balances VIP 192.0.2.20 in service 'imap'" in e
               for e in errs)


def test_port_out_of_range(tmp_path):
    text = edit("backend_port: 8080", "backend_port: 80800")
    (err,) = refused(tmp_path, text)   # reported once, where it is written, not for every service
    assert f":{line_of(text, '80800')}: template 'web', key 'backend_port': 80800 is out of range" in err
    assert "65535" in err
    text = edit("ports: [143, 993]", "ports: [143, 0]")
    (err,) = refused(tmp_path, text)
    assert "service 'imap', key 'ports.1': port 0 is out of range" in err


def test_two_nodes_one_address(tmp_path):
    text = edit('lb2:  {address: 198.51.100.22', 'lb2:  {address: 198.51.100.21')
    (err,) = refused(tmp_path, text)
    assert "node 'lb2', key 'address': address 198.51.100.21 is also the address of node 'lb1'" in err


def test_unknown_node_state(tmp_path):
    text = edit("state: drain}   # announces", "state: draining}   # announces")
    (err,) = refused(tmp_path, text)
    assert "node 'lb3', key 'state': 'draining' is not allowed" in err


def test_cluster_names_missing_node(tmp_path):
    text = edit("edge: {nodes: [lb1, lb2, lb3]}", "edge: {nodes: [lb1, lb2, lb4]}")
    (err,) = refused(tmp_path, text)
    assert "cluster 'edge', key 'nodes[2]': node 'lb4' does not exist" in err


def test_anycast_with_cluster_refused(tmp_path):
    text = edit("backends: [kdc1, kdc2]", "backends: [kdc1, kdc2]\n    cluster: edge")
    (err,) = refused(tmp_path, text)
    assert "service 'kdc', key 'cluster': mode anycast has no cluster" in err


def test_every_error_at_once(tmp_path):
    text = edit("vip: 192.0.2.20", "vip: 203.0.113.20")
    text = edit("balance: leastconn", "balance: fastest", text)
    text = edit("state: drain}   # announces", "state: off}   # announces", text)
    errs = refused(tmp_path, text)
    assert len(errs) == 3
    assert sorted(e.split(": ", 1)[1].split(",")[0] for e in errs) == ["node 'lb3'", "service 'imap'",
                                                                        "service 'intranet'"]


def test_duplicate_name_across_files_names_both(tmp_path):
    d = tmp_path / "cat"
    d.mkdir()
    (d / "a.yaml").write_text(CAMPUS_TEXT)
    (d / "b.yaml").write_text("services:\n  www: {mode: http}\n")
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(d)
    (err,) = [str(e) for e in exc.value.errors]
    assert f"{d}/a.yaml:{line_of(CAMPUS_TEXT, '  www:')}" in err and f"{d}/b.yaml:2" in err


def test_duplicate_key_in_one_mapping(tmp_path):
    text = edit("    balance: leastconn\n", "    balance: leastconn\n    balance: source\n")
    (err,) = refused(tmp_path, text)
    assert "key 'balance' is written twice" in err


def test_yaml_syntax_error_has_line(tmp_path):
    (err,) = refused(tmp_path, "bgp: {asn: 1\nnodes: [\n")
    assert "not valid YAML" in err and "catalog.yaml:" in err


def test_missing_required_service_keys(tmp_path):
    text = CAMPUS_TEXT + "  empty:\n    mode: tcp\n    cluster: edge\n"
    errs = refused(tmp_path, text)
    assert any("service 'empty', key 'vip': required key is missing" in e for e in errs)
    assert any("service 'empty', key 'ports'" in e for e in errs)
    assert any("service 'empty', key 'backends'" in e for e in errs)


def test_bad_allow_and_bad_duration(tmp_path):
    text = edit('allow: [198.51.100.0/24, "2001:db8:100::/64"]', 'allow: [198.51.100.0/33]')
    text = edit("check: {interval: 2s, rise: 2, fall: 3}", "check: {interval: soon, rise: 2, fall: 3}", text)
    errs = refused(tmp_path, text)
    assert len(errs) == 2
    assert any("service 'intranet', key 'allow': allow[0]: '198.51.100.0/33' is neither 'any' nor a network "
               "prefix" in e for e in errs)
    assert any("defaults, key 'check.interval': 'soon' is not a duration" in e for e in errs)


def test_no_route_reflector(tmp_path):
    text = CAMPUS_TEXT.replace("roles: [route-reflector]", "roles: []")
    errs = refused(tmp_path, text)
    assert any("no node has the role route-reflector" in e for e in errs)
