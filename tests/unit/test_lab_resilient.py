"""The lab peer's resilient mode: BIRD's table mirrored into main through resilient nexthop groups."""
from __future__ import annotations

from anycastlb.lab import peer
from anycastlb.lab.catalog import load
from anycastlb.lab.resilient import State, plan, wanted

ECMP = [{"dst": "192.0.2.10", "protocol": "bird", "metric": 32, "flags": [],
         "nexthops": [{"gateway": "198.51.100.22", "dev": "eth0", "weight": 1, "flags": []},
                      {"gateway": "198.51.100.21", "dev": "eth0", "weight": 1, "flags": []}]},
        {"dst": "2001:db8:1::10", "protocol": "bird", "gateway": "2001:db8:100::21", "dev": "eth0", "flags": []}]


def test_bird_routes_become_one_resilient_group_per_prefix():
    st = State()
    assert plan(wanted(ECMP), st) == [
        "nexthop replace id 1000 via 198.51.100.21 dev eth0",
        "nexthop replace id 1001 via 198.51.100.22 dev eth0",
        "nexthop replace id 1002 via 2001:db8:100::21 dev eth0",
        "nexthop replace id 5000 group 1000/1001 type resilient buckets 64 idle_timer 30 unbalanced_timer 0",
        "route replace 192.0.2.10/32 nhid 5000",
        "nexthop replace id 5001 group 1002 type resilient buckets 64 idle_timer 30 unbalanced_timer 0",
        "route replace 2001:db8:1::10/128 nhid 5001"]
    assert plan(wanted(ECMP), st) == [], "nothing changed, nothing done"


def test_a_next_hop_added_or_removed_replaces_the_same_group_in_place():
    st = State()
    plan(wanted(ECMP), st)
    three = [dict(ECMP[0], nexthops=ECMP[0]["nexthops"] + [{"gateway": "198.51.100.23", "dev": "eth0"}])]
    assert plan(wanted(three), st) == [
        "nexthop replace id 1003 via 198.51.100.23 dev eth0",
        "nexthop replace id 5000 group 1000/1001/1003 type resilient buckets 64 idle_timer 30 unbalanced_timer 0",
        "nexthop del id 5001", "nexthop del id 1002"]
    one = [dict(ECMP[0], nexthops=ECMP[0]["nexthops"][:1])]
    assert plan(wanted(one), st) == [
        "nexthop replace id 5000 group 1001 type resilient buckets 64 idle_timer 30 unbalanced_timer 0",
        "nexthop del id 1000", "nexthop del id 1003"]
    assert plan({}, st) == ["nexthop del id 5000", "nexthop del id 1001"]


def test_resilient_bird_config_exports_to_its_own_table(campus_catalog):
    cat = load(campus_catalog)
    plain, res = peer.render(cat, "core1"), peer.render(cat, "core1", table=4200)
    assert "kernel table" not in plain
    assert res.count("  kernel table 4200;") == 2
    assert res.replace("  kernel table 4200;\n", "") == plain
