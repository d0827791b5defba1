"""nftables: the rendered ruleset of every campus node, line by line and through ``nft -c``."""
from __future__ import annotations

import os
import shutil

import pytest

from anycastlb.apply import stage_and_check
from anycastlb.compiler import compile_catalog, copy_model
from anycastlb.render import HEADER, nftables

needs_nft = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="nft -c needs root and nft")


@pytest.fixture(scope="module")
def fleet(campus_catalog):
    return compile_catalog(campus_catalog)


def text(fleet, node: str) -> str:
    [f] = nftables.render(fleet.nodes[node], {}, "/")
    assert f.path == "/etc/nftables.d/anycastlb.nft"
    return f.content


def rules(fleet, node: str) -> list[str]:
    return [line.strip() for line in text(fleet, node).splitlines() if line.strip().endswith('"') and " accept comment" in line
            and ("dport" in line or "l4proto" in line)]


@needs_nft
@pytest.mark.parametrize("node", ["salt", "rr1", "rr2", "lb1", "lb2", "lb3", "web1", "web2", "kdc1", "kdc2", "mon1"])
def test_every_node_passes_nft_check(fleet, node):
    ok, out = stage_and_check(nftables.SPEC, fleet.nodes[node], {}, "/")
    assert ok, out


def test_one_table_replaced_whole_with_drop_policy(fleet):
    t = text(fleet, "lb1")
    assert HEADER in t.splitlines()[1]
    # create-then-delete makes re-applying replace the table in one transaction, first load included
    assert "table inet anycastlb {}\ndelete table inet anycastlb\n" in t
    assert "type filter hook input priority filter; policy drop;" in t
    assert "flush ruleset" not in t and t.count("\ntable inet ") == 2
    # and the flow steering tables (ip, ip6), the same way: create, delete, fill (docs/steering.md)
    assert t.count("\ntable ip anycastlb_steer ") == 2 and t.count("\ntable ip6 anycastlb_steer ") == 2


def test_baseline_conntrack_loopback_and_icmp(fleet):
    t = text(fleet, "web1")
    assert "ct state established,related accept" in t
    assert "ct state invalid drop" in t
    assert 'iif "lo" accept' in t
    nd = "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept"
    assert nd in t
    assert t.index(nd) < t.index("ct state invalid drop"), "ND must not depend on conntrack"
    assert "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request }" in t
    assert "icmp type { destination-unreachable, time-exceeded, parameter-problem, echo-request }" in t


def test_intranet_port_80_only_from_campus_and_monitoring(fleet):
    mine = [r for r in rules(fleet, "lb1") if "192.0.2.11" in r]
    # mon1 (198.51.100.51) lies inside the campus prefix: the set is collapsed to it
    assert mine == ['ip saddr 198.51.100.0/24 ip daddr 192.0.2.11 tcp dport 80 accept comment "service intranet on its VIPs"']


def test_www_open_to_everyone_on_both_families(fleet):
    r = rules(fleet, "lb2")
    assert 'ip daddr 192.0.2.10 tcp dport { 80, 443 } accept comment "service www on its VIPs"' in r
    assert 'ip6 daddr 2001:db8:1::10 tcp dport { 80, 443 } accept comment "service www on its VIPs"' in r


def test_backend_8080_only_from_the_load_balancers_and_monitoring(fleet):
    r = [x for x in rules(fleet, "web1") if "8080" in x]
    assert r == [
        'ip saddr { 198.51.100.21, 198.51.100.22, 198.51.100.23, 198.51.100.51 } ip daddr 198.51.100.31 tcp dport 8080 '
        'accept comment '
        '"backend of intranet from its LB nodes and monitoring"',
        'ip6 saddr { 2001:db8:100::21, 2001:db8:100::22, 2001:db8:100::23, 2001:db8:100::51 } ip6 daddr 2001:db8:100::31 '
        'tcp dport 8080 accept '
        'comment "backend of intranet from its LB nodes and monitoring"',
        'ip saddr { 198.51.100.21, 198.51.100.22, 198.51.100.23, 198.51.100.51 } ip daddr 198.51.100.31 tcp dport 8080 '
        'accept comment '
        '"backend of www from its LB nodes and monitoring"',
        'ip6 saddr { 2001:db8:100::21, 2001:db8:100::22, 2001:db8:100::23, 2001:db8:100::51 } ip6 daddr 2001:db8:100::31 '
        'tcp dport 8080 accept '
        'comment "backend of www from its LB nodes and monitoring"',
    ]


def test_bgp_only_from_neighbors(fleet):
    bgp = [r for r in rules(fleet, "lb1") if "dport 179" in r]
    assert bgp == [
        'ip saddr 198.51.100.11 ip daddr 198.51.100.21 tcp dport 179 accept comment "bgp from route-reflector rr1"',
        'ip6 saddr 2001:db8:100::11 ip6 daddr 2001:db8:100::21 tcp dport 179 accept comment '
        '"bgp from route-reflector rr1"',
        'ip saddr 198.51.100.12 ip daddr 198.51.100.21 tcp dport 179 accept comment "bgp from route-reflector rr2"',
        'ip6 saddr 2001:db8:100::12 ip6 daddr 2001:db8:100::21 tcp dport 179 accept comment '
        '"bgp from route-reflector rr2"',
    ]
    rr = [r for r in rules(fleet, "rr1") if "dport 179" in r]
    assert {r.split('"')[1] for r in rr} == {"bgp from client kdc1", "bgp from client kdc2", "bgp from client lb1",
                                            "bgp from client lb2", "bgp from client lb3", "bgp from listener mon1",
                                            "bgp from peer core1"}
    assert all(" saddr " in r for r in rr)


def test_kdc_udp_and_tcp_on_its_vips(fleet):
    r = rules(fleet, "kdc1")
    for proto in ("tcp", "udp"):
        assert f'ip daddr 192.0.2.88 {proto} dport {{ 88, 464 }} accept comment "service kdc on its VIPs"' in r
        assert f'ip6 daddr 2001:db8:1::88 {proto} dport {{ 88, 464 }} accept comment "service kdc on its VIPs"' in r


def test_overlapping_sources_are_collapsed(fleet):
    salt = [r for r in rules(fleet, "salt") if "4505" in r]
    assert salt[0].startswith("ip saddr 198.51.100.0/24 ip daddr 198.51.100.2 tcp dport { 4505, 4506 }")
    assert salt[1].startswith("ip6 saddr 2001:db8:100::/64 ip6 daddr 2001:db8:100::2 tcp dport { 4505, 4506 }")


def test_rule_without_a_common_family_accepts_nothing(fleet):
    m = copy_model(fleet.nodes["web1"])
    m["firewall"]["rules"] = [{"comment": "v4 source to a v6 destination", "protocol": "tcp", "ports": [9],
                               "sources": ["198.51.100.7"], "destinations": ["2001:db8:1::9"]},
                              {"comment": "any \"quoted\"", "protocol": "udp", "ports": [], "sources": [],
                               "destinations": []}]
    r = rules(fleet_like(m), "web1")
    assert r == ['meta l4proto udp accept comment "any \'quoted\'"']
    assert "# v4 source to a v6 destination: no address family" in nftables.render(m, {}, "/")[0].content


class fleet_like:  # noqa: N801 - a tiny stand-in for Fleet in one test
    def __init__(self, model):
        self.nodes = {model["node"]: model}
