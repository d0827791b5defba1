"""Coexisting with a site's network: extra firewall rules, unmanaged firewalls, per-peer BGP knobs.

Every accepted variant of the campus catalog is rendered and passed through the
daemon's own checker (``nft -c -f``, ``bird -p -c``); every refused value names
file:line, object and key.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from anycastlb.apply import stage_and_check
from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused
from anycastlb.render import bird, nftables

CAMPUS = Path(__file__).resolve().parents[2] / "anycastlb" / "examples" / "campus.yaml"
CAMPUS_TEXT = CAMPUS.read_text()
needs_nft = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="nft -c needs root and nft")
needs_bird = pytest.mark.skipif(not shutil.which("bird"), reason="bird is not installed")

CORE1 = 'core1: {address: 198.51.100.1, address6: "2001:db8:100::1", asn: 64500}'
SITE_RULES = """
firewall:                         # every managed node
  accept:
    - {name: snmp from the NMS, protocol: udp, ports: [161], sources: [203.0.113.7/32, "2001:db8:200::/64"]}
    - {name: ping from anywhere, protocol: icmp, sources: [any]}
"""


def edit(old: str, new: str, text: str = CAMPUS_TEXT) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def compiled(tmp_path: Path, text: str) -> Any:
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    return compile_catalog(p)


def refused(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(p)
    return [str(e) for e in exc.value.errors]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def nft_text(model: dict[str, Any]) -> str:
    [f] = nftables.render(model, {}, "/")
    return f.content


def bird_text(model: dict[str, Any]) -> str:
    return bird.render(model, {"certificates": {}, "bgp_passwords": {}}, "/")[0].content


def rule(model: dict[str, Any], comment: str) -> dict[str, Any] | None:
    return next((r for r in model["firewall"]["rules"] if r["comment"] == comment), None)


# ------------------------------------------------------------------ site firewall rules

SITE = edit("nodes:", SITE_RULES + "\nnodes:", edit(
    'web1: {address: 198.51.100.31, address6: "2001:db8:100::31"}',
    'web1: {address: 198.51.100.31, address6: "2001:db8:100::31", firewall: {accept: ['
    '{name: bacula, protocol: tcp, ports: [9102, 9103], sources: [203.0.113.9/32]}]}}'))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return compiled(tmp_path_factory.mktemp("site"), SITE)


def test_fleet_rules_reach_every_node_and_node_rules_only_theirs(site: Any) -> None:
    for nid in site.nodes:
        snmp = rule(site.nodes[nid], "site: snmp from the NMS")
        assert snmp == {"comment": "site: snmp from the NMS", "protocol": "udp", "ports": [161],
                        "sources": ["203.0.113.7/32", "2001:db8:200::/64"], "destinations": []}
    assert rule(site.nodes["web1"], "site: bacula")["ports"] == [9102, 9103]  # type: ignore[index]
    assert rule(site.nodes["web2"], "site: bacula") is None


def test_site_rules_rendered_per_family(site: Any) -> None:
    t = nft_text(site.nodes["web1"])
    assert 'ip saddr 203.0.113.7 udp dport 161 accept comment "site: snmp from the NMS"' in t
    assert 'ip6 saddr 2001:db8:200::/64 udp dport 161 accept comment "site: snmp from the NMS"' in t
    assert 'ip saddr 203.0.113.9 tcp dport { 9102, 9103 } accept comment "site: bacula"' in t
    # icmp means every ICMP type of both families
    assert 'meta l4proto icmp accept comment "site: ping from anywhere"' in t
    assert 'meta l4proto ipv6-icmp accept comment "site: ping from anywhere"' in t


@needs_nft
@pytest.mark.parametrize("node", ["web1", "rr1", "salt", "mon1"])
def test_site_rules_pass_nft_check(site: Any, node: str) -> None:
    ok, out = stage_and_check(nftables.SPEC, site.nodes[node], {}, "/")
    assert ok, out


def test_campus_has_no_site_rules() -> None:
    fleet = compile_catalog(CAMPUS)
    for nid in fleet.nodes:
        fw = fleet.nodes[nid]["firewall"]
        assert fw["managed"] is True
        assert not [r for r in fw["rules"] if r["comment"].startswith("site:")]


def test_unmanaged_firewall_renders_nothing_but_lists_what_to_open(tmp_path: Path) -> None:
    text = edit('salt: {address: 198.51.100.2, address6: "2001:db8:100::2", roles: [salt-master]}',
                'salt: {address: 198.51.100.2, address6: "2001:db8:100::2", roles: [salt-master], '
                'firewall: unmanaged}')
    fleet = compiled(tmp_path, text)
    fw = fleet.nodes["salt"]["firewall"]
    assert fw["managed"] is False
    assert not nftables.SPEC.wanted(fleet.nodes["salt"])
    assert nftables.SPEC.wanted(fleet.nodes["lb1"])
    # what the site's own firewall must open is still in the model (anycastlb ports shows it)
    assert any(r["ports"] == [4505, 4506] for r in fw["rules"])


@pytest.mark.parametrize("bad, key, message", [
    ("{name: x, protocol: gre, ports: [1], sources: [any]}", "firewall.accept.0.protocol", "'gre' is not allowed"),
    ("{name: x, protocol: icmp, ports: [8], sources: [any]}", "firewall.accept.0", "icmp has no ports"),
    ("{name: x, protocol: tcp, sources: [any]}", "firewall.accept.0", "needs ports"),
    ("{name: x, protocol: tcp, ports: [70000], sources: [any]}", "firewall.accept.0.ports.0", "out of range"),
    ("{name: x, protocol: tcp, ports: [22, 22], sources: [any]}", "firewall.accept.0.ports", "listed twice"),
    ("{name: x, protocol: tcp, ports: [22], sources: [10.0.0.1/8]}", "firewall.accept.0.sources",
     "neither 'any' nor a network prefix"),
    ("{name: x, protocol: tcp, ports: [22], sources: []}", "firewall.accept.0.sources", "may not be empty"),
    ("{name: x, protocol: tcp, ports: [22]}", "firewall.accept.0.sources", "required key is missing"),
    ('{name: "x\\" accept; #", protocol: tcp, ports: [22], sources: [any]}', "firewall.accept.0.name",
     "should match pattern"),
    ('{name: "a\\nb", protocol: tcp, ports: [22], sources: [any]}', "firewall.accept.0.name", "should match pattern"),
    ("{name: x, protocol: tcp, ports: [22], sources: [any], rule: 'tcp dport 1 accept'}",
     "firewall.accept.0.rule", "unknown key"),
])
def test_bad_node_rule_refused_with_place(tmp_path: Path, bad: str, key: str, message: str) -> None:
    anchor = 'lb2:  {address: 198.51.100.22, address6: "2001:db8:100::22"}'
    text = edit(anchor, anchor[:-1] + f", firewall: {{accept: [{bad}]}}}}")
    errs = refused(tmp_path, text)
    want = f"catalog.yaml:{line_of(text, 'lb2:')}: node 'lb2', key '{key}'"
    assert any(want in e and message in e for e in errs), errs


def test_bad_fleet_rule_refused_with_place(tmp_path: Path) -> None:
    text = edit("nodes:", "firewall:\n  accept:\n    - {name: x, protocol: udp, ports: [0], sources: [any]}\n"
                "\nnodes:")
    errs = refused(tmp_path, text)
    want = f"catalog.yaml:{line_of(text, 'ports: [0]')}: firewall, key 'accept.0.ports.0'"
    assert any(want in e and "out of range" in e for e in errs), errs


def test_node_firewall_string_other_than_unmanaged_refused(tmp_path: Path) -> None:
    anchor = 'lb2:  {address: 198.51.100.22, address6: "2001:db8:100::22"}'
    text = edit(anchor, anchor[:-1] + ", firewall: 'flush ruleset'}")
    errs = refused(tmp_path, text)
    assert any(f"catalog.yaml:{line_of(text, 'lb2:')}: node 'lb2', key 'firewall'" in e for e in errs), errs


# ------------------------------------------------------------------ per-peer BGP knobs

def peer_text(extra: str, text: str = CAMPUS_TEXT) -> str:
    return edit(CORE1, CORE1[:-1] + ", " + extra + "}", text)


def test_campus_sessions_stay_direct_with_single_hop_bfd() -> None:
    fleet = compile_catalog(CAMPUS)
    rr1 = fleet.nodes["rr1"]
    assert all(not nb["multihop"] and nb["bfd"] for nb in rr1["bgp"]["neighbors"])
    assert rule(rr1, "bfd from peer core1")["ports"] == [3784, 3785]  # type: ignore[index]
    t = bird_text(rr1)
    assert "multihop" not in t
    core = re.search(r"^protocol bgp peer_core1_4 .*?^}", t, re.S | re.M).group(0)  # type: ignore[union-attr]
    assert "bfd on;" in core and "export where net ~ VIP_POOLS4;" in core


@pytest.fixture(scope="module")
def knobs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    text = peer_text("session: multihop, bfd: {interval: 300ms, multiplier: 5}, "
                     "communities: ['64500:120', '64512:7:9'], med: 200, prepend: 2")
    text = edit("peers:", "peers:\n  core2: {address: 203.0.113.1, asn: 64512, session: direct, bfd: off, "
                "local_pref: 50}", text)
    return compiled(tmp_path_factory.mktemp("knobs"), text)


def test_multihop_peer_gets_multihop_bfd_port(knobs: Any) -> None:
    rr1 = knobs.nodes["rr1"]
    assert rule(rr1, "bfd from peer core1")["ports"] == [4784]  # type: ignore[index]
    assert rule(rr1, "bgp from peer core1")["ports"] == [179]  # type: ignore[index]
    assert rule(rr1, "bfd from peer core2") is None, "bfd off opens no BFD port"
    assert rule(rr1, "bgp from peer core2")["sources"] == ["203.0.113.1"]  # type: ignore[index]
    # the fleet's own sessions are unchanged
    assert rule(rr1, "bfd from client lb1")["ports"] == [3784, 3785]  # type: ignore[index]


def test_peer_knobs_in_bird(knobs: Any) -> None:
    t = bird_text(knobs.nodes["rr1"])
    core1 = re.search(r"^protocol bgp peer_core1_4 .*?^}", t, re.S | re.M).group(0)  # type: ignore[union-attr]
    assert "    multihop;\n" in core1 and "direct;" not in core1
    assert "bfd { interval 300 ms; multiplier 5; };" in core1
    for line in ("if ! (net ~ VIP_POOLS4) then reject;", "bgp_community.add((64500, 120));",
                 "bgp_large_community.add((64512, 7, 9));", "bgp_med = 200;"):
        assert line in core1
    assert core1.count("bgp_path.prepend(64512);") == 2
    assert "bgp_local_pref" not in core1
    core2 = re.search(r"^protocol bgp peer_core2_4 .*?^}", t, re.S | re.M).group(0)  # type: ignore[union-attr]
    assert "bfd off;" in core2 and "direct;" in core2 and "bgp_local_pref = 50;" in core2
    assert "multihop {" in t, "the BFD protocol has timers for multihop sessions"


@needs_bird
@pytest.mark.parametrize("node", ["rr1", "rr2", "lb1", "mon1"])
def test_peer_knobs_pass_bird_check(knobs: Any, node: str) -> None:
    ok, out = stage_and_check(bird.SPEC, knobs.nodes[node], {"certificates": {}, "bgp_passwords": {}}, "/")
    assert ok, out


@needs_bird
def test_fleet_multihop_sessions(tmp_path: Path) -> None:
    text = edit("bfd: {interval: 100ms, multiplier: 3}", "bfd: {interval: 100ms, multiplier: 3}\n  session: multihop")
    fleet = compiled(tmp_path, text)
    lb1, rr1 = fleet.nodes["lb1"], fleet.nodes["rr1"]
    assert rule(lb1, "bfd from route-reflector rr1")["ports"] == [4784]  # type: ignore[index]
    assert rule(rr1, "bfd from client lb1")["ports"] == [4784]  # type: ignore[index]
    assert rule(rr1, "bfd from peer core1")["ports"] == [3784, 3785]  # type: ignore[index]
    t = bird_text(lb1)
    assert "direct;" not in t and "multihop {" in t
    ok, out = stage_and_check(bird.SPEC, lb1, {"certificates": {}, "bgp_passwords": {}}, "/")
    assert ok, out


@pytest.mark.parametrize("extra, key, message", [
    ("session: routed", "session", "'routed' is not allowed"),
    ("bfd: sometimes", "bfd", ""),
    ("bfd: {interval: 100ms, multiplier: 0}", "bfd.multiplier", "out of range"),
    ("communities: ['64500:70000']", "communities", "neither a community"),
    ("communities: ['no-export']", "communities", "neither a community"),
    ("communities: ['1:2', '1:2']", "communities", "listed twice"),
    ("med: -1", "med", "out of range"),
    ("prepend: 9", "prepend", "out of range"),
    ("local_pref: 200", "local_pref", "not sent over eBGP"),
])
def test_bad_peer_knob_refused_with_place(tmp_path: Path, extra: str, key: str, message: str) -> None:
    text = peer_text(extra)
    errs = refused(tmp_path, text)
    want = f"catalog.yaml:{line_of(text, 'core1:')}: peer 'core1', key '{key}'"
    assert any(want in e and message in e for e in errs), errs


def test_bad_fleet_session_refused(tmp_path: Path) -> None:
    text = edit("asn: 64512 ", "session: hop\n  asn: 64512 ")
    errs = refused(tmp_path, text)
    assert any(f"catalog.yaml:{line_of(text, 'session: hop')}: bgp, key 'session'" in e for e in errs), errs


def test_unmanaged_node_gets_no_nftables_step_and_no_boot_unit(tmp_path: Path) -> None:
    """The minion's daemon list and the systemd units leave an unmanaged firewall alone."""
    from anycastlb import minion, units

    text = edit('web2: {address: 198.51.100.32, address6: "2001:db8:100::32"}',
                'web2: {address: 198.51.100.32, address6: "2001:db8:100::32", firewall: unmanaged}')
    fleet = compiled(tmp_path, text)
    assert "nftables" not in minion.wanted(fleet.nodes["web2"])
    assert "nftables.service" not in units.enabled_units(fleet.nodes["web2"])
    assert "nftables" in minion.wanted(fleet.nodes["web1"])
    assert "nftables.service" in units.enabled_units(fleet.nodes["web1"])


@needs_nft
def test_the_widest_accepted_rule_name_passes_nft_check(tmp_path: Path) -> None:
    """Every character the rule-name grammar allows, at its longest, is inert in the ruleset."""
    name = "a/b (c) +d,e-f:g.h_i " + "x" * 43
    assert len(name) == 64
    fleet = compiled(tmp_path, edit("nodes:", f"firewall:\n  accept:\n    - {{name: '{name}', protocol: tcp, "
                                              "ports: [10161], sources: [any]}\n\nnodes:"))
    assert f'"site: {name}"'[:60] in nft_text(fleet.nodes["web1"])
    ok, out = stage_and_check(nftables.SPEC, fleet.nodes["web1"], {}, "/")
    assert ok, out
