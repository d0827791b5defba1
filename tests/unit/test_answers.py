"""The one parser of each foreign format, on real captured output (see data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anycastlb.answers import bird, haproxy
from anycastlb.plugins import check_anycastlb_haproxy as plugin

DATA = Path(__file__).resolve().parent / "data"
NODES = {"lb1": {"address": "198.51.100.21", "address6": "2001:db8:100::21"},
         "lb2": {"address": "198.51.100.22", "address6": None}}


def text(name: str) -> str:
    return (DATA / name).read_text()


# ------------------------------------------------------------------ BIRD show route all


def test_show_route_all_every_path_with_its_next_hop() -> None:
    routes = bird.parse_routes(text("bird/routes_all.txt"))
    got = [(r.net, r.proto, r.kind, r.best, r.next_hops) for r in routes]
    assert got == [
        ("192.0.2.11/32", "to_a4", "unreachable", True, ["198.51.100.21"]),
        ("192.0.2.10/32", "st4", "blackhole", True, []),
        ("192.0.2.10/32", "to_a4", "unreachable", False, ["198.51.100.21"]),  # the second path of the prefix
        ("2001:db8:1::10/128", "to_a4", "unreachable", True, ["2001:db8:100::21"]),
    ]
    assert routes[0].source == "127.0.0.1" and routes[0].attrs["BGP.local_pref"] == "100"


def test_one_prefix_and_no_prefix() -> None:
    one = bird.parse_routes(text("bird/route_one.txt"))
    assert {r.net for r in one} == {"192.0.2.10/32"} and len(one) == 2
    assert bird.parse_routes(text("bird/route_none.txt")) == []


def test_the_control_socket_framing_reads_the_same() -> None:
    """BirdSocket (the lab, every 2 ms) reads the raw socket: unframed, it parses like birdc's output."""
    raw = text("bird/socket_routes_all.txt")
    assert raw.startswith("1007-Table master4:")
    framed = [(r.net, r.proto, r.best, r.next_hops) for r in bird.parse_routes(bird.unframe(raw))]
    plain = [(r.net, r.proto, r.best, r.next_hops) for r in bird.parse_routes(text("bird/routes_all.txt"))]
    assert framed == plain


def test_who_carries_what() -> None:
    routes = bird.parse_routes(text("bird/routes_all.txt"))
    assert bird.first_hops(routes) == {"192.0.2.10/32": ["198.51.100.21"], "192.0.2.11/32": ["198.51.100.21"],
                                       "2001:db8:1::10/128": ["2001:db8:100::21"]}
    assert bird.carried_via(routes, ["2001:db8:100:0::21"]) == ["2001:db8:1::10/128"]  # normalised
    assert bird.carried_via(routes, bird.node_addresses(NODES["lb2"])) == []
    assert bird.announcers(routes, NODES) == {"192.0.2.10/32": ["lb1"], "192.0.2.11/32": ["lb1"],
                                              "2001:db8:1::10/128": ["lb1"]}


# ------------------------------------------------------------------ BIRD show protocols


@pytest.mark.parametrize("name", ["bird/protocols.txt", "bird/protocols_all.txt"])
def test_show_protocols_sessions(name: str) -> None:
    sessions = bird.bgp_sessions(bird.parse_protocols(text(name)))
    assert {n: s["state"] for n, s in sessions.items()} == {"to_b4": "Established", "to_x": "start (Active)"}
    if name.endswith("_all.txt"):
        assert sessions["to_b4"]["neighbor"] == "127.0.0.2"
        assert bird.sessions_with(sessions, ["127.0.0.9"]) == {"to_x": "start (Active)"}
    else:
        assert bird.sessions_with(sessions, ["127.0.0.2"]) == {}  # no neighbor without `all`


# ------------------------------------------------------------------ HAProxy show stat


def test_show_stat_rows() -> None:
    rows = haproxy.parse_show_stat(text("haproxy/show_stat.csv"))
    assert rows[("www-80", "FRONTEND")]["status"] == "OPEN"
    assert {sv: r["status"] for (px, sv), r in rows.items() if px == "www-8080"} == {
        "web1": "UP", "web2": "DOWN", "web3": "DOWN", "BACKEND": "UP"}
    assert rows[("www-8080", "BACKEND")]["act"] == "1" and rows[("www-8080", "web3")]["bck"] == "1"
    assert haproxy.haproxy_verdict(rows, ["www-80"], ["www-8080"]) == (True, "haproxy serves")
    fe_be = haproxy.parse_show_stat(text("haproxy/show_stat_fe_be.csv"))
    assert set(fe_be) == {("www-80", "FRONTEND"), ("stats", "FRONTEND"), ("www-8080", "BACKEND")}


def test_show_stat_drained_and_paused() -> None:
    rows = haproxy.parse_show_stat(text("haproxy/show_stat_drain_paused.csv"), ("status", "weight"))
    assert rows[("www-8080", "web1")] == {"pxname": "www-8080", "svname": "web1", "status": "UP", "weight": "0"}
    assert rows[("www-8080", "web2")]["status"] == "MAINT"
    problems, notes = haproxy.verify_haproxy(haproxy.parse_show_stat(text("haproxy/show_stat_drain_paused.csv")),
                                             ["www-80"], ["www-8080"])
    assert problems == ["frontend www-80 is PAUSED", "backend www-8080 is DOWN (0 servers up)"] and notes == []


def test_not_a_stats_answer() -> None:
    with pytest.raises(ValueError, match="not a show stat answer"):
        haproxy.parse_show_stat("Permission denied\n")


def test_the_plugin_reads_csv_and_prometheus() -> None:
    """The plugin's two inputs, captured after web2 went to MAINT, web1 to weight 0 and www-80 was paused."""
    csv = plugin.parse(text("haproxy/stats_http.csv"))
    prom = plugin.parse(text("haproxy/metrics.txt"))
    for st in (csv, prom):
        assert st.servers["www-8080"] == {"web1": "UP", "web2": "MAINT", "web3": "DOWN"}
    assert csv.frontends["www-80"] == "PAUSED" and csv.backup == {"www-8080": {"web3"}}
    assert plugin.evaluate(csv, "www-80", "www-8080")[0] == plugin.CRITICAL
    # HAProxy 2.6's exporter reports a paused frontend as state UP, and counts weight-0 servers out
    assert prom.frontends["www-80"] == "OPEN" and prom.up_counts["www-8080"] == (0, 0)
