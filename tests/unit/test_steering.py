"""Flow steering: which nodes steer to whom (compiler), the nftables it becomes, what ``show`` says."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anycastlb.apply import stage_and_check
from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused
from anycastlb.render import nftables

needs_nft = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="nft -c needs root and nft")


def variant(tmp_path: Path, campus: Path, old: str, new: str) -> dict:
    text = campus.read_text()
    assert old in text, old
    p = tmp_path / "campus.yaml"
    p.write_text(text.replace(old, new, 1))
    return compile_catalog(p).nodes


def nft_text(model: dict) -> str:
    [f] = nftables.render(model, {}, "/")
    return f.content


def steer_rules(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if " dup to " in line or " jump steer" in line]


def test_every_lb_node_steers_to_the_other_nodes_of_its_cluster(campus_catalog):
    nodes = compile_catalog(campus_catalog).nodes
    [g] = nodes["lb1"]["steering"]["groups"]
    assert g["name"] == "cluster edge"
    # lb3 is drained in the catalog: it still holds flows of its own, so it is a peer too
    assert [(p["node"], p["address"], p["address6"]) for p in g["peers"]] == [
        ("lb2", "198.51.100.22", "2001:db8:100::22"), ("lb3", "198.51.100.23", "2001:db8:100::23")]
    assert g["vips4"] == ["192.0.2.10", "192.0.2.11", "192.0.2.20"] and g["vips6"] == ["2001:db8:1::10"]
    assert g["ports"] == [80, 143, 443, 993]


def test_anycast_backends_steer_tcp_only_and_other_nodes_not_at_all(campus_catalog):
    nodes = compile_catalog(campus_catalog).nodes
    [g] = nodes["kdc1"]["steering"]["groups"]
    assert (g["name"], g["ports"], [p["node"] for p in g["peers"]]) == ("anycast kdc", [88, 464], ["kdc2"])
    for node in ("web1", "rr1", "mon1", "salt"):
        assert nodes[node]["steering"] is None, node
        assert "dup to" not in nft_text(nodes[node])


def test_the_ruleset_hands_unknown_non_syn_packets_to_every_peer_and_drops_peers_copies(campus_catalog):
    t = nft_text(compile_catalog(campus_catalog).nodes["lb1"])
    assert steer_rules(t) == [
        'ip daddr { 192.0.2.10, 192.0.2.11, 192.0.2.20 } tcp dport { 80, 143, 443, 993 } '
        'tcp flags & (syn | ack) != syn ct state new,invalid jump steer0 comment "cluster edge"',
        'ip ttl set 2 counter dup to 198.51.100.22 dup to 198.51.100.23 drop comment "not ours: a copy to every peer"',
        'ip6 daddr 2001:db8:1::10 tcp dport { 80, 143, 443, 993 } '
        'tcp flags & (syn | ack) != syn ct state new,invalid jump steer0 comment "cluster edge"',
        'ip6 hoplimit set 2 counter dup to 2001:db8:100::22 dup to 2001:db8:100::23 drop '
        'comment "not ours: a copy to every peer"']
    # a copy arrives with hop limit 1 and is dropped before it could be sent on again
    assert t.index("ip ttl 1 counter drop") < t.index("ip ttl set 2")
    assert t.index("ip6 hoplimit 1 counter drop") < t.index("ip6 hoplimit set 2")
    # before the filter table's verdicts (priority 0), in tables of their own (dup is refused in inet)
    assert t.count("type filter hook input priority filter - 10; policy accept;") == 2
    assert "table ip anycastlb_steer {\n" in t and "table ip6 anycastlb_steer {\n" in t


def test_steering_off_for_a_cluster_removes_the_tables(tmp_path, campus_catalog):
    nodes = variant(tmp_path, campus_catalog, "edge: {nodes: [lb1, lb2, lb3]}",
                    "edge: {nodes: [lb1, lb2, lb3], steering: false}")
    assert nodes["lb1"]["steering"] is None
    t = nft_text(nodes["lb1"])
    assert steer_rules(t) == []
    # the tables of an earlier ruleset are still deleted in the same transaction
    assert "table ip anycastlb_steer {}\ndelete table ip anycastlb_steer\n" in t
    assert "table ip6 anycastlb_steer {}\ndelete table ip6 anycastlb_steer\n" in t
    assert nodes["kdc1"]["steering"] is not None, "the anycast service keeps its own default"


def test_one_node_cluster_steers_nowhere_and_anycast_can_turn_it_off(tmp_path, campus_catalog):
    nodes = variant(tmp_path, campus_catalog, "edge: {nodes: [lb1, lb2, lb3]}", "edge: {nodes: [lb1]}")
    assert nodes["lb1"]["steering"] is None
    nodes = variant(tmp_path, campus_catalog, "    backends: [kdc1, kdc2]", "    backends: [kdc1, kdc2]\n    steering: false")
    assert nodes["kdc1"]["steering"] is None and nodes["lb1"]["steering"] is not None


def test_unmanaged_firewall_means_no_steering(tmp_path, campus_catalog):
    nodes = variant(tmp_path, campus_catalog, 'lb1:  {address: 198.51.100.21, address6: "2001:db8:100::21"}',
                    'lb1:  {address: 198.51.100.21, address6: "2001:db8:100::21", firewall: unmanaged}')
    assert nodes["lb1"]["steering"] is None
    assert [p["node"] for p in nodes["lb2"]["steering"]["groups"][0]["peers"]] == ["lb1", "lb3"]


def test_steering_key_is_a_boolean(tmp_path, campus_catalog):
    with pytest.raises(CatalogRefused) as exc:
        variant(tmp_path, campus_catalog, "edge: {nodes: [lb1, lb2, lb3]}", "edge: {nodes: [lb1, lb2, lb3], steering: maybe}")
    assert any("steering" in str(e) for e in exc.value.errors), exc.value.errors


@needs_nft
@pytest.mark.parametrize("node", ["lb1", "lb3", "kdc2"])
def test_the_steering_ruleset_passes_nft_check(campus_catalog, node):
    ok, out = stage_and_check(nftables.SPEC, compile_catalog(campus_catalog).nodes[node], {}, "/")
    assert ok, out


def test_show_names_the_peers(campus_catalog):
    out = subprocess.run([sys.executable, "-m", "anycastlb.cli", "show", str(campus_catalog), "lb2"],
                         capture_output=True, text=True, check=True).stdout
    assert ("steering (cluster edge): tcp 80,143,443,993 to 192.0.2.10, 192.0.2.11, 192.0.2.20, 2001:db8:1::10: "
            "flows not ours go to lb1 198.51.100.21 2001:db8:100::21, lb3 198.51.100.23 2001:db8:100::23") in out


HELD = Path(__file__).resolve().parent / "data" / "haproxy" / "reload_held"


def fake_master(monkeypatch, answers: dict[str, list[str]]) -> list[str]:
    """The master CLI answers each command with the next recorded file of ``answers[command]``
    (the last one repeats); returns the commands asked."""
    from anycastlb import minion, service
    asked: list[str] = []

    def query(path: str, command: str, timeout: float = 2.0) -> str:
        assert path == "/run/haproxy-master.sock"
        asked.append(command)
        files = answers[command]
        return (HELD / (files.pop(0) if len(files) > 1 else files[0])).read_text()
    monkeypatch.setattr(minion, "haproxy_master_socket", lambda: "/run/haproxy-master.sock")
    monkeypatch.setattr(service, "unix_query", query)
    return asked


def test_the_drain_counts_the_sessions_of_old_haproxy_workers_too(monkeypatch, campus_catalog):
    """After a reload the old worker keeps its connections (recorded: it holds 3 on www-443 and 1 on
    imap-143, the new worker 2): the stats socket reaches only the new worker, the master CLI both."""
    from anycastlb import minion
    model = compile_catalog(campus_catalog).nodes["lb1"]
    asked = fake_master(monkeypatch, {"show proc": ["show_proc.txt"],
                                      "@!13829 show stat -1 1 -1": ["worker_13829_show_stat_fe.csv"],
                                      "@!13655 show stat -1 1 -1": ["old_worker_13655_show_stat_fe.csv"]})
    procs = minion.process_sessions(model)
    assert asked == ["show proc", "@!13829 show stat -1 1 -1", "@!13655 show stat -1 1 -1"]
    assert [(p["pid"], p["old"], {k: v for k, v in p["frontends"].items() if v}) for p in procs] == [
        (13829, False, {"www-443": 2}), (13655, True, {"www-443": 3, "imap-143": 1})]
    ret = minion.wait_sessions(model, deadline=0.05, every=0.01)
    assert (ret["result"], ret["open"], ret["old_workers"], ret["frontends"]) == (
        False, 6, 4, {"www-443": 5, "imap-143": 1})
    assert ret["comment"] == ("6 session(s) still open at the 0.05 s deadline: imap-143 1, www-443 5 "
                              "(4 in old HAProxy workers of a reload)")


def test_an_old_worker_that_exits_meanwhile_is_left_out(monkeypatch, campus_catalog):
    from anycastlb import minion
    model = compile_catalog(campus_catalog).nodes["lb1"]
    fake_master(monkeypatch, {"show proc": ["show_proc.txt"],
                              "@!13829 show stat -1 1 -1": ["worker_13829_show_stat_fe.csv"],
                              "@!13655 show stat -1 1 -1": ["gone_pid.txt"]})
    assert [p["pid"] for p in minion.process_sessions(model)] == [13829]
    fake_master(monkeypatch, {"show proc": ["show_proc.txt"], "@!13829 show stat -1 1 -1": ["gone_pid.txt"]})
    with pytest.raises(minion.NodeError, match="haproxy master CLI: not a show stat answer"):
        minion.process_sessions(model)   # the current worker must answer
    # the old worker exits while the master passes the command on: an empty answer, and the next
    # "show proc" no longer lists it (seen in CI, the moment its last session closed)
    asked = fake_master(monkeypatch, {"show proc": ["show_proc.txt", "show_proc_no_old.txt"],
                                      "@!13829 show stat -1 1 -1": ["worker_13829_show_stat_fe.csv"],
                                      "@!13655 show stat -1 1 -1": ["empty.txt"]})
    assert [p["pid"] for p in minion.process_sessions(model)] == [13829]
    assert asked[-1] == "show proc"
    # an old worker that answers nothing but is still listed is not taken for gone
    fake_master(monkeypatch, {"show proc": ["show_proc.txt"],
                              "@!13829 show stat -1 1 -1": ["worker_13829_show_stat_fe.csv"],
                              "@!13655 show stat -1 1 -1": ["empty.txt"]})
    with pytest.raises(minion.NodeError, match="not a show stat answer"):
        minion.process_sessions(model)


def test_without_a_master_cli_the_stats_socket_counts_the_current_worker(monkeypatch, campus_catalog):
    from anycastlb import minion, service
    model = compile_catalog(campus_catalog).nodes["lb1"]
    monkeypatch.setattr(minion, "haproxy_master_socket", lambda: None)
    monkeypatch.setattr(service, "unix_query", lambda path, command, timeout=2.0: (
        (HELD / "worker_13829_show_stat_fe.csv").read_text() if (path, command) == (
            "/run/haproxy/admin.sock", "show stat -1 1 -1") else ""))
    [p] = minion.process_sessions(model)
    assert (p["pid"], p["old"], p["frontends"]["www-443"]) == (0, False, 2)


def test_wait_sessions_until_none_is_left_or_the_deadline(monkeypatch, campus_catalog):
    from anycastlb import minion
    model = compile_catalog(campus_catalog).nodes["lb1"]
    assert model["haproxy"]["drain_deadline_ms"] == 60000

    def procs(new: dict[str, int], old: dict[str, int] | None = None) -> list[dict]:
        return [{"pid": 2, "old": False, "frontends": new}] + ([{"pid": 1, "old": True, "frontends": old}] if old else [])
    seen = iter([procs({"www-443": 3, "imap-143": 1}), procs({"www-443": 0}, {"www-443": 1}), procs({"www-443": 0})])
    monkeypatch.setattr(minion, "process_sessions", lambda m: next(seen))
    ret = minion.wait_sessions(model, every=0.01)
    assert (ret["result"], ret["open"]) == (True, 0) and ret["comment"].startswith("no session left after")
    assert next(seen, None) is None   # it waited while only the old worker held a session
    monkeypatch.setattr(minion, "process_sessions", lambda m: procs({"www-443": 2, "imap-143": 0}))
    ret = minion.wait_sessions(model, deadline=0.05, every=0.01)
    assert (ret["result"], ret["open"], ret["frontends"]) == (False, 2, {"www-443": 2})
    assert ret["comment"] == "2 session(s) still open at the 0.05 s deadline: www-443 2"


def test_drain_deadline_is_a_cluster_key(tmp_path, campus_catalog):
    nodes = variant(tmp_path, campus_catalog, "edge: {nodes: [lb1, lb2, lb3]}",
                    "edge: {nodes: [lb1, lb2, lb3], drain_deadline: 5m}")
    assert nodes["lb2"]["haproxy"]["drain_deadline_ms"] == 300000
    with pytest.raises(CatalogRefused):
        variant(tmp_path, campus_catalog, "edge: {nodes: [lb1, lb2, lb3]}",
                "edge: {nodes: [lb1, lb2, lb3], drain_deadline: 2h}")


def test_steering_on_an_haproxy_service_is_refused_with_where_it_belongs(tmp_path, campus_catalog):
    with pytest.raises(CatalogRefused) as exc:
        variant(tmp_path, campus_catalog, "    cluster: edge\n    backends: [web1, web2]\n    apache: {server_name: www",
                "    cluster: edge\n    steering: false\n    backends: [web1, web2]\n    apache: {server_name: www")
    msgs = [str(e) for e in exc.value.errors]
    assert any("service 'www', key 'steering'" in m and "set steering on the cluster 'edge'" in m for m in msgs), msgs
