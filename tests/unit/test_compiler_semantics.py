"""Issue 11 item 4 and issue 19 item 5: address, port, role and timer rules, each named where written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused

ROOT = Path(__file__).resolve().parents[2]
CAMPUS_TEXT = (ROOT / "anycastlb" / "examples" / "campus.yaml").read_text()


def refused(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(p)
    return [str(e) for e in exc.value.errors]


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def line(text: str, needle: str) -> int:
    return next(i for i, x in enumerate(text.splitlines(), 1) if needle in x)


IMAP_VIP = "vip: 192.0.2.20"
CASES = [
    # (edits, needle of the reported line, object, key, words)
    ([(IMAP_VIP, "vip: 0.0.0.0")], "vip: 0.0.0.0", "service 'imap'", "vip[0]", ("unspecified",)),
    ([("- 192.0.2.0/24", "- 127.0.0.0/24"), (IMAP_VIP, "vip: 127.0.0.1")], "vip: 127.0.0.1", "service 'imap'",
     "vip[0]", ("loopback",)),
    ([("- 192.0.2.0/24", "- 169.254.169.0/24"), (IMAP_VIP, "vip: 169.254.169.254")], "vip: 169.254",
     "service 'imap'", "vip[0]", ("link-local",)),
    ([("- 192.0.2.0/24", "- 0.0.0.0/0")], "- 0.0.0.0/0", "vip_pools", "vip_pools[0]", ("is everything",)),
    ([("- 2001:db8:1::/64", "- ::/0")], "- ::/0", "vip_pools", "vip_pools[1]", ("is everything",)),
    ([("- 192.0.2.0/24", "- 192.0.0.0/8")], "- 192.0.0.0/8", "vip_pools", "vip_pools[0]",
     ("wider than /16", "limits.max_pool_v4")),
    ([("- 192.0.2.0/24", "- 224.0.2.0/24")], "- 224.0.2.0/24", "vip_pools", "vip_pools[0]", ("multicast",)),
    ([("- 192.0.2.0/24", "- 192.0.2.0/24\n  - 198.51.100.0/24"), (IMAP_VIP, "vip: 198.51.100.21")],
     "vip: 198.51.100.21", "service 'imap'", "vip[0]", ("node 'lb1'",)),
    ([("management: [198.51.100.0/24, 2001:db8:100::/64]", "management: []")], "management: []", "catalog",
     "management", ("missing or empty",)),
    ([("management: [198.51.100.0/24, 2001:db8:100::/64]", "management: [0.0.0.0/0]")], "management: [0.0.0.0",
     "management", "management[0]", ("is everything",)),
    ([("mail1: {address: 203.0.113.25}", "mail1: {address: 127.0.0.1}")], "mail1:", "service 'imap'",
     "backends.mail1.address", ("loopback",)),
    ([("mail1: {address: 203.0.113.25}", "mail1: {address: 192.0.2.10}")], "mail1:", "service 'imap'",
     "backends.mail1.address", ("VIP of service 'www'", "loop")),
    ([("    vip: 192.0.2.11\n", "    vip: 192.0.2.88\n")], "vip: 192.0.2.88\n" and "vip: [192.0.2.88",
     "service 'kdc'", "vip[0]", ("one VIP, one announcing set",)),
    ([("ports: [143, 993]", "ports: [22, 993]")], "ports: [22", "service 'imap'", "ports[0]", ("ssh", "lb1")),
    ([("ports: [143, 993]", "ports: [143, 8404]")], "ports: [143", "service 'imap'", "ports[1]", ("stats",)),
    ([("ports: [88/udp, 88/tcp, 464/udp, 464/tcp]", "ports: [88/udp, 179/tcp]")], "ports: [88/udp",
     "service 'kdc'", "ports[1]", ("BGP",)),
    ([("edge: {nodes: [lb1, lb2, lb3]}", "edge: {nodes: [lb1, lb2, lb3, rr1]}")], "edge: {nodes:", "cluster 'edge'",
     "nodes[3]", ("route-reflector",)),
    ([("backends: [kdc1, kdc2]", "backends: [kdc1, mon1]")], "backends: [kdc1, mon1]", "service 'kdc'",
     "backends.mon1", ("monitoring",)),
    ([("edge: {nodes: [lb1, lb2, lb3]}", "edge: {nodes: [lb1, lb2, lb3]}\n  empty: {nodes: []}"),
      ("cluster: edge\n    ports: [143", "cluster: empty\n    ports: [143")], "cluster: empty", "service 'imap'",
     "cluster", ("no nodes",)),
    ([("bfd: {interval: 100ms", "bfd: {interval: 1ms")], "bfd: {interval: 1ms", "bgp", "bfd.interval",
     ("below the lower bound 10ms",)),
    ([("check: {interval: 2s,", "check: {interval: 1ms,")], "check: {interval: 1ms", "defaults", "check.interval",
     ("below the lower bound 100ms",)),
    ([("bfd: {interval: 100ms", "bfd: {interval: 100")], "bfd: {interval: 100,", "bgp", "bfd.interval",
     ("100 has no unit", "100ms", "100s")),
    ([('lb2:  {address: 198.51.100.22, address6: "2001:db8:100::22"}', "lb2:  {address: 198.51.100.22}")],
     "vip: [192.0.2.10", "service 'www'", "vip", ("node 'lb2' has no address6",)),
]


@pytest.mark.parametrize("edits,needle,obj,key,words", CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_semantic_refusals_name_file_line_object_key(tmp_path, edits, needle, obj, key, words):
    text = CAMPUS_TEXT
    for old, new in edits:
        text = edit(text, old, new)
    errors = refused(tmp_path, text)
    where = f"{tmp_path / 'catalog.yaml'}:{line(text, needle)}:"
    assert any(e.startswith(where) and f"{obj}, key {key!r}" in e and all(w in e for w in words)
               for e in errors), errors


def test_ipv4_mapped_vip_cannot_dodge_the_duplicate_check(tmp_path):
    text = edit(CAMPUS_TEXT, "vip: 192.0.2.11", 'vip: "::ffff:192.0.2.10"')
    errors = refused(tmp_path, text)
    assert any("service 'intranet', key 'vip[0]'" in e and "write 192.0.2.10" in e for e in errors), errors


def test_explicit_key_allows_a_node_port(tmp_path):
    text = edit(CAMPUS_TEXT, "ports: [143, 993]", "ports: [22, 993]\n    allow_node_ports: [22]")
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert compile_catalog(p).services["imap"]["ports"] == ["22/tcp", "993/tcp"]


def test_wider_pool_allowed_by_the_fleet_limit(tmp_path):
    text = edit(CAMPUS_TEXT, "- 192.0.2.0/24", "- 192.0.0.0/12")
    text = edit(text, "management: [", "limits: {max_pool_v4: 12}\nmanagement: [")
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert compile_catalog(p).summary["services"] == 4


def test_cluster_without_an_active_node_is_a_warning_lint_prints(tmp_path):
    text = edit(CAMPUS_TEXT, "  lb1:  {address: 198.51.100.21,", "  lb1:  {state: maintenance, address: 198.51.100.21,")
    text = edit(text, "  lb2:  {address: 198.51.100.22,", "  lb2:  {state: drain, address: 198.51.100.22,")
    p = tmp_path / "c.yaml"
    p.write_text(text)
    fleet = compile_catalog(p)
    assert {w.name for w in fleet.warnings} == {"www", "intranet", "imap"}
    r = subprocess.run([sys.executable, "-m", "anycastlb.cli", "lint", str(p)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("ok:")
    assert f"warning: {p}:{line(text, 'cluster: edge')}: service 'www', key 'cluster': no announcer is active" \
        in r.stderr


def test_salt_ports_proxied_to_the_master_by_address(tmp_path):
    text = edit(CAMPUS_TEXT, "ports: [143, 993]", "ports: [4505, 4506]")
    text = edit(text, "mail1: {address: 203.0.113.25}", "mail1: {address: 198.51.100.2}")
    errors = refused(tmp_path, text)
    assert any(f"{tmp_path / 'catalog.yaml'}:{line(text, 'mail1:')}: service 'imap', key 'backends.mail1'" in e
               and "Salt publish on node 'salt'" in e for e in errors), errors


def test_node_address_and_backend_inside_vip_pools(tmp_path):
    text = edit(CAMPUS_TEXT, "mail1: {address: 203.0.113.25}", "mail1: {address: 192.0.2.250}")
    text = edit(text, "  web2: {address: 198.51.100.32,", "  web2: {address: 192.0.2.32,")
    errors = refused(tmp_path, text)
    where = f"{tmp_path / 'catalog.yaml'}:"
    assert any(e.startswith(f"{where}{line(text, 'mail1:')}: service 'imap', key 'backends.mail1.address'")
               and "inside vip_pools" in e for e in errors), errors
    assert any(e.startswith(f"{where}{line(text, '  web2: {address')}: node 'web2', key 'address'")
               and "inside the VIP pool 192.0.2.0/24" in e for e in errors), errors
