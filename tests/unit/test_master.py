"""The master's side of drain/undrain (anycastlb.orchestrate.master), the runner's logic.

The minions are a recorder here (what Salt's LocalClient would return); the same code
runs against real minions and route reflectors in tests/integration/test_ops_lab.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from anycastlb.orchestrate import Master, config_of, expected_back


class Minions:
    """Answers per execution function; records every call."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[tuple[str, ...], str, dict | None]] = []

    def __call__(self, targets, fun, kwarg, wait):
        self.calls.append((tuple(targets), fun, kwarg))
        a = self.answers[fun]
        return {t: a(t, kwarg) if callable(a) else a for t in targets}


def status(announced: list[str]):
    return (0, {"healthd": {"prefixes": {p: {"announced": True} for p in announced}}, "drain_file": False})


@pytest.fixture
def master(tmp_path, campus_catalog):
    def make(answers: dict[str, Any]) -> tuple[Master, Minions]:
        m = Minions(answers)
        return Master(config_of([{"other": {}}, {"anycastlb": {"catalog": str(campus_catalog)}}]), str(tmp_path), m), m
    return make


SESSIONS_UP = (0, {"clie_lb1_4": {"state": "Established", "neighbor": "198.51.100.21"},
                   "clie_lb1_6": {"state": "Established", "neighbor": "2001:db8:100::21"}})


def test_drain_in_order_and_the_sessions_must_stay_up(master) -> None:
    m, minions = master({"anycastlb.status": status(["192.0.2.10/32"]), "anycastlb.drain": (0, {"result": True}),
                         "anycastlb.wait_routes": (0, {"result": True, "waited_ms": 12}),
                         "anycastlb.sessions": SESSIONS_UP})
    ret = m.drain("lb1", timeout=5)
    assert ret["result"] is True, ret
    assert [c[1] for c in minions.calls] == ["anycastlb.status", "anycastlb.drain", "anycastlb.wait_routes",
                                             "anycastlb.sessions"]
    assert minions.calls[2][0] == ("rr1", "rr2") and set(minions.calls[2][2]["via"]) == {"198.51.100.21",
                                                                                       "2001:db8:100::21"}
    assert ret["sessions"]["rr1"] == {"clie_lb1_4": "Established", "clie_lb1_6": "Established"}

    m, _ = master({"anycastlb.status": status([]), "anycastlb.drain": (0, {}),
                   "anycastlb.wait_routes": (0, {}),
                   "anycastlb.sessions": (0, {"clie_lb1_4": {"state": "start (Active)", "neighbor": "198.51.100.21"}})})
    ret = m.drain("lb1", timeout=5)
    assert ret["result"] is False and "BGP session clie_lb1_4 with lb1 is start (Active)" in ret["comment"]


def test_undrain_waits_for_what_it_announced_before(master) -> None:
    m, minions = master({"anycastlb.status": status(["192.0.2.10/32", "2001:db8:1::10/128"]),
                         "anycastlb.drain": (0, {}), "anycastlb.wait_routes": (0, {"waited_ms": 3}),
                         "anycastlb.sessions": SESSIONS_UP,
                         "anycastlb.undrain": (0, {"prefixes": {"192.0.2.10/32": True}})})
    assert m.drain("lb1")["result"]
    ret = m.undrain("lb1")
    assert ret["result"] is True, ret
    assert ret["expected"] == ["192.0.2.10/32", "2001:db8:1::10/128"]  # remembered, though not back yet
    assert minions.calls[-1][1:] == ("anycastlb.wait_routes", {"via": ["198.51.100.21", "2001:db8:100::21"],
                                                               "present": ret["expected"], "timeout": 30})


def test_expected_back_keeps_only_what_the_catalog_still_gives() -> None:
    model = {"state": "active", "bgp": {"announce": ["192.0.2.10/32"]}}
    assert expected_back(model, {"192.0.2.10/32", "192.0.2.99/32"}, set()) == ["192.0.2.10/32"]
    assert expected_back(model, set(), {"192.0.2.12/32"}) == ["192.0.2.12/32"]
    assert expected_back({**model, "state": "drain"}, {"192.0.2.10/32"}, {"192.0.2.10/32"}) == []


def test_unknown_node_and_plan_reports_out_at_once(master) -> None:
    m, _ = master({"anycastlb.status": (0, {})})
    assert m.drain("nosuch")["comment"] == "nosuch is not a node of the catalog"
    ret = m.plan(runtime=False)
    assert ret["result"] is True and ret["out_at_once"] and max(ret["out_at_once"].values()) <= 1


def test_lint_reads_the_secrets_store_of_the_ext_pillar(tmp_path, campus_catalog, campus_secrets) -> None:
    conf = config_of([{"anycastlb": {"catalog": str(campus_catalog), "secrets": str(campus_secrets)}}])
    res = Master(conf, str(tmp_path), Minions({})).lint()
    assert res.ok, res.errors
